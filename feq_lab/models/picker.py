"""The one model: `ModelSpec` → `PickerModel` (detection, P and S probability traces).

EQT, LEQ and FEQ1–3 are presets of this single class; the grid knobs only change the spec.
`PickerModel.forward_logits` below is the whole computation, top to bottom, in the form
training runs; the layers' math is in `layers.py` (and `gru.py`), each written once.
Implementations of the same math are chosen at construction (`options.ModelOptions`); the fast
inference forms are built once from trained weights by `compile.compile_for_inference`.

Layout: encoder and residual stack work channel-first (B, C, T); the recurrent/attention middle
works batch-first (B, T, C), so the RNNs, 1×1 convs (linear layers) and attention need no
transposes; decoders go back to channel-first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.models.fastdecode import build_stacked, grouped_decoders
from feq_lab.models.layers import (
    BottleneckBlock,
    Decoder,
    PickerBranch,
    RecurrentBlock,
    ResidualBlock,
    SameConv1d,
    SameMaxPool1d,
    SeparableFn,
    SpatialDropout,
    TransformerBlock,
    separable_stage,
)
from feq_lab.models.options import ModelOptions
from feq_lab.models.protocol import OUTPUTS, LearnedModel, instantiate
from feq_lab.models.spec import ModelSpec, layer_indices, load_preset, spec_from_config


class Encoder(nn.Module):
    """[Conv + ReLU → MaxPool] stages with TF "same" padding; stages may share a conv.
    Separable stages run whole through `separable_fn` (conv halves + ReLU + pool).
    `channels_last` (plain stages): the signal is held as (B, C, 1, T) in NHWC memory format
    through all stages (converted in and out once), the same convs and pools as 2-D ops."""

    def __init__(
        self,
        spec: ModelSpec,
        separable_fn: SeparableFn = separable_stage,
        channels_last: bool = False,
    ):
        super().__init__()
        self.layer_of_stage = layer_indices(len(spec.encoder_filters), spec.encoder_shared)
        self.layers = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels, length = spec.in_channels, spec.in_samples
        separable = spec.encoder_conv == "separable"
        for i, (f, k, p) in enumerate(
            zip(spec.encoder_filters, spec.encoder_kernels, spec.encoder_pools)
        ):
            if self.layer_of_stage[i] == len(self.layers):
                self.layers.append(SameConv1d(channels, f, k, separable=separable))
            pool = SameMaxPool1d(p, length)
            self.pools.append(pool)
            channels, length = f, pool.out_length
        self.separable_fn = separable_fn
        self.channels_last = channels_last and not separable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # plain stages only: the same loop on (B, C, 1, T) in NHWC
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        for j, pool in zip(self.layer_of_stage, self.pools):
            conv = self.layers[j]
            if conv.separable:
                x = self.separable_fn(
                    x, conv.depthwise.weight, conv.conv.weight, conv.conv.bias,
                    pool=pool.pool,
                )  # fmt: skip
            else:
                x = pool(F.relu(conv(x)))
        return x.squeeze(2).contiguous() if self.channels_last else x


class PickerModel(LearnedModel):
    """(B, 3, 6000) waveforms → detection, P, S traces (B, 6000) each.

    `forward` returns probabilities, `forward_logits` the pre-sigmoid values (for a BCE-with-logits
    loss). Spatial dropout is off in eval; `mc_predict` switches it on explicitly. `options`
    choose implementations (never the function); they are not part of checkpoints.
    """

    def __init__(self, spec: ModelSpec, options: ModelOptions | None = None):
        super().__init__()
        options = (options or ModelOptions()).validate()
        self.spec = spec
        self.options = options
        gru_fn, separable_fn = options.gru_fn(), options.separable_fn()
        scores_fn, dropout_fn = options.scores_fn(), options.dropout_fn()
        # the stacked decoders' training form runs separable stages fused, or folded when the
        # reference stage is all there is (fewer, larger ops than depthwise + pointwise)
        self._stacked_separable_fn = separable_fn if options.uses_fused_separable() else None
        self._decoder_form = options.decoder_form(spec.decoder_conv == "separable")
        self._decoder_channels_last = options.decoder_channels_last()
        self._separable_fn, self._conv_fn = separable_fn, options.conv_fn()
        self._head_fn = options.separable_head_fn()
        self.encoder = Encoder(spec, separable_fn, options.encoder_channels_last())
        width = spec.encoder_filters[-1]
        if spec.block == "residual":
            blocks = [ResidualBlock(width, k, spec.dropout) for k in spec.residual_kernels]
        else:
            blocks = [
                BottleneckBlock(width, spec.bottleneck_width, k, spec.dropout)
                for k in spec.residual_kernels
            ]
        self.bottleneck = nn.Sequential(*blocks)
        u = spec.units
        self.rnn_blocks = nn.ModuleList(
            RecurrentBlock(
                spec.rnn, width if i == 0 else u, u, spec.dropout, spec.gru_impl, gru_fn, dropout_fn
            )
            for i in range(spec.rnn_blocks)
        )
        self.transformers = nn.ModuleList(
            TransformerBlock(
                u,
                spec.attention_units,
                spec.feedforward_units,
                spec.dropout,
                spec.layer_norm_eps,
                scores_fn,
                dropout_fn,
            )
            for _ in range(spec.transformer_blocks)
        )
        width_local = spec.local_attention_width or None
        self.pickers = nn.ModuleList(
            PickerBranch(
                spec.picker_rnn,
                u,
                spec.attention_units,
                width_local,
                spec.dropout,
                spec.gru_impl,
                gru_fn,
                dropout_fn,
            )
            for _ in ("p", "s")
        )
        decoder_layers = layer_indices(len(spec.decoder_filters), spec.decoder_shared)
        self.decoders = nn.ModuleList(
            Decoder(
                u,
                spec.decoder_filters,
                spec.decoder_kernels,
                spec.decoder_upsample,
                spec.decoder_crops,
                decoder_layers,
                spec.decoder_conv == "separable",
                spec.head_kernel,
                separable_fn,
            )
            for _ in ("detection", "p", "s")
        )

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-sigmoid detection, P and S traces, each (B, in_samples)."""
        check_input(self.spec, x)
        h = self.bottleneck(self.encoder(x)).transpose(1, 2)  # (B, T, C) from here on
        for block in self.rnn_blocks:
            h = block(h)
        for block in self.transformers:
            h = block(h)
        p, s = (branch(h) for branch in self.pickers)
        # "fused"/"stacked": the same three decoders as one grouped pass (options.ModelOptions)
        if self._decoder_form == "fused":
            features = torch.cat([h, p, s], dim=2).transpose(1, 2)
            return grouped_decoders(
                self.decoders, features, self._separable_fn, self._conv_fn, self._head_fn
            )
        if self._decoder_form == "stacked":
            stacked = build_stacked(
                list(self.decoders),
                "train",
                self._stacked_separable_fn,
                channels_last=self._decoder_channels_last,
            )
            return stacked(torch.cat([h, p, s], dim=2).transpose(1, 2))
        det_dec, p_dec, s_dec = self.decoders
        return det_dec(h.transpose(1, 2)), p_dec(p.transpose(1, 2)), s_dec(s.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det, p, s = self.forward_logits(x)
        return torch.sigmoid(det), torch.sigmoid(p), torch.sigmoid(s)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def in_samples(self) -> int:
        return self.spec.in_samples

    def to_config(self) -> dict[str, Any]:
        return self.spec.to_dict()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, /,
                    options: ModelOptions | None = None, **fields: Any) -> PickerModel:
        """A preset mapping (`cfg.model`, `to_config()`) with knob overrides, or the preset's
        fields as keywords (`hydra.utils.instantiate(cfg.model)`); see `spec_from_config`."""
        if config is None:
            config, fields = fields, {}
        return cls(spec_from_config(config, **fields), options)

    @torch.no_grad()
    def set_output_priors(self, priors: Mapping[str, float]) -> None:
        """Each decoder head's bias = logit(prior): the initial output equals the label prior."""
        for name, decoder in zip(OUTPUTS, self.decoders):
            p = float(priors[name])
            decoder.head.conv.bias.fill_(math.log(p / (1.0 - p)))

    def section_modules(self) -> dict[str, list[nn.Module]]:
        """Modules per report section (REFERENCE §5.1): decoder stages before the first crop
        belong to "RNN & transformer"; a shared layer goes where it is first used."""
        first_crop = self.spec.first_crop_stage
        early: list[nn.Module] = []
        late: list[nn.Module] = []
        for dec in self.decoders:
            seen: set[int] = set()
            for stage, j in enumerate(dec.layer_of_stage):
                if j in seen:
                    continue
                seen.add(j)
                (early if stage < first_crop else late).append(dec.layers[j])
            late.append(dec.head)
        return {
            "encoder": [self.encoder],
            "bottleneck": [self.bottleneck],
            "rnn_transformer": [self.rnn_blocks, self.transformers, self.pickers, *early],
            "decoder": late,
        }


def check_input(spec: ModelSpec, x: torch.Tensor) -> None:
    """One clear error for a wrongly shaped batch (before any layer fails obscurely)."""
    expected = (spec.in_channels, spec.in_samples)
    if x.dim() != 3 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{spec.name}: input must be (batch, {expected[0]}, {expected[1]}), got {tuple(x.shape)}"
        )


def build_model(
    preset: str | ModelSpec | Mapping[str, Any],
    options: ModelOptions | None = None,
    **overrides: Any,
) -> LearnedModel:
    """Build a model from a preset name (`conf/model/<name>.yaml`), a model-group mapping
    (`cfg.model`; its `_target_` names the family, none = the EQT family) or a `ModelSpec`.

    Overrides (`rnn`, `picker_rnn`, `cnn_blocks`, `rnn_blocks`, `gru_impl`, `dropout`, or any
    other field of the family) equal to None keep the preset's value. Bad values raise
    ConfigError naming the key, before any module is built. `options`: implementations.
    """
    if isinstance(preset, ModelSpec):
        return PickerModel(spec_from_config(preset.to_dict(), **overrides), options)
    if isinstance(preset, str):
        preset = load_preset(preset)
    if not (isinstance(preset, Mapping) or hasattr(preset, "items")):
        raise ConfigError(
            "model", f"expected a preset name, mapping or ModelSpec, got {type(preset).__name__}"
        )
    model = instantiate(preset, options, **overrides)
    if not isinstance(model, LearnedModel):
        raise ConfigError("model", f"{type(model).__name__} is a baseline, not a learned model")
    return model


@contextmanager
def mc_dropout(model: PickerModel) -> Iterator[PickerModel]:
    """Eval mode with spatial dropout switched on (EQT's Monte-Carlo mode); restores modes."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, SpatialDropout):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


@torch.no_grad()
def mc_predict(
    model: PickerModel, x: torch.Tensor, n: int = 5
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """n Monte-Carlo passes → ((det, p, s) means, (det, p, s) standard deviations)."""
    if n < 1:
        raise ConfigError("mc_passes", f"must be >= 1, got {n}")
    with mc_dropout(model):
        runs = [model(x) for _ in range(n)]
    stacked = [torch.stack([r[i] for r in runs]) for i in range(3)]
    mean = tuple(t.mean(dim=0) for t in stacked)
    std = tuple(t.std(dim=0, unbiased=False) for t in stacked)
    return mean, std
