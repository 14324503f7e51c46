"""The STA/LTA + AR-picker baseline on waveforms built here with numpy."""

import numpy as np
import pytest

from feq_lab.errors import ConfigError, DataError
from feq_lab.evaluation.baseline import stalta_picks
from feq_lab.evaluation.metrics import score
from feq_lab.evaluation.truth import Truth

SR, T, P_ONSET, S_ONSET = 100, 6000, 2500, 3200


def impulsive_event(rng) -> np.ndarray:
    """(T, 3) E,N,Z: unit Gaussian noise plus a decaying 8 Hz P (strong on Z) and a 4 Hz S."""
    x = rng.normal(0.0, 1.0, (T, 3))
    t = (np.arange(T) - P_ONSET) / SR
    p_wave = np.where(t >= 0, 15 * np.exp(-t / 1.0) * np.sin(2 * np.pi * 8 * t), 0.0)
    ts = (np.arange(T) - S_ONSET) / SR
    s_wave = np.where(ts >= 0, 30 * np.exp(-ts / 1.5) * np.sin(2 * np.pi * 4 * ts), 0.0)
    x[:, 2] += p_wave + 0.2 * s_wave
    x[:, 0] += 0.3 * p_wave + s_wave
    x[:, 1] += 0.3 * p_wave + 0.8 * s_wave
    return x.astype(np.float32)


def test_detects_an_impulsive_arrival_and_not_noise():
    rng = np.random.default_rng(7)
    waves = np.stack([impulsive_event(rng), rng.normal(0, 1, (T, 3)).astype(np.float32)])
    eq, noise = stalta_picks(waves)
    assert eq.detected and not noise.detected
    assert any(a - 50 <= P_ONSET < b for a, b in eq.det_intervals)
    assert eq.p_sample is not None and abs(eq.p_sample - P_ONSET) <= 0.5 * SR
    assert noise.p_sample is None and noise.s_sample is None
    truth = Truth([True, False], [P_ONSET, np.nan], [S_ONSET, np.nan])
    m = score([eq, noise], truth)
    assert (m["detection_tp"], m["detection_tn"], m["detection_fp"]) == (1.0, 1.0, 0.0)
    assert m["p_tp"] == 1.0 and m["p_fp"] == 0.0
    # channel-first input gives the same picks
    assert stalta_picks(np.swapaxes(waves, 1, 2)) == [eq, noise]


def test_config_and_input_errors():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (1, T, 3)).astype(np.float32)
    with pytest.raises(ConfigError, match="model.sta_window"):
        stalta_picks(x, {"sta_window": 1.0})
    with pytest.raises(ConfigError, match="model.sta_s"):
        stalta_picks(x, {"sta_s": 6.0})
    x[0, 10, 1] = np.nan
    with pytest.raises(DataError, match="bad_trace"):
        stalta_picks(x, {"name": "stalta"}, trace_names=["bad_trace"])
    with pytest.raises(DataError, match="channel axis"):
        stalta_picks(np.zeros((2, T, 4)))
