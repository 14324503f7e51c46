"""Callbacks that connect Hydra sweeps and Lightning epochs to MLflow.

- `MLflowSweepCallback` (listed in `hydra.callbacks`): one parent run per multirun, opened in
  `on_multirun_start`; its id goes to `<sweep_dir>/mlflow_parent_run_id` (and an environment
  variable) so every job — basic, joblib or submitit launcher, any sweeper — nests under it.
- `EpochMetricsCallback` (Lightning): per-epoch `train/loss`, `val/loss` (and the learning rate)
  logged to the job's run with the epoch as step.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from feq_lab.tracking import keys
from feq_lab.tracking.mlflow import Tracker
from feq_lab.tracking.sweep_callback import (  # noqa: F401 - re-exported
    MLflowSweepCallback,
    parent_run_id_for_job,
)

log = logging.getLogger(__name__)


class EpochMetricsCallback(pl.Callback):
    """Logs `train/loss`, `val/loss` and `lr` per epoch (step = epoch) to the tracker's run."""

    KEYS = (keys.TRAIN_LOSS, keys.VAL_LOSS)

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker = tracker
        self.run_id = run_id

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = {k: float(trainer.callback_metrics[k]) for k in self.KEYS
                   if k in trainer.callback_metrics}
        if trainer.optimizers:
            metrics["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        if metrics:
            self.tracker.log_metrics(metrics, step=trainer.current_epoch, run_id=self.run_id)
