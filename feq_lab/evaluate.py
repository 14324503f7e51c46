"""`python -m feq_lab.evaluate`: the DVC `evaluate` stage — every trained variant re-scored from
its stored probabilities at the current evaluation settings, without training.

Why a stage of its own: thresholds and `eval.*` are evaluation, not training. The training
stages (`train@<variant>`) track only what the weights fix (weights, stored val/test
probabilities, a run JSON); this stage depends on them plus `thresholds` and `conf/eval`, so
changing a threshold reruns this stage, `select` and `report`, and retrains nothing.

Each variant gets an MLflow child run named by the variant, tagged `feq.evaluated_run` with the
training run it scored, under one parent per evaluation (named by the study's grid). The
stage's output `reports/evaluation.json` lists that parent (what `select` reads, as it reads a
sweep's) and, per variant, the training and evaluation run ids.

    python -m feq_lab.evaluate ++evaluate.runs_dir=runs ++evaluate.out=reports/evaluation.json
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from feq_lab.errors import ConfigError, DataError, one_line_errors
from feq_lab.evaluation.probabilities import load_probabilities
from feq_lab.job.assess import Assessment, evaluate_splits, latency_context, measure_latencies
from feq_lab.job.checks import check_evaluation
from feq_lab.job.config import flatten, run_params, to_plain
from feq_lab.job.run import STAGE_RUN_FILE, log_assessment, training_metrics
from feq_lab.models import load_checkpoint
from feq_lab.paths import CONF_DIR, atomic_write_text
from feq_lab.tracking.mlflow import TAG_EVALUATED_RUN, TAG_STUDY, Tracker, quiet_logs

log = logging.getLogger("feq_lab.evaluate")


def stage_dirs(runs_dir: Path) -> list[Path]:
    """The training stages' output folders (those holding a run JSON), sorted by name."""
    if not runs_dir.is_dir():
        raise ConfigError("evaluate.runs_dir", f"{runs_dir} is not a folder (run the training "
                          "stages first: `dvc repro`)")
    dirs = sorted(d for d in runs_dir.iterdir() if (d / STAGE_RUN_FILE).is_file())
    if not dirs:
        raise DataError("no trained variant (no */run.json)", path=str(runs_dir))
    return dirs


def evaluation_params(info: dict[str, Any], cfg: DictConfig) -> dict[str, str]:
    """The training run's params with the evaluation settings replaced by the ones used now."""
    params = dict(info.get("params") or {})
    now = {"thresholds": to_plain(cfg.thresholds), "eval": to_plain(cfg.eval)}
    fresh = run_params(now, params.get("data_version"))
    fresh.pop("model", None)
    params = {k: v for k, v in params.items() if not k.startswith(("thresholds.", "eval."))}
    params.update({k: v for k, v in fresh.items() if k in flatten(now) or k == "data_version"})
    return params


def evaluate_variant(stage_dir: Path, cfg: DictConfig, work: Path) -> tuple[dict, Any]:
    """(run JSON of the training, Assessment of this evaluation) for one stage folder."""
    info = json.loads((stage_dir / STAGE_RUN_FILE).read_text())
    if info.get("tags", {}).get("feq.kind") == "stalta":  # no thresholds: scored when it ran
        result = Assessment(metrics=dict(info.get("metrics") or {}))
        for name in ("val_outcomes.npz", "test_outcomes.npz"):
            result.add("", stage_dir / name if (stage_dir / name).exists() else None)
        return info, result
    val, test = stage_dir / "val_probabilities.npz", stage_dir / "test_probabilities.npz"
    for path in (val, test):
        if not path.is_file():
            raise DataError("a trained variant without stored probabilities", path=str(path))
    early = {split: load_probabilities(stage_dir / f"{split}_early_probabilities.npz")
             for split in ("val", "test")
             if (stage_dir / f"{split}_early_probabilities.npz").is_file()}
    result = evaluate_splits(load_probabilities(val), load_probabilities(test),
                             dict(cfg.thresholds), cfg.eval, work / stage_dir.name, early=early)
    result.metrics.update(training_metrics(info.get("metrics") or {}))
    return info, result


def score_variants(dirs: list[Path], cfg: DictConfig, work: Path,
                   workers: int) -> list[tuple[Path, dict, Any]]:
    """`evaluate_variant` for every stage folder, `workers` at a time (forked processes).

    Why: scoring is numpy decoding, bootstrap intervals and figures, ~2 s per variant on one
    core, and it is the serial tail of `dvc repro` after the trainings; the variants are
    independent, so a 2-core machine scores two at once. Latency is timed afterwards, alone."""
    if workers <= 1 or len(dirs) <= 1:
        return [(d, *evaluate_variant(d, cfg, work)) for d in dirs]
    with ProcessPoolExecutor(min(workers, len(dirs)), mp_context=get_context("fork")) as pool:
        done = list(pool.map(evaluate_variant, dirs, [cfg] * len(dirs), [work] * len(dirs)))
    return [(d, *result) for d, result in zip(dirs, done)]


def stage_latencies(dirs: list[Path], measure_cfg: Any) -> dict[str, dict[str, float]]:
    """Latency of every learned variant's stored weights (eager and its stored ONNX export),
    timed round-robin in this one process (`measure_latencies` says why)."""
    models = {}
    for d in dirs:
        if (d / "model.pt").is_file():
            onnx = d / "model.onnx"
            models[d.name] = (load_checkpoint(d / "model.pt"), onnx if onnx.is_file() else None)
    if not models:
        return {}
    log.info("timing %d variants round-robin (batch 1, eager and onnxruntime)", len(models))
    return measure_latencies(models, measure_cfg)


def replay_variant(stage_dir: Path, thresholds: dict[str, float], replays_cfg: dict[str, Any],
                   subset_dir: Path, work: Path) -> tuple[dict[str, float], Path]:
    """One learned variant's study replays (`streaming.replay.study_replay_metrics`), 1 thread."""
    import torch

    from feq_lab.streaming.replay import study_replay_metrics

    torch.set_num_threads(1)
    onnx = stage_dir / "model.onnx"
    return study_replay_metrics(stage_dir / "model.pt", onnx if onnx.is_file() else None,
                                thresholds, replays_cfg, subset_dir,
                                work / "replays" / stage_dir.name)


def stage_replays(scored: list[tuple[Path, dict, Any]], cfg: DictConfig, work: Path,
                  workers: int) -> dict[str, tuple[dict[str, float], Path]]:
    """Every learned variant played through the monitor on `eval.replays.split` (validation by
    default) at its tuned thresholds: (metrics, summary file) per stage folder name.

    Why here: selection may bound the real-time P accuracy (`val/stream_*`) of what ships, and
    only this stage knows each variant's tuned thresholds. Variants run `workers` at a time (each
    1 thread, onnxruntime: what the monitor runs); the scenarios are deterministic."""
    from feq_lab.streaming.replay import tuned_thresholds

    replays = to_plain(cfg.eval.get("replays") or {})
    n = int(replays.get("scenarios") or 0)  # checked by check_evaluation, before any run
    found = [(d, tuned_thresholds(result.metrics)) for d, _, result in scored
             if n and (d / "model.pt").is_file()]
    jobs = [(d, th) for d, th in found if th is not None]
    if not jobs:
        return {}
    subset = Path(str(cfg.data.get("out_dir") or "data/subset"))
    log.info("replaying %d scenarios of the %s split with %d variants (the monitor, onnxruntime, "
             "1 thread each)", n, replays.get("split", "val"), len(jobs))
    args = ([d for d, _ in jobs], [th for _, th in jobs], [replays] * len(jobs),
            [subset] * len(jobs), [work] * len(jobs))
    if workers <= 1 or len(jobs) <= 1:
        done = list(map(replay_variant, *args))
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)),
                                 mp_context=get_context("fork")) as pool:
            done = list(pool.map(replay_variant, *args))
    return {d.name: result for (d, _), result in zip(jobs, done)}


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate every stage folder, log one child run each, write the evaluation JSON."""
    quiet_logs()
    ev = cfg.get("evaluate") or {}
    runs_dir, out = Path(str(ev.get("runs_dir", "runs"))), Path(str(ev.get("out",
                                                                           "reports/evaluation.json")))
    check_evaluation(cfg)  # thresholds and eval.* before the store or a parent run is opened
    dirs = stage_dirs(runs_dir)
    tracker = Tracker(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    study = str(cfg.get("study") or "default")
    title = str(ev.get("title") or f"{len(dirs)} variants")
    parent = tracker.parent_run(f"evaluation · {study} study · {title}"[:250],
                                tags={TAG_STUDY + ".evaluation": study})
    rows = []
    with tempfile.TemporaryDirectory(prefix="feq-evaluate-") as tmp:
        workers = int(ev.get("workers") or os.cpu_count() or 1)
        scored = score_variants(dirs, cfg, Path(tmp), workers)
        latencies = stage_latencies(dirs, cfg.get("measure")) if ev.get("latency", True) else {}
        replays = stage_replays(scored, cfg, Path(tmp), workers)
        for d, info, result in scored:
            tags = {**(info.get("tags") or {}), TAG_EVALUATED_RUN: info["run_id"]}
            if d.name in latencies:
                result.metrics.update(latencies[d.name])
                tags.update(latency_context(cfg.get("measure")))
            if d.name in replays:
                metrics, summary = replays[d.name]
                result.metrics.update(metrics)
                result.add("replays", summary)
            name = tags.get("feq.variant") or info.get("name") or d.name
            run_id = tracker.start_run(name, evaluation_params(info, cfg), tags, parent)
            log_assessment(tracker, result, run_id)
            tracker.end_run(run_id, "FINISHED")
            rows.append({"variant": d.name, "name": name, "training_run_id": info["run_id"],
                         "run_id": run_id})
            log.info("%s: evaluated training run %s as run %s", name, info["run_id"], run_id)
    tracker.end_run(parent, "FINISHED")
    payload = {"parent_run_ids": [parent], "runs": rows}
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    log.info("wrote %s (%d variants, parent run %s)", out, len(rows), parent)
    return payload


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("feq_lab.evaluate"):
        run_evaluate(cfg)


if __name__ == "__main__":
    main()
