"""The Lightning Trainer of one run: `cfg.trainer` passed as-is, plus the lab's callbacks
(best-checkpointing on the validation loss, early stopping when `train.early_stopping`,
per-epoch tracking, Optuna pruning when a sweeper asks for it) and `train.grad_clip`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers.logger import Logger

from feq_lab.errors import ConfigError
from feq_lab.plain import to_plain
from feq_lab.training.module import MONITOR
from feq_lab.training.recipe import train_settings

# Trainer arguments the lab sets itself; a trainer config must not fight over them.
OWNED = ("callbacks", "logger", "default_root_dir", "enable_checkpointing")


def build_trainer(
    trainer_cfg: Mapping[str, Any] | None,
    train_cfg: Mapping[str, Any] | None,
    run_dir: str | Path,
    callbacks: Sequence[pl.Callback] = (),
    optuna_cfg: Mapping[str, Any] | None = None,
    loggers: Sequence[Logger] = (),
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer writing its checkpoints under `run_dir/checkpoints`; returns it and the
    checkpoint callback (whose `best_model_path` holds the lowest validation loss). `loggers`
    receive the module's per-epoch metrics (the job passes its tracking logger)."""
    kwargs = dict(to_plain(trainer_cfg) or {})
    train = dict(to_plain(train_cfg) or {})
    clash = sorted(set(kwargs) & set(OWNED))
    if clash:
        raise ConfigError(f"trainer.{clash[0]}", "is set by the lab; remove it from the trainer config")
    settings = train_settings(train)
    checkpoint = ModelCheckpoint(
        dirpath=str(Path(run_dir) / "checkpoints"), filename="best", monitor=MONITOR, mode="min",
        save_top_k=1, save_last=False, auto_insert_metric_name=False)
    all_callbacks: list[pl.Callback] = [checkpoint, *callbacks]
    if settings.early_stopping:
        all_callbacks.insert(0, EarlyStopping(monitor=MONITOR, mode="min", patience=settings.patience))
    if settings.grad_clip is not None:
        if kwargs.get("gradient_clip_val") not in (None, settings.grad_clip):
            raise ConfigError("trainer.gradient_clip_val", "conflicts with train.grad_clip; set one of them")
        kwargs["gradient_clip_val"] = settings.grad_clip
    if optuna_cfg:
        from feq_lab.training.pruning import make_pruning_callback

        all_callbacks.append(make_pruning_callback(optuna_cfg))
    for key in ("limit_train_batches", "limit_val_batches"):
        if key in train and key not in kwargs:
            kwargs[key] = train[key]
    kwargs.setdefault("enable_progress_bar", bool(train.get("progress_bar", True)))
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    # every metric is logged per epoch (on_step=False): a step interval only made Lightning warn
    # that an epoch has fewer batches than it
    kwargs.setdefault("log_every_n_steps", 1)
    trainer = pl.Trainer(
        **kwargs,
        callbacks=all_callbacks,
        logger=list(loggers) or False,
        default_root_dir=str(run_dir),
        enable_checkpointing=True,
    )
    return trainer, checkpoint


@contextmanager
def flushed_denormals() -> Iterator[bool]:
    """Subnormal floats flushed to zero while a model trains (the CPU's FTZ/DAZ mode through
    `torch.set_flush_denormal`; yields whether the CPU supports it), the default mode restored
    after. Why: a few seeds drive activations, gradients or Adam's moments into the subnormal
    range (|x| < 1.2e-38), where every arithmetic op costs a microcode assist. FEQ3 seed 1, quick
    experiment, 2 threads (session 17, AMD EPYC): epochs 2-6 took 14 s each against 11 s with
    the flush (the whole run 116-118 s -> 93 s) and the test F1 was identical. Only training
    runs in this mode: evaluation, latency and the monitor run in the CPU's default one."""
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)

