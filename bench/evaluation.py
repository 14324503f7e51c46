"""Threshold grid vs naive per-combination re-evaluation, on synthetic probability traces.

    python bench/evaluation.py [--traces 2000] [--naive-combos 20] [--full]

The grid (conf/eval/default.yaml: 7 x 6 x 6 = 252 combinations) is evaluated by
`thresholds.threshold_grid`; the baseline calls `metrics.evaluate` (extract picks + score) once per
combination. The naive run is timed on `--naive-combos` random combinations and extrapolated to
the whole grid unless `--full`; both are checked to give identical rows.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import yaml

from feq_lab.evaluation.metrics import METRIC_KEYS, evaluate
from feq_lab.evaluation.probabilities import Probabilities, as_stored
from feq_lab.evaluation.thresholds import threshold_grid
from feq_lab.evaluation.truth import Truth
from feq_lab.paths import CONF_DIR

T = 6000


def synthetic_probabilities(n: int, seed: int = 0) -> Probabilities:
    """Model-like outputs: boxes and Gaussians near the true arrivals, misses, false triggers."""
    rng = np.random.default_rng(seed)
    t = np.arange(T, dtype=np.float32)
    is_eq = rng.random(n) < 0.8
    p_true = rng.integers(400, 1000, n).astype(float)
    s_true = p_true + rng.integers(150, 1500, n)
    det = np.zeros((n, T), np.float32)
    p = np.zeros((n, T), np.float32)
    s = np.zeros((n, T), np.float32)
    for i in range(n):
        a = rng.uniform(0.1, 1.0)
        if is_eq[i]:
            p0, s0 = p_true[i] + rng.normal(0, 15), s_true[i] + rng.normal(0, 30)
            det[i] = a * ((t >= p0) & (t < s0 + 0.4 * (s0 - p0)))
            p[i] = a * np.exp(-0.5 * ((t - p0) / 10) ** 2)
            s[i] = a * np.exp(-0.5 * ((t - s0) / 10) ** 2)
        c = rng.uniform(0, T)
        det[i] += rng.uniform(0, 0.6) * np.exp(-0.5 * ((t - c) / 150) ** 2)
        p[i] += rng.uniform(0, 0.4) * np.exp(-0.5 * ((t - c) / 10) ** 2)
        s[i] += rng.uniform(0, 0.4) * np.exp(-0.5 * ((t - c - 80) / 10) ** 2)
        p[i] += 0.005 * rng.random(T, dtype=np.float32)
        s[i] += 0.005 * rng.random(T, dtype=np.float32)
    truth = Truth(is_eq, np.where(is_eq, p_true, np.nan), np.where(is_eq, s_true, np.nan))
    # what a run evaluates: the stored (float16) representation
    return as_stored(Probabilities(np.clip(det, 0, 1), np.clip(p, 0, 1), np.clip(s, 0, 1), truth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=2000)
    ap.add_argument("--naive-combos", type=int, default=20)
    ap.add_argument("--full", action="store_true", help="time the naive loop on every combination")
    args = ap.parse_args()

    grid = yaml.safe_load((CONF_DIR / "eval" / "default.yaml").read_text())["threshold_grid"]
    combos = list(itertools.product(grid["detection"], grid["p"], grid["s"]))
    probs = synthetic_probabilities(args.traces)
    print(f"{len(probs)} traces x {T} samples, grid of {len(combos)} combinations")

    t0 = time.perf_counter()
    table = threshold_grid(probs, grid)
    t_grid = time.perf_counter() - t0
    print(f"threshold_grid: {t_grid:.2f} s ({1e3 * t_grid / len(combos):.1f} ms per combination)")

    rng = np.random.default_rng(1)
    n_naive = len(combos) if args.full else min(args.naive_combos, len(combos))
    chosen = sorted(rng.choice(len(combos), n_naive, replace=False))
    t0 = time.perf_counter()
    for k in chosen:
        d, p, s = combos[k]
        direct = evaluate(probs, {"detection": d, "p": p, "s": s})
        got = table.iloc[k][list(METRIC_KEYS)].to_numpy(float)
        want = np.array([direct[m] for m in METRIC_KEYS])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, equal_nan=True)
    t_naive_each = (time.perf_counter() - t0) / n_naive
    t_naive = t_naive_each * len(combos)
    how = "measured" if args.full else f"extrapolated from {n_naive} combinations"
    print(f"naive evaluate per combination: {t_naive_each:.3f} s -> {t_naive:.1f} s ({how})")
    print(f"speed-up grid vs naive: {t_naive / t_grid:.1f}x (rows identical on the checked combos)")


if __name__ == "__main__":
    main()
