"""Configs are validated before anything is opened (issue 13): on the command line of every
entry point an invalid value is ONE line on stderr naming the key, exit code 2, no traceback,
and no MLflow run in a real SQLite store (nor a subset, parent run or output file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from feq_lab.paths import PROJECT_ROOT
from feq_lab.tracking.mlflow import load_runs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    """A real, migrated SQLite store with the lab's experiment (what the commands would use)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").create_experiment("feq-lab")
    return path


@pytest.fixture
def store(tmp_path, store_template) -> str:
    shutil.copy(store_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "GIT_PYTHON_REFRESH": "quiet"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={cwd / 'out'}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess, app: str, key: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no traceback, no log record beside it
    assert lines[0].startswith(f"{app}: error: {key}:"), lines[0]
    return lines[0]


@pytest.mark.parametrize("override, key", [
    ("rnn=foo", "rnn"),  # each start costs ~5 s of CPU (torch, Lightning, MLflow imports):
    pytest.param("cnn_blocks=0", "cnn_blocks", marks=pytest.mark.slow),  # the in-process
    pytest.param("thresholds.p=1.5", "thresholds.p", marks=pytest.mark.slow),  # checks: test_loop_config
])
def test_main_job_bad_value_is_one_line_exit_2_and_no_run(tmp_path, store, override, key):
    proc = command("feq_lab", override, f"tracking.uri={store}",
                   f"data.out_dir={tmp_path / 'subset'}", cwd=tmp_path)
    one_error_line(proc, "feq_lab", key)
    assert load_runs(store, "feq-lab") == []
    assert not (tmp_path / "subset").exists()


@pytest.mark.parametrize("override, key", [
    ("thresholds.detection=2", "thresholds.detection"),
    ("eval.replays.scenarios=-1", "eval.replays.scenarios"),
])
def test_evaluate_checks_its_settings_before_its_parent_run(tmp_path, store, override, key):
    (tmp_path / "runs").mkdir()
    proc = command("feq_lab.evaluate", override, f"tracking.uri={store}",
                   f"++evaluate.runs_dir={tmp_path / 'runs'}",
                   f"++evaluate.out={tmp_path / 'evaluation.json'}", cwd=tmp_path)
    one_error_line(proc, "feq_lab.evaluate", key)
    assert load_runs(store, "feq-lab") == [] and not (tmp_path / "evaluation.json").exists()


def test_select_refuses_a_test_key_before_reading_the_store(tmp_path, store):
    proc = command("feq_lab.select", "select.objectives=[{key: test/s_f1, goal: max}]",
                   f"tracking.uri={store}", f"select.output={tmp_path / 'selection.json'}",
                   cwd=tmp_path)
    one_error_line(proc, "feq_lab.select", "select.objectives[0].key")
    assert not (tmp_path / "selection.json").exists()


def test_stream_and_prepare_bad_values_are_one_line(tmp_path):
    proc = command("feq_lab.stream", "model=feq3", "engine.stride=0", "display=none",
                   cwd=tmp_path)
    one_error_line(proc, "feq_lab.stream", "engine.stride")
    proc = command("feq_lab.prepare", "data.n_noise=-1", f"data.out_dir={tmp_path / 's'}",
                   cwd=tmp_path)
    one_error_line(proc, "feq_lab.prepare", "data.n_noise")
    assert not (tmp_path / "s").exists()
