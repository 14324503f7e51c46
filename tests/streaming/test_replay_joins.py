"""The replay's joins (issue 16): pieces of different traces fade into each other, so the
record has no onset-like step at the joins (which fell on the engine's window edges)."""

from __future__ import annotations

import numpy as np

from feq_lab.streaming.sources import JOIN_FADE, build_scenario, join_pieces


def _noise(level: float, seed: int, n: int = 6000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, level, (3, n))


def _step(x: np.ndarray, at: int, width: int = 50) -> float:
    """Ratio of the RMS just after `at` to the RMS just before it (per channel, the largest)."""
    after = np.sqrt((x[:, at:at + width] ** 2).mean(axis=1))
    before = np.sqrt((x[:, at - width:at] ** 2).mean(axis=1))
    return float((after / before).max())


def test_joins_keep_the_length_and_the_pieces_away_from_the_fade():
    a, b, c = _noise(1.0, 0), _noise(4.0, 1), _noise(1.0, 2)
    out = join_pieces([a, b, c], [200, 200])
    assert out.shape == (3, 18000)
    np.testing.assert_array_equal(out[:, :6000], a)  # the first piece untouched
    np.testing.assert_array_equal(out[:, 6200:12000], b[:, 200:])  # after its fade: itself
    np.testing.assert_array_equal(join_pieces([a, b], [0]), np.concatenate([a, b], axis=1))


def test_a_level_step_becomes_a_ramp_without_a_jump():
    a, b = _noise(1.0, 0), _noise(4.0, 1)
    plain = np.concatenate([a, b], axis=1)
    faded = join_pieces([a, b], [JOIN_FADE])
    assert _step(plain, 6000) > 3.0  # the old replay: a 4x step within a sample
    assert _step(faded, 6000) < 1.5  # now: the level climbs over the fade
    assert abs(faded[0, 6000] - faded[0, 5999]) < 4 * a[0].std()  # no waveform jump
    # equal power: the RMS across the fade stays between the two levels
    rms = np.sqrt((faded[:, 6000:6000 + JOIN_FADE] ** 2).mean())
    assert 1.0 < rms < 4.0


def test_replay_scenario_keeps_the_earthquake_untouched(tiny_subset):
    from feq_lab.data.stead import open_dataset

    sc = build_scenario(tiny_subset, seed=4, noise_minutes=2)
    ds = open_dataset(tiny_subset)
    row = ds.metadata.index[ds.metadata["trace_name"] == sc.earthquake_trace][0]
    i = ds.metadata.index.get_loc(row)
    eq = ds.get_waveform_at(i).T.astype(np.float64)
    eq = eq - eq.mean(axis=1, keepdims=True)
    p = int(ds.metadata["p_arrival_sample"].iloc[i])
    np.testing.assert_allclose(sc.data[:, 12000 + p:18000], eq[:, p:], rtol=1e-5, atol=1e-3)


def test_level_to_meets_the_level_at_both_ends_and_keeps_the_inside():
    from feq_lab.streaming.sources import LEVEL_WINDOW, level_to

    x = _noise(1.0, 3)
    x[:, :3000] *= 3.0  # non-stationary: loud first half, quiet end
    level = np.array([[10.0], [10.0], [10.0]])
    y = level_to(x, level)
    w = LEVEL_WINDOW
    np.testing.assert_allclose(np.sqrt((y[:, :w] ** 2).mean(axis=1)), 10.0, rtol=0.05)
    np.testing.assert_allclose(np.sqrt((y[:, -w:] ** 2).mean(axis=1)), 10.0, rtol=0.05)
    # the inside keeps its own shape: the loud half stays ~3x the quiet one next to it
    ratio = np.sqrt((y[:, 2800:3000] ** 2).mean()) / np.sqrt((y[:, 3000:3200] ** 2).mean())
    assert 2.5 < ratio < 3.5
    flat = x.copy()
    flat[1] = 5.0
    assert np.all(level_to(flat, level)[1] == 0.0)
