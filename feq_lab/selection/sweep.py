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

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from feq_lab.errors import FeqLabError, SelectionError
from feq_lab.paths import atomic_write_text

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
    sweeps = []
    for i, grid in enumerate(g for g in grids if g.strip()):
        overrides = shlex.split(grid) + shlex.split(common)
        pid = run_grid(overrides, work_dir / str(i))
        sweeps.append({"overrides": overrides, "parent_run_id": pid})
    if not sweeps:
        raise SelectionError("no grid given: pass at least one non-empty --grid")
    summary = {"parent_run_ids": [s["parent_run_id"] for s in sweeps], "sweeps": sweeps}
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m feq_lab.selection.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("reports/sweep.json"))
    ap.add_argument("--grid", action="append", default=[],
                    help="Hydra sweep overrides of one multirun (repeatable)")
    ap.add_argument("--common", default="", help="overrides added to every grid")
    ap.add_argument("--work-dir", type=Path, default=Path("multirun/dvc-sweep"))
    args = ap.parse_args(argv)
    try:
        summary = run_sweeps(args.grid, args.common, args.out, args.work_dir)
    except FeqLabError as err:
        print(f"feq_lab.selection.sweep: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: parent runs {', '.join(summary['parent_run_ids'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
