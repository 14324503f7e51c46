"""Threshold grids evaluated from stored probabilities, without retraining.

Protocol ``eqt`` (the default): `decode.eqt_grid` finds each trace's peak candidates once and
applies EQT's per-trigger rule for every combination (the detection flag depends on all three
thresholds there). Protocol ``lab``: a phase's peak inside the association region depends only on the detection
threshold, and the phase threshold merely decides whether that peak counts as a pick
(`picks.PeakFeatures`). So the (N, T) work runs in one pass shared by all detection
thresholds; every (P, S) threshold pair then costs O(N) comparisons, and detection/P/S metrics
are combined per row.
Rows equal `metrics.evaluate` at the same thresholds (tested).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pandas as pd

from feq_lab.errors import ConfigError
from feq_lab.evaluation.decode import DEFAULT_PROTOCOL, DecodeSettings, eqt_grid
from feq_lab.evaluation.metrics import METRIC_KEYS, check_scoring, detection_metrics, phase_metrics
from feq_lab.evaluation.picks import (
    THRESHOLD_KEYS,
    check_thresholds,
    margin_samples,
    peak_features_multi,
)
from feq_lab.evaluation.probabilities import Probabilities

THRESHOLD_COLUMNS = tuple(f"{k}_threshold" for k in THRESHOLD_KEYS)


def check_grid(
    grid: Mapping[str, Sequence[float]], key_prefix: str = "eval.threshold_grid"
) -> dict[str, list[float]]:
    """Validate {detection, p, s} -> non-empty lists of thresholds in [0, 1], naming the key."""
    out: dict[str, list[float]] = {}
    for key in THRESHOLD_KEYS:
        if key not in grid:
            raise ConfigError(f"{key_prefix}.{key}", "missing (need detection, p and s)")
        values = grid[key]
        if isinstance(values, (int, float)):
            values = [values]
        values = list(values)
        if not values:
            raise ConfigError(f"{key_prefix}.{key}", "empty list of thresholds")
        out[key] = [
            check_thresholds({"detection": v, "p": v, "s": v}, f"{key_prefix}.{key}")["p"]
            for v in values
        ]
    return out


def threshold_grid(
    probs: Probabilities,
    grid: Mapping[str, Sequence[float]],
    *,
    sampling_rate: float = 100.0,
    tolerance_s: float = 0.5,
    association_margin_s: float = 0.5,
    far_pick_counts_fp: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
) -> pd.DataFrame:
    """One row per (detection, p, s) combination: the three threshold columns + `METRIC_KEYS`.

    Rows follow `itertools.product(grid["detection"], grid["p"], grid["s"])`.
    """
    g = check_grid(grid)
    check_scoring(sampling_rate, tolerance_s)
    settings = DecodeSettings(protocol, sampling_rate, association_margin_s)
    margin = margin_samples(association_margin_s, sampling_rate)
    truth = probs.truth
    tol = tolerance_s * sampling_rate
    rows = []
    if settings.protocol == "eqt":
        outcomes = eqt_grid(probs.det, probs.p, probs.s, g["detection"], g["p"], g["s"], settings)
        for (det_th, p_th, s_th), out in outcomes:
            row = {"detection_threshold": det_th, "p_threshold": p_th, "s_threshold": s_th}
            row.update(detection_metrics(out.detected, truth.is_earthquake))
            for phase, pick, true in (("p", out.p_pick, truth.p_sample),
                                      ("s", out.s_pick, truth.s_sample)):
                row.update(phase_metrics(phase, pick, true, truth.is_earthquake, tol,
                                         sampling_rate, far_pick_counts_fp))
            rows.append(row)
        return pd.DataFrame(rows, columns=list(THRESHOLD_COLUMNS) + list(METRIC_KEYS))
    per_threshold = peak_features_multi(probs.det, probs.p, probs.s, g["detection"], margin)
    for det_th, feats in zip(g["detection"], per_threshold):
        det_m = detection_metrics(feats.detected, truth.is_earthquake)
        truth_samples = {"p": truth.p_sample, "s": truth.s_sample}
        p_m, s_m = (
            {
                th: phase_metrics(phase, feats.picks_at(phase, th), truth_samples[phase],
                                  truth.is_earthquake, tol, sampling_rate, far_pick_counts_fp)
                for th in g[phase]
            }
            for phase in ("p", "s")
        )
        for p_th, s_th in itertools.product(g["p"], g["s"]):
            row = {"detection_threshold": det_th, "p_threshold": p_th, "s_threshold": s_th}
            row.update(det_m)
            row.update(p_m[p_th])
            row.update(s_m[s_th])
            rows.append(row)
    return pd.DataFrame(rows, columns=list(THRESHOLD_COLUMNS) + list(METRIC_KEYS))


def best_thresholds(table: pd.DataFrame, output: str = "p", metric: str = "f1") -> dict[str, float]:
    """The grid row maximising `<output>_<metric>` (first on ties), as a thresholds mapping."""
    column = f"{output}_{metric}"
    if column not in table.columns:
        raise ConfigError("output", f"no column {column!r} in the threshold table")
    row = table.loc[table[column].astype(float).idxmax()]
    return {k: float(row[f"{k}_threshold"]) for k in THRESHOLD_KEYS}


def tune_thresholds(table: pd.DataFrame) -> dict[str, float]:
    """Thresholds chosen on a (validation) grid, one output at a time: the detection threshold
    with the best detection F1 (ties: fewer missed earthquakes, then the higher threshold), then
    at that detection threshold the P and S thresholds with the best P / S F1 (ties: fewer
    missed picks, then the higher threshold).

    Why this order: P and S picks are only counted inside detections, so their best thresholds
    depend on the detection threshold, not the other way round.
    """
    if table.empty:
        raise ConfigError("eval.threshold_grid", "empty threshold table: nothing to tune on")

    def pick(rows: pd.DataFrame, output: str) -> float:
        ranked = rows.assign(
            _f1=rows[f"{output}_f1"].astype(float).fillna(-1.0),
            _fn=-rows[f"{output}_fn"].astype(float).fillna(float("inf")),
            _th=rows[f"{output}_threshold"].astype(float),
        ).sort_values(["_f1", "_fn", "_th"], ascending=False, kind="mergesort")
        return float(ranked.iloc[0][f"{output}_threshold"])

    det = pick(table, "detection")
    at_det = table[table["detection_threshold"].astype(float) == det]
    return {"detection": det, "p": pick(at_det, "p"), "s": pick(at_det, "s")}


def as_records(table: pd.DataFrame) -> list[dict[str, float]]:
    """Plain dict rows (for logging or JSON), NaN kept as float('nan')."""
    return [{k: float(v) for k, v in r.items()} for r in table.to_dict(orient="records")]


__all__ = [
    "THRESHOLD_COLUMNS",
    "as_records",
    "best_thresholds",
    "check_grid",
    "threshold_grid",
    "tune_thresholds",
]
