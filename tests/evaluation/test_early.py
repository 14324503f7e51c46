"""Early-pick evaluation (issue 16): windows right-aligned t s after P, scored by the decoder."""

from __future__ import annotations

import numpy as np
import pytest

from feq_lab.errors import ConfigError
from feq_lab.evaluation.early import (
    EarlySettings,
    Trace,
    early_window,
    predict_early,
    row_seconds,
    score_early,
)
from feq_lab.evaluation.probabilities import Probabilities, load_probabilities, save_probabilities
from feq_lab.evaluation.truth import Truth
from tests.evaluation.helpers_eval import T, box, gauss

TH = {"detection": 0.5, "p": 0.3, "s": 0.3}
ONSET_LEVEL = 8.0  # the fake traces: unit noise, then an event of amplitude 20 from P on


def _trace(name: str, p: int | None, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (3, T)).astype(np.float32)
    if p is not None:
        x[:, p:] += 20.0 * np.sign(rng.normal(size=(3, T - p))).astype(np.float32)
    return Trace(name, x, p is not None, float(p) if p is not None else np.nan,
                 float(p + 500) if p is not None else np.nan)


def _onset_predictor(need: int):
    """A deterministic 'model': P at the first sample with |Z| > ONSET_LEVEL, but only once
    `need` samples after it are in the window (a picker that needs evidence after the onset)."""
    calls = []

    def predict(x: np.ndarray):
        calls.append(x.shape[0])
        det, p, s = (np.zeros((x.shape[0], x.shape[-1]), np.float32) for _ in range(3))
        for i, w in enumerate(x):
            hot = np.flatnonzero(np.abs(w[2]) > ONSET_LEVEL)
            if hot.size and x.shape[-1] - hot[0] >= need:
                det[i] = box(int(hot[0]), T)
                p[i] = gauss(float(hot[0]))
        return det, p, s

    return predict, calls


def test_early_window_ends_t_after_p_and_fills_the_past_with_pre_p_noise():
    tr = _trace("A", 700, 0)
    for t in (0.5, 1.0, 4.0):
        x, p = early_window(tr.waveform, tr.p_sample, t, T)
        assert x.shape == (3, T)
        assert p == T - round(t * 100)  # P sits t seconds before the window's end
        np.testing.assert_array_equal(x[:, int(p):], tr.waveform[:, 700:700 + round(t * 100)])
        past = x[:, :int(p)]
        assert np.abs(past).max() <= np.abs(tr.waveform[:, :700]).max()  # never the event
        # the fill is the trace's own noise mirrored: no step where fill meets trace
        start = int(p) - 700
        np.testing.assert_array_equal(past[:, start - 1], tr.waveform[:, 0])


def test_recall_rises_with_the_seconds_after_onset():
    traces = [_trace(f"eq{i}", 500 + 50 * i, i) for i in range(6)] + [_trace("noise0", None, 99)]
    predict, calls = _onset_predictor(need=150)  # needs 1.5 s after P
    settings = EarlySettings(seconds=(0.5, 1.0, 2.0, 4.0))
    probs = predict_early(predict, traces, settings, batch_size=5)
    assert len(probs) == 6 * 4 + 1 and sum(calls) == len(probs)
    assert row_seconds(probs.trace_names)[:1] == ["0.5s"] and probs.trace_names[-1] == "noise0"
    m = score_early(probs, TH)
    assert m["early_p_recall_0.5s"] == 0.0 and m["early_p_recall_1s"] == 0.0
    assert m["early_p_recall_2s"] == 1.0 and m["early_p_recall_4s"] == 1.0
    assert m["early_p_precision_2s"] == 1.0  # no pick on the noise trace, none far
    assert m["early_p_precision_0.5s"] == 0.0  # nothing picked: 0, never NaN


def test_far_picks_and_noise_picks_count_against_precision():
    n = 4
    det = np.stack([box(5000, T)] * n)
    p = np.stack([gauss(5900), gauss(5900), gauss(5000), gauss(5000)])  # rows 2, 3: 9 s early
    names = ["a|early_1s", "b|early_1s", "c|early_1s", "noise"]
    truth = Truth(np.array([True, True, True, False]), np.array([5900.0, 5900, 5900, np.nan]),
                  np.array([6500.0, 6500, 6500, np.nan]))
    m = score_early(Probabilities(det, p, np.zeros_like(p), truth, names), TH)
    assert m["early_p_recall_1s"] == pytest.approx(2 / 3)
    assert m["early_p_precision_1s"] == pytest.approx(2 / 4)  # one far pick, one noise pick
    assert set(m) == {"early_p_recall_1s", "early_p_precision_1s"}


def test_stored_early_probabilities_score_the_same(tmp_path):
    traces = [_trace(f"eq{i}", 600, i) for i in range(3)]
    predict, _ = _onset_predictor(need=50)
    probs = predict_early(predict, traces, EarlySettings(seconds=(0.5, 1.0)))
    back = load_probabilities(save_probabilities(tmp_path / "e.npz", probs))
    assert score_early(back, TH) == score_early(probs, TH)
    assert score_early(back, TH)["early_p_recall_0.5s"] == 1.0


def test_settings_are_validated():
    s = EarlySettings.from_mapping({"seconds": [1, 2], "max_earthquakes": 3})
    assert s.seconds == (1.0, 2.0) and s.max_earthquakes == 3
    with pytest.raises(ConfigError, match="eval.early.seconds"):
        EarlySettings.from_mapping({"seconds": [0.0]})
    with pytest.raises(ConfigError, match="eval.early.bogus"):
        EarlySettings.from_mapping({"bogus": 1})
    assert predict_early(_onset_predictor(1)[0], [], EarlySettings()) is None
