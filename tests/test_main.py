"""`python -m feq_lab` end to end, as a user runs it: real subprocesses, a real MLflow SQLite
store in tmp_path (and one real `mlflow server`), a tiny synthetic subset, one short epoch.

One module-scoped sweep is shared: a 2-job grid; its rerun and a threshold grid (re-evaluation,
nothing trained); the FEQ3 preset = a grid point; a sweep with a crashing job whose
good job repeats one of the first sweep's configs (same seed -> identical metrics).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from feq_lab.job.assess import HEADLINE_KEYS
from feq_lab.tracking.mlflow import (
    PARENT_RUN_FILE,
    TAG_CONFIG_HASH,
    TAG_ERROR,
    TAG_EVALUATED_RUN,
    Tracker,
    load_runs,
)

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "feq-lab"
pytestmark = pytest.mark.slow

# Tiny and short: 40 traces, 2 training batches of 8, 1 epoch, a 2-point latency measurement.
TINY = [
    "data.n_earthquakes=32", "data.n_noise=8", "data.seed=3", "data.batch_size=8",
    "trainer.max_epochs=1", "train.limit_train_batches=2", "train.progress_bar=false",
    "measure.latency_warmup=0", "measure.latency_repeats=2", "eval.n_plot_traces=2",
    "eval.threshold_grid.detection=[0.3,0.5]", "eval.threshold_grid.p=[0.1,0.3]",
    "eval.threshold_grid.s=[0.1]", "eval.replays.scenarios=2",
]


def feq_lab(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "GIT_PYTHON_REFRESH": "quiet"}
    proc = subprocess.run([sys.executable, "-m", "feq_lab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"feq_lab {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    """An initialised (migrated, empty) MLflow SQLite store, copied into each test's cwd:
    creating the schema is the slowest part of a fresh store."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory, store_template):
    """A working dir with its store and subset, after a 2-job sweep (rnn=gru,bilstm)."""
    from feq_lab.data.subset import prepare

    cwd = tmp_path_factory.mktemp("lab")
    shutil.copy(store_template, cwd / "mlflow.db")
    data = [f"data.out_dir={cwd / 'subset'}"]
    prepare({"kind": "synthetic", "out_dir": str(cwd / "subset"), "n_earthquakes": 32,
             "n_noise": 8, "seed": 3})
    common = TINY + data
    feq_lab(["-m", "rnn=gru,bilstm", f"hydra.sweep.dir={cwd / 'sweep1'}", *common], cwd)
    return {"cwd": cwd, "uri": f"sqlite:///{cwd / 'mlflow.db'}", "common": common}


def parent_id(sweep_dir: Path) -> str:
    return (sweep_dir / PARENT_RUN_FILE).read_text().strip()


def test_sweep_logs_parent_with_finished_children(lab):
    cwd, uri = lab["cwd"], lab["uri"]
    parent = parent_id(cwd / "sweep1")
    runs = load_runs(uri, EXPERIMENT)  # the latest parent by default
    assert {r.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert sorted(r.params["rnn"] for r in runs) == ["bilstm", "gru"]
    tracker = Tracker(uri, EXPERIMENT)
    assert tracker.client.get_run(parent).info.status == "FINISHED"
    for run in runs:
        assert run.status == "FINISHED"
        missing = [k for k in HEADLINE_KEYS if k not in run.metrics]
        assert not missing, missing
        assert 0.0 <= run.metrics["test/detection_f1"] <= 1.0
        for split in ("val", "test"):  # early picking (issue 16): the same keys for both splits
            for t in ("0.5s", "1s", "2s", "4s"):
                assert 0.0 <= run.metrics[f"{split}/early_p_recall_{t}"] <= 1.0
                assert f"{split}/early_p_precision_{t}" in run.metrics
        assert run.params["eval.early.seconds"] == "[0.5, 1.0, 2.0, 4.0]"
        assert run.metrics["params/total_paper"] > 20_000
        assert run.metrics["latency/window_ms_p50"] > 0
        # the monitor's replays of the validation split, at the run's tuned thresholds
        assert 0.0 <= run.metrics["val/stream_p_within_0.5s_rate"] <= 1.0
        assert run.metrics["val/stream_misses"] + run.metrics["val/stream_false_events"] >= 0
        assert [a.path for a in tracker.client.list_artifacts(run.run_id, "replays")] == [
            "replays/val_scenarios_summary.json"]
        for key in ("train/loss", "val/loss"):
            history = tracker.client.get_metric_history(run.run_id, key)
            assert [m.step for m in history] == [0] and math.isfinite(history[0].value)
        for key in ("model", "rnn", "picker_rnn", "cnn_blocks", "rnn_blocks", "data_version",
                    "thresholds.detection", "train.lr", "model.units"):
            assert key in run.params, key
        assert run.params["model"] == "feq3" and run.params["cnn_blocks"] == "2"
        assert run.params["data_version"].endswith(".dir")
        top = {a.path for a in tracker.client.list_artifacts(run.run_id)}
        assert {"config.yaml", "threshold_grid.csv", "test_probabilities.npz", "weights",
                "plots", "model", "test_early_probabilities.npz",
                "val_early_probabilities.npz"} <= top
        weights = {a.path for a in tracker.client.list_artifacts(run.run_id, "weights")}
        assert weights == {"weights/model.pt", "weights/model.onnx"}
        plots = {a.path for a in tracker.client.list_artifacts(run.run_id, "plots")}
        assert {"plots/example_traces.png", "plots/confusion_matrix.png",
                "plots/residuals.png", "plots/threshold_curves.png"} <= plots


def training_runs(uri: str) -> list:
    """Every run of the experiment that trained (not a parent, not an evaluation-only run)."""
    tracker = Tracker(uri, EXPERIMENT)
    return [r for r in tracker.client.search_runs([tracker.experiment_id], "")
            if r.data.tags.get("feq.role") != "parent" and TAG_EVALUATED_RUN not in r.data.tags]


def test_rerun_of_a_trained_grid_trains_nothing_and_re_evaluates(lab):
    cwd, uri = lab["cwd"], lab["uri"]
    first = {r.params["rnn"]: r.run_id for r in load_runs(uri, EXPERIMENT,
                                                          parent_run_id=parent_id(cwd / "sweep1"))}
    trained_before = len(training_runs(uri))
    proc = feq_lab(["-m", "rnn=gru,bilstm", f"hydra.sweep.dir={cwd / 'sweep2'}",
                    *lab["common"]], cwd)
    assert (proc.stdout + proc.stderr).count("nothing trained") == 2
    assert len(training_runs(uri)) == trained_before
    again = load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep2"))
    assert {r.params["rnn"]: r.tags[TAG_EVALUATED_RUN] for r in again} == first
    for r in again:  # the same numbers: same stored probabilities, same evaluation settings
        (orig,) = [o for o in load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep1"))
                   if o.run_id == r.tags[TAG_EVALUATED_RUN]]
        for key in ("val/s_f1", "test/p_f1", "test/detection_fn", "latency/onnx_window_ms_p50",
                    "test/early_p_recall_2s", "val/early_p_precision_1s"):
            assert r.metrics[key] == orig.metrics[key], key


def test_threshold_grid_after_one_training_trains_nothing_one_evaluation_each(lab):
    cwd, uri = lab["cwd"], lab["uri"]
    (gru,) = [r for r in load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep1"))
              if r.params["rnn"] == "gru"]
    trained_before = len(training_runs(uri))
    feq_lab(["-m", "rnn=gru", "thresholds.detection=0.2,0.3,0.5",
             f"hydra.sweep.dir={cwd / 'sweep5'}", *lab["common"]], cwd)
    assert len(training_runs(uri)) == trained_before  # nothing trained
    runs = load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep5"))
    assert sorted(r.metrics["thresholds/detection"] for r in runs) == [0.2, 0.3, 0.5]
    assert {r.tags[TAG_EVALUATED_RUN] for r in runs} == {gru.run_id}
    assert all(r.status == "FINISHED" and "val/detection_f1_ci_low" in r.metrics for r in runs)
    assert {r.name for r in runs} == {f"FEQ3 rnn=gru @ detection={t}" for t in (0.2, 0.3, 0.5)}
    tracker = Tracker(uri, EXPERIMENT)
    assert tracker.client.get_run(parent_id(cwd / "sweep5")).info.run_name.startswith("grid ")


def test_duplicate_effective_config_is_trained_once(lab):
    """`model=feq3` is the grid point rnn=bilstm (cnn_blocks=2) already trained in sweep 1."""
    cwd, uri = lab["cwd"], lab["uri"]
    (bilstm,) = [r for r in load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep1"))
                 if r.params["rnn"] == "bilstm"]
    trained_before = len(training_runs(uri))
    feq_lab(["model=feq3", f"hydra.run.dir={cwd / 'single'}", *lab["common"]], cwd)
    assert len(training_runs(uri)) == trained_before
    tracker = Tracker(uri, EXPERIMENT)
    (latest,) = tracker.client.search_runs([tracker.experiment_id], "", max_results=1,
                                           order_by=["attributes.start_time DESC"])
    assert latest.data.tags[TAG_EVALUATED_RUN] == bilstm.run_id
    assert latest.info.run_name == "FEQ3"  # the preset's name, not a hash


def test_crashing_job_is_failed_and_sweep_goes_on_same_seed_same_metrics(lab):
    cwd, uri = lab["cwd"], lab["uri"]
    feq_lab(["-m", "cnn_blocks=0,2", f"hydra.sweep.dir={cwd / 'sweep3'}", *lab["common"]], cwd)
    runs = {r.status: r for r in load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep3"))}
    assert set(runs) == {"FAILED", "FINISHED"}
    assert "cnn_blocks" in runs["FAILED"].tags[TAG_ERROR]
    assert runs["FAILED"].tags[TAG_ERROR].startswith("ConfigError")
    # cnn_blocks=2 is FEQ3's own value: the same effective config as sweep 1's bilstm job
    again = runs["FINISHED"]
    (before,) = [r for r in load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep1"))
                 if r.params["rnn"] == "bilstm"]
    assert again.tags[TAG_CONFIG_HASH] == before.tags[TAG_CONFIG_HASH]
    keys = [k for k in before.metrics if k.startswith(("test/", "params/", "train/", "val/"))]
    assert keys
    for key in keys:
        a, b = before.metrics[key], again.metrics[key]
        assert (math.isnan(a) and math.isnan(b)) or a == b, (key, a, b)


def test_thresholds_tuned_on_the_validation_split(lab):
    """Thresholds come from the validation grid (the default: thresholds.*=null), the test
    headline metrics are the test grid's row at exactly those thresholds, both grids are stored,
    and val/* carries the test/* keys with intervals."""
    import pandas as pd

    cwd, uri = lab["cwd"], lab["uri"]
    (run,) = [r for r in load_runs(uri, EXPERIMENT, parent_run_id=parent_id(cwd / "sweep1"))
              if r.params["rnn"] == "gru"]
    tuned = {o: run.metrics[f"thresholds/{o}"] for o in ("detection", "p", "s")}
    assert tuned["detection"] in (0.3, 0.5) and tuned["p"] in (0.1, 0.3) and tuned["s"] == 0.1
    client = Tracker(uri, EXPERIMENT).client
    val = pd.read_csv(client.download_artifacts(run.run_id, "val_threshold_grid.csv", str(cwd)))
    assert val["detection_f1"].max() == run.metrics["val/detection_f1"]
    test = pd.read_csv(client.download_artifacts(run.run_id, "threshold_grid.csv", str(cwd)))
    row = test[(test.detection_threshold == tuned["detection"]) & (test.p_threshold == tuned["p"])
               & (test.s_threshold == tuned["s"])].iloc[0]
    for key in ("detection_f1", "p_f1", "s_f1"):
        assert abs(row[key] - run.metrics[f"test/{key}"]) < 1e-9, key
        for split in ("val", "test"):
            low, high = (run.metrics[f"{split}/{key}_ci_{e}"] for e in ("low", "high"))
            assert 0.0 <= low <= run.metrics[f"{split}/{key}"] + 1e-9 <= high + 2e-9
    assert {"test_eqt/s_f1", "val_eqt/detection_fn"} <= set(run.metrics)
    assert {"feq.latency.kernels", "feq.latency.threads", "feq.latency.device"} <= set(run.tags)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_against_a_real_mlflow_server(tmp_path, store_template):
    from feq_lab.data.subset import prepare

    shutil.copy(store_template, tmp_path / "server.db")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not become healthy"
            time.sleep(0.5)
        prepare({"kind": "synthetic", "out_dir": str(tmp_path / "subset"), "n_earthquakes": 32,
                 "n_noise": 8, "seed": 3})
        # the classical baseline and a learned preset, both against the server
        feq_lab(["-m", "model=stalta,feq2", f"tracking.uri={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 f"data.out_dir={tmp_path / 'subset'}", *TINY], tmp_path)
        runs = {r.params["model"]: r for r in load_runs(url, EXPERIMENT)}
        assert set(runs) == {"stalta", "feq2"}
        assert all(r.status == "FINISHED" for r in runs.values())
        for key in ("test/detection_f1", "test/p_f1", "test/s_f1", "test/p_fn"):
            assert key in runs["stalta"].metrics and key in runs["feq2"].metrics
        assert "params/total_paper" not in runs["stalta"].metrics
        assert runs["feq2"].metrics["params/total_paper"] == 30_512  # REFERENCE §5.4
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
        assert any((tmp_path / "mlartifacts").rglob("model.onnx"))  # artifacts via the server
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def test_seeds_expands_into_a_seed_sweep_of_replicates():
    from feq_lab.__main__ import expand_seeds
    from feq_lab.errors import FeqLabError

    assert expand_seeds(["p", "model=feq3", "seeds=3", "seed=7"]) == [
        "p", "-m", "model=feq3", "seed=7,8,9"]
    assert expand_seeds(["p", "-m", "model=feq2,feq3", "seeds=2"])[-1] == "seed=42,43"
    assert expand_seeds(["p", "seeds=1", "model=leq"]) == ["p", "model=leq"]
    for bad in (["p", "seeds=0"], ["p", "seeds=x"], ["p", "seeds=2", "seed=1,2"]):
        with pytest.raises(FeqLabError, match="seeds"):
            expand_seeds(bad)
