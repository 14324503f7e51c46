"""Threshold grids from stored probabilities equal a direct re-evaluation."""

import numpy as np
import pytest
from helpers_eval import random_set

from feq_lab.errors import ConfigError
from feq_lab.evaluation.metrics import METRIC_KEYS, evaluate
from feq_lab.evaluation.thresholds import THRESHOLD_COLUMNS, best_thresholds, threshold_grid

GRID = {"detection": [0.1, 0.3, 0.6], "p": [0.05, 0.2, 0.5], "s": [0.1, 0.4]}


@pytest.fixture(scope="module")
def probs():
    return random_set(n=60, seed=1)


@pytest.mark.parametrize("protocol", ["eqt", "lab"])
@pytest.mark.parametrize("far_fp", [False, True])
def test_grid_rows_equal_direct_reevaluation(probs, far_fp, protocol):
    table = threshold_grid(probs, GRID, far_pick_counts_fp=far_fp, protocol=protocol)
    assert len(table) == 3 * 3 * 2
    assert list(table.columns) == list(THRESHOLD_COLUMNS) + list(METRIC_KEYS)
    for row in table.to_dict(orient="records"):
        th = {
            "detection": row["detection_threshold"],
            "p": row["p_threshold"],
            "s": row["s_threshold"],
        }
        direct = evaluate(probs, th, far_pick_counts_fp=far_fp, protocol=protocol)
        got = np.array([row[k] for k in METRIC_KEYS])
        want = np.array([direct[k] for k in METRIC_KEYS])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, equal_nan=True, err_msg=str(th))
    # the grid really varies: not every row has the same P F1
    assert table["p_f1"].nunique() > 1 and table["detection_f1"].nunique() > 1


def test_protocols_differ_on_the_same_probabilities(probs):
    eqt = threshold_grid(probs, GRID)  # the default protocol is EQT's tester
    lab = threshold_grid(probs, GRID, protocol="lab")
    assert not np.allclose(eqt["p_f1"], lab["p_f1"]) or not np.allclose(
        eqt["detection_f1"], lab["detection_f1"])
    with pytest.raises(ConfigError, match="eval.protocol"):
        threshold_grid(probs, GRID, protocol="seisbench")


def test_best_thresholds_pick_the_max_row(probs):
    table = threshold_grid(probs, GRID)
    best = best_thresholds(table, "p")
    assert evaluate(probs, best)["p_f1"] == pytest.approx(table["p_f1"].max())


def test_bad_grid_names_the_key(probs):
    with pytest.raises(ConfigError, match="eval.threshold_grid.s"):
        threshold_grid(probs, {"detection": [0.3], "p": [0.1]})
    with pytest.raises(ConfigError, match="eval.threshold_grid.p"):
        threshold_grid(probs, {"detection": [0.3], "p": [], "s": [0.1]})
    with pytest.raises(ConfigError, match="eval.threshold_grid.detection"):
        threshold_grid(probs, {"detection": [2.0], "p": [0.1], "s": [0.1]})
