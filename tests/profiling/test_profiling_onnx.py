"""ONNX export parity (every preset and a grid point), sizes and the latency harness."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from feq_lab.errors import ConfigError
from feq_lab.export.onnx import INPUT_NAME, OUTPUT_NAMES, export_onnx, onnx_session, run_onnx
from feq_lab.models import PRESETS, build_model, count_parameters
from feq_lab.profiling.latency import LatencyResult, measure_latency
from feq_lab.profiling.size import file_size_mb, model_size_mb


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _waveforms(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 6000)).astype(np.float32)


def _trained_looking(model):
    """Non-trivial BN statistics so parity is not tested on an all-default network."""
    torch.manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(
    "preset, overrides",
    [(p, {}) for p in PRESETS]
    + [("feq3", {"rnn": "gru", "picker_rnn": "lstm", "cnn_blocks": 3, "rnn_blocks": 2})],
)
def test_onnx_outputs_match_torch(tmp_path, preset, overrides):
    torch.manual_seed(6)
    model = _trained_looking(build_model(preset, **overrides))
    path = export_onnx(model, tmp_path / f"{preset}.onnx")
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    session = onnx_session(path)
    x = _waveforms(3)  # exported with batch 2: a different batch proves the axis is dynamic
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    for got, ref in zip(run_onnx(session, x), expected):
        assert got.shape == (3, 6000)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=0)
    assert 0 < file_size_mb(path) < 5
    assert not model.training


def test_onnx_rejects_old_opsets(tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(build_model("feq3"), tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()


def test_model_size_tracks_parameter_count():
    eqt, feq3 = build_model("eqt"), build_model("feq3")
    for model in (eqt, feq3):
        floats = count_parameters(model, "paper")["total"]  # torch weights + BN running stats
        assert floats * 4e-6 <= model_size_mb(model) <= floats * 4e-6 + 0.2  # + pickle overhead
    assert model_size_mb(feq3) < 0.2 * model_size_mb(eqt)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_latency_harness_reports_and_restores_threads(backend):
    model = build_model("feq3").train()
    torch.set_num_threads(2)
    result = measure_latency(model, backend, batch=2, threads=1, warmup=1, repeats=3)
    assert torch.get_num_threads() == 2  # restored
    assert model.training  # mode restored
    assert isinstance(result, LatencyResult)
    assert (result.backend, result.batch, result.threads, result.repeats, result.mc_passes) == (
        backend,
        2,
        1,
        3,
        0,
    )
    assert 0 < result.p50_ms <= result.p90_ms
    assert result.window_ms_p50 == pytest.approx(result.p50_ms / 2)
    assert result.device.startswith("cpu")
    assert json.loads(json.dumps(result.to_dict()))["backend"] == backend


def test_latency_harness_mc_only_when_asked():
    model = build_model("feq3").eval()
    result = measure_latency(model, "torch", warmup=0, repeats=1, mc_passes=2)
    assert result.mc_passes == 2
    assert not any(m.training for m in model.modules())
    with pytest.raises(ConfigError, match="mc_passes"):
        measure_latency(model, "onnxruntime", mc_passes=2)
    with pytest.raises(ConfigError, match="backend"):
        measure_latency(model, "tensorrt")
    with pytest.raises(ConfigError, match="threads"):
        measure_latency(model, threads=0)
