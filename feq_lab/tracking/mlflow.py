"""The lab's only door to MLflow: parent/child runs, params, metrics, artifacts, registry.

Why a wrapper instead of the fluent `mlflow.*` API: jobs of one sweep share one store (a SQLite
file or a server), possibly from several processes (joblib, submitit). Every call here goes
through an explicit `MlflowClient` bound to one URI (no global active-run state) and retries on
SQLite's "database is locked" with exponential backoff.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from feq_lab.errors import ConfigError
from feq_lab.tracking import keys
from feq_lab.tracking.records import RunRecord, RunResult
from feq_lab.tracking.store import check_uri as _check_uri
from feq_lab.tracking.store import open_store
from feq_lab.tracking.store import sqlite_path as _sqlite_path
from feq_lab.tracking.sweep_callback import PARENT_RUN_ENV, PARENT_RUN_FILE  # noqa: F401

log = logging.getLogger(__name__)
T = TypeVar("T")

TAG_ROLE = "feq.role"                      # parent | child | run
TAG_CONFIG_HASH = "feq.config_hash"
TAG_DATA_VERSION = "feq.data_version"
TAG_ERROR = "feq.error"
TAG_ERROR_TYPE = "feq.error_type"
TAG_RESUMED_FROM = "feq.resumed_from"      # a resumed job's pointer to the FINISHED run it reuses
TAG_EVALUATED_RUN = "feq.evaluated_run"    # an evaluation-only run: the training run it evaluated
TAG_CODE_VERSION = "feq.code_version"      # hash of the training code (job.config.code_version)
TAG_STUDY = "feq.study"                    # the study parent a DVC stage's run nests under
TAG_SWEEP_DIR = "feq.sweep_dir"            # a parent run's Hydra sweep dir
TAG_RUN_DIR = "feq.run_dir"                # a job's Hydra output dir (inside its sweep dir)
# MLflow 3's UI opens an experiment by its kind; without the tag it guesses, and may open this
# one on the GenAI "Overview" page instead of the runs table (values from MLflow's own UI code:
# genai_development | custom_model_development).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_PARENT = "mlflow.parentRunId"
# MLflow 3's saved views: an experiment tag `mlflow.sharedViewState.<id>` holding
# {name, createdAt, updatedAt, state: "<JSON of the runs page's UI state>"} appears in the
# experiment page's view menu and opens with `?viewStateShareKey=<id>` (format read from MLflow
# 3.17's bundled UI; docs/mlflow-ui.md). The lab stores one: the chart view's F1 vs latency.
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
CHART_VIEW_ID = "feq-f1-vs-latency"
MODEL_ARTIFACT_PATH = "model"              # the pyfunc model inside each run (registered by selection)

MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000
BATCH = 100                                # MLflow's limit of params per log_batch call
LOCK_MARKERS = ("database is locked", "database table is locked", "busy")


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in LOCK_MARKERS)


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 10, base_delay: float = 0.1,
               **kwargs: Any) -> T:
    """Call `fn`, retrying with jittered exponential backoff while SQLite reports a lock."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException or sqlalchemy OperationalError
            if attempt == attempts - 1 or not _is_lock_error(exc):
                raise
            delay = base_delay * (2 ** attempt) * (1 + random.random())
            log.warning("MLflow store locked (%s); retry %d in %.2f s", exc, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def quiet_logs() -> None:
    """Keep a run's log about the run: no per-download progress bars from MLflow, no Lightning
    promotional tips, and a third-party deprecation notice at most once (Python's default).

    Called by the entry points once, at start; filters only, nothing that changes a result.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    warnings.filterwarnings("once", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # MLflow's own SQL store query options (SQLAlchemy 2.1), nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated.*")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def chart_view_state() -> dict[str, Any]:
    """The runs page's chart view as MLflow 3's UI stores it: one section with one scatter chart,
    validation S F1 (what searches maximise) against the onnxruntime latency (what selection
    reads), over up to 100 runs."""
    section = "feq-section-decision"
    return {
        "compareRunCharts": [{
            "uuid": "feq-chart-f1-vs-latency", "type": "SCATTER", "runsCountToCompare": 100,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "displayName": "val S F1 vs latency (onnxruntime)",
            "xaxis": {"key": keys.LATENCY_ONNX_P50, "type": "METRIC"},
            "yaxis": {"key": keys.split_key("val", "s_f1"), "type": "METRIC"},
        }],
        "compareRunSections": [{"uuid": section, "name": "Decision: F1 vs latency", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
    }


def experiment_tags(now_ms: int | None = None) -> dict[str, str]:
    """Tags every lab experiment carries: its kind (the runs table, not the GenAI overview) and
    the saved chart view F1 vs latency."""
    stamp = int(time.time() * 1000) if now_ms is None else int(now_ms)
    view = {"name": "F1 vs latency", "createdAt": stamp, "updatedAt": stamp,
            "state": json.dumps(chart_view_state(), separators=(",", ":"))}
    return {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND,
            SAVED_VIEW_PREFIX + CHART_VIEW_ID: json.dumps(view, separators=(",", ":"))}


class Tracker:
    """One MLflow experiment on one store; holds the current run id (`run_id`).

    For a SQLite store the artifacts go next to the database (`<db dir>/mlruns`), wherever the
    process was started, so a store and its artifacts always travel together.
    """

    def __init__(self, uri: str, experiment: str):
        self.uri = _check_uri(uri)
        if not str(experiment or "").strip():
            raise ConfigError("tracking.experiment", "empty experiment name")
        self.experiment = str(experiment)
        self.client = open_store(self.uri)
        self.experiment_id = with_retry(self._ensure_experiment)
        self.run_id: str | None = None

    # -- experiment and runs -------------------------------------------------------------
    def _ensure_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            for key, value in experiment_tags().items():
                if key not in exp.tags or key == TAG_EXPERIMENT_KIND and exp.tags[key] != value:
                    self.client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id
        db = _sqlite_path(self.uri)
        location = (db.parent / "mlruns" / self.experiment).resolve().as_uri() if db else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location,
                                                 tags=experiment_tags())
        except MlflowException as exc:  # created by a parallel job meanwhile
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            log.debug("experiment created concurrently: %s", exc)
            return exp.experiment_id

    def _create_run(self, name: str | None, tags: Mapping[str, Any]) -> str:
        clean = {k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items() if v is not None}
        run = with_retry(self.client.create_run, self.experiment_id, tags=clean, run_name=name)
        return run.info.run_id

    def parent_run(self, name: str, sweep_dir: str | os.PathLike | None = None,
                   tags: Mapping[str, Any] | None = None) -> str:
        """Open a sweep's parent run; write its id to `<sweep_dir>/mlflow_parent_run_id`."""
        all_tags = {TAG_ROLE: "parent", **(tags or {})}
        if sweep_dir is not None:
            all_tags[TAG_SWEEP_DIR] = str(Path(sweep_dir).resolve())
        run_id = self._create_run(name, all_tags)
        if sweep_dir is not None:
            from feq_lab.paths import atomic_write_text

            atomic_write_text(Path(sweep_dir) / PARENT_RUN_FILE, run_id + "\n")
        return run_id

    def reopen_parent(self, run_id: str) -> bool:
        """Reuse a resumed sweep's parent run: RUNNING again, its orphaned RUNNING children KILLED.

        Why: a killed search rerun in the same sweep dir must keep every trial under one parent.
        False when the run is gone or belongs elsewhere (then the caller opens a new parent).
        """
        try:
            run = with_retry(self.client.get_run, run_id)
        except MlflowException:
            return False
        if run.info.experiment_id != self.experiment_id or run.data.tags.get(TAG_ROLE) != "parent":
            return False
        filt = f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'"
        for child in _all_runs(self.client, self.experiment_id, filt):
            with_retry(self.client.set_terminated, child.info.run_id, status="KILLED")
        with_retry(self.client.update_run, run_id, status="RUNNING")
        return True

    def kill_orphans(self, sweep_dir: str | os.PathLike) -> list[str]:
        """Mark KILLED every RUNNING run of this experiment left by an earlier, interrupted
        multirun in `sweep_dir`: its parent and every job run inside it, nested or not (a job
        that could not nest still carries its run dir). Returns their ids."""
        root = Path(sweep_dir).resolve()
        running = _all_runs(self.client, self.experiment_id, "attributes.status = 'RUNNING'")
        orphans = []
        for run in running:
            tags = run.data.tags
            job_dir = tags.get(TAG_RUN_DIR)
            if tags.get(TAG_SWEEP_DIR) == str(root) or (
                    job_dir and Path(job_dir).is_relative_to(root)):
                with_retry(self.client.set_terminated, run.info.run_id, status="KILLED")
                orphans.append(run.info.run_id)
        return orphans

    def start_run(self, name: str | None = None, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> str:
        """Open a run (nested under `parent_run_id` when given) and make it the current one."""
        all_tags = {TAG_ROLE: "child" if parent_run_id else "run", **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        self.run_id = self._create_run(name, all_tags)
        if params:
            self.log_params(params)
        return self.run_id

    @contextmanager
    def child_run(self, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                  name: str | None = None, parent_run_id: str | None = None) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED with the error as a tag if the block raises."""
        run_id = self.start_run(name, params, tags, parent_run_id)
        try:
            yield run_id
        except BaseException as exc:
            self.mark_failed(exc, run_id)
            raise
        self.end_run(run_id, "FINISHED")

    def end_run(self, run_id: str | None = None, status: str = "FINISHED") -> None:
        run_id = run_id or self._current()
        with_retry(self.client.set_terminated, run_id, status=status)

    def mark_failed(self, error: BaseException | str, run_id: str | None = None) -> None:
        """End the run FAILED; the error's type and message become tags (visible in the UI)."""
        run_id = run_id or self._current()
        kind = type(error).__name__ if isinstance(error, BaseException) else "Error"
        text = f"{kind}: {error}" if isinstance(error, BaseException) else str(error)
        try:
            self.set_tags({TAG_ERROR: text, TAG_ERROR_TYPE: kind}, run_id)
        finally:
            with_retry(self.client.set_terminated, run_id, status="FAILED")

    def _current(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no active run: call start_run/child_run first")
        return self.run_id

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any], run_id: str | None = None) -> None:
        run_id = run_id or self._current()
        items = [Param(str(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            with_retry(self.client.log_batch, run_id, params=items[i:i + BATCH])

    def set_tags(self, tags: Mapping[str, Any], run_id: str | None = None) -> None:
        run_id = run_id or self._current()
        items = [RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), BATCH):
            with_retry(self.client.log_batch, run_id, tags=items[i:i + BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None,
                    run_id: str | None = None) -> None:
        """Log numeric metrics (NaN allowed: an undefined residual is not zero)."""
        run_id = run_id or self._current()
        now = int(time.time() * 1000)
        items = [Metric(str(k), _float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            with_retry(self.client.log_batch, run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None,
                     run_id: str | None = None) -> None:
        run_id = run_id or self._current()
        with_retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None,
                      run_id: str | None = None) -> None:
        run_id = run_id or self._current()
        with_retry(self.client.log_artifacts, run_id, str(directory), artifact_path)

    def record(self, result: RunResult, run_id: str | None = None) -> None:
        """Log what a job returned: metrics, tags, artifacts and (when trained) the pyfunc model."""
        run_id = run_id or self._current()
        self.log_metrics(result.metrics, run_id=run_id)
        if result.tags:
            self.set_tags(result.tags, run_id)
        for folder, paths in result.artifacts.items():
            for path in paths:
                self.log_artifact(path, folder or None, run_id=run_id)
        if result.model is not None:
            self.log_pyfunc_model(*result.model, run_id=run_id)

    def log_pyfunc_model(self, checkpoint: str | os.PathLike, onnx_path: str | os.PathLike | None = None,
                         run_id: str | None = None) -> None:
        """Save the pyfunc wrapper (weights + ONNX as its artifacts) under the run's `model/`."""
        # lazy: mlflow.pyfunc adds ~1.5 s of import (measured on the shared 2-core VM) that
        # only a run logging a trained model needs
        from feq_lab.tracking.pyfunc import save_pyfunc_model

        with tempfile.TemporaryDirectory(prefix="feq-pyfunc-") as tmp:
            model_dir = save_pyfunc_model(Path(tmp) / MODEL_ARTIFACT_PATH, checkpoint, onnx_path)
            self.log_artifacts(model_dir, MODEL_ARTIFACT_PATH, run_id)

    # -- queries ---------------------------------------------------------------------------
    def find_finished(self, config_hash: str, data_version: str,
                      code_version: str | None = None) -> str | None:
        """Id of the newest FINISHED *training* run of this config on this data version (and this
        training code, when given); None if none. Pointers and evaluation-only runs lead back to
        the training they stand for."""
        filt = (f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}' and "
                f"tags.`{TAG_DATA_VERSION}` = '{data_version}' and attributes.status = 'FINISHED'")
        if code_version:
            filt += f" and tags.`{TAG_CODE_VERSION}` = '{code_version}'"
        runs = with_retry(self.client.search_runs, [self.experiment_id], filt,
                          max_results=50, order_by=["attributes.start_time DESC"])
        for run in runs:
            if TAG_RESUMED_FROM not in run.data.tags and TAG_EVALUATED_RUN not in run.data.tags:
                return run.info.run_id
        for run in runs:
            target = run.data.tags.get(TAG_RESUMED_FROM) or run.data.tags.get(TAG_EVALUATED_RUN)
            if target:
                return target
        return None

    def measured_latency(self, training: RunRecord) -> tuple[dict[str, float], dict[str, str]]:
        """Latency metrics and `feq.latency.*` tags for a training run: its own when it measured
        them, else those of its newest FINISHED evaluation run that did ((metrics, tags); empty
        when none did). Why: a DVC study's training stages leave latency to the evaluate stage,
        which times every variant alone and logs it on an evaluation run of that training; a
        later re-evaluation (a threshold grid) must carry the same figure, not NaN."""
        def finite(metrics: Mapping[str, float]) -> dict[str, float]:
            return {k: float(v) for k, v in metrics.items()
                    if k.startswith("latency/") and math.isfinite(float(v))}

        own = finite(training.metrics)
        if own:
            return own, {}
        filt = (f"tags.`{TAG_EVALUATED_RUN}` = '{training.run_id}' and "
                "attributes.status = 'FINISHED'")
        for run in with_retry(self.client.search_runs, [self.experiment_id], filt,
                              max_results=50, order_by=["attributes.start_time DESC"]):
            metrics = finite(run.data.metrics)
            if metrics:
                return metrics, {k: v for k, v in run.data.tags.items()
                                 if k.startswith("feq.latency.")}
        return {}, {}

    def study_parent(self, study: str, name: str | None = None) -> str:
        """The parent run of a named study (created once; a DVC stage's run nests under it).

        Two stages starting together may both create one: the oldest wins and the other is
        deleted, so every stage nests under the same parent.
        """
        filt = f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = 'parent'"

        def oldest() -> list[Any]:
            return with_retry(self.client.search_runs, [self.experiment_id], filt,
                              max_results=10, order_by=["attributes.start_time ASC"])
        found = oldest()
        if found:
            return found[0].info.run_id
        mine = self._create_run(name or f"study {study}", {TAG_ROLE: "parent", TAG_STUDY: study})
        found = oldest()
        winner = found[0].info.run_id if found else mine
        if winner != mine:
            with_retry(self.client.delete_run, mine)
        return winner

    def get_record(self, run_id: str) -> RunRecord:
        return _record(with_retry(self.client.get_run, run_id))


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        tags=dict(run.data.tags),
        artifact_uri=run.info.artifact_uri or "",
    )


def _all_runs(client: MlflowClient, experiment_id: str, filt: str) -> list[Any]:
    out, token = [], None
    while True:
        page = with_retry(client.search_runs, [experiment_id], filt, max_results=1000,
                          order_by=["attributes.start_time ASC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def latest_parent_run_id(uri: str, experiment: str) -> str | None:
    """The newest sweep parent of the experiment, or None."""
    client = open_store(uri)
    exp = with_retry(client.get_experiment_by_name, experiment)
    if exp is None:
        return None
    runs = with_retry(client.search_runs, [exp.experiment_id], f"tags.`{TAG_ROLE}` = 'parent'",
                      max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def load_runs(uri: str, experiment: str, parent_run_id: str | None = None) -> list[RunRecord]:
    """The child runs of a sweep as plain records (the newest parent when none is named).

    A job skipped by `resume=true` leaves a pointer child; its record is the FINISHED run it
    reused, so a resumed sweep reads as complete. Without any parent run in the experiment,
    every non-parent run is returned. An unknown experiment gives an empty list.
    """
    client = open_store(uri)
    exp = with_retry(client.get_experiment_by_name, experiment)
    if exp is None:
        return []
    parent = parent_run_id or latest_parent_run_id(uri, experiment)
    if parent is None:
        runs = _all_runs(client, exp.experiment_id, "")
        runs = [r for r in runs if r.data.tags.get(TAG_ROLE) != "parent"]
    else:
        runs = _all_runs(client, exp.experiment_id, f"tags.`{TAG_PARENT}` = '{parent}'")
    records = []
    for run in runs:
        original = run.data.tags.get(TAG_RESUMED_FROM)
        if original:
            try:
                run = with_retry(client.get_run, original)
            except MlflowException:
                log.warning("resumed run %s points to missing run %s", run.info.run_id, original)
        records.append(_record(run))
    return records


def download_artifact(uri: str, run_id: str, path: str, dst: str | os.PathLike) -> Path:
    """Download one artifact (file or folder) of a run to `dst`; returns the local path.

    A bare file name not at the artifact root is searched for one folder deep.
    """
    client = open_store(uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        return Path(with_retry(client.download_artifacts, run_id, path, str(dst)))
    except (MlflowException, OSError) as exc:
        if "/" in path:
            raise
        for folder in with_retry(client.list_artifacts, run_id):
            if folder.is_dir:
                names = [f.path for f in with_retry(client.list_artifacts, run_id, folder.path)]
                if f"{folder.path}/{path}" in names:
                    return Path(with_retry(client.download_artifacts, run_id,
                                           f"{folder.path}/{path}", str(dst)))
        raise FileNotFoundError(f"run {run_id} has no artifact {path!r}") from exc


def log_model_run_metrics(uri: str, name: str, alias: str,
                          metrics: Mapping[str, Any]) -> str | None:
    """Log `metrics` on the run of the registered `name@alias` (e.g. the monitor's `stream/*`
    latency over replay scenarios, so selection can use it); returns that run's id, or None
    when the version has no run."""
    client = open_store(uri)
    mv = with_retry(client.get_model_version_by_alias, name, alias)
    if not mv.run_id:
        return None
    now = int(time.time() * 1000)
    items = [Metric(str(k), _float(v), now, 0) for k, v in metrics.items()]
    with_retry(client.log_batch, mv.run_id, metrics=items)
    return mv.run_id


def copy_run_pointer(tracker: Tracker, original_run_id: str, parent_run_id: str | None,
                     name: str | None, tags: Mapping[str, Any]) -> str:
    """A FINISHED child that stands for `original_run_id` in a resumed sweep (same metrics)."""
    original = tracker.get_record(original_run_id)
    run_id = tracker.start_run(name, original.params,
                               {**tags, TAG_RESUMED_FROM: original_run_id}, parent_run_id)
    tracker.log_metrics(original.metrics)
    tracker.end_run(run_id)
    return run_id


__all__ = [
    "Tracker", "load_runs", "download_artifact", "log_model_run_metrics",
    "latest_parent_run_id", "with_retry", "PARENT_RUN_FILE", "PARENT_RUN_ENV",
    "MODEL_ARTIFACT_PATH", "TAG_CONFIG_HASH", "TAG_DATA_VERSION", "TAG_ERROR", "TAG_RESUMED_FROM",
    "TAG_EVALUATED_RUN", "TAG_CODE_VERSION", "TAG_STUDY",
]
