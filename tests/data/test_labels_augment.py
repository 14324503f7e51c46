"""EQT normalisation, labels and augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feq_lab.data import augment as aug
from feq_lab.data.labels import detection_label, make_labels, normalize, pick_label


def test_normalize_per_channel_and_zero_std_safe():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (2, 3, 6000)).astype(np.float64)
    x[1, 1] = 7.0  # a dead channel
    y = normalize(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y[0].mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y[0].std(axis=-1), 1.0, atol=1e-4)
    assert np.all(y[1, 1] == 0.0) and np.isfinite(y).all()
    with pytest.raises(ValueError):
        normalize(np.zeros((6000, 3)))


def test_pick_label_gaussian_truncated():
    y = pick_label(100.0)
    assert y[100] == pytest.approx(1.0)
    assert y[110] == pytest.approx(math.exp(-0.5), rel=1e-6)  # sigma = 10 samples
    assert y[120] > 0 and y[121] == 0 and y[79] == 0  # truncated at +-20
    assert pick_label(float("nan")).sum() == 0
    assert pick_label(5995.0)[5999] > 0  # near the edge: clipped, no error


def test_detection_from_p_to_s_plus_04_sp():
    y = detection_label(1000.0, 1500.0)
    assert y[999] == 0 and y[1000] == 1 and y[1700] == 1 and y[1701] == 0
    det, p, s = make_labels(float("nan"), float("nan"))
    assert det.sum() == p.sum() == s.sum() == 0


def _sample(p=1000.0, s=1600.0, eq=True, snr_ok=True):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 6000)).astype(np.float32)
    return {"waveform": w, "p": p if eq else math.nan, "s": s if eq else math.nan,
            "coda_end": s + 600 if eq else math.nan, "is_earthquake": eq, "snr_ok": snr_ok,
            "extra_events": []}


def test_shift_keeps_picks_inside_and_rolls_waveform():
    sample = _sample()
    for seed in range(20):
        out = aug.ShiftEvent(1.0)(sample, np.random.default_rng(seed))
        shift = out["p"] - sample["p"]
        assert 0 <= out["p"] and out["s"] + 0.4 * (out["s"] - out["p"]) < 6000
        assert out["s"] - out["p"] == sample["s"] - sample["p"]
        np.testing.assert_array_equal(out["waveform"], np.roll(sample["waveform"], int(shift), -1))
    assert aug.ShiftEvent(1.0)(_sample(eq=False), np.random.default_rng(0))["p"] != 0  # nan kept


def test_add_event_labels_the_copy_and_respects_snr_gate():
    out = aug.AddEvent(1.0)(_sample(p=500.0, s=900.0), np.random.default_rng(1))
    assert len(out["extra_events"]) == 1
    p2, s2 = out["extra_events"][0]
    assert p2 > 900.0 + 600 and s2 - p2 == 400.0 and s2 + 0.4 * 400 < 6000
    gated = aug.AddEvent(1.0)(_sample(p=500.0, s=900.0, snr_ok=False), np.random.default_rng(1))
    assert gated["extra_events"] == []


def test_drop_channel_noise_and_gap():
    out = aug.DropChannel(1.0)(_sample(), np.random.default_rng(2))
    zero = np.all(out["waveform"] == 0, axis=1)
    assert 1 <= zero.sum() <= 2
    noisy = aug.AddNoise(1.0)(_sample(), np.random.default_rng(2))
    assert not np.array_equal(noisy["waveform"], _sample()["waveform"])
    gap_eq = aug.AddGap(1.0)(_sample(), np.random.default_rng(2))
    assert np.array_equal(gap_eq["waveform"], _sample()["waveform"])  # earthquakes: no gaps
    gap = aug.AddGap(1.0)(_sample(eq=False), np.random.default_rng(2))
    assert (gap["waveform"] == 0).all(axis=0).sum() >= 10


def test_from_config_probabilities_and_disable():
    chain = aug.from_config({"enabled": True, "shift_event": 0.0, "add_event": 0.6,
                             "add_noise": 0.3, "drop_channel": 0.5, "add_gap": 0.2})
    assert [type(t).__name__ for t in chain.transforms] == [
        "ShiftEvent", "AddEvent", "AddNoise", "DropChannel", "AddGap"]
    assert chain.transforms[0].prob == 0.0 and chain.transforms[1].prob == 0.6
    assert aug.from_config({"enabled": False}) is None
