"""Helpers for the sweeper tests: run the toy Hydra app (or the main job) as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_APP = Path(__file__).resolve().parent / "toy_app" / "app.py"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The repo root on PYTHONPATH (hydra_plugins + feq_lab), one thread, headless plots."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


def load_toy_study(tmp_path: Path, name: str = "toy"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def toy_study_created(tmp_path: Path, name: str = "toy") -> bool:
    """Whether another process has created the toy study, read without creating anything.
    Why: `load_toy_study` opens Optuna's storage, which creates its tables when they are missing;
    while the sweep's own process creates them, the two `CREATE TABLE`s race ("table studies
    already exists"). The study's row is written after its tables, so once it is there, loading
    creates nothing."""
    import sqlite3

    db = tmp_path / "optuna.db"
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:  # the tables are not there yet (or being written)
        return False
    return row is not None


# -- the main job (`python -m feq_lab`) on tiny data -------------------------------------------

def tiny_job_overrides(data_dir: Path) -> list[str]:
    """Overrides that shrink the quick experiment to seconds: 40 traces, 1 batch, 1 epoch."""
    return [
        "data.n_earthquakes=32", "data.n_noise=8", f"data.out_dir={data_dir}",
        "data.batch_size=8", "trainer.max_epochs=1", "train.limit_train_batches=1",
        "train.progress_bar=false", "eval.n_plot_traces=0",
        "measure.latency_warmup=1", "measure.latency_repeats=3", "measure.replays=false",
    ]


def prepare_tiny_data(data_dir: Path) -> Path:
    """Build the subset the jobs expect (in-process, once), so parallel jobs never race on it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from feq_lab.data.subset import prepare
    from feq_lab.paths import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=tiny_job_overrides(data_dir))
    return Path(prepare(OmegaConf.to_container(cfg.data, resolve=True)))


def run_main_job(cwd: Path, *overrides: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """`python -m feq_lab -m ...` in cwd (its mlflow.db, optuna.db and multirun/ land there).

    tracking.uri is given absolute: the default `${hydra:runtime.cwd}` cannot resolve in the
    sweep callback (Hydra sets HydraConfig only inside jobs).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "feq_lab", "-m", f"tracking.uri=sqlite:///{cwd}/mlflow.db", *overrides],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def mlflow_runs(db: Path) -> list:
    """All runs of the store (parent and children), read with MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], max_results=1000)
