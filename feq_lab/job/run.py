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
from feq_lab.job.config import (
    KNOBS,
    config_hash,
    config_yaml,
    effective_config,
    flatten,
    model_kind,
    model_name,
    run_params,
    to_plain,
)
from feq_lab.paths import atomic_write_text

log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config.yaml"
WEIGHTS_DIR = "weights"


@dataclass
class JobPlan:
    """What a validated config will run: a built model (learned) or the baseline settings."""

    name: str
    kind: str                    # "learned" | "stalta"
    model: Any = None            # PickerModel for learned runs
    spec: Any = None
    thresholds: dict[str, float] | None = None


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

    Runs before any data is prepared or any run is opened, so a typo fails in milliseconds.
    """
    from feq_lab.evaluation.picks import check_thresholds
    from feq_lab.evaluation.thresholds import check_grid
    from feq_lab.training.recipe import train_settings

    if cfg.get("model") is None:
        raise ConfigError("model", "missing: choose a preset (model=feq3) or model=stalta")
    model_cfg = to_plain(cfg.model)
    name = model_name(model_cfg)
    kind = model_kind(model_cfg)
    seed_everything(cfg.get("seed", 0))
    eval_cfg = cfg.get("eval") or {}
    if eval_cfg.get("threshold_grid"):
        check_grid(eval_cfg.threshold_grid)
    tune_on = eval_cfg.get("tune_thresholds_on")
    if tune_on not in (None, "val"):
        raise ConfigError("eval.tune_thresholds_on", f"must be null or 'val', got {tune_on!r}")
    if tune_on and not eval_cfg.get("threshold_grid"):
        raise ConfigError("eval.tune_thresholds_on", "needs eval.threshold_grid to choose from")
    if kind == "stalta":
        from feq_lab.evaluation.baseline import stalta_config

        stalta_config(model_cfg)
        return JobPlan(name=name, kind=kind)
    thresholds = check_thresholds(to_plain(cfg.get("thresholds") or {}))
    train_settings(to_plain(cfg.train))  # every train.* key checked before any data work
    from feq_lab.models import build_model

    overrides = {knob: cfg.get(knob) for knob in KNOBS}
    model = build_model(model_cfg, **overrides)
    return JobPlan(name=name, kind=kind, model=model, spec=model.spec, thresholds=thresholds)


def prepare_data(cfg: DictConfig) -> tuple[Path, str]:
    """The prepared subset directory (built if missing) and its DVC-compatible version."""
    from feq_lab.data.subset import data_version, prepare

    data_dir = Path(prepare(to_plain(cfg.data)))
    return data_dir, str(data_version(data_dir))


def default_name(plan: JobPlan) -> str:
    if plan.spec is None:
        return plan.name
    s = plan.spec
    return f"{plan.name} rnn={s.rnn} picker_rnn={s.picker_rnn} cnn_blocks={s.cnn_blocks} rnn_blocks={s.rnn_blocks}"


def objectives(metrics: Mapping[str, float]) -> dict[str, float]:
    """The task function's return: every headline key (NaN when not measured) + the rest."""
    out = {k: math.nan for k in HEADLINE_KEYS}
    out.update({k: float(v) for k, v in metrics.items()})
    return out


def fit(plan: JobPlan, cfg: DictConfig, data_dir: Path, run_dir: Path,
        callbacks: list[Any]) -> tuple[Any, Any, Any, Any]:
    """Train `plan.model`; returns (module with the best weights loaded, trainer, checkpoint
    callback, datamodule)."""
    import torch

    from feq_lab.data.datamodule import SteadDataModule
    from feq_lab.training.module import PickerModule
    from feq_lab.training.recipe import train_settings
    from feq_lab.training.trainer import build_trainer

    seed = seed_everything(cfg.get("seed", 0))
    train = cfg.train
    dm = SteadDataModule(
        data_dir,
        batch_size=int(cfg.data.get("batch_size", 32)),
        num_workers=int(cfg.data.get("num_workers", 0)),
        augment=to_plain(cfg.data.get("augment") or {}),
        seed=seed,
    )
    module = PickerModule(plan.model, train_settings(to_plain(train)))
    trainer, checkpoint = build_trainer(cfg.trainer, train, run_dir, callbacks,
                                        optuna_cfg=to_plain(cfg.optuna) if cfg.get("optuna") else None)
    trainer.fit(module, datamodule=dm)
    best = checkpoint.best_model_path
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    return module, trainer, checkpoint, dm


def train_and_assess(plan: JobPlan, cfg: DictConfig, data_dir: Path, run_dir: Path,
                     tracker: Any, run_id: str) -> Assessment:
    """Lightning training on the subset, then test-set evaluation and measurements."""
    from feq_lab.data.stead import open_dataset
    from feq_lab.job.assess import evaluate_probabilities, measure, predict_test
    from feq_lab.models import save_checkpoint
    from feq_lab.tracking.callbacks import EpochMetricsCallback

    module, trainer, checkpoint, dm = fit(plan, cfg, data_dir, run_dir,
                                          [EpochMetricsCallback(tracker, run_id)])
    model = module.model
    dm.setup("test")
    dataset = open_dataset(data_dir)
    eval_cfg = cfg.get("eval") or {}
    thresholds, tuning = dict(plan.thresholds or {}), None
    if eval_cfg.get("tune_thresholds_on") == "val":
        thresholds, tuning = tune_on_validation(model, dm, eval_cfg, trainer.strategy.root_device,
                                                run_dir / "evaluation")
    result = evaluate_probabilities(
        predict_test(model, dm.test_dataloader(), trainer.strategy.root_device),
        thresholds, eval_cfg, run_dir / "evaluation",
        waveforms=dataset.get_waveform)
    # the thresholds the headline test metrics used (tuned or from the config)
    result.metrics.update({f"thresholds/{k}": float(v) for k, v in thresholds.items()})
    if tuning is not None:
        result.metrics.update(tuning.metrics)
        for folder, paths in tuning.artifacts.items():
            for path in paths:
                result.add(folder, path)
    model = model.cpu().eval()
    weights = run_dir / WEIGHTS_DIR
    ckpt_path = save_checkpoint(model, weights / "model.pt")
    result.add(WEIGHTS_DIR, ckpt_path)
    onnx_path = export_onnx_safely(model, weights / "model.onnx", tracker, run_id)
    result.add(WEIGHTS_DIR, onnx_path)
    result.metrics.update(measure(model, cfg.get("measure")))
    result.metrics["train/epochs"] = float(trainer.current_epoch)
    if checkpoint.best_model_score is not None:
        result.metrics["val/best_loss"] = float(checkpoint.best_model_score)
    tracker.log_pyfunc_model(ckpt_path, onnx_path, run_id)
    return result


def tune_on_validation(model: Any, dm: Any, eval_cfg: Any, device: Any,
                       out_dir: Path) -> tuple[dict[str, float], Assessment]:
    """Thresholds chosen on the validation split's threshold grid (never on the test split):
    returns them, plus the validation metrics at them and the validation grid file."""
    from feq_lab.evaluation.probabilities import as_stored
    from feq_lab.evaluation.thresholds import threshold_grid, tune_thresholds
    from feq_lab.job.assess import eval_settings, predict_test, write_table

    val = as_stored(predict_test(model, dm.val_dataloader(), device))
    table = threshold_grid(val, eval_cfg["threshold_grid"], **eval_settings(eval_cfg))
    tuned = tune_thresholds(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Assessment()
    result.add("", write_table(table, out_dir / "val_threshold_grid.csv"))
    row = table[(table["detection_threshold"] == tuned["detection"])
                & (table["p_threshold"] == tuned["p"]) & (table["s_threshold"] == tuned["s"])]
    for key in ("detection_f1", "p_f1", "s_f1", "detection_fn"):
        result.metrics[f"val_tuned/{key}"] = float(row.iloc[0][key])
    log.info("thresholds tuned on the validation split (%d traces): detection %.2f, P %.2f, "
             "S %.2f", len(val.det), tuned["detection"], tuned["p"], tuned["s"])
    return tuned, result


def export_onnx_safely(model: Any, path: Path, tracker: Any, run_id: str) -> Path | None:
    """ONNX export; a failure is tagged on the run (`feq.onnx_error`), not fatal: the trained
    weights and metrics are worth keeping."""
    from feq_lab.export.onnx import export_onnx

    try:
        return export_onnx(model, path)
    except Exception as exc:  # noqa: BLE001 - recorded on the run
        log.warning("ONNX export failed: %s: %s", type(exc).__name__, exc)
        tracker.set_tags({"feq.onnx_error": f"{type(exc).__name__}: {exc}"}, run_id)
        return None


def assess(plan: JobPlan, cfg: DictConfig, data_dir: Path, run_dir: Path, tracker: Any,
           run_id: str) -> Assessment:
    if plan.kind == "stalta":
        from feq_lab.job.baseline import assess_baseline

        return assess_baseline(to_plain(cfg.model), data_dir, cfg.get("eval") or {},
                               run_dir / "evaluation")
    return train_and_assess(plan, cfg, data_dir, run_dir, tracker, run_id)


def log_assessment(tracker: Any, result: Assessment, run_id: str) -> None:
    tracker.log_metrics(result.metrics, run_id=run_id)
    for folder, paths in result.artifacts.items():
        for path in paths:
            tracker.log_artifact(path, folder or None, run_id=run_id)


def _is_pruned(exc: BaseException) -> bool:
    return type(exc).__name__ == "TrialPruned"


def run_job(
    cfg: DictConfig,
    run_dir: str | os.PathLike | None = None,
    parent_run_id: str | None = None,
    job_name: str | None = None,
    reraise: bool = False,
) -> dict[str, float]:
    """The whole job; returns the flat metrics (NaN objectives when it failed)."""
    from feq_lab.tracking.mlflow import (
        TAG_CONFIG_HASH,
        TAG_DATA_VERSION,
        Tracker,
        copy_run_pointer,
    )

    if _rank() > 0:  # a DDP worker started by Lightning: join the training, log nothing
        plan = plan_job(cfg)
        if plan.kind == "learned":
            data_dir, _ = prepare_data(cfg)
            fit(plan, cfg, data_dir, Path(run_dir or tempfile.mkdtemp(prefix="feq-rank-")), [])
        return {}
    tracker = Tracker(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="feq-run-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id: str | None = None
    plan: JobPlan | None = None
    try:
        plan = plan_job(cfg)
        data_dir, version = prepare_data(cfg)
        effective = effective_config(cfg, plan.spec)
        chash = config_hash(effective)
        tags = {TAG_CONFIG_HASH: chash, TAG_DATA_VERSION: version, "feq.model": plan.name,
                "feq.kind": plan.kind}
        name = job_name or default_name(plan)
        if cfg.get("resume"):
            found = tracker.find_finished(chash, version)
            if found:
                log.info("resume: %s already FINISHED as run %s (config %s, data %s); skipped",
                         name, found, chash, version)
                copy_run_pointer(tracker, found, parent_run_id, name, tags)
                return objectives(tracker.get_record(found).metrics)
        run_id = tracker.start_run(name, run_params(effective, version), tags, parent_run_id)
        log.info("MLflow run %s: %s", run_id, name)
        tracker.log_artifact(atomic_write_text(run_dir / CONFIG_ARTIFACT, config_yaml(cfg, effective)),
                             run_id=run_id)
        result = assess(plan, cfg, data_dir, run_dir, tracker, run_id)
        log_assessment(tracker, result, run_id)
        tracker.end_run(run_id, "FINISHED")
        log.info("run %s FINISHED: %s", run_id, _summary(result.metrics))
        return objectives(result.metrics)
    except Exception as exc:
        _record_failure(tracker, cfg, plan, run_id, parent_run_id, job_name, exc)
        if reraise:
            raise
        return objectives({})


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
    keys = ("test/detection_f1", "test/p_f1", "test/s_f1", "latency/window_ms_p50")
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
