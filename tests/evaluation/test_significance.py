"""Bootstrap intervals and paired tests on hand-made outcomes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from feq_lab.errors import DataError
from feq_lab.evaluation.metrics import score
from feq_lab.evaluation.picks import TracePicks
from feq_lab.evaluation.significance import (
    Outcomes,
    bootstrap_intervals,
    f1_from_counts,
    load_outcomes,
    mcnemar_exact,
    outcomes_from_picks,
    paired_bootstrap,
    paired_missed,
    save_outcomes,
)
from feq_lab.evaluation.truth import Truth


def outcomes(det_kinds: list[str], p_kinds: list[str] | None = None) -> Outcomes:
    """Outcomes from per-trace verdict letters: t(p), f(p), n (fn), - (tn)."""
    p_kinds = p_kinds or det_kinds
    table = np.zeros((len(det_kinds), 3, 3), np.int8)
    col = {"t": 0, "f": 1, "n": 2}
    for i, (d, p) in enumerate(zip(det_kinds, p_kinds)):
        for o, kind in ((0, d), (1, p), (2, p)):
            if kind in col:
                table[i, o, col[kind]] = 1
    is_eq = np.array([k in "tn" for k in det_kinds])
    return Outcomes(table, is_eq, [f"tr{i}" for i in range(len(det_kinds))])


def test_f1_from_counts_equals_precision_recall_form():
    tp, fp, fn = np.array([8, 0, 3]), np.array([2, 0, 0]), np.array([1, 0, 5])
    p, r = tp / np.maximum(tp + fp, 1), tp / np.maximum(tp + fn, 1)
    expected = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0)
    assert np.allclose(f1_from_counts(tp, fp, fn), expected)


def test_outcomes_sum_to_the_protocols_counts():
    truth = Truth(np.array([True, True, True, False, False]),
                  np.array([100.0, 200.0, 300.0, np.nan, np.nan]),
                  np.array([400.0, 500.0, 600.0, np.nan, np.nan]))
    picks = [TracePicks(True, ((0, 900),), 101.0, 0.9, 470.0, 0.8),   # P tp, S far -> fn
             TracePicks(False),                                        # all missed
             TracePicks(True, ((0, 900),), 300.0, 0.9, 600.0, 0.9),    # all tp
             TracePicks(True, ((0, 900),), 50.0, 0.5, None, None),     # noise: det fp, P fp
             TracePicks(False)]                                        # tn
    out = outcomes_from_picks(picks, truth)
    expected = score(picks, truth)
    for key, value in out.counts().items():
        assert value == expected[key], key
    assert out.missed("detection").tolist() == [False, True, False, False, False]


def test_bootstrap_interval_of_a_perfect_model_is_a_point():
    perfect = outcomes(["t"] * 30 + ["-"] * 10)
    ci = bootstrap_intervals(perfect, n_boot=200)
    assert ci["detection_f1_ci_low"] == ci["detection_f1_ci_high"] == 1.0
    assert ci["detection_fn_ci_low"] == ci["detection_fn_ci_high"] == 0.0


def test_bootstrap_interval_covers_the_estimate_and_matches_the_binomial_width():
    # 100 earthquakes, 10 missed: FN ~ Binomial(100, 0.1) under resampling, sd 3 -> 95 % ~ [4, 16]
    o = outcomes(["t"] * 90 + ["n"] * 10)
    ci = bootstrap_intervals(o, n_boot=2000, seed=1)
    assert 3 <= ci["detection_fn_ci_low"] <= 5 and 15 <= ci["detection_fn_ci_high"] <= 17
    f1 = 2 * 90 / (2 * 90 + 10)
    assert ci["detection_f1_ci_low"] < f1 < ci["detection_f1_ci_high"]
    # same seed, same interval
    assert bootstrap_intervals(o, n_boot=2000, seed=1) == ci


def test_mcnemar_exact_known_answers():
    a = np.array([True] * 10 + [False] * 20)    # A misses 10 traces B catches
    b = np.zeros(30, bool)
    assert mcnemar_exact(a, b) == (10, 0, pytest.approx(2 * 0.5 ** 10))
    assert mcnemar_exact(b, b)[2] == 1.0
    # 3 vs 2 discordant: far from significant (exact p = 1.0)
    a2 = np.array([1, 1, 1, 0, 0, 0] + [0] * 10, bool)
    b2 = np.array([0, 0, 0, 1, 1, 0] + [0] * 10, bool)
    assert mcnemar_exact(a2, b2) == (3, 2, pytest.approx(1.0))


def test_paired_tests_separate_a_real_difference_from_noise():
    base = ["t"] * 80 + ["-"] * 20
    good = outcomes(base)
    bad = outcomes(["n"] * 30 + ["t"] * 50 + ["-"] * 20)          # misses 30 of 80
    close = outcomes(["n"] + ["t"] * 79 + ["-"] * 20)             # misses 1
    far = paired_bootstrap(good, bad, "detection", n_boot=500)
    assert far.difference == pytest.approx(1.0 - 2 * 50 / (2 * 50 + 30))
    assert far.significant and far.ci_low > 0
    near = paired_bootstrap(good, close, "detection", n_boot=500)
    assert not near.significant and near.ci_low <= 0 <= near.ci_high
    missed = paired_missed(bad, good, "detection")
    assert missed.difference == 30 and missed.significant
    assert not paired_missed(close, good, "detection").significant


def test_paired_test_refuses_different_traces(tmp_path):
    a = outcomes(["t", "n"])
    b = Outcomes(a.table, a.is_earthquake, ["x", "y"])
    with pytest.raises(DataError):
        paired_bootstrap(a, b, "p")
    path = save_outcomes(tmp_path / "o.npz", a)
    back = load_outcomes(path)
    assert back.trace_names == a.trace_names and (back.table == a.table).all()
