"""Evaluation figures are written as real PNG files."""

import numpy as np
import pytest
from helpers_eval import random_set

from feq_lab.errors import DataError
from feq_lab.evaluation.metrics import score
from feq_lab.evaluation.picks import extract_picks
from feq_lab.evaluation.plots import (
    plot_confusion_matrix,
    plot_example_traces,
    plot_residual_histograms,
    plot_threshold_curves,
)
from feq_lab.evaluation.thresholds import threshold_grid

TH = {"detection": 0.3, "p": 0.1, "s": 0.1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_all_figures(tmp_path):
    probs = random_set(n=12, seed=4)
    picks = extract_picks(probs.det, probs.p, probs.s, TH)
    metrics = score(picks, probs.truth)
    waves = np.random.default_rng(0).normal(size=(12, 6000, 3)).astype(np.float32)
    out = [
        plot_example_traces(
            tmp_path / "traces.png", probs, picks, [0, 5], waveforms=waves, thresholds=TH
        ),
        plot_example_traces(tmp_path / "traces_nowave.png", probs, picks, indices=[0]),
        plot_confusion_matrix(tmp_path / "confusion.png", metrics),
        plot_residual_histograms(tmp_path / "residuals.png", picks, probs.truth),
        plot_threshold_curves(
            tmp_path / "thresholds.png",
            threshold_grid(probs, {"detection": [0.2, 0.4], "p": [0.1, 0.3], "s": [0.1, 0.3]}),
        ),
    ]
    assert all(is_png(p) for p in out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in out)  # no temps


def test_bad_inputs_are_clear(tmp_path):
    import pandas as pd

    with pytest.raises(DataError, match="detection_tn"):
        plot_confusion_matrix(
            tmp_path / "c.png", {"detection_tp": 1, "detection_fn": 0, "detection_fp": 0}
        )
    with pytest.raises(DataError, match="threshold table"):
        plot_threshold_curves(tmp_path / "t.png", pd.DataFrame())
    assert list(tmp_path.iterdir()) == []
