"""`dvc repro` end to end on a fresh copy of the project: the real dvc.yaml, tiny params.

A temp dir gets the project's code and configs, `git init` + `dvc init`, and the pipeline's
`vars` shrunk (20 traces, one epoch of one batch; FEQ2, FEQ3 and the STA/LTA baseline). Proves:
repro runs prepare -> train@<variant> -> evaluate -> select -> report and registers a loadable
champion; a second repro does nothing; a threshold change reruns evaluate/select/report and no
training stage; a policy change reruns select and report only; editing conf/model/feq2.yaml
retrains FEQ2 alone. Plus, without DVC: the default variant list has no two variants with the
same effective config and covers the whole grid.
"""

from __future__ import annotations

import itertools
import json
import math
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
TINY_VARS = [
    {"overrides": {
        "data": "data.n_earthquakes=16 data.n_noise=4 data.batch_size=4",
        "train": "trainer.max_epochs=1 train.limit_train_batches=1 measure.latency_warmup=1 "
                 "measure.latency_repeats=2 eval.bootstrap.n=50"},
     "threads": 1, "study": "default"},
    {"variants": {
        "feq2": {"args": "model=feq2", "model": "feq2", "base": "model/leq",
                 "code": "feq_lab/models"},
        "feq3": {"args": "model=feq3", "model": "feq3", "base": "model/leq",
                 "code": "feq_lab/models"},
        "stalta": {"args": "model=stalta", "model": "stalta", "base": "baseline/stalta",
                   "code": "feq_lab/evaluation/baseline.py"}}},
]
TRAIN = {"train@feq2", "train@feq3", "train@stalta"}
DOWNSTREAM = {"evaluate", "select", "report"}


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


def edit_yaml(path: Path, fn) -> None:
    cfg = yaml.safe_load(path.read_text())
    fn(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


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
    spec["vars"] = TINY_VARS
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    edit_yaml(repo / "conf" / "eval" / "default.yaml",  # 2 validation replays per variant
              lambda c: c["replays"].update(scenarios=2))
    quick = repo / "conf" / "experiment" / "quick.yaml"  # evaluate's latency: 2 runs a pass
    text = quick.read_text()  # (as text: the file's `# @package _global_` line must stay)
    assert "  latency_warmup: 10\n  latency_repeats: 100\n" in text
    quick.write_text(text.replace("  latency_warmup: 10\n  latency_repeats: 100\n",
                                  "  latency_warmup: 1\n  latency_repeats: 8\n"))
    _run(repo, "git", "init", "-q")
    dvcignore = (repo / ".dvcignore").read_text()
    (repo / ".dvcignore").unlink()
    dvc(repo, "init", "-q")
    (repo / ".dvcignore").write_text(dvcignore)
    return repo


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four trainings + five repros: ~11 min on a shared 2-core machine
def test_repro_caches_per_variant_and_evaluation_never_retrains(clone):
    # the parallel driver: DVC's own stages, two trainings at a time, one thread each
    driver = _run(clone, sys.executable, "-m", "feq_lab.repro", "jobs=2", "threads=1")
    logs = "".join(p.read_text() for p in sorted((clone / "outputs" / "repro").glob("*.log")))
    assert ran_stages(logs) == {"prepare"} | TRAIN | DOWNSTREAM, driver[-3000:] + logs[-3000:]
    timings = json.loads((clone / "outputs" / "repro" / "timings.json").read_text())["stages"]
    spans = [(t["start_s"], t["start_s"] + t["seconds"]) for t in timings
             if t["stage"].startswith("train@")]
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2)), spans
    for variant in ("feq2", "feq3"):
        files = {p.name for p in (clone / "runs" / variant).iterdir()}
        assert {"model.pt", "model.onnx", "val_probabilities.npz", "test_probabilities.npz",
                "run.json"} <= files, files
    reports = clone / "reports"
    for name in ("evaluation.json", "selection.json", "report.md", "champion_metrics.json",
                 "threshold_curve.csv", "figures/pareto.png", "figures/thresholds.png"):
        assert (reports / name).exists(), name
    evaluation = json.loads((reports / "evaluation.json").read_text())
    selection = json.loads((reports / "selection.json").read_text())
    assert selection["parent_run_ids"] == evaluation["parent_run_ids"]
    assert selection["champion"]["params"]["model"] in ("feq2", "feq3")  # stalta: a baseline
    decided_on = [o["key"] for o in selection["settings"]["objectives"]]
    assert decided_on and all(k.startswith("val/") for k in decided_on)
    md = (reports / "report.md").read_text()
    assert "STA/LTA" in md and "**(champion)**" in md
    metrics = json.loads(dvc(clone, "metrics", "show", "--json"))
    assert "detection_f1" in json.dumps(metrics)

    # each evaluation run says which training run it scored; the champion loads and predicts
    from feq_lab.tracking.mlflow import TAG_EVALUATED_RUN, load_runs
    from feq_lab.tracking.pyfunc import load_champion

    uri = f"sqlite:///{clone / 'mlflow.db'}"
    runs = load_runs(uri, "feq-lab", parent_run_id=evaluation["parent_run_ids"][0])
    trained = {json.loads((clone / "runs" / v / "run.json").read_text())["run_id"]
               for v in ("feq2", "feq3", "stalta")}
    assert {r.tags[TAG_EVALUATED_RUN] for r in runs} == trained
    assert {r.name for r in runs} == {"FEQ2", "FEQ3", "STA/LTA"}
    # every learned variant played the validation replays through the monitor
    assert {r.name for r in runs if "val/stream_p_within_0.5s_rate" in r.metrics} == {
        "FEQ2", "FEQ3"}
    model, _, thresholds = load_champion(uri)
    assert thresholds is not None
    import torch

    with torch.no_grad():
        det, _p, _s = model(torch.from_numpy(np.random.default_rng(0).standard_normal(
            (1, 3, 6000)).astype(np.float32)))
    assert det.shape == (1, 6000) and float(det.min()) >= 0 and float(det.max()) <= 1

    # the stage scores variants in parallel (one process per core): one at a time gives the same
    serial = clone / "outputs" / "evaluation_serial.json"
    _run(clone, sys.executable, "-m", "feq_lab.evaluate", "++evaluate.runs_dir=runs",
         f"++evaluate.out={serial}", "++evaluate.workers=1", "++evaluate.latency=false")
    one_by_one = {r.name: r.metrics for r in load_runs(
        uri, "feq-lab", parent_run_id=json.loads(serial.read_text())["parent_run_ids"][0])}

    def scores(metrics: dict) -> dict:  # NaN (a metric undefined on tiny data) as a string
        return {k: "nan" if math.isnan(v) else v for k, v in metrics.items()
                if not k.startswith("latency/")}

    assert {r.name: scores(r.metrics) for r in runs} == {
        name: scores(m) for name, m in one_by_one.items()}

    # nothing changed: nothing runs
    assert ran_stages(dvc(clone, "repro")) == set()

    # a threshold changes: training stages stay up to date, evaluation reruns
    edit_yaml(clone / "conf" / "config.yaml",
              lambda c: c["thresholds"].update(detection=0.3))
    status = dvc(clone, "status")
    assert "evaluate:" in status and "train@" not in status and "prepare:" not in status, status
    third = dvc(clone, "repro")
    assert ran_stages(third) == DOWNSTREAM, third[-3000:]
    runs = load_runs(uri, "feq-lab", parent_run_id=json.loads(
        (reports / "evaluation.json").read_text())["parent_run_ids"][0])
    assert {r.metrics["thresholds/detection"] for r in runs if "thresholds/detection"
            in r.metrics} == {0.3}

    # only the policy changes: select and report rerun, never training
    edit_yaml(clone / "conf" / "select" / "constraints.yaml",
              lambda c: c.update(tie_breakers=[{"key": "size/model_mb", "goal": "min"}]))
    assert ran_stages(dvc(clone, "repro")) == {"select", "report"}
    assert "size/model_mb" in (reports / "selection.json").read_text()

    # a training-relevant value of FEQ2's preset: FEQ2 alone retrains
    edit_yaml(clone / "conf" / "model" / "feq2.yaml", lambda c: c.update(dropout=0.2))
    fifth = dvc(clone, "repro")
    assert ran_stages(fifth) == {"train@feq2"} | DOWNSTREAM, fifth[-3000:]


def effective_hashes(arg_lists: list[str]) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    from feq_lab.job.config import config_hash, effective_config
    from feq_lab.job.run import plan_job
    from feq_lab.paths import CONF_DIR

    out = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for args in arg_lists:
            cfg = compose("config", overrides=args.split())
            out[args] = config_hash(effective_config(cfg, plan_job(cfg).spec))
    return out


def test_default_variants_are_distinct_effective_configs_covering_the_grid():
    spec = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    variants = next(v["variants"] for v in spec["vars"] if "variants" in v)
    listed = effective_hashes([v["args"] for v in variants.values()])
    assert len(set(listed.values())) == len(listed), listed  # trained once each
    grid = [f"model=feq3 rnn={r} cnn_blocks={c}"
            for r, c in itertools.product(("gru", "bilstm"), (2, 4))]
    presets = [f"model={m}" for m in ("eqt", "leq", "feq1", "feq2", "feq3", "stalta")]
    wanted = effective_hashes(presets + grid)
    assert set(wanted.values()) == set(listed.values())
    # the duplicate the grid would add is the FEQ3 preset itself
    assert wanted["model=feq3 rnn=bilstm cnn_blocks=2"] == wanted["model=feq3"]
