"""Choosing thresholds on a validation grid: detection first, then P and S at that threshold."""

from __future__ import annotations

import pandas as pd
import pytest

from feq_lab.errors import ConfigError
from feq_lab.evaluation.thresholds import tune_thresholds


def _row(det, p, s, det_f1, det_fn, p_f1, p_fn, s_f1, s_fn):
    return {"detection_threshold": det, "p_threshold": p, "s_threshold": s,
            "detection_f1": det_f1, "detection_fn": det_fn, "p_f1": p_f1, "p_fn": p_fn,
            "s_f1": s_f1, "s_fn": s_fn}


def test_detection_first_then_phases_at_that_detection_threshold():
    table = pd.DataFrame([
        _row(0.3, 0.1, 0.1, 0.80, 0, 0.99, 0, 0.99, 0),  # best P/S overall, worse detection
        _row(0.5, 0.1, 0.1, 0.90, 1, 0.70, 2, 0.60, 3),
        _row(0.5, 0.3, 0.1, 0.90, 1, 0.75, 2, 0.60, 3),
        _row(0.5, 0.1, 0.3, 0.90, 1, 0.70, 2, 0.65, 3),
        _row(0.5, 0.3, 0.3, 0.90, 1, 0.75, 2, 0.65, 3),
    ])
    assert tune_thresholds(table) == {"detection": 0.5, "p": 0.3, "s": 0.3}


def test_ties_prefer_fewer_misses_then_the_higher_threshold():
    table = pd.DataFrame([
        _row(0.3, 0.1, 0.1, 0.9, 0, 0.8, 1, 0.8, 1),
        _row(0.5, 0.1, 0.1, 0.9, 2, 0.8, 1, 0.8, 1),  # same F1, more missed earthquakes
        _row(0.7, 0.1, 0.1, 0.9, 0, 0.8, 1, 0.8, 1),
    ])
    assert tune_thresholds(table)["detection"] == 0.7


def test_empty_table_is_an_error_naming_the_grid():
    with pytest.raises(ConfigError, match="eval.threshold_grid"):
        tune_thresholds(pd.DataFrame(columns=["detection_threshold"]))
