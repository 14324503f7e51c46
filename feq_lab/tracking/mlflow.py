"""The lab's only door to MLflow: parent/child runs, params, metrics, artifacts, registry.

Why a wrapper instead of the fluent `mlflow.*` API: jobs of one sweep share one store (a SQLite
file or a server), possibly from several processes (joblib, submitit). Every call here goes
through an explicit `MlflowClient` bound to one URI (no global active-run state) and retries on
SQLite's "database is locked" with exponential backoff.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from feq_lab.errors import ConfigError
from feq_lab.tracking.records import RunRecord
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
# MLflow 3's UI opens an experiment by its kind; without the tag it guesses, and may open this
# one on the GenAI "Overview" page instead of the runs table (values from MLflow's own UI code:
# genai_development | custom_model_development).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
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


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def _check_uri(uri: str) -> str:
    uri = str(uri or "").strip()
    if not uri:
        raise ConfigError("tracking.uri", "empty; use sqlite:///path/mlflow.db or http://host:port")
    if "://" not in uri:
        raise ConfigError("tracking.uri", f"{uri!r} is not a URI (sqlite:///..., http://...)")
    return uri


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
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    warnings.filterwarnings("once", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


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
        db = _sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = with_retry(self._ensure_experiment)
        self.run_id: str | None = None

    # -- experiment and runs -------------------------------------------------------------
    def _ensure_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND,
                                               EXPERIMENT_KIND)
            return exp.experiment_id
        db = _sqlite_path(self.uri)
        location = (db.parent / "mlruns" / self.experiment).resolve().as_uri() if db else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location,
                                                 tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
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
            all_tags["feq.sweep_dir"] = str(Path(sweep_dir).resolve())
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

    def log_pyfunc_model(self, checkpoint: str | os.PathLike, onnx_path: str | os.PathLike | None = None,
                         run_id: str | None = None) -> None:
        """Save the pyfunc wrapper (weights + ONNX as its artifacts) under the run's `model/`."""
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

    def register(self, run_id: str, name: str, alias: str | None = None) -> str:
        """Register the run's pyfunc model (`<run>/model`) as a new version of `name`; set `alias`."""
        return _register(self.client, run_id, name, alias)


def _register(client: MlflowClient, run_id: str, name: str, alias: str | None) -> str:
    """An evaluation-only run registers the model of the training it evaluated; the version
    points at the evaluation run, whose `thresholds/*` the monitor then uses."""
    run = with_retry(client.get_run, run_id)
    trained = run.data.tags.get(TAG_EVALUATED_RUN)
    if trained:
        run = with_retry(client.get_run, trained)
    try:
        with_retry(client.create_registered_model, name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    mv = with_retry(client.create_model_version, name, source, run_id=run_id)
    if alias:
        with_retry(client.set_registered_model_alias, name, alias, mv.version)
    return str(mv.version)


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
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
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
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
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


def register_champion(uri: str, run_id: str, name: str = "feq-picker",
                      alias: str = "champion") -> str:
    """Register `run_id`'s pyfunc model as `name@alias`; returns the new version."""
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
    return _register(client, run_id, name, alias)


def download_model(uri: str, name: str = "feq-picker", alias: str = "champion",
                   dst: str | os.PathLike | None = None) -> tuple[Path, Any]:
    """Download `name@alias`'s pyfunc directory; returns (local dir, model version)."""
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
    try:
        mv = with_retry(client.get_model_version_by_alias, name, alias)
    except MlflowException as exc:
        raise ConfigError("tracking.registry_name",
                          f"no model version {name}@{alias} in {uri} ({exc})") from exc
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="feq-champion-"))
    target.mkdir(parents=True, exist_ok=True)
    if mv.run_id:  # an evaluation-only run's version holds the model of the training it scored
        run = with_retry(client.get_run, mv.run_id)
        owner = run.data.tags.get(TAG_EVALUATED_RUN) or mv.run_id
        local = with_retry(client.download_artifacts, owner, MODEL_ARTIFACT_PATH, str(target))
    else:
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(target),
                                                    tracking_uri=uri)
    return Path(local), mv


def download_artifact(uri: str, run_id: str, path: str, dst: str | os.PathLike) -> Path:
    """Download one artifact (file or folder) of a run to `dst`; returns the local path.

    A bare file name not at the artifact root is searched for one folder deep.
    """
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
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


def load_champion(
    uri: str, name: str = "feq-picker", alias: str = "champion",
    dst: str | os.PathLike | None = None,
) -> tuple[Any, Path | None, dict[str, float] | None]:
    """(PickerModel in eval mode, ONNX path or None, thresholds or None) of the registered
    `name@alias`. Thresholds: the detection/p/s its run's headline metrics used (the run's
    `thresholds/*` metrics, logged by every run), read from the same model version; None when
    the version has no run or the run logged none."""
    from feq_lab.tracking.pyfunc import model_files

    local, mv = download_model(uri, name, alias, dst)
    checkpoint, onnx_path = model_files(local)
    from feq_lab.models import load_checkpoint

    return load_checkpoint(checkpoint), onnx_path, _run_thresholds(uri, mv.run_id)


def _run_thresholds(uri: str, run_id: str | None) -> dict[str, float] | None:
    if not run_id:
        return None
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
    metrics = with_retry(client.get_run, run_id).data.metrics
    keys = {"detection": "thresholds/detection", "p": "thresholds/p", "s": "thresholds/s"}
    if not all(k in metrics for k in keys.values()):
        return None
    return {out: float(metrics[k]) for out, k in keys.items()}


def log_model_run_metrics(uri: str, name: str, alias: str,
                          metrics: Mapping[str, Any]) -> str | None:
    """Log `metrics` on the run of the registered `name@alias` (e.g. the monitor's `stream/*`
    latency over replay scenarios, so selection can use it); returns that run's id, or None
    when the version has no run."""
    client = MlflowClient(tracking_uri=_check_uri(uri), registry_uri=uri)
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
    "Tracker", "load_runs", "load_champion", "download_artifact", "register_champion", "download_model",
    "log_model_run_metrics",
    "latest_parent_run_id", "with_retry", "PARENT_RUN_FILE", "PARENT_RUN_ENV",
    "MODEL_ARTIFACT_PATH", "TAG_CONFIG_HASH", "TAG_DATA_VERSION", "TAG_ERROR", "TAG_RESUMED_FROM",
    "TAG_EVALUATED_RUN", "TAG_CODE_VERSION", "TAG_STUDY",
]
