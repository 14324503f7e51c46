"""Opening the MLflow store: created once under a lock whatever URI spelling reaches it, an
interrupted first migration repaired, an unopenable store one StoreError naming it; a resumed
sweep's orphaned RUNNING runs (nested or not) marked KILLED."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from feq_lab.tracking.mlflow import TAG_RUN_DIR, Tracker
from feq_lab.tracking.store import StoreError, open_store

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tables(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    finally:
        con.close()


def test_a_store_left_half_migrated_is_repaired_and_opens(tmp_path):
    """The reported failure: `table _alembic_tmp_experiments already exists` on every open after
    a raced/killed first migration. The leftover copy is dropped (its original is intact) and the
    migration finishes."""
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("create table _alembic_tmp_experiments (x int)")  # what a dead migration leaves
    con.commit()
    con.close()
    client = open_store(f"sqlite:///{db}")
    assert client.get_experiment_by_name("Default") is not None
    client.create_experiment("after-repair")
    assert "_alembic_tmp_experiments" not in _tables(db)
    assert {"experiments", "runs", "registered_models"} <= _tables(db)


def test_a_store_that_cannot_be_opened_is_one_error_naming_it(tmp_path):
    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"not a database" * 100)
    uri = f"sqlite:///{bad}"
    with pytest.raises(StoreError, match=f"MLflow store {uri} cannot be opened") as err:
        Tracker(uri, "x")
    assert "not a database" in str(err.value)


def test_two_processes_creating_one_store_through_two_spellings_both_succeed(tmp_path):
    """Relative and absolute URIs of one new file, opened at the same moment by two processes:
    one migrates, the other waits for the lock, then both create their experiment."""
    code = ("import sys; from feq_lab.tracking.mlflow import Tracker; "
            "t = Tracker(sys.argv[1], sys.argv[2]); print(t.experiment_id)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    uris = ["sqlite:///mlflow.db", f"sqlite:///{tmp_path}/./mlflow.db"]
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, f"exp{i}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, uri in enumerate(uris)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    names = {e.name for e in open_store(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()}
    assert {"exp0", "exp1"} <= names


@pytest.fixture()
def tracker(tmp_path, tmp_path_factory):
    template = tmp_path_factory.getbasetemp() / "store_template.db"
    if not template.is_file():
        Tracker(f"sqlite:///{template}", "warmup")
    shutil.copy(template, tmp_path / "mlflow.db")
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "unit")


def test_kill_orphans_marks_a_dead_sweeps_running_runs_killed_nested_or_not(tracker, tmp_path):
    sweep = tmp_path / "multirun" / "optuna" / "study"
    parent = tracker.parent_run("search", sweep)
    nested = tracker.start_run("trial 0", tags={TAG_RUN_DIR: sweep / "0"}, parent_run_id=parent)
    unnested = tracker.start_run("trial 1", tags={TAG_RUN_DIR: sweep / "1"})  # nesting failed
    done = tracker.start_run("trial 2", tags={TAG_RUN_DIR: sweep / "2"}, parent_run_id=parent)
    tracker.end_run(done)
    elsewhere = tracker.start_run("other sweep", tags={TAG_RUN_DIR: tmp_path / "multirun" / "x" / "0"})
    single = tracker.start_run("a single run still going")

    killed = tracker.kill_orphans(sweep)

    assert set(killed) == {parent, nested, unnested}
    status = {r: tracker.get_record(r).status for r in (parent, nested, unnested, done, elsewhere, single)}
    assert status == {parent: "KILLED", nested: "KILLED", unnested: "KILLED", done: "FINISHED",
                      elsewhere: "RUNNING", single: "RUNNING"}
    assert tracker.reopen_parent(parent) is True  # the resumed sweep keeps its parent


def test_the_experiment_carries_the_saved_chart_view_f1_vs_latency(tracker):
    """MLflow 3.17's saved-view envelope (what its UI parses: string `name`, number `createdAt`,
    string `state`) holding one scatter chart on keys a run logs."""
    import json

    from feq_lab.tracking.keys import is_known
    from feq_lab.tracking.mlflow import CHART_VIEW_ID, SAVED_VIEW_PREFIX

    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    envelope = json.loads(tags[SAVED_VIEW_PREFIX + CHART_VIEW_ID])
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    (chart,) = state["compareRunCharts"]
    assert chart["type"] == "SCATTER"
    assert (chart["xaxis"]["key"], chart["yaxis"]["key"]) == ("latency/onnx_window_ms_p50", "val/s_f1")
    assert is_known(chart["xaxis"]["key"]) and is_known(chart["yaxis"]["key"])
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]


@pytest.fixture()
def no_hydra_runtime_left():
    """The callback sets Hydra's global runtime config (as in a multirun); clear it after."""
    from hydra.core.hydra_config import HydraConfig

    yield
    HydraConfig.instance().cfg = None


@pytest.mark.usefixtures("no_hydra_runtime_left")
def test_a_resumed_sweep_reuses_its_parent_and_kills_the_dead_runs_nested_or_not(tmp_path):
    """The Hydra callback on a second start in the same sweep dir (the search was killed)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from feq_lab.paths import CONF_DIR
    from feq_lab.tracking.sweep_callback import PARENT_RUN_FILE, MLflowSweepCallback

    sweep = tmp_path / "multirun" / "optuna" / "study"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                           "hparams_search=optuna_mo"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(sweep)
        cfg.hydra.runtime.cwd = str(tmp_path)
    first = MLflowSweepCallback()
    first.on_multirun_start(cfg)
    parent = (sweep / PARENT_RUN_FILE).read_text().strip()
    tracker = first.tracker
    nested = tracker.start_run("trial 0", tags={TAG_RUN_DIR: sweep / "0"}, parent_run_id=parent)
    unnested = tracker.start_run("trial 1", tags={TAG_RUN_DIR: sweep / "1"})
    # the process dies here: nothing ends these runs

    second = MLflowSweepCallback()
    second.on_multirun_start(cfg)
    assert second.parent_run_id == parent
    assert tracker.get_record(parent).status == "RUNNING"
    assert tracker.get_record(nested).status == "KILLED"
    assert tracker.get_record(unnested).status == "KILLED"
    second.on_multirun_end(cfg)
    assert tracker.get_record(parent).status == "FINISHED"


@pytest.mark.usefixtures("no_hydra_runtime_left")
def test_a_typo_in_an_optuna_objective_stops_the_multirun_before_the_store(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from feq_lab.paths import CONF_DIR
    from feq_lab.tracking.sweep_callback import MLflowSweepCallback

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                           "hparams_search=optuna_mo"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
        cfg.hydra.sweeper.objectives[1].metric = "latency/onnx_ms_p50"
    with pytest.raises(SystemExit, match=r"hydra.sweeper.objectives\[1\].metric"):
        MLflowSweepCallback().on_multirun_start(cfg)
    assert not (tmp_path / "mlflow.db").exists()
