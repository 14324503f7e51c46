"""Sweeps of the real main job on tiny data: parallel launchers into one SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sweeper_helpers import mlflow_runs, prepare_tiny_data, run_main_job, tiny_job_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("sweep_data") / "subset")


def _children_of_parent(tmp_path: Path, sweep_dir: Path) -> list:
    parent_id = (sweep_dir / "mlflow_parent_run_id").read_text().strip()
    runs = mlflow_runs(tmp_path / "mlflow.db")
    assert parent_id in {r.info.run_id for r in runs}
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_joblib_two_job_optuna_search_logs_both_runs_and_the_pareto_front(tmp_path, tiny_data):
    run_main_job(
        tmp_path, "hparams_search=optuna_mo", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *tiny_job_overrides(tiny_data),
    )
    study = optuna.load_study(study_name="feq-f1-latency", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    sweep_dir = tmp_path / "multirun" / "optuna" / "feq-f1-latency"
    children = _children_of_parent(tmp_path, sweep_dir)
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    assert all("test/s_f1" in r.data.metrics and "val/s_f1" in r.data.metrics for r in children)
    assert (sweep_dir / "pareto_front.csv").is_file() and (sweep_dir / "pareto_front.png").is_file()
    parent = next(r for r in mlflow_runs(tmp_path / "mlflow.db")
                  if r.info.run_id == (sweep_dir / "mlflow_parent_run_id").read_text().strip())
    from mlflow import MlflowClient

    logged = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(parent.info.run_id, "optuna")
    assert {Path(a.path).name for a in logged} >= {"pareto_front.csv", "pareto_front.png"}


def test_submitit_local_two_job_grid_logs_both_runs(tmp_path, tiny_data):
    sweep_dir = tmp_path / "multirun" / "grid"
    run_main_job(
        tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}", "rnn=gru,bilstm", *tiny_job_overrides(tiny_data),
    )
    children = _children_of_parent(tmp_path, sweep_dir)
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    assert sorted(r.data.params.get("rnn", "") for r in children) == ["bilstm", "gru"]


def test_optuna_search_on_a_new_store_logs_one_parent_with_two_nested_children(tmp_path, tiny_data):
    """The fresh-clone command of issue 13: the store is created before the first trial, once."""
    assert not (tmp_path / "mlflow.db").exists()
    run_main_job(tmp_path, "hparams_search=optuna_mo", "hydra.sweeper.n_trials=2",
                 *tiny_job_overrides(tiny_data))
    runs = mlflow_runs(tmp_path / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get("feq.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.info.run_id != parents[0].info.run_id]
    assert len(children) == 2
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)


def test_a_store_that_cannot_be_opened_stops_the_sweep_naming_the_store(tmp_path):
    import subprocess
    import sys

    from sweeper_helpers import subprocess_env

    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"not a database" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "feq_lab", "-m", f"tracking.uri=sqlite:///{bad}", "rnn=gru,bilstm",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert f"MLflow store sqlite:///{bad} cannot be opened" in proc.stderr
    assert not (tmp_path / "sweep" / "0").exists()  # no job ran
