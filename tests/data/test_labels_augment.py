"""EQT normalisation, labels and augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feq_lab.data import augment as aug
from feq_lab.data.datamodule import to_item
from feq_lab.data.labels import (
    DETECTION_S_FACTOR,
    detection_end,
    detection_label,
    make_labels,
    normalize,
    pick_label,
)
from feq_lab.errors import ConfigError


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
    assert DETECTION_S_FACTOR == 0.4 and detection_end(1000.0, 1500.0) == 1700.0


def _sample(p=1000.0, s=1600.0, coda=2200.0, eq=True, snr_ok=True, seed=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 6000)).astype(np.float32)
    return {"waveform": w, "p": p if eq else math.nan, "s": s if eq else math.nan,
            "coda_end": coda if eq else math.nan, "is_earthquake": eq, "snr_ok": snr_ok,
            "extra_events": []}


def _rng(seed):
    return np.random.default_rng(seed)


def test_shift_is_forward_and_bounded_by_the_coda_end():
    """EQT: rotate by int(uniform(1, 6000 - coda_end)): the coda never wraps round before P."""
    sample = _sample(coda=4500.0)
    shifts = []
    for seed in range(400):
        out = aug.ShiftEvent(1.0)(sample, _rng(seed))
        shift = int(out["p"] - sample["p"])
        shifts.append(shift)
        assert 1 <= shift <= 6000 - 4500 - 1
        assert out["coda_end"] == 4500.0 + shift < 6000
        assert out["s"] - out["p"] == 600.0
        np.testing.assert_array_equal(out["waveform"], np.roll(sample["waveform"], shift, -1))
    assert max(shifts) > 1300 and min(shifts) < 100  # the whole allowed range is used
    full = _sample(coda=5999.0)  # coda at the window's end: nothing may rotate
    assert aug.ShiftEvent(1.0)(full, _rng(0)) is full
    noise = _sample(eq=False)
    assert aug.ShiftEvent(1.0)(noise, _rng(0)) is noise


def test_original_half_is_shifted_at_half_the_probability():
    chain = aug.from_config({"shift_event": 0.99})
    assert chain.original.transforms[0].prob == pytest.approx(0.495)  # EQT: shift_event_r / 2
    sample = _sample()
    moved = [chain(sample, _rng(seed), augmented=False)["p"] != sample["p"]
             for seed in range(400)]
    assert 0.42 < np.mean(moved) < 0.57
    untouched = chain(sample, _rng(1), augmented=False)
    assert untouched["extra_events"] == [] and untouched["snr_ok"]  # only a shift, no more
    assert aug.from_config({"shift_event": 0.99, "shift_original": 0.0}).original.transforms[
        0].prob == 0.0


def test_added_event_scale_position_and_labels():
    sample = _sample(p=500.0, s=900.0, coda=1500.0)
    scales = set()
    for seed in range(300):
        out = aug.AddEvent(1.0)(sample, _rng(seed))
        (p2, s2), = out["extra_events"]
        scale = out["added_scale"]
        scales.add(round(1.0 / scale))
        assert 1500 <= p2 and s2 - p2 == 400.0 and s2 + 21 <= 6000
        expect = sample["waveform"].copy()
        space = 6000 - int(p2)
        expect[:, int(p2):] += np.float32(scale) * sample["waveform"][:, 500:500 + space]
        np.testing.assert_allclose(out["waveform"], expect, rtol=0, atol=1e-6)
    assert scales == set(range(1, 10))  # 1 / randint(1, 10): 1, 1/2, ..., 1/9
    # no room after the coda (6000 - (S - P) - 21 - coda <= 20): nothing added
    tight = _sample(p=500.0, s=900.0, coda=5560.0)
    assert aug.AddEvent(1.0)(tight, _rng(0)) is tight
    item = to_item(out, "x")
    assert item["y_p"][int(p2)] == pytest.approx(1.0) and item["y_s"][int(s2)] == pytest.approx(1.0)
    assert item["y_det"][int(p2)] == 1.0


def test_snr_gate_on_add_event_noise_and_drop():
    low = _sample(snr_ok=False)
    for transform in (aug.AddEvent(1.0), aug.AddNoise(1.0), aug.DropChannel(1.0)):
        for seed in range(20):
            assert transform(low, _rng(seed)) is low
    assert aug.ShiftEvent(1.0)(low, _rng(0))["p"] != low["p"]  # the shift has no SNR gate
    noisy = aug.AddNoise(1.0)(_sample(), _rng(2))
    assert not np.array_equal(noisy["waveform"], _sample()["waveform"])


def test_channels_are_dropped_on_noise_and_earthquakes():
    counts = {True: [], False: []}
    for eq in (True, False):
        sample = _sample(eq=eq)
        for seed in range(200):
            out = aug.DropChannel(1.0)(sample, _rng(seed))
            zero = np.all(out["waveform"] == 0, axis=1)
            counts[eq].append(int(zero.sum()))
            assert zero.sum() <= 2  # never all three
            live = ~zero
            ratio = out["waveform"][live] / sample["waveform"][live]
            # earthquakes are rescaled by 3 / channels left (EQT); noise traces are not
            want = 3.0 / live.sum() if eq else 1.0
            np.testing.assert_allclose(ratio, want, rtol=1e-5)
    for eq in (True, False):
        c = np.array(counts[eq])
        assert set(c) == {0, 1, 2}
        # each channel kept with p 1/2, nothing when all three would go: 6/8 drop something
        assert 0.65 < np.mean(c > 0) < 0.85


def test_gaps_on_noise_only_up_to_5500_samples():
    lengths = []
    for seed in range(300):
        out = aug.AddGap(1.0)(_sample(eq=False), _rng(seed))
        zero = np.flatnonzero(np.all(out["waveform"] == 0, axis=0))
        if zero.size:
            assert zero[0] < 4000 and zero[-1] < 5500
            assert zero.size == zero[-1] - zero[0] + 1  # one contiguous gap
            lengths.append(zero.size)
    assert max(lengths) > 4000  # today's gaps went to 1,500 at most; EQT's to 5,499
    eq = _sample()
    assert aug.AddGap(1.0)(eq, _rng(2)) is eq  # earthquakes: no gaps (as EQT)


def test_right_edge_puts_p_near_the_end_and_cuts_the_labels():
    sample = _sample(p=700.0, s=1500.0, coda=2500.0)
    for seed in range(100):
        out = aug.RightEdge(1.0)(sample, _rng(seed))
        assert 6000 - 400 <= out["p"] <= 6000 - 50
        assert out["s"] - out["p"] == 800.0 and out["s"] >= 6000  # S beyond the window
        shift = int(out["p"] - sample["p"])
        np.testing.assert_array_equal(out["waveform"][:, shift:], sample["waveform"][:, :-shift])
        fill = out["waveform"][:, :shift]  # pre-P noise only, never the event
        assert np.abs(fill).max() <= np.abs(sample["waveform"][:, :680]).max()
    item = to_item(out, "x")
    p = int(out["p"])
    assert item["y_p"][p] == pytest.approx(1.0) and item["y_s"].sum() == 0
    assert item["y_det"][p:].min() == 1.0 and item["y_det"][:p].max() == 0.0
    # the rest of the chain leaves it where it is: no room to shift or to add an event
    chain = aug.from_config({"right_edge": 1.0, "add_event": 1.0, "shift_event": 1.0})
    out = chain(sample, _rng(4))
    assert 6000 - 400 <= out["p"] <= 6000 - 50 and out["extra_events"] == []


def test_right_edge_before_ends_the_window_in_pre_p_noise_with_zero_labels():
    sample = _sample(p=700.0, s=1500.0, coda=2500.0)
    sample["waveform"][:, 700:] *= 50.0  # the event: far louder than the noise
    ends_before = 0
    for seed in range(100):
        out = aug.RightEdge(1.0, before=0.5)(sample, _rng(seed))
        if out["p"] < 6000:
            assert 6000 - 400 <= out["p"] <= 6000 - 50  # the usual right-edge case
            continue
        ends_before += 1
        assert 6000 + 50 <= out["p"] <= 6000 + 400  # P 0.5-4 s after the window's end
        assert np.abs(out["waveform"]).max() <= np.abs(sample["waveform"][:, :700]).max()
        item = to_item(out, "x")
        assert item["y_det"].sum() == 0 and item["y_p"].sum() == 0 and item["y_s"].sum() == 0
    assert 30 <= ends_before <= 70
    assert aug.from_config({"right_edge": 1.0}).augmented.transforms[0].before == 0.25
    with pytest.raises(ConfigError, match="data.augment.right_edge_before"):
        aug.from_config({"right_edge_before": 2.0})


def test_extend_with_noise_mirrors_the_pre_p_noise_without_a_step():
    w = np.arange(30, dtype=np.float32).reshape(3, 10)
    out = aug.extend_with_noise(w, 7, noise_end=4)
    assert out.shape == (3, 17)
    np.testing.assert_array_equal(out[:, 7:], w)
    # newest fill sample = the trace's first, then its next ones, back and forth
    np.testing.assert_array_equal(out[0, :7], [1, 2, 3, 3, 2, 1, 0])
    assert aug.extend_with_noise(w, 0, 4) is w


def test_from_config_probabilities_and_disable():
    chain = aug.from_config({"enabled": True, "shift_event": 0.0, "add_event": 0.6,
                             "add_noise": 0.3, "drop_channel": 0.5, "add_gap": 0.2})
    assert [type(t).__name__ for t in chain.augmented.transforms] == [
        "RightEdge", "ShiftEvent", "AddEvent", "AddNoise", "DropChannel", "AddGap"]
    assert chain.augmented.transforms[0].prob == 0.0  # right_edge is off unless asked for
    assert chain.augmented.transforms[1].prob == 0.0 and chain.augmented.transforms[2].prob == 0.6
    assert aug.from_config({"enabled": False}) is None
    with pytest.raises(ConfigError, match="data.augment.add_gap"):
        aug.from_config({"add_gap": 1.5})
    with pytest.raises(ConfigError, match="data.augment.right_edge_s"):
        aug.from_config({"right_edge_s": [4.0, 0.5]})


def test_training_batches_shift_the_original_half_too(tiny_subset):
    """EQT's DataGenerator shifts the original half of each batch as well (p = 0.99 / 2)."""
    from feq_lab.data.datamodule import SteadDataModule

    dm = SteadDataModule(tiny_subset, batch_size=64, augment={"shift_event": 0.99}, seed=0)
    ds = dm.split("train")
    eq = np.flatnonzero(ds.is_eq)
    moved = [ds[(int(i), False, 0)]["p_arrival_sample"] != ds.p[i] for i in eq]
    assert 0.2 < np.mean(moved) < 0.8
    assert all(ds[int(i)]["p_arrival_sample"] == ds.p[i] for i in eq)  # plain access: raw
    val = dm.split("val")
    assert all(val[(i, False, 0)]["p_arrival_sample"] == val.p[i] or not val.is_eq[i]
               for i in range(len(val)))  # validation is never augmented
