"""Per-epoch training metrics reach the job's run through the Lightning logger (step = epoch):
training builds its Trainer with loggers and never sees the tracker."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from feq_lab.models import build_model
from feq_lab.tracking import keys
from feq_lab.tracking.logger import RunLogger
from feq_lab.tracking.mlflow import Tracker
from feq_lab.training.module import PickerModule
from feq_lab.training.recipe import train_settings
from feq_lab.training.trainer import build_trainer


def _batches(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(n, 6000)
    y[:, 1000:1600] = 1.0
    items = [{"x": torch.randn(3, 6000, generator=g), "y_det": y[i], "y_p": y[i], "y_s": y[i]}
             for i in range(n)]
    return DataLoader(items, batch_size=2)


def test_epoch_metrics_go_to_the_run_with_the_epoch_as_step(tmp_path, tmp_path_factory):
    template = tmp_path_factory.getbasetemp() / "store_template.db"
    if not template.is_file():
        Tracker(f"sqlite:///{template}", "warmup")
    shutil.copy(template, tmp_path / "mlflow.db")
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "unit")
    run_id = tracker.start_run("fit")
    torch.manual_seed(0)
    module = PickerModule(build_model("feq2"), train_settings({"lr": 1e-3, "schedule": "constant"}))
    trainer, _ = build_trainer({"accelerator": "cpu", "max_epochs": 2},
                               {"early_stopping": False, "progress_bar": False}, tmp_path,
                               loggers=[RunLogger(tracker, run_id)])
    trainer.fit(module, _batches(2), _batches(2))

    for key in (keys.TRAIN_LOSS, keys.VAL_LOSS, keys.LR, "val/loss_p"):
        history = tracker.client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [0, 1], key
        assert all(math.isfinite(m.value) for m in history)
    assert tracker.client.get_metric_history(run_id, keys.LR)[0].value == pytest.approx(1e-3)
    assert all(keys.is_known(k) for k in tracker.get_record(run_id).metrics)
