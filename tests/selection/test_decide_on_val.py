"""Decide on validation: a policy naming a test/* key is refused; the noise guard keeps the
leader only when paired tests on the validation traces separate it from its rivals."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from feq_lab.errors import ConfigError, SelectionError
from feq_lab.evaluation.significance import Outcomes
from feq_lab.paths import CONF_DIR
from feq_lab.selection.policy import select
from feq_lab.selection.tables import unique_labels, unique_runs
from feq_lab.tracking.records import RunRecord


def rec(name: str, run_id: str | None = None, tags: dict | None = None, **metrics) -> RunRecord:
    return RunRecord(run_id or f"run-{name}", name, "FINISHED", {"model": name}, metrics,
                     tags or {}, "")


def outcomes(n_missed: int, n_eq: int = 200, n_noise: int = 50) -> Outcomes:
    """Detection/P/S verdicts: the first `n_missed` earthquakes missed by every output."""
    table = np.zeros((n_eq + n_noise, 3, 3), np.int8)
    table[:n_eq, :, 0] = 1
    table[:n_missed, :, 0] = 0
    table[:n_missed, :, 2] = 1
    is_eq = np.r_[np.ones(n_eq, bool), np.zeros(n_noise, bool)]
    return Outcomes(table, is_eq, [f"tr{i}" for i in range(n_eq + n_noise)])


def policy_cfg(**over):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("select")
    from omegaconf import OmegaConf

    sel = OmegaConf.to_container(cfg.select, resolve=False)
    sel.update(over)
    return sel


@pytest.mark.parametrize("section", ["objectives", "constraints", "tie_breakers"])
def test_a_policy_on_test_keys_is_refused(section):
    cfg = policy_cfg()
    item = {"key": "test/s_f1", "goal": "max"} if section != "constraints" else \
        {"key": "test/s_f1", "min": 0.5}
    cfg[section] = [item] + list(cfg.get(section) or [])
    runs = [rec("feq3", **{"val/s_f1": 0.9})]
    with pytest.raises(ConfigError) as err:
        select(runs, cfg)
    assert err.value.key == f"select.{section}[0].key"
    assert "val/s_f1" in str(err.value)  # says what to use instead


def test_shipped_policies_read_only_validation_and_onnx_latency():
    for policy in ("constraints", "pareto", "weighted"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            sel = compose("select", overrides=[f"select={policy}"]).select
        keys = [i["key"] for part in ("objectives", "constraints", "tie_breakers")
                for i in sel.get(part) or []]
        assert keys and not [k for k in keys if k.startswith("test")], (policy, keys)
        assert "latency/onnx_window_ms_p50" in keys and "latency/window_ms_p50" not in keys


def base_metrics(fn: float, f1: float, lat: float, mb: float) -> dict:
    return {"val/detection_fn": fn, "val/s_f1": f1, "latency/onnx_window_ms_p50": lat,
            "size/model_mb": mb, "params/total_paper": 30000}


def test_noise_guard_prefers_the_faster_model_when_the_leader_is_within_noise():
    cfg = policy_cfg()
    big = rec("feq1", **base_metrics(1, 0.99, 12.0, 0.9))     # leads by one missed earthquake
    small = rec("feq2", **base_metrics(2, 0.98, 10.0, 0.7))   # faster and smaller
    outs = {big.run_id: outcomes(1), small.run_id: outcomes(2)}
    d = select([big, small], cfg, outs)
    assert d.champion.run_id == small.run_id
    assert any("not separable" in r and "FEQ2" in r for r in d.reasons), d.reasons
    # without the guard the lexicographic leader wins
    cfg_off = dict(cfg, noise_guard={"enabled": False})
    assert select([big, small], cfg_off).champion.run_id == big.run_id


def test_noise_guard_latency_within_tolerance_is_a_tie_that_size_breaks():
    cfg = policy_cfg()  # the shipped policy: latency within 5% of the fastest counts as equal
    assert cfg["noise_guard"]["prefer"][0]["tolerance_rel"] == 0.05
    leader = rec("feq1", **base_metrics(0, 0.92, 0.94, 0.23))   # leads on val/s_f1, 4.4% slower
    fast = rec("feq3", **base_metrics(0, 0.91, 0.90, 0.18))     # fastest by 0.01 ms
    small = rec("feq2", **base_metrics(0, 0.90, 0.91, 0.16))    # smallest, 1.1% slower
    outs = {r.run_id: outcomes(0) for r in (leader, fast, small)}
    d = select([leader, fast, small], cfg, outs)
    assert d.champion.run_id == small.run_id, d.reasons
    assert "within 5% = equal" in " ".join(d.reasons)
    # the same re-measured with the two latencies swapped: the same champion
    fast.metrics["latency/onnx_window_ms_p50"], small.metrics["latency/onnx_window_ms_p50"] = 0.91, 0.90
    assert select([leader, fast, small], cfg, outs).champion.run_id == small.run_id
    # no tolerance: the 0.01 ms decides
    strict = dict(cfg, noise_guard=dict(cfg["noise_guard"], prefer=[
        {"key": "latency/onnx_window_ms_p50", "goal": "min"}, {"key": "size/model_mb", "goal": "min"}]))
    assert select([leader, fast, small], strict, outs).champion.run_id == small.run_id  # 0.90 now
    fast.metrics["latency/onnx_window_ms_p50"], small.metrics["latency/onnx_window_ms_p50"] = 0.90, 0.91
    assert select([leader, fast, small], strict, outs).champion.run_id == fast.run_id
    with pytest.raises(ConfigError, match="tolerance_rel"):
        bad = dict(cfg, noise_guard=dict(cfg["noise_guard"], prefer=[
            {"key": "size/model_mb", "goal": "min", "tolerance_rel": 1.5}]))
        select([leader, fast, small], bad, outs)
    # where a tolerance would have no effect it is refused, not silently ignored; so are typos
    for where, item in (("tie_breakers", {"key": "size/model_mb", "goal": "min",
                                          "tolerance_rel": 0.05}),
                        ("objectives", {"key": "val/s_f1", "gaol": "max"})):
        with pytest.raises(ConfigError, match=rf"select\.{where}\[0\].*unknown fields"):
            select([leader, fast, small], dict(cfg, **{where: [item]}), outs)


def test_noise_guard_keeps_a_leader_that_wins_outside_the_noise():
    cfg = policy_cfg()
    good = rec("feq1", **base_metrics(1, 0.99, 12.0, 0.9))
    poor = rec("feq2", **base_metrics(40, 0.80, 10.0, 0.7))   # misses 40 of 200
    d = select([good, poor], cfg, {good.run_id: outcomes(1), poor.run_id: outcomes(40)})
    assert d.champion.run_id == good.run_id
    assert "beats every other feasible run outside the noise" in " ".join(d.reasons)
    with pytest.raises(SelectionError, match="val_outcomes"):
        select([good, poor], cfg, {good.run_id: outcomes(1)})


def test_identical_effective_configs_are_one_row_under_the_preset_name():
    tags = {"feq.config_hash": "abc"}
    th = {"thresholds/detection": 0.3, "thresholds/p": 0.1, "thresholds/s": 0.1}
    preset = RunRecord("r1", "FEQ3", "FINISHED", {"model": "feq3", "rnn": "bilstm",
                       "cnn_blocks": "2"}, dict(th), tags, "")
    twin = RunRecord("r2", "FEQ3 @ x", "FINISHED", {"model": "feq3", "rnn": "bilstm",
                     "cnn_blocks": "2"}, dict(th), tags, "")
    twin = RunRecord("r2", "FEQ3 rnn=bilstm cnn_blocks=2", "FINISHED", twin.params,
                     dict(th), tags, "")
    other_th = RunRecord("r3", "FEQ3 @ detection=0.5", "FINISHED", preset.params,
                         {**th, "thresholds/detection": 0.5}, tags, "")
    kept = unique_runs([twin, preset, other_th])
    assert [r.run_id for r in kept] == ["r1", "r3"]
    labels = unique_labels(kept)
    assert labels == {"r1": "FEQ3 @ det=0.3", "r3": "FEQ3 @ det=0.5"}


def test_seed_replicates_are_reported_as_mean_and_sd():
    from feq_lab.selection.report import replicates_section

    runs = [RunRecord(f"r{i}", "FEQ3", "FINISHED", {"model": "feq3", "seed": str(s)},
                      {"val/s_f1": v, "test/s_f1": 0.8}, {}, "")
            for i, (s, v) in enumerate([(0, 0.90), (1, 0.92), (2, 0.94)])]
    text = "\n".join(replicates_section(runs))
    assert "| FEQ3 | 0, 1, 2 |" in text and "0.920 ± 0.020" in text and "0.800 ± 0.000" in text
    assert replicates_section(runs[:1]) == []  # one seed: nothing to say
