"""`python -m feq_lab.selection.sweep` (a Hydra app): a bad config is one line and exit code 2
before anything runs; a real one-grid sweep (the STA/LTA baseline on a tiny subset, a real
SQLite store) writes the summary naming the multirun's MLflow parent run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feq_lab.paths import PROJECT_ROOT


def sweep(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "GIT_PYTHON_REFRESH": "quiet"}
    return subprocess.run([sys.executable, "-m", "feq_lab.selection.sweep", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, message", [
    ([], "feq_lab.selection.sweep: error: grids: no grid given"),
    (['grids=["model=stalta"]', "common=[a]"], "feq_lab.selection.sweep: error: common: must be"),
])
def test_bad_config_is_one_line_exit_2_and_runs_nothing(tmp_path, args, message):
    proc = sweep(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(message)
    assert list(tmp_path.iterdir()) == []  # no multirun, store, log file or summary


@pytest.mark.slow
def test_one_grid_writes_the_parent_run_of_its_multirun(tmp_path):
    from feq_lab.tracking.mlflow import load_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = (f"data.n_earthquakes=16 data.n_noise=4 data.out_dir={tmp_path / 'subset'} "
              f"tracking.uri={uri} eval.bootstrap.n=20")
    proc = sweep(["out=reports/sweep.json", 'grids=["model=stalta"]', f'common="{common}"',
                  "work_dir=multirun/s"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "reports" / "sweep.json").read_text())
    (parent,) = summary["parent_run_ids"]
    assert summary["sweeps"][0]["overrides"][0] == "model=stalta"
    (child,) = load_runs(uri, "feq-lab", parent_run_id=parent)
    assert child.status == "FINISHED" and child.params["model"] == "stalta"
