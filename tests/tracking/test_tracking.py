"""Tracker against a real MLflow SQLite store in tmp_path: runs, resume lookup, load_runs,
failure marking, registry round trip through the pyfunc model."""

from __future__ import annotations

import math
import shutil
import sqlite3

import numpy as np
import pytest

from feq_lab.tracking.mlflow import (
    PARENT_RUN_FILE,
    TAG_CONFIG_HASH,
    TAG_DATA_VERSION,
    TAG_ERROR,
    Tracker,
    copy_run_pointer,
    download_artifact,
    load_runs,
    with_retry,
)
from feq_lab.tracking.pyfunc import load_champion
from feq_lab.tracking.registry import Registry


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    """A migrated, empty SQLite store: creating the schema is the slow part, so tests copy it."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    Tracker(f"sqlite:///{path}", "warmup")  # creates the schema
    return path


@pytest.fixture()
def tracker(tmp_path, store_template):
    shutil.copy(store_template, tmp_path / "mlflow.db")
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "unit")


def test_parent_children_and_load_runs(tracker, tmp_path):
    sweep = tmp_path / "sweep"
    parent = tracker.parent_run("sweep", sweep)
    assert (sweep / PARENT_RUN_FILE).read_text().strip() == parent
    tags = {TAG_CONFIG_HASH: "abc", TAG_DATA_VERSION: "v1"}
    with tracker.child_run({"model": "feq3", "rnn": "gru"}, tags, name="a", parent_run_id=parent) as a:
        tracker.log_metrics({"test/p_f1": 0.9, "test/p_residual_mae_s": math.nan})
        tracker.log_metrics({"val/loss": 1.0}, step=0)
        tracker.log_metrics({"val/loss": 0.5}, step=1)
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.child_run({"model": "feq3"}, {}, name="b", parent_run_id=parent):
            raise RuntimeError("boom")
    tracker.end_run(parent)

    runs = {r.name: r for r in load_runs(tracker.uri, "unit")}
    assert set(runs) == {"a", "b"}
    assert runs["a"].status == "FINISHED" and runs["b"].status == "FAILED"
    assert runs["a"].params["rnn"] == "gru"
    assert runs["a"].metrics["test/p_f1"] == pytest.approx(0.9)
    assert math.isnan(runs["a"].metrics["test/p_residual_mae_s"])
    assert runs["a"].metrics["val/loss"] == pytest.approx(0.5)  # latest step
    history = tracker.client.get_metric_history(a, "val/loss")
    assert [m.step for m in history] == [0, 1]
    assert runs["b"].tags[TAG_ERROR] == "RuntimeError: boom"

    assert tracker.find_finished("abc", "v1") == a
    assert tracker.find_finished("abc", "v2") is None  # other data version
    assert tracker.find_finished("zzz", "v1") is None

    # a resumed sweep: a pointer child stands for the original run
    parent2 = tracker.parent_run("sweep 2", tmp_path / "sweep2")
    pointer = copy_run_pointer(tracker, a, parent2, "a", tags)
    assert pointer != a
    assert tracker.find_finished("abc", "v1") == a  # never the pointer
    (rec,) = load_runs(tracker.uri, "unit")  # latest parent = parent2
    assert rec.run_id == a and rec.metrics["test/p_f1"] == pytest.approx(0.9)
    assert load_runs(tracker.uri, "no-such-experiment") == []


def test_artifacts_download(tracker, tmp_path):
    run = tracker.start_run("art")
    csv = tmp_path / "threshold_grid.csv"
    csv.write_text("a,b\n1,2\n")
    tracker.log_artifact(csv, "evaluation")
    tracker.end_run()
    got = download_artifact(tracker.uri, run, "threshold_grid.csv", tmp_path / "dl")
    assert got.read_text() == "a,b\n1,2\n"


def test_with_retry_waits_out_a_locked_database(tmp_path):
    db = tmp_path / "lock.db"
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    calls = []

    def write():
        calls.append(1)
        if len(calls) == 3:
            holder.rollback()  # the other writer finishes
        con = sqlite3.connect(db, timeout=0)
        try:
            con.execute("insert into t values (1)")
            con.commit()
        finally:
            con.close()
        return "ok"

    assert with_retry(write, base_delay=0.01) == "ok"
    assert len(calls) == 3
    with pytest.raises(ValueError):
        with_retry(lambda: (_ for _ in ()).throw(ValueError("not a lock")))


def test_register_and_load_champion(tracker, tmp_path):
    import mlflow.pyfunc
    import torch

    from feq_lab.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("feq2").eval()
    ckpt = save_checkpoint(model, tmp_path / "model.pt")
    run = tracker.start_run("champ")
    tracker.log_pyfunc_model(ckpt)
    tracker.end_run()
    version = Registry(tracker.uri).register(run, "feq-picker", "champion")
    assert version == "1"

    loaded, onnx_path, _ = load_champion(tracker.uri, dst=tmp_path / "champ")
    assert onnx_path is None
    x = torch.randn(1, 3, 6000)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)

    pyfunc = mlflow.pyfunc.load_model(f"{tmp_path / 'champ' / 'model'}")
    out = pyfunc.predict(np.random.default_rng(0).standard_normal((3, 6000)).astype(np.float32))
    assert set(out) == {"detection", "p", "s"}
    assert out["p"].shape == (1, 6000) and np.all((out["p"] >= 0) & (out["p"] <= 1))


def test_reopen_parent_of_a_resumed_sweep_kills_orphaned_children(tracker, tmp_path):
    parent = tracker.parent_run("search", tmp_path / "sweep")
    orphan = tracker.start_run("killed trial", parent_run_id=parent)
    tracker.end_run(parent, "KILLED")  # the first sweep process died

    assert tracker.reopen_parent(parent) is True
    assert tracker.get_record(parent).status == "RUNNING"
    assert tracker.get_record(orphan).status == "KILLED"
    assert tracker.reopen_parent(orphan) is False  # not a parent: caller opens a new one
    assert tracker.reopen_parent("0" * 32) is False  # unknown id


def test_experiment_opens_as_model_training_and_finds_trainings_not_evaluations(tracker):
    """MLflow 3's UI opens an experiment by its kind tag (custom_model_development = the runs
    table, not the GenAI overview); `find_finished` returns the training a re-evaluation scored,
    and only for the same training code."""
    from feq_lab.tracking.mlflow import (
        EXPERIMENT_KIND,
        TAG_CODE_VERSION,
        TAG_EVALUATED_RUN,
        TAG_EXPERIMENT_KIND,
    )

    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"
    identity = {TAG_CONFIG_HASH: "h", TAG_DATA_VERSION: "v", TAG_CODE_VERSION: "c1"}
    with tracker.child_run(tags=identity, name="FEQ3") as trained:
        pass
    with tracker.child_run(tags={**identity, TAG_EVALUATED_RUN: trained}, name="FEQ3 @ det=0.2"):
        pass
    assert tracker.find_finished("h", "v", "c1") == trained
    assert tracker.find_finished("h", "v", "c2") is None  # other training code: train again
    assert tracker.study_parent("s") == tracker.study_parent("s")  # one parent per study


def test_a_re_evaluation_carries_the_latency_its_training_was_timed_at(tracker):
    """A DVC study's training run leaves latency NaN (the evaluate stage times every variant
    alone and logs it on an evaluation run of that training): `measured_latency` finds it there,
    so a later threshold re-evaluation carries the figure instead of NaN; a training that timed
    itself keeps its own figure."""
    from feq_lab.tracking.mlflow import TAG_EVALUATED_RUN

    key = "latency/onnx_window_ms_p50"
    with tracker.child_run(name="FEQ3") as trained:
        tracker.log_metrics({key: float("nan")}, run_id=trained)
    assert tracker.measured_latency(tracker.get_record(trained)) == ({}, {})
    with tracker.child_run(tags={TAG_EVALUATED_RUN: trained, "feq.latency.threads": "1"},
                           name="FEQ3 evaluated") as evaluated:
        tracker.log_metrics({key: 0.9, "test/p_f1": 0.95}, run_id=evaluated)
    metrics, tags = tracker.measured_latency(tracker.get_record(trained))
    assert metrics == {key: 0.9} and tags == {"feq.latency.threads": "1"}
    with tracker.child_run(name="FEQ2") as timed:
        tracker.log_metrics({key: 0.8}, run_id=timed)
    assert tracker.measured_latency(tracker.get_record(timed)) == ({key: 0.8}, {})
