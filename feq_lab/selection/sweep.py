"""`python -m feq_lab.selection.sweep`: run the default grid(s) and record their parent runs.

A pipeline stage of earlier `dvc.yaml`s (the default pipeline now has one training stage per
variant and an `evaluate` stage; see dvc.yaml), kept for pipelines that run whole grids as one
stage, e.g. pipelines/. Each `--grid` is one Hydra multirun of the main job
(`python -m feq_lab -m <grid> <common>`), which opens one MLflow parent run. The stage's only
output is a small JSON naming those parent runs, written atomically: the MLflow store itself is
not a DVC output, and `select` reads the runs back through these ids. Why a separate file: DVC
needs a small, stable output to decide whether `select` must rerun.

    python -m feq_lab.selection.sweep --out reports/sweep.json \
        --grid "model=eqt,leq,feq1,feq2,feq3,stalta" --grid "rnn=gru,bilstm cnn_blocks=2,4"
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from feq_lab.errors import ConfigError, SelectionError, one_line_errors
from feq_lab.paths import CONF_DIR, atomic_write_text

PARENT_ID_FILE = "mlflow_parent_run_id"


def run_grid(overrides: Sequence[str], sweep_dir: Path) -> str:
    """Run one multirun of the main job; return its MLflow parent run id."""
    if sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    cmd = [sys.executable, "-m", "feq_lab", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print("+ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise SelectionError(f"the sweep {shlex.join(overrides)} exited with code "
                             f"{proc.returncode}")
    id_file = sweep_dir / PARENT_ID_FILE
    if not id_file.exists():
        raise SelectionError(f"the sweep {shlex.join(overrides)} left no parent run id in "
                             f"{id_file} (is the MLflow sweep callback configured?)")
    return id_file.read_text().strip()


def run_sweeps(grids: Sequence[str], common: str, out: Path,
               work_dir: Path = Path("multirun/dvc-sweep")) -> dict:
    """Run every non-empty grid, then write {"parent_run_ids": [...], "sweeps": [...]}."""
    if isinstance(grids, str) or any(not isinstance(g, str) for g in grids):
        raise ConfigError("grids", f"must be a list of override strings, got {grids!r}")
    if not isinstance(common, str):
        raise ConfigError("common", f"must be one string of overrides, got {common!r}")
    todo = [g for g in grids if g.strip()]
    if not todo:  # checked before anything runs
        raise ConfigError("grids", "no grid given: at least one non-empty string of overrides")
    sweeps = []
    for i, grid in enumerate(todo):
        overrides = shlex.split(grid) + shlex.split(common)
        pid = run_grid(overrides, work_dir / str(i))
        sweeps.append({"overrides": overrides, "parent_run_id": pid})
    summary = {"parent_run_ids": [s["parent_run_id"] for s in sweeps], "sweeps": sweeps}
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    return summary


@hydra.main(config_path=str(CONF_DIR), config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("feq_lab.selection.sweep"):
        grids = list(cfg.grids) if not isinstance(cfg.grids, str) else cfg.grids
        out = Path(str(cfg.out))
        summary = run_sweeps(grids, cfg.common, out, Path(str(cfg.work_dir)))
    print(f"wrote {out}: parent runs {', '.join(summary['parent_run_ids'])}")


if __name__ == "__main__":
    main()
