"""The study's validation replays (`eval.replays`) run the monitor as it ships: the same
scenarios, events and scores as `python -m feq_lab.stream scenarios=N`, and their metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from feq_lab.paths import CONF_DIR
from feq_lab.streaming.replay import split_metrics, study_replay_metrics
from feq_lab.tracking.keys import is_known

THRESHOLDS = {"detection": 0.05, "p": 0.02, "s": 0.02}  # an untrained net: low, to get events


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from feq_lab.models import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model("leq"), tmp_path_factory.mktemp("ckpt") / "leq.pt")


def test_study_replays_equal_the_monitors_own(checkpoint, tiny_subset, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from feq_lab import stream

    cfg = {"scenarios": 2, "split": "val", "seed": 5}
    metrics, path = study_replay_metrics(checkpoint, None, THRESHOLDS, cfg, tiny_subset,
                                         tmp_path / "study")
    ours = json.loads(path.read_text())
    assert path.name == "val_scenarios_summary.json"
    assert metrics == split_metrics(ours, "val")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        monitor_cfg = OmegaConf.to_container(compose("stream", overrides=[
            f"checkpoint={checkpoint}", f"source.subset_dir={tiny_subset}", "source.split=val",
            "source.seed=5", "scenarios=2", "display=none", f"out_dir={tmp_path / 'monitor'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *(f"engine.thresholds.{k}={v}" for k, v in THRESHOLDS.items())]), resolve=True)
    theirs = stream.run(monitor_cfg)
    assert ours["scenarios"] == 2
    assert ours["per_scenario"] == theirs["per_scenario"]
    assert [s["seed"] for s in ours["per_scenario"]] == [5, 6]
    assert ours["provisional_picks"] + ours["detections"] + ours["false_events"] > 0  # it ran
    # the study's replays print nothing and write no picks files
    assert not list((tmp_path / "study").rglob("picks.csv"))


def test_split_metrics_rate_and_known_keys():
    summary = {"scenarios": 20, "p_within_0.5s": 19, "p_latency_s_p50": 0.99,
               "p_latency_s_p95": None, "s_latency_s_p50": 1.2, "false_events": 3,
               "retractions": 40, "misses": 1}
    m = split_metrics(summary, "val")
    assert m["val/stream_p_within_0.5s_rate"] == 0.95
    assert "val/stream_p_latency_s_p95" not in m  # no pick within 0.5 s anywhere: left out
    assert m["val/stream_false_events"] == 3.0
    assert all(is_known(k) for k in m)
