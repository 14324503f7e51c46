"""The EQT evaluation protocol (REFERENCE §3): one outcome per trace for detection, P and S.

Counting rules (per trace, per output):

- Detection: earthquake detected -> TP, missed -> FN; noise detected -> FP, not -> TN.
- P (and S the same way), with tolerance ``tolerance_s`` (0.5 s), compared in samples as
  ``|true - pick| <= tolerance_s * sampling_rate``:
  - earthquake with a pick within tolerance -> TP;
  - earthquake with no pick, or a pick farther than tolerance -> FN. By default (EQT's
    one-count-per-trace protocol) a far pick is *only* an FN; ``far_pick_counts_fp=True`` also
    counts it as an FP (the stricter convention of pick benchmarks);
  - noise with a pick -> FP; noise without -> not counted (a TN, not reported).
- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R); any zero denominator
  gives 0.0, never NaN.
- Residuals (true - predicted, seconds) over the TP picks only: mean, std (population), MAE.
  With no TP pick they are NaN (undefined; 0 would read as a perfect picker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from feq_lab.errors import ConfigError, DataError
from feq_lab.evaluation.decode import DEFAULT_PROTOCOL
from feq_lab.evaluation.picks import TracePicks, check_thresholds, extract_picks
from feq_lab.evaluation.truth import Truth

if TYPE_CHECKING:
    from feq_lab.evaluation.probabilities import Probabilities

__all__ = [
    "METRIC_KEYS",
    "Truth",
    "detection_metrics",
    "evaluate",
    "phase_metrics",
    "score",
    "score_arrays",
]

DETECTION_KEYS = tuple(
    f"detection_{k}" for k in ("f1", "precision", "recall", "fn", "fp", "tp", "tn")
)
PHASE_STATS = (
    "f1",
    "precision",
    "recall",
    "fn",
    "tp",
    "fp",
    "residual_mean_s",
    "residual_std_s",
    "residual_mae_s",
)
METRIC_KEYS = DETECTION_KEYS + tuple(f"{ph}_{k}" for ph in ("p", "s") for k in PHASE_STATS)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def detection_metrics(detected: np.ndarray, is_earthquake: np.ndarray) -> dict[str, float]:
    """Per-trace detection counts and precision/recall/F1."""
    tp = float(np.count_nonzero(detected & is_earthquake))
    fn = float(np.count_nonzero(~detected & is_earthquake))
    fp = float(np.count_nonzero(detected & ~is_earthquake))
    tn = float(np.count_nonzero(~detected & ~is_earthquake))
    precision, recall, f1 = _prf(tp, fp, fn)
    return {
        "detection_f1": f1,
        "detection_precision": precision,
        "detection_recall": recall,
        "detection_fn": fn,
        "detection_fp": fp,
        "detection_tp": tp,
        "detection_tn": tn,
    }


def phase_metrics(
    phase: str,
    pick: np.ndarray,
    true: np.ndarray,
    is_earthquake: np.ndarray,
    tolerance_samples: float,
    sampling_rate: float,
    far_pick_counts_fp: bool = False,
) -> dict[str, float]:
    """Counts, P/R/F1 and TP residuals for one phase; `pick` is NaN where there is no pick."""
    has_pick = np.isfinite(pick)
    residual = true - pick  # NaN where either side is missing
    with np.errstate(invalid="ignore"):
        close = has_pick & is_earthquake & (np.abs(residual) <= tolerance_samples + 1e-9)
    far = has_pick & is_earthquake & ~close
    tp = float(np.count_nonzero(close))
    fn = float(np.count_nonzero(is_earthquake & ~close))
    fp = float(np.count_nonzero(has_pick & ~is_earthquake))
    if far_pick_counts_fp:
        fp += float(np.count_nonzero(far))
    precision, recall, f1 = _prf(tp, fp, fn)
    res_s = residual[close] / sampling_rate
    if res_s.size:
        mean, std, mae = float(res_s.mean()), float(res_s.std()), float(np.abs(res_s).mean())
    else:
        mean = std = mae = float("nan")
    return {
        f"{phase}_f1": f1,
        f"{phase}_precision": precision,
        f"{phase}_recall": recall,
        f"{phase}_fn": fn,
        f"{phase}_tp": tp,
        f"{phase}_fp": fp,
        f"{phase}_residual_mean_s": mean,
        f"{phase}_residual_std_s": std,
        f"{phase}_residual_mae_s": mae,
    }


def check_scoring(sampling_rate: float, tolerance_s: float) -> None:
    if not sampling_rate > 0:
        raise ConfigError("sampling_rate", f"must be > 0, got {sampling_rate}")
    if not tolerance_s >= 0:
        raise ConfigError("tolerance_s", f"must be >= 0, got {tolerance_s}")


def score_arrays(
    detected: np.ndarray,
    p_pick: np.ndarray,
    s_pick: np.ndarray,
    truth: Truth,
    sampling_rate: float = 100.0,
    tolerance_s: float = 0.5,
    *,
    far_pick_counts_fp: bool = False,
) -> dict[str, float]:
    """`score` on plain (N,) arrays: detected flags and pick samples (NaN = no pick)."""
    check_scoring(sampling_rate, tolerance_s)
    n = len(truth)
    if not (len(detected) == len(p_pick) == len(s_pick) == n):
        raise DataError(
            f"{len(detected)} picks for {n} truth rows: evaluation must see the same traces"
        )
    tol = tolerance_s * sampling_rate
    is_eq = truth.is_earthquake
    out = detection_metrics(np.asarray(detected, bool), is_eq)
    out.update(
        phase_metrics(
            "p",
            np.asarray(p_pick, np.float64),
            truth.p_sample,
            is_eq,
            tol,
            sampling_rate,
            far_pick_counts_fp,
        )
    )
    out.update(
        phase_metrics(
            "s",
            np.asarray(s_pick, np.float64),
            truth.s_sample,
            is_eq,
            tol,
            sampling_rate,
            far_pick_counts_fp,
        )
    )
    return {k: out[k] for k in METRIC_KEYS}


def picks_to_arrays(picks: Sequence[TracePicks]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detected, p_sample, s_sample) arrays from TracePicks; NaN marks a missing pick."""
    detected = np.array([pk.detected for pk in picks], bool)
    p = np.array([np.nan if pk.p_sample is None else pk.p_sample for pk in picks], np.float64)
    s = np.array([np.nan if pk.s_sample is None else pk.s_sample for pk in picks], np.float64)
    return detected, p, s


def score(
    picks: Sequence[TracePicks],
    truth: Truth,
    sampling_rate: float = 100.0,
    tolerance_s: float = 0.5,
    *,
    far_pick_counts_fp: bool = False,
) -> dict[str, float]:
    """EQT-protocol metrics (keys `METRIC_KEYS`) of per-trace picks against the truth."""
    detected, p, s = picks_to_arrays(picks)
    return score_arrays(
        detected, p, s, truth, sampling_rate, tolerance_s, far_pick_counts_fp=far_pick_counts_fp
    )


def evaluate(
    probs: Probabilities,
    thresholds: Mapping[str, float],
    *,
    sampling_rate: float = 100.0,
    tolerance_s: float = 0.5,
    association_margin_s: float = 0.5,
    far_pick_counts_fp: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
) -> dict[str, float]:
    """Extract picks at `thresholds` from stored probabilities (decoded under `protocol`,
    `decode.PROTOCOLS`) and score them."""
    picks = extract_picks(
        probs.det,
        probs.p,
        probs.s,
        check_thresholds(thresholds),
        sampling_rate=sampling_rate,
        association_margin_s=association_margin_s,
        protocol=protocol,
    )
    return score(
        picks, probs.truth, sampling_rate, tolerance_s, far_pick_counts_fp=far_pick_counts_fp
    )
