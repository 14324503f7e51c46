"""The report builder on hand-made records: threshold curves, all-or-nothing writes."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from feq_lab.errors import DataError, SelectionError
from feq_lab.selection.report import ReportInputs, build_report, threshold_curve
from feq_lab.tracking.records import RunRecord


def product_grid() -> pd.DataFrame:
    rows = []
    for d, p, s in itertools.product([0.1, 0.3, 0.5], [0.1, 0.3], [0.1, 0.2]):
        rows.append({"detection_threshold": d, "p_threshold": p, "s_threshold": s,
                     "detection_precision": d, "detection_recall": 1 - d, "detection_f1": d + 0.1,
                     "p_precision": p, "p_recall": 1 - p, "p_f1": p + d,
                     "s_precision": s, "s_recall": 1 - s, "s_f1": s + p})
    return pd.DataFrame(rows)


def test_curve_holds_other_thresholds_at_headline():
    curve = threshold_curve(product_grid(), {"detection": 0.3, "p": 0.1, "s": 0.1})
    assert list(curve.output) == ["detection"] * 3 + ["p"] * 2 + ["s"] * 2
    p = curve[curve.output == "p"]
    assert p.f1.tolist() == pytest.approx([0.4, 0.6])  # detection held at 0.3
    s = curve[curve.output == "s"]
    assert s.f1.tolist() == pytest.approx([0.2, 0.3])  # p held at 0.1
    # a headline value off the grid snaps to the nearest grid value (detection 0.45 -> 0.5)
    p = threshold_curve(product_grid(), {"detection": 0.45})
    assert p[p.output == "p"].f1.tolist() == pytest.approx([0.6, 0.8])


def test_curve_bad_columns_named():
    with pytest.raises(DataError, match="s_f1"):
        threshold_curve(product_grid().drop(columns=["s_f1"]), {}, path="grid.csv")


def run(name, **metrics):
    return RunRecord(f"id-{name}", name, "FINISHED", {"model": name}, metrics)


def test_failure_leaves_previous_report_untouched(tmp_path):
    runs = [run("feq3", **{"test/s_f1": 0.9, "latency/window_ms_p50": 5.0,
                           "size/model_mb": 0.2}), run("stalta")]
    sel = {"policy": "constraints", "champion": {"run_id": "id-feq3"}, "reasons": ["r"]}
    build_report(ReportInputs(runs, sel, product_grid()), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert "report.md" in before and "pareto.png" in before

    bad = product_grid().drop(columns=["p_recall"])
    with pytest.raises(DataError):
        build_report(ReportInputs(runs, sel, bad), tmp_path)
    with pytest.raises(SelectionError, match="id-gone"):
        build_report(ReportInputs(runs, dict(sel, champion={"run_id": "id-gone"}), None),
                     tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
