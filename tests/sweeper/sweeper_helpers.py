"""Helpers for the sweeper tests: run the toy Hydra app (or the main job) as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_APP = Path(__file__).resolve().parent / "toy_app" / "app.py"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The repo root on PYTHONPATH (hydra_plugins + feq_lab), one thread, headless plots."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


@pytest.fixture
def run_toy(tmp_path):
    """Run `app.py -m <overrides>` in tmp_path; fail the test with the output if it fails."""

    def run(*overrides: str, env: dict[str, str] | None = None, timeout: float = 120):
        proc = subprocess.run(
            [sys.executable, str(TOY_APP), "-m", *overrides],
            cwd=tmp_path, env=env or subprocess_env(), capture_output=True, text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    return run


def load_toy_study(tmp_path: Path, name: str = "toy"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
