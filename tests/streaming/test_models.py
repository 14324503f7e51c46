"""The engine with a real (untrained, seeded) FEQ3: torch and onnxruntime backends, block sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import blocks_of, make_record
from stream_helpers import run_blocks

from feq_lab.errors import ConfigError
from feq_lab.streaming.engine import StreamEngine, finals
from feq_lab.streaming.predictors import (
    make_predictor,
    onnx_predictor,
    parse_model_uri,
    torch_predictor,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def feq3():
    from feq_lab.models import build_model

    torch.manual_seed(0)
    return build_model("feq3").eval()


@pytest.fixture(scope="module")
def record():
    return make_record(minutes=2.5)


def probs_after(predict, record, block_s):
    engine = StreamEngine(predict, "feq3", {"history_s": 600.0})
    events = run_blocks(engine, blocks_of(record, block_s))
    view = engine.history_view("XX.STA", 600.0)
    return events, view["prob"], engine.windows_run


def test_feq3_block_sizes_give_the_same_probabilities_and_events(feq3, record):
    predict = torch_predictor(feq3, threads=1)
    ev7, p7, n7 = probs_after(predict, record, 7.0)
    ev60, p60, n60 = probs_after(predict, record, 60.0)
    assert p7.shape == p60.shape == (3, record.shape[1])
    assert n7 == n60 == 4  # 0, 30, 60, 90 s; the last one ends at the newest sample: no tail
    np.testing.assert_allclose(p7, p60, atol=1e-5)
    # final events only: provisional picks come from right-edge windows, which end where the
    # records end (an untrained model's ~0.5 outputs trigger them at the provisional thresholds)
    assert [e.to_dict() for e in finals(ev7)] == [e.to_dict() for e in finals(ev60)]
    assert np.all((p7 >= 0) & (p7 <= 1))


def test_onnxruntime_matches_torch(feq3, record, tmp_path):
    # make_predictor exports the model itself when no ONNX file came with it
    predict = make_predictor(feq3, None, "onnxruntime", 1, 0, tmp_path)
    path = tmp_path / "model.onnx"
    assert path.exists()
    x = np.random.default_rng(0).normal(size=(2, 3, 6000)).astype(np.float32)
    assert [o.shape for o in predict(x)] == [(2, 6000)] * 3
    _, p_onnx, _ = probs_after(onnx_predictor(path, threads=1), record, 60.0)
    _, p_torch, _ = probs_after(torch_predictor(feq3, threads=1), record, 60.0)
    np.testing.assert_allclose(p_onnx, p_torch, atol=2e-4)


def test_an_onnx_file_from_an_older_exporter_is_exported_again(feq3, tmp_path):
    import onnx

    from feq_lab.export.onnx import EXPORT_FORMAT_KEY, export_onnx, is_current_export

    old = export_onnx(feq3, tmp_path / "shipped" / "model.onnx")
    assert is_current_export(old)
    proto = onnx.load(str(old))
    del proto.metadata_props[:]  # what a file written before the format marker looks like
    onnx.save(proto, str(old))
    assert not is_current_export(old)
    make_predictor(feq3, old, "onnxruntime", 1, 0, tmp_path / "work")
    fresh = tmp_path / "work" / "model.onnx"
    assert fresh.exists() and is_current_export(fresh)
    props = {p.key for p in onnx.load(str(fresh)).metadata_props}
    assert EXPORT_FORMAT_KEY in props
    # a current file is used as it is: nothing exported
    make_predictor(feq3, fresh, "onnxruntime", 1, 0, tmp_path / "again")
    assert not (tmp_path / "again" / "model.onnx").exists()


def test_mc_mode_gives_a_spread(feq3):
    predict = make_predictor(feq3, None, "onnxruntime", 1, 3, None)  # MC falls back to torch
    x = np.random.default_rng(0).normal(size=(1, 3, 6000)).astype(np.float32)
    out = predict(x)
    assert len(out) == 6 and float(np.max(out[3:][0])) > 0.0


def test_model_config_errors():
    assert parse_model_uri("models:/feq-picker@champion") == ("feq-picker", "champion")
    with pytest.raises(ConfigError, match="model_uri"):
        parse_model_uri("runs:/abc/model")
    with pytest.raises(ConfigError, match="backend"):
        make_predictor(None, None, "tensorflow", 1, 0, None)
    with pytest.raises(ConfigError, match="threads"):
        make_predictor(None, None, "torch", 0, 0, None)
