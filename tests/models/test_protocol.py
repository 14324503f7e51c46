"""The model protocol (issue 13): every `conf/model/*.yaml` names its family or baseline by
`_target_`; a learned family is run, measured, exported and checkpointed through the protocol
alone (PhaseNet and FEQ3 side by side), and a classical baseline is a `Detector`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from feq_lab.data.labels import make_labels, phase_targets
from feq_lab.evaluation.baseline import StaLtaDetector, stalta_picks
from feq_lab.export.onnx import export_onnx, onnx_session, run_onnx
from feq_lab.models import (
    Detector,
    LearnedModel,
    PhaseNet,
    build_model,
    compile_for_inference,
    count_parameters,
    instantiate,
    load_checkpoint,
    save_checkpoint,
)
from feq_lab.models.protocol import SECTIONS
from feq_lab.paths import CONF_DIR

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
LEARNED = ("feq3", "phasenet")


def model_entry(name: str) -> DictConfig:
    """`conf/model/<name>.yaml` as the job composes it (its defaults list applied: FEQ1-3 are LEQ
    deltas, `stalta` an alias of `conf/baseline/stalta.yaml`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"model={name}"]).model


def batch_of(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = [make_labels(700.0 + 50 * i, 1400.0 + 80 * i) for i in range(n)]
    return {"x": torch.from_numpy(rng.standard_normal((n, 3, 6000)).astype(np.float32)),
            **{key: torch.from_numpy(np.stack([lab[j] for lab in labels]))
               for j, key in enumerate(("y_det", "y_p", "y_s"))}}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_names_its_family_and_instantiates(name):
    cfg = model_entry(name)
    assert "_target_" in cfg, f"conf/model/{name}.yaml composes no _target_"
    built = hydra_instantiate(cfg)  # Hydra's own instantiate, as a config test would call it
    ours = instantiate(OmegaConf.to_container(cfg))
    assert type(built) is type(ours)
    assert isinstance(ours, (LearnedModel, Detector))
    if isinstance(ours, LearnedModel):
        assert ours.name == name and ours.to_config() == built.to_config()
    else:
        assert not isinstance(ours, LearnedModel) and ours.to_config() == built.to_config()


@pytest.mark.parametrize("name", LEARNED)
def test_a_family_round_trips_through_config_and_checkpoint(name, tmp_path, torch_one_thread):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = batch_of()["x"]
    with torch.no_grad():
        det, p, s = model(x)
    for trace in (det, p, s):
        assert trace.shape == (2, 6000) and float(trace.min()) >= 0 and float(trace.max()) <= 1
    rebuilt = type(model).from_config(model.to_config())
    rebuilt.load_state_dict(model.state_dict())
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    frozen = compile_for_inference(model)  # the one inference path, any family
    with torch.no_grad():
        for other in (rebuilt.eval()(x), loaded(x), frozen(x)):
            for a, b in zip(other, (det, p, s)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert type(loaded) is type(model) and not loaded.training


@pytest.mark.parametrize("name", LEARNED)
def test_parameter_sections_cover_every_parameter(name):
    model = build_model(name)
    counts = count_parameters(model, "torch")
    assert set(model.section_modules()) <= set(SECTIONS)
    assert counts["total"] == sum(counts[s] for s in SECTIONS)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    if name == "phasenet":
        assert counts["rnn_transformer"] == 0 and counts["total"] == 268_443


def test_phasenet_exports_to_onnx_with_its_signature(tmp_path, torch_one_thread):
    torch.manual_seed(1)
    model = build_model("phasenet").eval()
    path = export_onnx(model, tmp_path / "phasenet.onnx")
    session = onnx_session(path)
    names = model.onnx_signature()
    assert [i.name for i in session.get_inputs()] == list(names.input_names)
    assert [o.name for o in session.get_outputs()] == list(names.output_names)
    x = batch_of(3)["x"]
    with torch.no_grad():
        expected = model(x)
    for got, want in zip(run_onnx(session, x.numpy()), expected):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_phasenet_loss_is_softmax_cross_entropy_on_phase_targets():
    torch.manual_seed(2)
    model = build_model("phasenet")
    batch = batch_of()
    parts = model.losses(batch, {"detection": 0.05, "p": 0.4, "s": 0.55}, {})
    noise, p, s = phase_targets(batch["y_p"], batch["y_s"])
    targets = torch.stack([noise, p, s], dim=1)  # the config's class order, N P S
    expected = F.cross_entropy(model.forward_logits(batch["x"]), targets)
    torch.testing.assert_close(parts["loss"], expected)
    assert float(targets.sum(dim=1).min()) > 0.99  # the three targets sum to one


def test_phasenet_detection_is_defined_in_the_config():
    torch.manual_seed(3)
    x = batch_of()["x"]
    span = build_model("phasenet").eval()
    assert span.config.detection == "phase_span"  # conf/model/phasenet.yaml's choice
    others = {kind: build_model("phasenet", detection=kind).eval()
              for kind in ("noise_complement", "max_phase")}
    with torch.no_grad():
        d, p, s = span(x)
        for model in others.values():
            model.load_state_dict(span.state_dict())
        d_complement, _, _ = others["noise_complement"](x)
        d_max, _, _ = others["max_phase"](x)
    p_np, s_np = p.numpy(), s.numpy()
    expected = np.minimum(np.maximum.accumulate(p_np, axis=1),
                          np.maximum.accumulate(s_np[:, ::-1], axis=1)[:, ::-1])
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-7)
    torch.testing.assert_close(d_complement, p + s)  # 1 − noise
    torch.testing.assert_close(d_max, torch.maximum(p, s))


def test_output_priors_start_each_family_at_the_label_prior():
    priors = {"detection": 0.2, "p": 0.01, "s": 0.02}
    x = batch_of()["x"]
    for name in LEARNED:
        model = build_model(name).eval()
        with torch.no_grad():  # zero every head so the output is the bias alone
            heads = [model.head] if isinstance(model, PhaseNet) else [
                d.head.conv for d in model.decoders]
            for head in heads:
                head.weight.zero_()
        model.set_output_priors(priors)
        with torch.no_grad():
            _, p, s = model(x)
        assert float(p.mean()) == pytest.approx(0.01, rel=1e-4)
        assert float(s.mean()) == pytest.approx(0.02, rel=1e-4)


def test_stalta_is_a_detector_with_the_baseline_s_picks(tiny_subset):
    from feq_lab.job.baseline import load_split

    detector = instantiate(OmegaConf.to_container(model_entry("stalta")),
                           rnn="gru")  # grid knobs do not apply to a detector
    assert isinstance(detector, StaLtaDetector) and isinstance(detector, Detector)
    _, waveforms, _, names = load_split(tiny_subset, "test")
    assert detector.picks(waveforms, names) == stalta_picks(waveforms, detector.settings, names)
