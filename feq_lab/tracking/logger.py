"""Per-epoch training metrics to the job's MLflow run, as a Lightning `Logger`.

Why a Logger and not a callback holding the tracker: training hands Lightning a list of loggers
and knows nothing of MLflow; whatever the module logs per epoch (`train/loss`, `val/loss`, the
per-output losses, `lr`) reaches the run with the epoch as step, and swapping the store is a
change here only.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from feq_lab.tracking.mlflow import Tracker


class RunLogger(Logger):
    """Logs Lightning's epoch metrics to one run (step = epoch); the config is logged by the job."""

    def __init__(self, tracker: Tracker, run_id: str):
        super().__init__()
        self._tracker = tracker
        self._run_id = run_id

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self._run_id

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = dict(metrics)
        epoch = values.pop("epoch", None)
        if values:
            self._tracker.log_metrics(values, step=int(epoch) if epoch is not None else step,
                                      run_id=self._run_id)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Nothing: the job logs the whole resolved config as the run's params."""
