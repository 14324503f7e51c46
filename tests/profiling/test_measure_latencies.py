"""Round-robin latency of several stored models (what the `evaluate` stage times)."""

from __future__ import annotations

import math

import torch

from feq_lab.export.onnx import export_onnx
from feq_lab.job.assess import measure, measure_latencies
from feq_lab.models import build_model
from feq_lab.tracking import keys

TIMING = {"latency_warmup": 1, "latency_repeats": 6, "latency_passes": 2}


def test_every_model_gets_its_eager_and_onnx_keys_and_a_missing_export_only_eager(tmp_path):
    torch.manual_seed(0)
    feq3, leq = build_model("feq3").eval(), build_model("leq").eval()
    onnx = export_onnx(feq3, tmp_path / "feq3.onnx")
    got = measure_latencies({"feq3": (feq3, onnx), "leq": (leq, tmp_path / "absent.onnx")},
                            TIMING)
    assert set(got["feq3"]) == {keys.LATENCY_EAGER_P50, keys.LATENCY_EAGER_P90,
                                keys.LATENCY_ONNX_P50, keys.LATENCY_ONNX_P90}
    assert set(got["leq"]) == {keys.LATENCY_EAGER_P50, keys.LATENCY_EAGER_P90}
    assert all(v > 0 and math.isfinite(v) for m in got.values() for v in m.values())
    # a training run's own measure() logs the same latency keys
    single = measure(feq3, TIMING, onnx)
    assert set(got["feq3"]) <= set(single) and single[keys.LATENCY_ONNX_P50] > 0
