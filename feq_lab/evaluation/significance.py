"""How sure a number is: bootstrap intervals per run and paired tests between runs.

Why per-trace outcomes: the EQT protocol gives every trace one TP/FP/FN verdict per output
(`metrics`), and F1 = 2TP / (2TP + FP + FN) is a function of their sums. Resampling traces
(Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13 percentile intervals) is
then a matrix product of multinomial weights with the (N, 9) outcome table, and two models
scored on the *same* traces are compared with the *same* weights (a paired bootstrap), or,
for the binary "missed this earthquake" verdict, with McNemar's exact test (McNemar 1947,
Psychometrika 12:153; the exact form is a binomial test on the discordant pairs).

The verdicts come from `metrics.score_arrays` applied trace by trace, so the counting rules
live in one place; `outcomes_from_picks(...).counts()` equals `metrics.score`'s counts (tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feq_lab.errors import DataError
from feq_lab.evaluation.metrics import picks_to_arrays, score_arrays
from feq_lab.evaluation.picks import TracePicks
from feq_lab.evaluation.truth import Truth
from feq_lab.paths import atomic_path

OUTPUTS = ("detection", "p", "s")
KINDS = ("tp", "fp", "fn")
DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Outcomes:
    """Per-trace verdicts: `table[i, o, k]` is 1 when trace i is a `KINDS[k]` for `OUTPUTS[o]`."""

    table: np.ndarray                     # (N, 3, 3) int8
    is_earthquake: np.ndarray             # (N,) bool
    trace_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        table = np.asarray(self.table, np.int8)
        if table.ndim != 3 or table.shape[1:] != (len(OUTPUTS), len(KINDS)):
            raise DataError(f"outcome table must be (N, 3, 3), got {table.shape}")
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "is_earthquake", np.asarray(self.is_earthquake, bool))
        names = [str(n) for n in self.trace_names] or [f"trace_{i}" for i in range(len(table))]
        if len(names) != len(table) or len(self.is_earthquake) != len(table):
            raise DataError(f"{len(table)} outcome rows, {len(names)} names, "
                            f"{len(self.is_earthquake)} truth flags")
        object.__setattr__(self, "trace_names", names)

    def __len__(self) -> int:
        return len(self.table)

    def counts(self) -> dict[str, float]:
        """`<output>_<tp|fp|fn>` sums, as `metrics.score` reports them."""
        sums = self.table.sum(axis=0)
        return {f"{o}_{k}": float(sums[i, j]) for i, o in enumerate(OUTPUTS)
                for j, k in enumerate(KINDS)}

    def missed(self, output: str) -> np.ndarray:
        """(N,) bool: the earthquake traces this output missed (its FNs)."""
        return self.table[:, OUTPUTS.index(output), KINDS.index("fn")].astype(bool)


def outcomes_from_picks(picks: Sequence[TracePicks], truth: Truth, sampling_rate: float = 100.0,
                        tolerance_s: float = 0.5, trace_names: Sequence[str] = ()) -> Outcomes:
    """Each trace scored alone by `metrics.score_arrays` (the protocol's only implementation)."""
    detected, p, s = picks_to_arrays(picks)
    if len(detected) != len(truth):
        raise DataError(f"{len(detected)} picks for {len(truth)} truth rows")
    table = np.zeros((len(truth), len(OUTPUTS), len(KINDS)), np.int8)
    for i in range(len(truth)):
        one = score_arrays(detected[i:i + 1], p[i:i + 1], s[i:i + 1], truth.subset([i]),
                           sampling_rate, tolerance_s)
        for o, out in enumerate(OUTPUTS):
            for k, kind in enumerate(KINDS):
                table[i, o, k] = int(one[f"{out}_{kind}"])
    return Outcomes(table, truth.is_earthquake, list(trace_names))


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN), the same number as 2PR / (P + R); 0 when undefined
    (as `metrics` reports a zero denominator)."""
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) resampling counts: row b says how often each trace is drawn in replicate b."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _replicate_counts(outcomes: Outcomes, weights: np.ndarray) -> np.ndarray:
    """(n_boot, 3, 3) TP/FP/FN sums of each bootstrap replicate."""
    flat = outcomes.table.reshape(len(outcomes), -1).astype(np.float64)
    return (weights @ flat).reshape(len(weights), len(OUTPUTS), len(KINDS))


def bootstrap_intervals(outcomes: Outcomes, n_boot: int = DEFAULT_N_BOOT,
                        level: float = DEFAULT_LEVEL, seed: int = 0) -> dict[str, float]:
    """Percentile intervals of each output's F1 and FN count over traces resampled with
    replacement: keys `<output>_f1_ci_low`, `<output>_f1_ci_high`, `<output>_fn_ci_low/high`."""
    if len(outcomes) == 0:
        raise DataError("no traces to resample")
    counts = _replicate_counts(outcomes, _weights(len(outcomes), n_boot, seed))
    alpha = (1.0 - level) / 2
    out: dict[str, float] = {}
    for o, name in enumerate(OUTPUTS):
        tp, fp, fn = counts[:, o, 0], counts[:, o, 1], counts[:, o, 2]
        for stat, values in (("f1", f1_from_counts(tp, fp, fn)), ("fn", fn)):
            low, high = np.quantile(values, [alpha, 1 - alpha])
            out[f"{name}_{stat}_ci_low"] = float(low)
            out[f"{name}_{stat}_ci_high"] = float(high)
    return out


@dataclass(frozen=True)
class PairedResult:
    """A vs B on the same traces: the observed difference (A - B), its interval and p-value."""

    output: str
    statistic: str                 # "f1" (paired bootstrap) or "missed" (McNemar)
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    level: float = DEFAULT_LEVEL
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def significant(self) -> bool:
        return self.p_value < 1.0 - self.level

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "statistic": self.statistic,
                "difference": self.difference, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "p_value": self.p_value, "significant": self.significant, **self.detail}


def check_paired(a: Outcomes, b: Outcomes) -> None:
    """Paired tests need the same traces in the same order."""
    if a.trace_names != b.trace_names:
        raise DataError(f"paired test on different traces ({len(a)} vs {len(b)} traces, or "
                        "another order): both runs must be scored on the same split")


def paired_bootstrap(a: Outcomes, b: Outcomes, output: str, n_boot: int = DEFAULT_N_BOOT,
                     level: float = DEFAULT_LEVEL, seed: int = 0) -> PairedResult:
    """F1(A) - F1(B) for one output, both recomputed on each resample of the shared traces.

    p-value: twice the smaller share of replicates on either side of 0 (percentile bootstrap
    test), floored at 1/n_boot when no replicate crosses 0.
    """
    check_paired(a, b)
    o = OUTPUTS.index(output)
    w = _weights(len(a), n_boot, seed)
    ca, cb = _replicate_counts(a, w)[:, o], _replicate_counts(b, w)[:, o]
    diff = f1_from_counts(*ca.T) - f1_from_counts(*cb.T)
    sa, sb = a.table[:, o].sum(0), b.table[:, o].sum(0)
    observed = float(f1_from_counts(*sa) - f1_from_counts(*sb))
    alpha = (1.0 - level) / 2
    low, high = np.quantile(diff, [alpha, 1 - alpha])
    if np.all(diff == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0)))
        p = max(p, 1.0 / n_boot)
    return PairedResult(output, "f1", observed, float(low), float(high), float(p), level)


def mcnemar_exact(a_wrong: np.ndarray, b_wrong: np.ndarray) -> tuple[int, int, float]:
    """(n01, n10, two-sided p): n01 = traces only A got wrong, n10 = only B; exact binomial
    test of n01 against Binomial(n01 + n10, 1/2)."""
    from scipy.stats import binomtest

    a_wrong, b_wrong = np.asarray(a_wrong, bool), np.asarray(b_wrong, bool)
    n01 = int(np.count_nonzero(a_wrong & ~b_wrong))
    n10 = int(np.count_nonzero(~a_wrong & b_wrong))
    if n01 + n10 == 0:
        return n01, n10, 1.0
    return n01, n10, float(binomtest(n01, n01 + n10, 0.5).pvalue)


def paired_missed(a: Outcomes, b: Outcomes, output: str,
                  level: float = DEFAULT_LEVEL) -> PairedResult:
    """Missed earthquakes of A minus those of B, tested with McNemar on the shared traces."""
    check_paired(a, b)
    n01, n10, p = mcnemar_exact(a.missed(output), b.missed(output))
    diff = float(n01 - n10)
    return PairedResult(output, "missed", diff, diff, diff, p, level,
                        {"only_a_missed": float(n01), "only_b_missed": float(n10)})


def compare(a: Outcomes, b: Outcomes, n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL,
            seed: int = 0) -> list[PairedResult]:
    """Every paired test of A vs B: F1 (bootstrap) and missed earthquakes (McNemar) per output."""
    out = [paired_bootstrap(a, b, o, n_boot, level, seed) for o in OUTPUTS]
    out += [paired_missed(a, b, o, level) for o in OUTPUTS]
    return out


def save_outcomes(path: str | Path, outcomes: Outcomes) -> Path:
    """A small npz beside the probabilities (what paired tests read back)."""
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, table=outcomes.table, is_earthquake=outcomes.is_earthquake,
                            trace_name=np.asarray(outcomes.trace_names, dtype=str))
    return path


def load_outcomes(path: str | Path) -> Outcomes:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Outcomes(z["table"], z["is_earthquake"], [str(n) for n in z["trace_name"]])
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"not an outcomes file ({err})", path=str(path)) from None


def interval_metrics(outcomes: Outcomes, prefix: str, n_boot: int = DEFAULT_N_BOOT,
                     level: float = DEFAULT_LEVEL, seed: int = 0) -> dict[str, float]:
    """`bootstrap_intervals` as flat MLflow keys under `prefix` (e.g. `val/p_f1_ci_low`)."""
    return {f"{prefix}{k}": v for k, v in
            bootstrap_intervals(outcomes, n_boot, level, seed).items()}


def mean_sd(values: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample sd (ddof=1; 0 for one replicate) of each key over seed replicates."""
    out = {}
    for k, v in values.items():
        arr = np.asarray(list(v), np.float64)
        out[k] = (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)
    return out


__all__ = ["OUTPUTS", "Outcomes", "PairedResult", "bootstrap_intervals", "compare",
           "f1_from_counts", "interval_metrics", "load_outcomes", "mcnemar_exact", "mean_sd",
           "outcomes_from_picks", "paired_bootstrap", "paired_missed", "save_outcomes"]
