"""Picks from probability traces: detection triggers and the P/S peaks tied to a detection.

Definitions (REFERENCE §3, made precise here so every caller and the threshold grid agree):

- **Detection.** Trigger on/off at the same threshold: a trace's detection intervals are the
  maximal runs of samples with ``det >= detection_threshold``, stored as half-open ``[on, off)``
  sample ranges. A trace is *detected* when it has at least one interval.
- **Association region.** The union of the detection intervals, each widened by
  ``association_margin_s`` (default 0.5 s = 50 samples at 100 Hz) on both sides and clipped to the
  window. The margin exists because the detection label starts exactly at P, so a trained model's
  trigger often turns on a few samples after the P peak.
- **P (S) pick.** The sample of the maximum of the P (S) trace inside the association region (the
  highest peak associated with a detection; the first sample on ties). It is a pick only when
  that maximum is ``>= threshold``. No detection -> empty region -> no P and no S pick, however
  high the P/S traces are elsewhere.

The per-trace peak of a phase does not depend on that phase's threshold, only on the detection
threshold; `peak_features` exposes this so `thresholds.threshold_grid` evaluates a whole grid from
one pass per detection threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from feq_lab.errors import ConfigError, DataError

THRESHOLD_KEYS = ("detection", "p", "s")
CHUNK_TRACES = 512  # traces processed at once: bounds memory at ~25 MB per (N, 6000) float32 temp


@dataclass(frozen=True)
class TracePicks:
    """What one trace yields: detection flag, trigger intervals, and the P/S picks (or None)."""

    detected: bool
    det_intervals: tuple[tuple[int, int], ...] = ()
    p_sample: float | None = None
    p_prob: float | None = None
    s_sample: float | None = None
    s_prob: float | None = None


@dataclass(frozen=True)
class PeakFeatures:
    """Threshold-free peaks of one detection threshold: (N,) arrays.

    `*_value` is -inf where the association region is empty (no detection).
    """

    detected: np.ndarray
    p_sample: np.ndarray
    p_value: np.ndarray
    s_sample: np.ndarray
    s_value: np.ndarray

    def picks_at(self, phase: str, threshold: float) -> np.ndarray:
        """Pick samples (float, NaN = no pick) of `phase` at `threshold`."""
        sample = getattr(self, f"{phase}_sample")
        value = getattr(self, f"{phase}_value")
        return np.where(value >= np.float32(threshold), sample.astype(np.float64), np.nan)


def check_thresholds(
    thresholds: Mapping[str, float], key_prefix: str = "thresholds"
) -> dict[str, float]:
    """Validate a {detection, p, s} mapping of thresholds in [0, 1]; errors name the key."""
    out: dict[str, float] = {}
    for key in THRESHOLD_KEYS:
        if key not in thresholds:
            raise ConfigError(f"{key_prefix}.{key}", "missing (need detection, p and s)")
        try:
            value = float(thresholds[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key_prefix}.{key}", f"not a number: {thresholds[key]!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key_prefix}.{key}", f"must lie in [0, 1], got {value}")
        out[key] = value
    return out


def as_traces(x: np.ndarray, name: str) -> np.ndarray:
    """(N, T) view of probability traces; a single (T,) trace becomes (1, T)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(f"{name} probabilities must be (N, T), got shape {arr.shape}")
    return arr


def margin_samples(association_margin_s: float, sampling_rate: float) -> int:
    if association_margin_s < 0:
        raise ConfigError("association_margin_s", f"must be >= 0, got {association_margin_s}")
    return round(association_margin_s * sampling_rate)


def _masked_peak(
    prob: np.ndarray, region: np.ndarray, buf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index and value of the maximum of `prob` inside `region` (-inf where it is empty)."""
    buf.fill(-np.inf)
    np.copyto(buf, prob, where=region)
    idx = buf.argmax(axis=1)
    return idx, np.take_along_axis(buf, idx[:, None], axis=1)[:, 0]


def peak_features_multi(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    detection_thresholds: Sequence[float],
    margin: int,
) -> list[PeakFeatures]:
    """`PeakFeatures` for each detection threshold, from one pass over the traces.

    Why one pass: widening the trigger intervals by `margin` equals thresholding a running
    maximum of the detection trace (max over +-margin samples >= threshold), so that running
    maximum and the float32 copies are computed once per chunk and shared by every threshold.
    """
    det, p, s = as_traces(det, "detection"), as_traces(p, "p"), as_traces(s, "s")
    if not (det.shape == p.shape == s.shape):
        raise DataError(f"probability shapes differ: det {det.shape}, p {p.shape}, s {s.shape}")
    n, k = det.shape[0], len(detection_thresholds)
    detected = np.zeros((k, n), bool)
    p_idx, s_idx = np.zeros((k, n), np.int64), np.zeros((k, n), np.int64)
    p_val, s_val = np.full((k, n), -np.inf, np.float32), np.full((k, n), -np.inf, np.float32)
    for a in range(0, n, CHUNK_TRACES):
        b = min(a + CHUNK_TRACES, n)
        det_c = np.asarray(det[a:b], np.float32)
        p_c, s_c = np.asarray(p[a:b], np.float32), np.asarray(s[a:b], np.float32)
        if margin > 0:
            det_c = maximum_filter1d(det_c, size=2 * margin + 1, axis=1, mode="nearest")
        buf = np.empty_like(p_c)
        for j, th in enumerate(detection_thresholds):
            region = det_c >= np.float32(th)
            detected[j, a:b] = region.any(axis=1)
            p_idx[j, a:b], p_val[j, a:b] = _masked_peak(p_c, region, buf)
            s_idx[j, a:b], s_val[j, a:b] = _masked_peak(s_c, region, buf)
    return [PeakFeatures(detected[j], p_idx[j], p_val[j], s_idx[j], s_val[j]) for j in range(k)]


def peak_features(
    det: np.ndarray, p: np.ndarray, s: np.ndarray, detection_threshold: float, margin: int
) -> PeakFeatures:
    """Detection flags and associated P/S peaks at one detection threshold (margin in samples)."""
    return peak_features_multi(det, p, s, [detection_threshold], margin)[0]


def trigger_intervals(above: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open [on, off) runs of True in a 1-D boolean trace."""
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    on = np.flatnonzero(edges == 1)
    off = np.flatnonzero(edges == -1)
    return tuple((int(a), int(b)) for a, b in zip(on, off))


def extract_picks(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    thresholds: Mapping[str, float],
    *,
    sampling_rate: float = 100.0,
    association_margin_s: float = 0.5,
) -> list[TracePicks]:
    """One `TracePicks` per trace of (N, T) probability arrays (see the module docstring)."""
    th = check_thresholds(thresholds)
    feats = peak_features(
        det, p, s, th["detection"], margin_samples(association_margin_s, sampling_rate)
    )
    det = as_traces(det, "detection")
    p_pick, s_pick = feats.picks_at("p", th["p"]), feats.picks_at("s", th["s"])
    out: list[TracePicks] = []
    for i in range(det.shape[0]):
        intervals = (
            trigger_intervals(np.asarray(det[i], np.float32) >= np.float32(th["detection"]))
            if feats.detected[i]
            else ()
        )
        has_p, has_s = np.isfinite(p_pick[i]), np.isfinite(s_pick[i])
        out.append(
            TracePicks(
                detected=bool(feats.detected[i]),
                det_intervals=intervals,
                p_sample=float(p_pick[i]) if has_p else None,
                p_prob=float(feats.p_value[i]) if has_p else None,
                s_sample=float(s_pick[i]) if has_s else None,
                s_prob=float(feats.s_value[i]) if has_s else None,
            )
        )
    return out
