"""Picks from probability traces: the evaluation callers' entry point over `decode`.

Every rule lives in `feq_lab.evaluation.decode` (one decoder for offline evaluation and the
streaming monitor; protocols ``eqt`` — EQTransformer's tester, the default — and ``lab`` — the
lab's earlier rules, see that module's docstring). This module keeps the names callers import.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from feq_lab.errors import ConfigError
from feq_lab.evaluation.decode import (
    DEFAULT_PROTOCOL,
    THRESHOLD_KEYS,
    DecodeSettings,
    PeakFeatures,
    TracePicks,
    as_traces,
    check_thresholds,
    decode_traces,
    peak_features_multi,
    trigger_intervals,
)

__all__ = [
    "THRESHOLD_KEYS",
    "PeakFeatures",
    "TracePicks",
    "as_traces",
    "check_thresholds",
    "extract_picks",
    "margin_samples",
    "peak_features",
    "peak_features_multi",
    "trigger_intervals",
]


def margin_samples(association_margin_s: float, sampling_rate: float) -> int:
    if association_margin_s < 0:
        raise ConfigError("association_margin_s", f"must be >= 0, got {association_margin_s}")
    return round(association_margin_s * sampling_rate)


def peak_features(
    det: np.ndarray, p: np.ndarray, s: np.ndarray, detection_threshold: float, margin: int
) -> PeakFeatures:
    """Lab protocol: detection flags and associated P/S peaks at one detection threshold."""
    return peak_features_multi(det, p, s, [detection_threshold], margin)[0]


def extract_picks(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    thresholds: Mapping[str, float],
    *,
    sampling_rate: float = 100.0,
    association_margin_s: float = 0.5,
    protocol: str = DEFAULT_PROTOCOL,
) -> list[TracePicks]:
    """One `TracePicks` per trace of (N, T) probability arrays, decoded under `protocol`."""
    settings = DecodeSettings(protocol, sampling_rate, association_margin_s)
    return decode_traces(det, p, s, thresholds, settings)
