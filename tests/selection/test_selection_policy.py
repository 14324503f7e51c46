"""Selection policies on hand-made run records with known answers (ties, infeasible, missing)."""

from __future__ import annotations

import math

import pytest

from feq_lab.errors import ConfigError, SelectionError
from feq_lab.selection.policy import (
    Constraint,
    Objective,
    dominates,
    pareto_front,
    select,
    split_candidates,
)
from feq_lab.tracking.records import RunRecord

# The study's numbers (REFERENCE §4); latencies are made up but in the study's order.
STUDY = {
    #        size_mb lat_ms det_fn p_fn  s_fn  det_f1 p_f1 s_f1  params
    "eqt":  (4.5,   40.0,  8,   626, 1137, 0.99, 0.98, 0.98, 373495),
    "leq":  (0.965, 12.0,  130, 673, 1817, 0.99, 0.99, 0.97, 39776),
    "feq1": (0.922, 11.0,  131, 1010, 1517, 0.99, 0.98, 0.97, 36096),
    "feq2": (0.748, 10.0,  256, 1103, 3087, 0.99, 0.97, 0.95, 30512),
    "feq3": (0.767, 10.1,  31,  595, 1132, 0.99, 0.99, 0.98, 32080),
}

CONSTRAINTS_CFG = {
    "policy": "constraints",
    "constraints": [{"key": "size/model_mb", "max": 1.0},
                    {"key": "latency/window_ms_p50", "max_rel": 1.5}],
    "objectives": [{"key": "val/detection_fn", "goal": "min"},
                   {"key": "val/s_f1", "goal": "max"}],
}


def rec(name, status="FINISHED", run_id=None, **metrics):
    return RunRecord(run_id=run_id or f"id-{name}", name=name, status=status,
                     params={"model": name}, metrics=metrics)


def study_runs(with_baseline=True):
    runs = []
    for name, (mb, lat, dfn, pfn, sfn, df1, pf1, sf1, n) in STUDY.items():
        runs.append(rec(name, **{
            "size/model_mb": mb, "latency/window_ms_p50": lat, "val/detection_fn": dfn,
            "val/p_fn": pfn, "val/s_fn": sfn, "val/detection_f1": df1, "val/p_f1": pf1,
            "val/s_f1": sf1, "params/total_paper": n}))
    if with_baseline:  # the classical baseline: fewest FN of all, but never a candidate
        runs.append(rec("stalta", **{"val/detection_fn": 0, "val/s_f1": 0.5}))
    return runs


def test_constraints_reproduce_the_study_choice():
    d = select(study_runs(), CONSTRAINTS_CFG)
    assert d.champion.name == "feq3"
    status = {c.run.name: c.status for c in d.candidates}
    assert status == {"eqt": "rejected", "leq": "feasible", "feq1": "feasible",
                      "feq2": "feasible", "feq3": "chosen", "stalta": "baseline"}
    ranks = {c.run.name: c.rank for c in d.candidates if c.rank}
    assert ranks == {"feq3": 1, "leq": 2, "feq1": 3, "feq2": 4}
    eqt = next(c for c in d.candidates if c.run.name == "eqt")
    assert any("size/model_mb=4.5" in n for n in eqt.notes)
    assert any("latency/window_ms_p50=40" in n for n in eqt.notes)
    text = "\n".join(d.reasons)
    assert "FEQ3 beats the runner-up LEQ" in text and "val/detection_fn 31 vs 130" in text
    out = d.to_dict()
    assert out["champion"]["metrics"]["val/detection_fn"] == 31


def test_constraints_tie_broken_by_s_f1_then_label():
    runs = [rec("a", **{"val/detection_fn": 3, "val/s_f1": 0.90}),
            rec("b", **{"val/detection_fn": 3, "val/s_f1": 0.95}),
            rec("c", **{"val/detection_fn": 5, "val/s_f1": 0.99})]
    cfg = {"policy": "constraints", "objectives": CONSTRAINTS_CFG["objectives"]}
    d = select(runs, cfg)
    assert d.champion.name == "b"
    assert "tied on val/detection_fn=3" in d.reasons[-1]
    # a perfect tie on every objective: the label decides, deterministically, whatever the order
    twins = [rec("y", **{"val/detection_fn": 3, "val/s_f1": 0.9}),
             rec("x", **{"val/detection_fn": 3, "val/s_f1": 0.9})]
    assert select(twins, cfg).champion.name == "x"
    assert select(twins[::-1], cfg).champion.name == "x"
    assert "tie on every objective" in select(twins, cfg).reasons[-1]


def test_infeasible_constraint_names_every_run():
    cfg = dict(CONSTRAINTS_CFG, constraints=[{"key": "size/model_mb", "max": 0.1}])
    with pytest.raises(SelectionError) as err:
        select(study_runs(), cfg)
    msg = str(err.value)
    assert "no run satisfies the constraints" in msg
    for name in STUDY:
        assert name.upper() in msg
    assert "size/model_mb=0.748" in msg  # feq2's value is stated


def test_missing_and_nan_metric_named():
    runs = study_runs(with_baseline=False)
    runs[1] = rec("leq", run_id="run-leq-1", **{k: v for k, v in runs[1].metrics.items()
                                                if k != "val/s_f1"})
    runs[2] = rec("feq1", run_id="run-feq1-1", **dict(runs[2].metrics,
                                                       **{"val/detection_fn": math.nan}))
    with pytest.raises(SelectionError) as err:
        select(runs, CONSTRAINTS_CFG)
    msg = str(err.value)
    assert "run LEQ (run-leq-1) lacks val/s_f1" in msg
    assert "run FEQ1 (run-feq1-1) lacks val/detection_fn" in msg
    assert "EQT" not in msg


def test_no_finished_runs_or_only_baselines():
    with pytest.raises(SelectionError, match="no runs found"):
        select([], CONSTRAINTS_CFG)
    failed = [rec("feq3", status="FAILED"), rec("leq", status="RUNNING")]
    with pytest.raises(SelectionError, match=r"no FINISHED run.*FEQ3 \(id-feq3\) FAILED"):
        select(failed, CONSTRAINTS_CFG)
    with pytest.raises(SelectionError, match="baseline"):
        split_candidates([rec("stalta")])


def test_failed_runs_are_ignored_not_fatal():
    runs = study_runs()
    runs.append(rec("feq9", status="FAILED", **{"val/detection_fn": 0, "val/s_f1": 1.0,
                                                "size/model_mb": 0.1,
                                                "latency/window_ms_p50": 1.0}))
    assert select(runs, CONSTRAINTS_CFG).champion.name == "feq3"


PARETO_RUNS = [
    rec("A", **{"val/s_f1": 0.90, "latency/window_ms_p50": 10.0}),
    rec("B", **{"val/s_f1": 0.95, "latency/window_ms_p50": 20.0}),
    rec("C", **{"val/s_f1": 0.99, "latency/window_ms_p50": 40.0}),
    rec("D", **{"val/s_f1": 0.90, "latency/window_ms_p50": 30.0}),  # dominated by A and B
]
PARETO_OBJ = [{"key": "val/s_f1", "goal": "max"},
              {"key": "latency/window_ms_p50", "goal": "min"}]


def test_pareto_front_and_knee():
    objs = [Objective("val/s_f1", "max"), Objective("latency/window_ms_p50", "min")]
    assert [r.name for r in pareto_front(PARETO_RUNS, objs)] == ["A", "B", "C"]
    assert dominates(PARETO_RUNS[0], PARETO_RUNS[3], objs)
    assert not dominates(PARETO_RUNS[3], PARETO_RUNS[3], objs)
    d = select(PARETO_RUNS, {"policy": "pareto", "objectives": PARETO_OBJ})
    # scaled distances to the ideal point: A 1.0, B sqrt((4/9)^2 + (1/3)^2) = 0.556, C 1.0
    assert d.champion.name == "B"
    by = {c.run.name: c for c in d.candidates}
    assert by["B"].score == pytest.approx(math.hypot(4 / 9, 1 / 3))
    assert by["D"].status == "dominated" and "dominated by A, B" in by["D"].notes[0]
    assert by["A"].score == pytest.approx(1.0) and by["C"].score == pytest.approx(1.0)


def test_pareto_tie_broken_by_tie_breaker():
    runs = [rec("A", **{"val/s_f1": 0.9, "latency/window_ms_p50": 10.0, "size/model_mb": 2.0}),
            rec("C", **{"val/s_f1": 1.0, "latency/window_ms_p50": 20.0, "size/model_mb": 1.0})]
    cfg = {"policy": "pareto", "objectives": PARETO_OBJ}
    assert select(runs, cfg).champion.name == "A"  # equal distance 1.0: the label decides
    cfg["tie_breakers"] = [{"key": "size/model_mb", "goal": "min"}]
    d = select(runs, cfg)
    assert d.champion.name == "C"
    assert any("tie in distance" in r for r in d.reasons)


def test_weighted_known_scores_and_weights_change_answer():
    d = select(PARETO_RUNS, {"policy": "weighted", "objectives": PARETO_OBJ})
    assert d.champion.name == "B"
    score = {c.run.name: c.score for c in d.candidates}
    assert score["A"] == pytest.approx(0.5) and score["B"] == pytest.approx((5 / 9 + 2 / 3) / 2)
    heavy = [dict(PARETO_OBJ[0], weight=3.0), PARETO_OBJ[1]]
    assert select(PARETO_RUNS, {"policy": "weighted", "objectives": heavy}).champion.name == "C"


def test_relative_constraint_bounds():
    c = Constraint("latency/window_ms_p50", max_rel=1.5)
    assert c.bounds([10.0, 20.0]) == (-math.inf, 15.0)
    c = Constraint("val/s_f1", min_rel=0.9, max=1.0)
    assert c.bounds([0.5, 1.0]) == (0.9, 1.0)


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="select.policy"):
        select(PARETO_RUNS, {"policy": "best", "objectives": PARETO_OBJ})
    with pytest.raises(ConfigError, match=r"select.objectives\[0\].goal"):
        select(PARETO_RUNS, {"policy": "pareto", "objectives": [{"key": "x", "goal": "up"}]})
    with pytest.raises(ConfigError, match=r"select.constraints\[0\]"):
        select(PARETO_RUNS, {"objectives": PARETO_OBJ, "constraints": [{"key": "x"}]})


# ---------------------------------------------------------------- soft constraints
SOFT = {"key": "val/stream_p_within_0.5s_rate", "min": 0.95, "soft": True}


def _with_replays(rates: dict) -> list:
    runs = study_runs()
    for r in runs:
        if r.name in rates:
            r.metrics["val/stream_p_within_0.5s_rate"] = rates[r.name]
    return runs


def test_soft_constraint_keeps_only_the_runs_that_meet_it():
    cfg = {**CONSTRAINTS_CFG, "constraints": CONSTRAINTS_CFG["constraints"] + [SOFT]}
    # feq3 would win on detection FN; it misses the real-time P goal, leq meets it
    d = select(_with_replays({"eqt": 1.0, "leq": 0.95, "feq1": 0.9, "feq2": 0.85,
                              "feq3": 0.9}), cfg)
    assert d.champion.name == "leq"
    status = {c.run.name: c.status for c in d.candidates}
    assert status["feq3"] == "rejected" and status["eqt"] == "rejected"
    notes = {c.run.name: c.notes for c in d.candidates}
    assert any("(soft)" in n for n in notes["feq3"])
    assert any("stream_p_within_0.5s_rate >= 0.95 (soft)" in r and "rejects" in r
               for r in d.reasons)


def test_soft_constraint_met_by_none_keeps_the_nearest():
    """eqt meets it but the hard size bound removed it first: among the light runs the nearest
    to the bound pass, and the reasons say so."""
    cfg = {**CONSTRAINTS_CFG, "constraints": CONSTRAINTS_CFG["constraints"] + [SOFT]}
    d = select(_with_replays({"eqt": 1.0, "leq": 0.8, "feq1": 0.9, "feq2": 0.9,
                              "feq3": 0.85}), cfg)
    assert d.champion.name == "feq1"  # feq1 and feq2 nearest (0.9); fewer detection FN
    status = {c.run.name: c.status for c in d.candidates}
    assert status["feq3"] == status["leq"] == "rejected" and status["feq2"] == "feasible"
    assert any("no candidate meets it" in r for r in d.reasons)


def test_soft_constraint_not_measured_is_skipped_and_missing_values_fail_it():
    cfg = {**CONSTRAINTS_CFG, "constraints": CONSTRAINTS_CFG["constraints"] + [SOFT]}
    d = select(study_runs(), cfg)  # a sweep without replays: the study's choice, said
    assert d.champion.name == "feq3"
    assert any("not measured on any candidate, skipped" in r for r in d.reasons)
    d = select(_with_replays({"leq": 0.95}), cfg)  # the others lack it: they fail it
    assert d.champion.name == "leq"


def test_soft_must_be_a_boolean():
    cfg = {**CONSTRAINTS_CFG, "constraints": [{**SOFT, "soft": "yes"}]}
    with pytest.raises(ConfigError, match=r"select.constraints\[0\].soft"):
        select(study_runs(), cfg)
