"""`dvc repro` end to end on a fresh copy of the project: the real dvc.yaml, tiny params.

A temp dir gets the project's code and configs, `git init` + `dvc init`, and the pipeline's
`vars` shrunk (20 traces, one epoch of one batch, FEQ3 + the STA/LTA baseline). Proves: repro runs
prepare -> sweep -> select -> report and registers a loadable champion; a second repro does
nothing; changing only the selection policy reruns only select and report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from feq_lab.paths import PROJECT_ROOT

COPY = ["feq_lab", "conf", "hydra_plugins", "dvc.yaml", ".dvcignore"]
TINY_VARS = {
    "overrides": {
        "data": "data.n_earthquakes=16 data.n_noise=4 data.batch_size=4",
        "sweep": "trainer.max_epochs=1 train.limit_train_batches=1 measure.latency_warmup=1 "
                 "measure.latency_repeats=2",
    },
    "sweep": {"presets": "model=feq3,stalta", "grid": ""},
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GIT_PYTHON_REFRESH="quiet", DVC_NO_ANALYTICS="1", HYDRA_FULL_ERROR="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return env


def _run(repo: Path, *args: str, timeout: int = 900) -> str:
    proc = subprocess.run(list(args), cwd=repo, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def dvc(repo: Path, *args: str) -> str:
    return _run(repo, sys.executable, "-m", "dvc", *args)


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh 'clone': tracked code and configs only, no data, store or lock file."""
    repo = tmp_path_factory.mktemp("clone")
    for name in COPY:
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    spec["vars"] = [{"overrides": TINY_VARS["overrides"]},
                    {"sweep": TINY_VARS["sweep"]}]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    _run(repo, "git", "init", "-q")
    dvcignore = (repo / ".dvcignore").read_text()
    (repo / ".dvcignore").unlink()
    dvc(repo, "init", "-q")
    (repo / ".dvcignore").write_text(dvcignore)
    return repo


@pytest.mark.slow
def test_repro_noop_and_policy_change_reruns_only_downstream(clone):
    out = dvc(clone, "repro")
    assert ran_stages(out) == {"prepare", "sweep", "select", "report"}, out[-3000:]
    reports = clone / "reports"
    for name in ("sweep.json", "selection.json", "report.md", "champion_metrics.json",
                 "threshold_curve.csv", "figures/pareto.png", "figures/thresholds.png"):
        assert (reports / name).exists(), name
    selection = json.loads((reports / "selection.json").read_text())
    assert selection["champion"]["params"]["model"] == "feq3"  # stalta is a baseline
    assert selection["parent_run_ids"] == json.loads(
        (reports / "sweep.json").read_text())["parent_run_ids"]
    md = (reports / "report.md").read_text()
    assert "STA/LTA" in md and "**(champion)**" in md
    metrics = json.loads(dvc(clone, "metrics", "show", "--json"))
    assert "detection_f1" in json.dumps(metrics)

    # the registered champion loads with the project's loader and predicts on a window
    from feq_lab.tracking.mlflow import load_champion

    model, _, _ = load_champion(f"sqlite:///{clone / 'mlflow.db'}")
    import torch

    with torch.no_grad():
        det, _p, _s = model(torch.from_numpy(np.random.default_rng(0).standard_normal(
            (1, 3, 6000)).astype(np.float32)))
    assert det.shape == (1, 6000) and float(det.min()) >= 0 and float(det.max()) <= 1

    # nothing changed: nothing runs
    again = dvc(clone, "repro")
    assert ran_stages(again) == set(), again

    # only the policy changes: select and report rerun, never prepare or training
    policy = clone / "conf" / "select" / "constraints.yaml"
    cfg = yaml.safe_load(policy.read_text())
    cfg["tie_breakers"] = [{"key": "size/model_mb", "goal": "min"}]
    policy.write_text(yaml.safe_dump(cfg, sort_keys=False))
    status = dvc(clone, "status")
    assert "select:" in status and "prepare:" not in status and "sweep:" not in status, status
    third = dvc(clone, "repro")
    assert ran_stages(third) == {"select", "report"}, third
    assert "size/model_mb" in (reports / "selection.json").read_text()
