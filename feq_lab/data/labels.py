"""EQTransformer's input normalisation and target traces (REFERENCE section 2)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PICK_SIGMA = 10.0  # samples
PICK_HALF_WIDTH = 20  # Gaussian truncated at +-20 samples
# EQT's detection label runs from P to S + 0.4 (S - P) (Mousavi et al. 2020; EqT_utils.py
# DataGenerator `coda_ratio=0.4`). The one place for this factor: augmentation, labels and the
# monitor's scenario scoring all call `detection_end`.
DETECTION_S_FACTOR = 0.4


def normalize(x: np.ndarray) -> np.ndarray:
    """Per-channel demean and divide by std on channel-first arrays (..., 3, T); float32.

    A flat (zero-std) channel stays all zeros instead of becoming NaN, so dropped or dead
    channels are harmless. The streaming engine calls this same function.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or x.shape[-2] != 3:
        raise ValueError(f"normalize expects (..., 3, T) channel-first arrays, got shape {x.shape}")
    centred = x - x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    std = centred.std(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    flat = ~(std > 0)  # zero (or NaN) std
    if not flat.any():  # the usual case: one division, no masking passes
        return centred / std
    out = centred / np.where(flat, np.float32(1.0), std)
    out[np.broadcast_to(flat, out.shape)] = 0.0
    return out


def pick_label(sample: float | None, n_samples: int = 6000) -> np.ndarray:
    """Gaussian (sigma 10 samples) centred on a pick, zero beyond +-20 samples; zeros if no pick."""
    y = np.zeros(n_samples, dtype=np.float32)
    if sample is None or not math.isfinite(sample):
        return y
    lo = max(math.floor(sample - PICK_HALF_WIDTH), 0)
    hi = min(math.ceil(sample + PICK_HALF_WIDTH), n_samples - 1)
    if lo > hi:
        return y
    t = np.arange(lo, hi + 1, dtype=np.float64)
    g = np.exp(-0.5 * ((t - sample) / PICK_SIGMA) ** 2)
    g[np.abs(t - sample) > PICK_HALF_WIDTH] = 0.0
    y[lo:hi + 1] = g
    return y


def detection_end(p_sample: float, s_sample: float) -> float:
    """Where EQT's detection label ends: S + 0.4 (S - P) (sample or time units alike)."""
    return s_sample + DETECTION_S_FACTOR * (s_sample - p_sample)


def detection_label(p_sample: float | None, s_sample: float | None,
                    n_samples: int = 6000) -> np.ndarray:
    """1 from P to S + 0.4 (S - P) (EQT's definition, not coda_end_sample); zeros for noise."""
    y = np.zeros(n_samples, dtype=np.float32)
    if p_sample is None or s_sample is None or not (math.isfinite(p_sample) and math.isfinite(s_sample)):
        return y
    end = detection_end(p_sample, s_sample)
    lo = max(round(p_sample), 0)
    hi = min(round(end), n_samples - 1)
    if lo <= hi:
        y[lo:hi + 1] = 1.0
    return y


def make_labels(p_sample: float | None, s_sample: float | None,
                n_samples: int = 6000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_det, y_p, y_s), each float32 (n_samples,)."""
    return (detection_label(p_sample, s_sample, n_samples), pick_label(p_sample, n_samples),
            pick_label(s_sample, n_samples))


def phase_targets(y_p: Any, y_s: Any) -> tuple[Any, Any, Any]:
    """PhaseNet's class targets (Zhu & Beroza 2019) from the lab's P and S label traces:
    (noise, P, S) with noise = 1 − P − S clipped to [0, 1], so the three sum to 1 wherever the
    P and S Gaussians do not overlap. Works on NumPy arrays and torch tensors alike."""
    return (1.0 - y_p - y_s).clip(0.0, 1.0), y_p, y_s
