"""The optuna sweeper's mechanics on a toy Hydra app (real subprocesses, real SQLite studies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from optuna.trial import TrialState
from sweeper_helpers import TOY_APP, load_toy_study, subprocess_env, toy_study_created


@pytest.fixture
def run_toy(tmp_path):
    """Run `app.py -m <overrides>` in tmp_path; fail the test with the output if it fails."""

    def run(*overrides: str, env: dict[str, str] | None = None, timeout: float = 120):
        proc = subprocess.run(
            [sys.executable, str(TOY_APP), "-m", *overrides],
            cwd=tmp_path, env=env or subprocess_env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    return run



MO = "hydra.sweeper.objectives=[{metric:score,direction:maximize},{metric:cost,direction:minimize}]"


def _states(study) -> list[str]:
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


def test_nan_and_crashed_trials_fail_and_the_search_goes_on(tmp_path, run_toy):
    run_toy("hydra.sweeper.n_trials=4", "nan_at=[1]", "crash_at=[2]")
    study = load_toy_study(tmp_path)
    assert _states(study) == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert "nan" in study.trials[1].user_attrs["feq:outcome"]
    assert "RuntimeError" in study.trials[2].user_attrs["feq:outcome"]
    trials = pd.read_csv(tmp_path / "multirun" / "optuna_trials.csv")
    assert trials["state"].tolist() == _states(study)
    best = json.loads((tmp_path / "multirun" / "optuna_best.json").read_text())
    assert best["best_trials"][0]["trial"] == study.best_trial.number
    assert best["n_complete"] == 2


def test_kill_after_two_trials_then_rerun_ends_with_six_not_eight(tmp_path, run_toy):
    args = [sys.executable, str(TOY_APP), "-m", "hydra.sweeper.n_trials=6"]
    killed = subprocess.Popen(
        args, cwd=tmp_path, env=subprocess_env(TOY_HANG_AT="2"), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until trial 2 is running (it hangs there)
            time.sleep(0.5)
            if not toy_study_created(tmp_path):  # its tables and row are still being written
                continue
            running = load_toy_study(tmp_path).get_trials(states=(TrialState.RUNNING,))
            if [t.number for t in running] == [2]:
                break
        else:
            raise AssertionError("trial 2 never started")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    assert _states(load_toy_study(tmp_path)) == ["COMPLETE", "COMPLETE", "RUNNING"]

    run_toy("hydra.sweeper.n_trials=6")  # the same command again
    study = load_toy_study(tmp_path)
    states = _states(study)
    assert states.count("COMPLETE") == 6 and len(states) == 7
    assert states[2] == "FAIL"  # the killed trial: failed, not counted
    run_toy("hydra.sweeper.n_trials=6")  # a finished search runs nothing more
    assert len(load_toy_study(tmp_path).trials) == 7


def test_multi_objective_search_writes_the_pareto_front(tmp_path, run_toy):
    run_toy(MO, "hydra.sweeper.n_trials=5", "nan_at=[1]")
    study = load_toy_study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    out = tmp_path / "multirun"
    trials = pd.read_csv(out / "optuna_trials.csv")
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) == 4
    # The front, computed here independently: trials no other trial dominates.
    def dominated(row):
        return any(
            o["score"] >= row["score"] and o["cost"] <= row["cost"]
            and (o["score"] > row["score"] or o["cost"] < row["cost"])
            for _, o in done.iterrows()
        )
    expected = sorted(int(r["trial"]) for _, r in done.iterrows() if not dominated(r))
    front = pd.read_csv(out / "pareto_front.csv")
    assert sorted(front["trial"].tolist()) == expected
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_pruned_trial_is_recorded_pruned(tmp_path, run_toy):
    run_toy(
        "hydra.sweeper.n_trials=3", "lightning=true", "bad_at=[2]",
        "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0",
        timeout=180,
    )
    study = load_toy_study(tmp_path)
    assert _states(study) == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert study.trials[2].user_attrs["feq:pruned_at_epoch"] == 0
    # val/loss is a loss, the study maximises: reports are negated so the pruner compares right.
    assert study.trials[0].intermediate_values == {0: -1.0, 1: -1.0, 2: -1.0}


def test_joblib_launcher_runs_batches_of_n_jobs(tmp_path, run_toy):
    run_toy("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=4")
    study = load_toy_study(tmp_path)
    assert _states(study) == ["COMPLETE"] * 4
    job_dirs = {t.user_attrs["feq:job_dir"] for t in study.trials}
    assert job_dirs == {str(tmp_path / "multirun" / str(n)) for n in range(4)}
