"""One grid point, end to end: validate and build → prepare data → (resume?) → train →
evaluate → measure → log. `run_job` never lets a job's crash stop a sweep: the run is marked
FAILED with the error as a tag and NaN objectives are returned (unless `reraise`)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from feq_lab.errors import ConfigError
from feq_lab.job.assess import HEADLINE_KEYS, Assessment
from feq_lab.job.checks import check_data, check_evaluation
from feq_lab.job.config import (
    KNOBS,
    code_version,
    config_hash,
    config_yaml,
    effective_config,
    flatten,
    model_config,
    model_name,
    run_params,
    to_plain,
)
from feq_lab.paths import atomic_write_text
from feq_lab.tracking import keys

log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config.yaml"
WEIGHTS_DIR = "weights"


LEARNED = "learned"


@dataclass
class JobPlan:
    """What a validated config will run: a built `LearnedModel` or a `Detector` (baseline)."""

    name: str
    kind: str                    # "learned" | the detector's name ("stalta")
    model: Any = None            # LearnedModel or Detector, built from the `_target_`
    thresholds: dict[str, float | None] | None = None   # None = tuned on validation
    lineage: Any = None          # training.finetune.Lineage when `init_from` gave the weights

    @property
    def spec(self) -> dict[str, Any] | None:
        """A learned model's effective config (`_target_` + `to_config()`); None for a baseline."""
        if self.kind != LEARNED:
            return None
        return {"_target_": self.model.target, **self.model.to_config()}


def _rank() -> int:
    """This process's global rank under DDP (0 when not distributed)."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def seed_everything(seed: Any) -> int:
    import pytorch_lightning as pl

    try:
        value = int(seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError("seed", f"must be an integer, got {seed!r}") from exc
    pl.seed_everything(value, workers=True, verbose=False)
    return value


def plan_job(cfg: DictConfig) -> JobPlan:
    """Validate everything that can be checked without data, and build the model.

    Runs before any store, run or subset is opened (`run_job`), so a typo fails in milliseconds
    and leaves nothing behind.
    """
    from feq_lab.models import LearnedModel, instantiate
    from feq_lab.training.recipe import train_settings

    if model_config(cfg) is None:
        raise ConfigError("model", "missing: choose a preset (model=feq3) or a baseline "
                          "(baseline=stalta)")
    model_cfg = to_plain(model_config(cfg))
    name = model_name(model_cfg)
    seed_everything(cfg.get("seed", 0))
    check_data(cfg.data)
    group = "baseline" if cfg.get("baseline") else "model"
    try:  # the family or baseline the config's `_target_` names (models/protocol.py)
        model = instantiate(model_cfg, **{knob: cfg.get(knob) for knob in KNOBS})
    except ConfigError as exc:  # errors name the group the settings came from
        if group == "model" or not exc.key.startswith("model."):
            raise
        raise ConfigError(group + exc.key[len("model"):],
                          str(exc)[len(exc.key) + 2:]) from exc
    if not isinstance(model, LearnedModel):
        check_evaluation(cfg, thresholds=False)  # a detector has no thresholds
        return JobPlan(name=name, kind=model.name, model=model)
    thresholds = check_evaluation(cfg)
    train_settings(to_plain(cfg.train))  # every train.* key checked before any data work
    lineage = None
    if cfg.get("init_from"):  # fine-tuning: the parent's architecture and weights
        from feq_lab.training.finetune import load_parent

        model, lineage = load_parent(str(cfg.init_from), (cfg.get("tracking") or {}).get("uri"))
        if model.name != name:
            log.warning("init_from=%s is a %s: training that, not model=%s", cfg.init_from,
                        model.name, name)
        name = model.name
    if cfg.get("freeze"):
        from feq_lab.training.finetune import freeze_sections

        freeze_sections(model, list(cfg.freeze))
    return JobPlan(name=name, kind=LEARNED, model=model, thresholds=thresholds, lineage=lineage)


def prepare_data(cfg: DictConfig) -> tuple[Path, str]:
    """The prepared subset directory (built if missing) and its DVC-compatible version."""
    from feq_lab.data.subset import data_version, prepare

    data_dir = Path(prepare(to_plain(cfg.data)))
    return data_dir, str(data_version(data_dir))


def default_name(plan: JobPlan) -> str:
    """A run's name in the MLflow table: the variant (preset + what differs from it), plus any
    threshold fixed by the config (a threshold grid's points differ only there)."""
    fixed = {k: v for k, v in (plan.thresholds or {}).items() if v is not None}
    suffix = (" @ " + " ".join(f"{k}={v:g}" for k, v in fixed.items())) if fixed else ""
    return variant_name(plan) + suffix


def objectives(metrics: Mapping[str, float]) -> dict[str, float]:
    """The task function's return: every headline key (NaN when not measured) + the rest."""
    out = {k: math.nan for k in HEADLINE_KEYS}
    out.update({k: float(v) for k, v in metrics.items()})
    return out


def fit(plan: JobPlan, cfg: DictConfig, data_dir: Path, run_dir: Path,
        loggers: list[Any], callbacks: list[Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """Train `plan.model` (per-epoch metrics to `loggers`; extra Lightning `callbacks`); returns
    (module with the best weights loaded, trainer, checkpoint callback, datamodule)."""
    import torch

    from feq_lab.data.datamodule import SteadDataModule
    from feq_lab.training.module import PickerModule
    from feq_lab.training.recipe import train_settings
    from feq_lab.training.trainer import build_trainer, flushed_denormals

    seed = seed_everything(cfg.get("seed", 0))
    train = cfg.train
    dm = SteadDataModule(
        data_dir,
        batch_size=int(cfg.data.get("batch_size", 32)),
        num_workers=int(cfg.data.get("num_workers", 0)),
        cache_mb=cfg.data.get("cache_mb", 0),
        augment=to_plain(cfg.data.get("augment") or {}),
        seed=seed,
    )
    # a fine-tune keeps its parent's weights: no recipe init (he / prior) on the first batch
    module = PickerModule(plan.model, train_settings(to_plain(train)), fresh=plan.lineage is None)
    trainer, checkpoint = build_trainer(cfg.trainer, train, run_dir, callbacks or (),
                                        optuna_cfg=to_plain(cfg.optuna) if cfg.get("optuna") else None,
                                        loggers=loggers)
    with flushed_denormals():
        trainer.fit(module, datamodule=dm)
    best = checkpoint.best_model_path
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    return module, trainer, checkpoint, dm


def train_and_assess(plan: JobPlan, cfg: DictConfig, data_dir: Path, run_dir: Path,
                     loggers: list[Any]) -> Assessment:
    """Lightning training on the subset (per-epoch metrics to `loggers`), then validation- and
    test-set evaluation (probabilities of both stored) and measurements, as plain results."""
    from feq_lab.data.stead import open_dataset
    from feq_lab.job.assess import (
        evaluate_splits,
        latency_context,
        measure,
        measure_replays,
        predict_early_splits,
        predict_splits,
    )
    from feq_lab.models import save_checkpoint

    module, trainer, checkpoint, dm = fit(plan, cfg, data_dir, run_dir, loggers)
    model = module.model
    dm.setup("test")
    dataset = open_dataset(data_dir)
    device = trainer.strategy.root_device
    val_probs, test_probs = predict_splits(
        model, [dm.val_dataloader(), dm.test_dataloader()], device)
    early = predict_early_splits(model, {"val": dm.split("val"), "test": dm.split("test")},
                                 cfg.get("eval") or {}, device)
    result = evaluate_splits(
        val_probs, test_probs,
        plan.thresholds or {}, cfg.get("eval") or {}, run_dir / "evaluation",
        waveforms=dataset.get_waveform, early=early)
    model = model.cpu().eval()
    weights = run_dir / WEIGHTS_DIR
    ckpt_path = save_checkpoint(model, weights / "model.pt")
    result.add(WEIGHTS_DIR, ckpt_path)
    onnx_path = export_onnx_safely(model, weights / "model.onnx", result.tags)
    result.add(WEIGHTS_DIR, onnx_path)
    result.metrics.update(measure(model, cfg.get("measure"), onnx_path))
    result.tags.update(latency_context(cfg.get("measure")))
    measure_replays(result, cfg, ckpt_path, onnx_path, data_dir, run_dir)
    result.metrics[keys.TRAIN_EPOCHS] = float(trainer.current_epoch)
    if checkpoint.best_model_score is not None:
        result.metrics[keys.VAL_BEST_LOSS] = float(checkpoint.best_model_score)
    result.model = (ckpt_path, onnx_path)
    return result


# What a re-evaluation copies from the training it evaluates: everything the weights alone fix.
TRAINING_METRIC_PREFIXES = ("params/", "size/", "latency/", "train/")
TRAINING_METRIC_KEYS = (keys.VAL_LOSS, keys.VAL_BEST_LOSS, keys.LR, *keys.LOSS_PARTS)


def training_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items()
            if k.startswith(TRAINING_METRIC_PREFIXES) or k in TRAINING_METRIC_KEYS}


def reevaluate(tracker: Any, training_run_id: str, cfg: DictConfig, out_dir: Path,
               data_dir: Path) -> Assessment | None:
    """Evaluate a FINISHED training run's stored val/test probabilities at this config's
    evaluation settings (seconds, no training), and play its stored weights through the replays
    at the thresholds chosen now (`measure.replays`). None when the run stored no validation
    probabilities (trained before they were stored): the caller trains instead."""
    from feq_lab.evaluation.probabilities import load_probabilities
    from feq_lab.job.assess import (
        EARLY_PROBABILITIES_FILE,
        PROBABILITIES_FILE,
        VAL_PROBABILITIES_FILE,
        evaluate_splits,
        measure_replays,
        replays_wanted,
    )
    from feq_lab.tracking.mlflow import download_artifact

    source = out_dir / "source"
    try:
        files = {name: download_artifact(tracker.uri, training_run_id, name, source)
                 for name in (VAL_PROBABILITIES_FILE, PROBABILITIES_FILE)}
    except (FileNotFoundError, OSError) as exc:
        log.warning("run %s cannot be re-evaluated (%s): training again", training_run_id, exc)
        return None
    early = {}
    for split in ("val", "test"):  # runs trained before the early-pick evaluation have none
        name = EARLY_PROBABILITIES_FILE.format(split=split)
        try:
            early[split] = load_probabilities(
                download_artifact(tracker.uri, training_run_id, name, source))
        except (FileNotFoundError, OSError):
            log.info("run %s stored no %s: no early-pick metrics", training_run_id, name)
    result = evaluate_splits(load_probabilities(files[VAL_PROBABILITIES_FILE]),
                             load_probabilities(files[PROBABILITIES_FILE]),
                             to_plain(cfg.get("thresholds") or {}), cfg.get("eval") or {},
                             out_dir / "evaluation", early=early)
    training = tracker.get_record(training_run_id)
    result.metrics.update(training_metrics(training.metrics))
    latency, latency_tags = tracker.measured_latency(training)
    result.metrics.update(latency)
    result.tags.update(latency_tags)
    if replays_wanted(cfg) is None:  # the weights are fetched only to be replayed
        return result
    weights: dict[str, Path | None] = {}
    for name in ("model.pt", "model.onnx"):  # no ONNX file (a failed export): exported again
        try:
            weights[name] = download_artifact(tracker.uri, training_run_id, name, source)
        except (FileNotFoundError, OSError):
            weights[name] = None
    if weights["model.pt"] is None:
        log.info("run %s stored no weights: no replays", training_run_id)
        return result
    measure_replays(result, cfg, weights["model.pt"], weights["model.onnx"], data_dir, out_dir)
    return result


def export_onnx_safely(model: Any, path: Path, tags: dict[str, str]) -> Path | None:
    """ONNX export; a failure becomes the tag `feq.onnx_error` (not fatal: the trained weights
    and metrics are worth keeping)."""
    from feq_lab.export.onnx import export_onnx

    try:
        return export_onnx(model, path)
    except Exception as exc:  # noqa: BLE001 - recorded on the run
        log.warning("ONNX export failed: %s: %s", type(exc).__name__, exc)
        tags["feq.onnx_error"] = f"{type(exc).__name__}: {exc}"
        return None


def assess(plan: JobPlan, cfg: DictConfig, data_dir: Path, run_dir: Path,
           loggers: list[Any]) -> Assessment:
    if plan.kind != LEARNED:
        from feq_lab.job.baseline import assess_baseline

        return assess_baseline(plan.model, data_dir, cfg.get("eval") or {},
                               run_dir / "evaluation")
    return train_and_assess(plan, cfg, data_dir, run_dir, loggers)


def log_assessment(tracker: Any, result: Assessment, run_id: str) -> None:
    """The one recorder: metrics, tags, files and the model, by tracking."""
    tracker.record(result, run_id)


def _is_pruned(exc: BaseException) -> bool:
    return type(exc).__name__ == "TrialPruned"


def run_job(
    cfg: DictConfig,
    run_dir: str | os.PathLike | None = None,
    parent_run_id: str | None = None,
    job_name: str | None = None,
    reraise: bool = False,
) -> dict[str, float]:
    """The whole job; returns the flat metrics (NaN objectives when it failed).

    With `resume=true` (the default) a learned job whose training identity (config hash without
    evaluation settings, data version, training code version) already has a FINISHED training run
    trains nothing: it re-evaluates that run's stored probabilities in a child run tagged
    `feq.evaluated_run` (so a threshold grid costs seconds per point).
    """
    from feq_lab.tracking.mlflow import (
        TAG_CODE_VERSION,
        TAG_CONFIG_HASH,
        TAG_DATA_VERSION,
        TAG_EVALUATED_RUN,
        TAG_RUN_DIR,
        Tracker,
        quiet_logs,
    )

    quiet_logs()
    plan: JobPlan | None = None
    invalid: ConfigError | None = None
    try:  # a single run with a bad config stops here: no store, run, subset or run dir
        plan = plan_job(cfg)
    except ConfigError as exc:
        if reraise:
            raise
        invalid = exc  # a sweep's point: recorded as a FAILED child of the sweep's parent
    if _rank() > 0:  # a DDP worker started by Lightning: join the training, log nothing
        if plan is not None and plan.kind == LEARNED:
            data_dir, _ = prepare_data(cfg)
            fit(plan, cfg, data_dir, Path(run_dir or tempfile.mkdtemp(prefix="feq-rank-")), [])
        return {}
    tracker = Tracker(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="feq-run-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id: str | None = None
    try:
        if invalid is not None:
            raise invalid
        assert plan is not None
        data_dir, version = prepare_data(cfg)
        effective = effective_config(cfg, plan.spec)
        if plan.lineage is not None:  # the identity is the parent version, not a moving alias
            effective["init_from"] = plan.lineage.parent_model
        chash = config_hash(effective)
        tags = {TAG_CONFIG_HASH: chash, TAG_DATA_VERSION: version, "feq.model": plan.name,
                "feq.kind": plan.kind, TAG_CODE_VERSION: code_version(),
                "feq.variant": variant_name(plan), TAG_RUN_DIR: str(run_dir.resolve()),
                **(plan.lineage.tags() if plan.lineage is not None else {})}
        name = job_name or default_name(plan)
        if parent_run_id is None and cfg.get("study"):
            parent_run_id = tracker.study_parent(str(cfg.study), f"training · {cfg.study} study")
        result = None
        found = (tracker.find_finished(chash, version, tags[TAG_CODE_VERSION])
                 if cfg.get("resume") and plan.kind == LEARNED else None)
        if found:
            result = reevaluate(tracker, found, cfg, run_dir, data_dir)
        if result is not None:
            log.info("%s: training identity %s (data %s) already trained as run %s; "
                     "re-evaluated only, nothing trained", name, chash, version, found)
            training = tracker.get_record(found)
            tags.update({k: v for k, v in training.tags.items() if k.startswith("feq.latency.")})
            tags[TAG_EVALUATED_RUN] = found
        run_id = tracker.start_run(name, run_params(effective, version), tags, parent_run_id)
        log.info("MLflow run %s: %s", run_id, name)
        tracker.log_artifact(atomic_write_text(run_dir / CONFIG_ARTIFACT, config_yaml(cfg, effective)),
                             run_id=run_id)
        if result is None:
            from feq_lab.tracking.logger import RunLogger

            result = assess(plan, cfg, data_dir, run_dir, [RunLogger(tracker, run_id)])
        log_assessment(tracker, result, run_id)
        tracker.end_run(run_id, "FINISHED")
        if cfg.get("stage_out"):
            write_stage_outputs(Path(str(cfg.stage_out)), tracker.get_record(run_id), result)
        log.info("run %s FINISHED: %s", run_id, _summary(result.metrics))
        return objectives(result.metrics)
    except Exception as exc:
        _record_failure(tracker, cfg, plan, run_id, parent_run_id, job_name, exc)
        if reraise:
            raise
        return objectives({})


def variant_name(plan: JobPlan) -> str:
    """The variant as a reader names it: the preset, plus the knobs that differ from it."""
    if plan.spec is None:
        return getattr(plan.model, "display_name", plan.name)
    from feq_lab.models import build_model

    own = plan.model.to_config()
    try:
        preset = build_model(plan.name).to_config()
    except (ConfigError, OSError):  # a model config that is no preset file: name its knobs
        preset = {}
    extra = [f"{k}={own[k]}" for k in KNOBS if own.get(k) != preset.get(k)]
    name = " ".join([plan.name.upper()] + extra)
    return name if plan.lineage is None else f"{name} (from {plan.lineage.short})"


STAGE_FILES = ("model.pt", "model.onnx", "val_probabilities.npz", "test_probabilities.npz",
               "val_early_probabilities.npz", "test_early_probabilities.npz",
               "val_outcomes.npz", "test_outcomes.npz")
STAGE_RUN_FILE = "run.json"


def write_stage_outputs(out: Path, record: Any, result: Assessment) -> None:
    """What a DVC training stage tracks: the weights, the stored val/test probabilities and a
    JSON of the run (its MLflow id, params, tags and the threshold-independent metrics).

    Threshold-dependent metrics stay out: they belong to the evaluation stage, so changing a
    threshold never makes a training stage's outputs stale. The classical baseline has no
    thresholds: its metrics and per-trace outcomes are kept whole.
    """
    import json
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for paths in result.artifacts.values() for p in paths}
    baseline = record.tags.get("feq.kind") == "stalta"
    for name in STAGE_FILES:
        if name in by_name and (baseline or "outcomes" not in name):
            shutil.copy2(by_name[name], out / name)
    payload = {"run_id": record.run_id, "name": record.name,
               "params": record.params, "tags": {k: v for k, v in record.tags.items()
                                                 if k.startswith("feq.")},
               "metrics": dict(record.metrics) if baseline else training_metrics(record.metrics)}
    atomic_write_text(out / STAGE_RUN_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _record_failure(tracker: Any, cfg: DictConfig, plan: JobPlan | None, run_id: str | None,
                    parent_run_id: str | None, job_name: str | None, exc: BaseException) -> None:
    """Mark the job's run FAILED (KILLED when pruned), opening one if the job died before."""
    try:
        if run_id is None:
            params = {k: str(v)[:500] for k, v in flatten(to_plain(cfg)).items() if k != "hydra"}
            name = job_name or (default_name(plan) if plan else "failed job")
            run_id = tracker.start_run(name, params, {"feq.failed_before_start": "true"}, parent_run_id)
        if _is_pruned(exc):
            tracker.set_tags({"feq.pruned": "true"}, run_id)
            tracker.end_run(run_id, "KILLED")
            log.info("run %s pruned by the sweeper", run_id)
        else:
            tracker.mark_failed(exc, run_id)
            log.error("run %s FAILED: %s: %s", run_id, type(exc).__name__, exc, exc_info=exc)
    except Exception as inner:  # noqa: BLE001 - never hide the original error
        log.error("could not record the failure in MLflow (%s); original error: %s", inner, exc)


def _summary(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys.SUMMARY_KEYS if k in metrics)
