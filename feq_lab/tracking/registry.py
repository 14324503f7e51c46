"""The model registry, apart from run logging: register a run's pyfunc model as a version of a
name with an alias (selection's champion), and fetch a version's files and thresholds (the monitor).

Why separate from `Tracker`: registering and fetching never open, nest or end runs, and work on
any store (the registry URI equals the tracking URI here)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow.exceptions import MlflowException

from feq_lab.errors import ConfigError
from feq_lab.tracking.keys import OUTPUTS, threshold_key
from feq_lab.tracking.mlflow import MODEL_ARTIFACT_PATH, TAG_EVALUATED_RUN, with_retry
from feq_lab.tracking.store import check_uri, open_store


@dataclass(frozen=True)
class ModelFiles:
    """A registered version fetched to disk: its pyfunc directory and what the monitor needs."""

    directory: Path                          # the pyfunc model dir (artifacts/*.pt, *.onnx)
    version: str
    run_id: str | None
    thresholds: dict[str, float] | None      # the run's `thresholds/*`, None if it logged none


class Registry:
    """Versions and aliases of registered models on one store."""

    def __init__(self, uri: str):
        self.uri = check_uri(uri)
        self.client = open_store(self.uri)

    def register(self, run_id: str, name: str, alias: str | None = None) -> str:
        """Register the run's pyfunc model (`<run>/model`) as a new version of `name`; set `alias`.

        An evaluation-only run registers the model of the training it evaluated; the version
        points at the evaluation run, whose `thresholds/*` the monitor then uses."""
        run = with_retry(self.client.get_run, run_id)
        trained = run.data.tags.get(TAG_EVALUATED_RUN)
        if trained:
            run = with_retry(self.client.get_run, trained)
        try:
            with_retry(self.client.create_registered_model, name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
        mv = with_retry(self.client.create_model_version, name, source, run_id=run_id)
        if alias:
            with_retry(self.client.set_registered_model_alias, name, alias, mv.version)
        return str(mv.version)

    def version(self, name: str, alias: str) -> Any:
        try:
            return with_retry(self.client.get_model_version_by_alias, name, alias)
        except MlflowException as exc:
            raise ConfigError("tracking.registry_name",
                              f"no model version {name}@{alias} in {self.uri} ({exc})") from exc

    def download(self, name: str = "feq-picker", alias: str = "champion",
                 dst: str | os.PathLike | None = None) -> ModelFiles:
        """Download `name@alias`'s pyfunc directory, with the thresholds its run logged."""
        mv = self.version(name, alias)
        target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="feq-champion-"))
        target.mkdir(parents=True, exist_ok=True)
        if mv.run_id:  # an evaluation-only run's version holds the model of the training it scored
            run = with_retry(self.client.get_run, mv.run_id)
            owner = run.data.tags.get(TAG_EVALUATED_RUN) or mv.run_id
            local = with_retry(self.client.download_artifacts, owner, MODEL_ARTIFACT_PATH,
                               str(target))
        else:
            local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(target),
                                                        tracking_uri=self.uri)
        return ModelFiles(Path(local), str(mv.version), mv.run_id or None,
                          self.run_thresholds(mv.run_id))

    def run_thresholds(self, run_id: str | None) -> dict[str, float] | None:
        """The detection/p/s thresholds a run's headline metrics used, None if not logged."""
        if not run_id:
            return None
        metrics = with_retry(self.client.get_run, run_id).data.metrics
        wanted = {out: threshold_key(out) for out in OUTPUTS}
        if not all(k in metrics for k in wanted.values()):
            return None
        return {out: float(metrics[k]) for out, k in wanted.items()}
