"""Streaming test helpers: a synthetic continuous record and a deterministic stand-in picker.

The stand-in is an STA/LTA-like function of each normalised window, so the engine's logic
(buffering, windows, stacking, events, tail) is tested exactly; tests with a real FEQ3 sit beside.
"""

from __future__ import annotations

import numpy as np
import pytest

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EVENT_P_S = 200.0  # P arrival, seconds after T0
EVENT_S_S = 205.0


def _trailing_mean(x: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(x, axis=-1)
    out = c.copy()
    out[..., n:] = c[..., n:] - c[..., :-n]
    count = np.minimum(np.arange(1, x.shape[-1] + 1), n)
    return out / count


def _onsets(energy: np.ndarray) -> list[int | None]:
    """First STA/LTA > 4 crossing per row of (B, T) energy (None when there is none)."""
    ratio = _trailing_mean(energy, 50) / (_trailing_mean(energy, 1000) + 1e-3)
    out = []
    for row in ratio:
        on = np.flatnonzero(row > 4.0)
        out.append(int(on[0]) if on.size else None)
    return out


def standin_predict(x: np.ndarray):
    """det/P/S from (B, 3, 6000) normalised windows: P on Z energy, S on E+N energy.

    P and S are Gaussians (sigma 10 samples) at the onsets; detection is 1 from P to
    S + 0.4 (S - P), like the training labels.
    """
    x = np.asarray(x, dtype=np.float64)
    idx = np.arange(x.shape[-1])
    det, p, s = (np.zeros((x.shape[0], x.shape[-1]), np.float32) for _ in range(3))
    for b, (on_p, on_s) in enumerate(
        zip(_onsets(x[:, 2] ** 2), _onsets(x[:, 0] ** 2 + x[:, 1] ** 2))
    ):
        if on_p is not None:
            p[b] = np.exp(-0.5 * ((idx - on_p) / 10.0) ** 2)
        if on_s is not None:
            s[b] = np.exp(-0.5 * ((idx - on_s) / 10.0) ** 2)
        first = min(v for v in (on_p, on_s, x.shape[-1]) if v is not None)
        end = (
            on_s + 0.4 * (on_s - on_p)
            if (on_p is not None and on_s is not None and on_s > on_p)
            else first + 500
        )
        det[b, first : int(end)] = 1.0
    return det, p, s


def make_record(minutes: float = 5.0, seed: int = 0, event: bool = True) -> np.ndarray:
    """(3, n) E, N, Z raw counts: noise with DC offsets, one P burst on Z and S burst on E/N."""
    rng = np.random.default_rng(seed)
    n = int(minutes * 6000)
    x = rng.normal(0.0, 1.0, (3, n)) + np.array([[500.0], [-300.0], [120.0]])
    if event:
        t = np.arange(n) / 100.0
        p, s = t - EVENT_P_S, t - EVENT_S_S
        x[2] += np.where(p >= 0, 25.0 * np.exp(-np.clip(p, 0, None) / 3.0), 0.0) * rng.normal(
            0, 1, n
        )
        hs = np.where(s >= 0, 40.0 * np.exp(-np.clip(s, 0, None) / 4.0), 0.0)
        x[0] += hs * rng.normal(0, 1, n)
        x[1] += hs * rng.normal(0, 1, n)
    return x.astype(np.float32)


def blocks_of(
    record: np.ndarray, block_s: float, station: str = "XX.STA", t0: float = T0, rate: float = 100.0
):
    """Cut a (3, n) record into Blocks of block_s seconds (the last one may be shorter)."""
    from feq_lab.streaming.engine import Block

    step = int(round(block_s * rate))
    out = []
    for a in range(0, record.shape[1], step):
        seg = record[:, a : a + step]
        out.append(
            Block(station, t0 + a / rate, rate, {"HHE": seg[0], "HHN": seg[1], "HHZ": seg[2]})
        )
    return out


def final_content(objects) -> list[dict]:
    """The final events' JSON objects without what depends on the records' sizes and on
    early picking (when they were emitted, and their ids): the offline-window content."""
    return [
        {k: v for k, v in e.to_dict().items() if k not in ("emitted_at", "event_id")}
        for e in objects
        if e.kind == "final"
    ]


@pytest.fixture
def record() -> np.ndarray:
    return make_record()
