"""Hand-built probability traces with known answers (shared by the evaluation tests)."""

from __future__ import annotations

import numpy as np

T = 6000


def gauss(center: float, height: float = 1.0, sigma: float = 10.0) -> np.ndarray:
    t = np.arange(T)
    return (height * np.exp(-0.5 * ((t - center) / sigma) ** 2)).astype(np.float32)


def box(on: int, off: int, height: float = 1.0) -> np.ndarray:
    x = np.zeros(T, np.float32)
    x[on:off] = height
    return x


def stack(*rows: np.ndarray) -> np.ndarray:
    return np.stack(rows).astype(np.float32)


def random_set(n: int = 60, seed: int = 0):
    """Plausible model outputs: noisy boxes and Gaussians, some misses and false triggers."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    is_eq = rng.random(n) < 0.75
    p_true = rng.integers(300, 1500, n).astype(float)
    s_true = p_true + rng.integers(200, 1500, n)
    det = np.zeros((n, T), np.float32)
    p = np.zeros((n, T), np.float32)
    s = np.zeros((n, T), np.float32)
    for i in range(n):
        if is_eq[i]:
            a = rng.uniform(0.05, 1.0)
            p0 = p_true[i] + rng.normal(0, 30)
            s0 = s_true[i] + rng.normal(0, 40)
            det[i] = a * ((t >= p0) & (t < s0 + 0.4 * (s0 - p0)))
            p[i] = a * np.exp(-0.5 * ((t - p0) / 10) ** 2)
            s[i] = a * np.exp(-0.5 * ((t - s0) / 10) ** 2)
        c = rng.uniform(0, T)
        det[i] += rng.uniform(0, 0.5) * np.exp(-0.5 * ((t - c) / 100) ** 2)
        p[i] += rng.uniform(0, 0.3) * np.exp(-0.5 * ((t - c) / 10) ** 2) + 0.02 * rng.random(T)
        s[i] += rng.uniform(0, 0.3) * np.exp(-0.5 * ((t - c - 50) / 10) ** 2) + 0.02 * rng.random(T)
    from feq_lab.evaluation.probabilities import Probabilities
    from feq_lab.evaluation.truth import Truth

    truth = Truth(is_eq, np.where(is_eq, p_true, np.nan), np.where(is_eq, s_true, np.nan))
    return Probabilities(
        np.clip(det, 0, 1), np.clip(p, 0, 1), np.clip(s, 0, 1), truth, [f"tr{i}" for i in range(n)]
    )
