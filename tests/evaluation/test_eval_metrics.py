"""EQT-protocol metrics with known answers (REFERENCE §3)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_eval import box, gauss, stack

from feq_lab.errors import DataError
from feq_lab.evaluation.metrics import METRIC_KEYS, evaluate, score
from feq_lab.evaluation.picks import TracePicks, extract_picks
from feq_lab.evaluation.probabilities import Probabilities
from feq_lab.evaluation.truth import Truth

TH = {"detection": 0.3, "p": 0.1, "s": 0.1}
CONTRACT_KEYS = [
    "detection_f1",
    "detection_precision",
    "detection_recall",
    "detection_fn",
    "detection_fp",
    "detection_tp",
    "detection_tn",
    "p_f1",
    "p_precision",
    "p_recall",
    "p_fn",
    "p_tp",
    "p_fp",
    "p_residual_mean_s",
    "p_residual_std_s",
    "p_residual_mae_s",
    "s_f1",
    "s_precision",
    "s_recall",
    "s_fn",
    "s_tp",
    "s_fp",
    "s_residual_mean_s",
    "s_residual_std_s",
    "s_residual_mae_s",
]


def eq_truth(n, p=1000.0, s=2000.0):
    return Truth(np.ones(n, bool), np.full(n, p), np.full(n, s))


def test_keys_are_exactly_the_contract():
    m = score([TracePicks(False)], eq_truth(1))
    assert sorted(m) == sorted(CONTRACT_KEYS) and sorted(METRIC_KEYS) == sorted(CONTRACT_KEYS)


def test_pick_049_s_off_is_tp_and_051_s_off_is_fn_only():
    det = box(900, 3000)
    probs_p = stack(gauss(1049), gauss(1051))
    picks = extract_picks(stack(det, det), probs_p, stack(gauss(2000), gauss(2000)), TH)
    assert [pk.p_sample for pk in picks] == [1049.0, 1051.0]

    close = score(picks[:1], eq_truth(1))
    assert (close["p_tp"], close["p_fn"], close["p_fp"]) == (1.0, 0.0, 0.0)
    assert close["p_residual_mean_s"] == pytest.approx(-0.49)
    assert close["p_residual_mae_s"] == pytest.approx(0.49)
    assert close["p_residual_std_s"] == 0.0

    far = score(picks[1:], eq_truth(1))
    # EQT protocol: one count per trace -> a far pick on an earthquake is an FN, not also an FP
    assert (far["p_tp"], far["p_fn"], far["p_fp"]) == (0.0, 1.0, 0.0)
    assert far["p_f1"] == 0.0 and math.isnan(far["p_residual_mae_s"])
    strict = score(picks[1:], eq_truth(1), far_pick_counts_fp=True)
    assert (strict["p_tp"], strict["p_fn"], strict["p_fp"]) == (0.0, 1.0, 1.0)

    edge = score([TracePicks(True, ((0, 10),), 1050.0, 1.0, 2000.0, 1.0)], eq_truth(1))
    assert edge["p_tp"] == 1.0  # exactly 0.5 s is within tolerance (|dt| <= 0.5 s)


def test_noise_trace_with_false_trigger_is_fp_for_detection_p_and_s():
    picks = extract_picks(box(2000, 2600), gauss(2050, 0.5), gauss(2400, 0.5), TH)
    truth = Truth([False], [np.nan], [np.nan])
    m = score(picks, truth)
    assert (m["detection_fp"], m["detection_tp"], m["detection_tn"], m["detection_fn"]) == (
        1,
        0,
        0,
        0,
    )
    assert (m["p_fp"], m["p_tp"], m["p_fn"]) == (1, 0, 0)
    assert (m["s_fp"], m["s_tp"], m["s_fn"]) == (1, 0, 0)
    assert m["detection_precision"] == 0.0 and m["detection_f1"] == 0.0


def test_earthquake_without_trigger_is_fn_for_detection_p_and_s():
    picks = extract_picks(box(1000, 2500, 0.2), gauss(1000), gauss(2000), TH)
    m = score(picks, eq_truth(1))
    assert (m["detection_fn"], m["p_fn"], m["s_fn"]) == (1.0, 1.0, 1.0)
    assert (m["detection_tp"], m["p_tp"], m["s_tp"], m["p_fp"], m["s_fp"]) == (0, 0, 0, 0, 0)
    assert m["detection_recall"] == 0.0 and m["p_f1"] == 0.0 and m["s_f1"] == 0.0


def test_mixed_set_known_answers():
    # 0: eq, P +0.2 s late, S -0.3 s early   1: eq, P ok, S 1.0 s off   2: eq missed
    # 3: noise with false trigger + P and S picks   4: noise, quiet
    picks = [
        TracePicks(True, ((990, 3000),), 1020.0, 0.9, 1970.0, 0.9),
        TracePicks(True, ((990, 3000),), 1000.0, 0.9, 2100.0, 0.9),
        TracePicks(False),
        TracePicks(True, ((10, 20),), 15.0, 0.5, 18.0, 0.5),
        TracePicks(False),
    ]
    truth = Truth(
        [1, 1, 1, 0, 0], [1000, 1000, 1000, np.nan, np.nan], [2000, 2000, 2000, np.nan, np.nan]
    )
    m = score(picks, truth)
    assert (m["detection_tp"], m["detection_fn"], m["detection_fp"], m["detection_tn"]) == (
        2,
        1,
        1,
        1,
    )
    assert m["detection_precision"] == pytest.approx(2 / 3)
    assert m["detection_recall"] == pytest.approx(2 / 3)
    assert m["detection_f1"] == pytest.approx(2 / 3)
    assert (m["p_tp"], m["p_fn"], m["p_fp"]) == (2, 1, 1)
    assert m["p_residual_mean_s"] == pytest.approx(-0.1)  # residuals -0.2 and 0.0
    assert m["p_residual_std_s"] == pytest.approx(0.1)
    assert m["p_residual_mae_s"] == pytest.approx(0.1)
    assert (m["s_tp"], m["s_fn"], m["s_fp"]) == (1, 2, 1)
    assert m["s_precision"] == pytest.approx(0.5) and m["s_recall"] == pytest.approx(1 / 3)
    assert m["s_f1"] == pytest.approx(0.4)
    assert m["s_residual_mean_s"] == pytest.approx(0.3)


def test_zero_denominators_give_zero_never_nan():
    m = score([TracePicks(False)] * 3, Truth([0, 0, 0], [np.nan] * 3, [np.nan] * 3))
    for key in ("f1", "precision", "recall"):
        for out in ("detection", "p", "s"):
            assert m[f"{out}_{key}"] == 0.0
    assert m["detection_tn"] == 3.0


def test_evaluate_extracts_and_scores():
    probs = Probabilities(
        stack(box(990, 3000), box(0, 0)),
        stack(gauss(1010), gauss(10)),
        stack(gauss(2000), gauss(10)),
        eq_truth(2),
    )
    m = evaluate(probs, TH)
    assert (m["detection_tp"], m["detection_fn"], m["p_tp"], m["s_tp"]) == (1, 1, 1, 1)


def test_length_mismatch_is_an_error():
    with pytest.raises(DataError, match="1 picks for 2 truth rows"):
        score([TracePicks(False)], eq_truth(2))


def test_truth_from_metadata():
    df = pd.DataFrame(
        {
            "trace_name": ["A.X_2019_EV", "B.X_2019_NO", "C.X_2019_EV"],
            "trace_category": ["earthquake_local", "noise", "earthquake_local"],
            "p_arrival_sample": [700.0, None, "800"],
            "s_arrival_sample": [1200.0, "None", 1500.0],
        }
    )
    t = Truth.from_metadata(df)
    assert t.is_earthquake.tolist() == [True, False, True]
    assert t.p_sample[[0, 2]].tolist() == [700.0, 800.0] and np.isnan(t.p_sample[1])
    bad = df.assign(s_arrival_sample=[1200.0, None, None])
    with pytest.raises(DataError, match="C.X_2019_EV"):
        Truth.from_metadata(bad)
    with pytest.raises(DataError, match="unknown trace_category"):
        Truth.from_metadata(df.assign(trace_category=["earthquake_local", "blast", "noise"]))


def test_truth_from_batches_numpy_and_torch():
    b1 = {
        "is_earthquake": np.array([True, False]),
        "p_arrival_sample": np.array([500.0, np.nan]),
        "s_arrival_sample": np.array([900.0, np.nan]),
    }
    b2 = {
        "is_earthquake": torch.tensor([True]),
        "p_arrival_sample": torch.tensor([600.0], dtype=torch.float64),
        "s_arrival_sample": torch.tensor([1000.0], dtype=torch.float64),
    }
    t = Truth.from_batches([b1, b2])
    assert t.is_earthquake.tolist() == [True, False, True]
    assert t.s_sample[[0, 2]].tolist() == [900.0, 1000.0]
    with pytest.raises(DataError, match="p_arrival_sample"):
        Truth.from_batch({"is_earthquake": [True], "s_arrival_sample": [1.0]})
