"""SeisBench interop, both ways: `from_seisbench` (SeisBench EQTransformer / PhaseNet, or their
`.pt`/`.json` weights pair → the lab's `eqt` / `phasenet` model with those weights) and
`to_seisbench` (any lab model → a SeisBench `WaveformModel`, so `.annotate(stream)` and
`.classify(stream)` work on an obspy Stream with SeisBench's resampling, windowing and stacking).

Facts the weight mapping relies on (read from SeisBench 0.12's model sources, no code taken):
- SeisBench's models take channels in their `component_order` (ZNE by default); the lab's are
  E, N, Z. The first conv's input channels are permuted, so the lab model on an E, N, Z window
  computes what SeisBench's computes on the same window in its own order.
- SeisBench's EQTransformer (not `original_compatible`) crops the last sample of the decoder
  stage whose length would otherwise overshoot (for 6000: after the third upsampling, 376 → 375),
  where the Keras original (the lab's `eqt` preset) crops one sample on each side at the fourth
  (752 → 750). The converted model keeps SeisBench's crop (`decoder_crops`), LayerNorm epsilon
  (1e-14) and block count (`lstm_blocks` → `rnn_blocks`); everything else is the `eqt` preset.
  Its attention softmax adds 1e-5 to the denominator where the lab adds keras-self-attention's
  1e-7 (a relative difference ≤ 1e-5), and its local attention subtracts the row maximum over
  all steps, not only the window's (the same up to that epsilon).
- SeisBench normalises EQTransformer's input by one std over all channels, PhaseNet's per
  channel; the lab normalises per channel (`data.labels.normalize`) for every family.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import seisbench.models as sbm
import seisbench.util as sbu
import torch

from feq_lab.data.labels import normalize
from feq_lab.errors import ConfigError, DataError
from feq_lab.models.compile import compile_for_inference
from feq_lab.models.phasenet import PhaseNet, PhaseNetConfig
from feq_lab.models.picker import PickerModel
from feq_lab.models.protocol import LearnedModel
from feq_lab.models.spec import load_preset, spec_from_config

LAB_COMPONENTS = "ENZ"
SAMPLING_RATE = 100.0  # Hz, STEAD's and every lab model's


# --- SeisBench → lab ------------------------------------------------------------------------------
def from_seisbench(obj: Any) -> LearnedModel:
    """The lab model (eval mode) holding the weights of a SeisBench `EQTransformer` or
    `PhaseNet` object, or of a SeisBench weights pair (`<base>.json` + `<base>.pt`, given as
    either file or as `<base>`)."""
    if isinstance(obj, (str, os.PathLike)):
        obj = load_seisbench_weights(obj)
    if isinstance(obj, sbm.EQTransformer):
        model = _eqt_from(obj)
    elif isinstance(obj, sbm.PhaseNet):
        model = _phasenet_from(obj)
    else:
        raise ConfigError("init_from", f"cannot convert a {type(obj).__name__}: expected a "
                          "SeisBench EQTransformer or PhaseNet (or their weights files)")
    return model.eval()


def load_seisbench_weights(path: str | os.PathLike) -> Any:
    """A SeisBench model object from its weights pair; the class is recognised from the state
    dict (SeisBench's JSON does not name it)."""
    base = Path(path)
    if base.suffix in (".pt", ".json"):
        base = base.with_suffix("")
    json_path, pt_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".pt")
    for p in (json_path, pt_path):
        if not p.is_file():
            raise DataError("missing SeisBench weights file (need <base>.json and <base>.pt)",
                            path=str(p))
    state = torch.load(pt_path, map_location="cpu", weights_only=True)
    args = json.loads(json_path.read_text()).get("model_args", {})
    if "inc.weight" in state:
        cls = sbm.PhaseNet
    elif "encoder.convs.0.weight" in state:
        cls = sbm.EQTransformer
    else:
        raise DataError("not a SeisBench EQTransformer or PhaseNet state dict", path=str(pt_path))
    model = cls(**args)
    model.load_state_dict(state)
    return model.eval()


def _channel_permutation(component_order: Any, n: int) -> list[int]:
    """Index into SeisBench's input channels for each lab channel (E, N, Z)."""
    order = "".join(component_order) if component_order else "ZNE"
    if n != 3 or sorted(order) != sorted(LAB_COMPONENTS):
        raise ConfigError("init_from", f"needs 3 channels Z, N, E; got {n} in order {order!r}")
    return [order.index(c) for c in LAB_COMPONENTS]


def _load_exact(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a complete mapping (every lab tensor, same shapes) or fail naming the first gap."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError("init_from", f"conversion left {missing[0]} unset")
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise ConfigError("init_from", f"{key}: shape {tuple(value.shape)} != "
                              f"{tuple(own[key].shape)}")
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()})


def _bn(out: dict, lab: str, sb: Mapping[str, torch.Tensor], prefix: str) -> None:
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"{lab}.{name}"] = sb[f"{prefix}.{name}"]


def _eqt_from(obj: Any) -> PickerModel:
    if obj.original_compatible:
        raise ConfigError("init_from", "SeisBench's original_compatible EQTransformer uses a "
                          "custom LSTM cell the lab does not build")
    n_dec = len(obj.decoder_d.convs)
    crops = [[0, 1] if i in obj.decoder_d.crops else [0, 0] for i in range(n_dec)]
    preset = load_preset("eqt")
    preset.update(rnn_blocks=int(obj.lstm_blocks), decoder_crops=crops, layer_norm_eps=1e-14,
                  in_samples=int(obj.in_samples), dropout=float(obj.drop_rate))
    model = PickerModel(spec_from_config(preset))
    sb = obj.state_dict()
    out: dict[str, torch.Tensor] = {}
    perm = _channel_permutation(obj.component_order, obj.in_channels)
    for i in range(len(obj.encoder.convs)):
        w = sb[f"encoder.convs.{i}.weight"]
        out[f"encoder.layers.{i}.conv.weight"] = w[:, perm] if i == 0 else w
        out[f"encoder.layers.{i}.conv.bias"] = sb[f"encoder.convs.{i}.bias"]
    for i in range(len(obj.res_cnn_stack.members)):
        src, dst = f"res_cnn_stack.members.{i}", f"bottleneck.{i}"
        for j in (1, 2):
            _bn(out, f"{dst}.norm{j}", sb, f"{src}.norm{j}")
            out[f"{dst}.conv{j}.conv.weight"] = sb[f"{src}.conv{j}.weight"]
            out[f"{dst}.conv{j}.conv.bias"] = sb[f"{src}.conv{j}.bias"]
    for i in range(len(obj.bi_lstm_stack.members)):
        src, dst = f"bi_lstm_stack.members.{i}", f"rnn_blocks.{i}"
        for key, value in sb.items():
            if key.startswith(f"{src}.lstm."):
                out[f"{dst}.rnn." + key[len(f"{src}.lstm."):]] = value
        out[f"{dst}.project.weight"] = sb[f"{src}.conv.weight"][:, :, 0]
        out[f"{dst}.project.bias"] = sb[f"{src}.conv.bias"]
        _bn(out, f"{dst}.norm", sb, f"{src}.norm")
    for i, src in enumerate(("transformer_d0", "transformer_d")):
        dst = f"transformers.{i}"
        _attention(out, f"{dst}.attention", sb, f"{src}.attention")
        for j in (1, 2):
            out[f"{dst}.norm{j}.weight"] = sb[f"{src}.norm{j}.gamma"][:, 0]
            out[f"{dst}.norm{j}.bias"] = sb[f"{src}.norm{j}.beta"][:, 0]
        for lab, theirs in (("ff_in", "lin1"), ("ff_out", "lin2")):
            out[f"{dst}.{lab}.weight"] = sb[f"{src}.ff.{theirs}.weight"]
            out[f"{dst}.{lab}.bias"] = sb[f"{src}.ff.{theirs}.bias"]
    _decoder(out, "decoders.0", sb, "decoder_d", "conv_d", n_dec)
    phases = list(obj.phases)
    for lab_index, phase in enumerate(("P", "S")):
        if phase not in phases:
            raise ConfigError("init_from", f"SeisBench model has no {phase} output (phases "
                              f"{phases})")
        k = phases.index(phase)
        for key, value in sb.items():
            if key.startswith(f"pick_lstms.{k}."):
                out[f"pickers.{lab_index}.rnn." + key[len(f"pick_lstms.{k}."):]] = value
        _attention(out, f"pickers.{lab_index}.attention", sb, f"pick_attentions.{k}")
        _decoder(out, f"decoders.{lab_index + 1}", sb, f"pick_decoders.{k}", f"pick_convs.{k}",
                 n_dec)
    _load_exact(model, out)
    return model


def _attention(out: dict, lab: str, sb: Mapping[str, torch.Tensor], prefix: str) -> None:
    """SeisBench's SeqSelfAttention (Wt, Wx: (C, U), bh, Wa: (U, 1), ba) → the lab's."""
    out[f"{lab}.query.weight"] = sb[f"{prefix}.Wt"].T
    out[f"{lab}.key.weight"] = sb[f"{prefix}.Wx"].T
    out[f"{lab}.hidden_bias"] = sb[f"{prefix}.bh"]
    out[f"{lab}.score.weight"] = sb[f"{prefix}.Wa"].T
    out[f"{lab}.score.bias"] = sb[f"{prefix}.ba"]


def _decoder(out: dict, lab: str, sb: Mapping[str, torch.Tensor], prefix: str, head: str,
             n: int) -> None:
    for i in range(n):
        out[f"{lab}.layers.{i}.conv.weight"] = sb[f"{prefix}.convs.{i}.weight"]
        out[f"{lab}.layers.{i}.conv.bias"] = sb[f"{prefix}.convs.{i}.bias"]
    out[f"{lab}.head.conv.weight"] = sb[f"{head}.weight"]
    out[f"{lab}.head.conv.bias"] = sb[f"{head}.bias"]


def _phasenet_from(obj: Any) -> PhaseNet:
    if getattr(obj, "norm_amp_per_comp", False) or getattr(obj, "norm_detrend", False):
        raise ConfigError("init_from", "PickBlue-style PhaseNet normalisation is not supported")
    config = PhaseNetConfig(in_channels=int(obj.in_channels),
                            labels="".join(obj.labels),
                            filters_root=8 * int(obj.filter_factor))
    model = PhaseNet(config)
    sb = obj.state_dict()
    perm = _channel_permutation(obj.component_order, obj.in_channels)
    out: dict[str, torch.Tensor] = {"stem.0.weight": sb["inc.weight"][:, perm],
                                    "stem.0.bias": sb["inc.bias"]}
    _bn(out, "stem.1", sb, "in_bn")
    for i in range(config.depth):
        src = f"down_branch.{i}"
        out[f"down.{i}.same.0.weight"] = sb[f"{src}.0.weight"]
        _bn(out, f"down.{i}.same.1", sb, f"{src}.1")
        if i < config.depth - 1:
            out[f"down.{i}.reduce.0.weight"] = sb[f"{src}.2.weight"]
            _bn(out, f"down.{i}.reduce.1", sb, f"{src}.3")
    for j in range(config.depth - 1):
        src = f"up_branch.{j}"
        out[f"up.{j}.expand.0.weight"] = sb[f"{src}.0.weight"]
        _bn(out, f"up.{j}.expand.1", sb, f"{src}.1")
        out[f"up.{j}.same.0.weight"] = sb[f"{src}.2.weight"]
        _bn(out, f"up.{j}.same.1", sb, f"{src}.3")
    out["head.weight"], out["head.bias"] = sb["out.weight"], sb["out.bias"]
    _load_exact(model, out)
    return model


# --- lab → SeisBench ------------------------------------------------------------------------------
class FeqLabModel(sbm.WaveformModel):
    """Any lab model as a SeisBench `WaveformModel`: SeisBench resamples the Stream to 100 Hz,
    orders the components E, N, Z, cuts windows of the model's length and stacks the
    overlapping predictions; each window is normalised as the lab does and run through the
    model's inference form (`compile_for_inference`, the one way the lab runs a model).
    Annotations: `FeqLabModel_Detection`, `_P`, `_S`; `classify` gives picks (P, S) and
    detections with trigger thresholds `P_threshold`, `S_threshold`, `detection_threshold`."""

    _annotate_args = sbm.WaveformModel._annotate_args.copy()
    _annotate_args["*_threshold"] = ("Trigger threshold of the P and S picks", 0.3)
    _annotate_args["detection_threshold"] = ("Trigger threshold of the detections", 0.3)
    _annotate_args["overlap"] = (_annotate_args["overlap"][0], 0.3)  # EQT's predictor (§3)

    def __init__(self, model: LearnedModel):
        super().__init__(
            citation="feq-lab model " + model.name,
            component_order=LAB_COMPONENTS,
            sampling_rate=SAMPLING_RATE,
            output_type="array",
            in_samples=model.in_samples,
            pred_sample=(0, model.in_samples),
            labels=["Detection", "P", "S"],
        )
        self.lab_name = model.name
        self.lab_config = {"_target_": model.target, **model.to_config()}
        self.frozen = compile_for_inference(model.cpu().eval(), target="eager")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.frozen(x)

    def annotate_batch_pre(self, batch: torch.Tensor, argdict: dict[str, Any]) -> torch.Tensor:
        return torch.from_numpy(normalize(batch.detach().cpu().numpy())).to(batch.device)

    def annotate_batch_post(self, batch: Any, piggyback: Any, argdict: dict[str, Any]
                            ) -> torch.Tensor:
        return torch.stack(list(batch), dim=-1)  # (B, T, 3): Detection, P, S

    def classify_aggregate(self, annotations: Any, argdict: dict[str, Any]) -> Any:
        default = self._annotate_args["*_threshold"][1]
        picks = sbu.PickList()
        for phase in ("P", "S"):
            picks += self.picks_from_annotations(
                annotations.select(channel=f"{self.name}_{phase}"),
                argdict.get(f"{phase}_threshold", default), phase)
        detections = self.detections_from_annotations(
            annotations.select(channel=f"{self.name}_Detection"),
            argdict.get("detection_threshold", self._annotate_args["detection_threshold"][1]))
        return sbu.ClassifyOutput(self.name, picks=sbu.PickList(sorted(picks)),
                                  detections=detections)

    def get_model_args(self) -> dict[str, Any]:
        return {"lab_config": self.lab_config}


def to_seisbench(model: LearnedModel) -> FeqLabModel:
    """`model` wrapped as a SeisBench WaveformModel (see `FeqLabModel`)."""
    if not isinstance(model, LearnedModel):
        raise ConfigError("model", f"expected a lab model, got {type(model).__name__}")
    return FeqLabModel(model)

