"""Optuna pruning for the main job: report `val/loss` per epoch to the sweeper's trial.

The sweeper (hydra_plugins/feq_optuna_sweeper) passes `optuna.storage`, `optuna.study_name` and
`optuna.trial_number`; the job finds its trial in that RDB storage, reports each epoch's monitored
value and raises `optuna.TrialPruned` when the study's pruner says so. Before raising it writes the
user attribute `feq:pruned_at_epoch`, so the sweeper records the trial as PRUNED however the job
handles the exception.

Why not optuna_integration.PyTorchLightningPruningCallback: it imports `lightning.pytorch`, and
this project uses the `pytorch_lightning` package (2.6), so its callback is not a Callback here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl

from feq_lab.errors import ConfigError
from feq_lab.tracking import keys

log = logging.getLogger(__name__)

PRUNED_ATTR = "feq:pruned_at_epoch"
PRUNER_STUDY_ATTR = "feq:pruner"
DEFAULT_MONITOR = keys.VAL_LOSS
SQLITE_TIMEOUT_S = 60


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    """The study's RDB storage; SQLite waits for locks since parallel jobs share the file."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        if not Path(url[len("sqlite:///"):]).exists():
            raise ConfigError("optuna.storage", f"no study database at {url}")
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner the sweeper stored in the study (`hydra.sweeper.pruner`)."""
    spec = dict(spec or {})
    kind = str(spec.get("kind", "median")).lower()
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 2)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 1)),
        )
    if kind in ("none", "nop"):
        return optuna.pruners.NopPruner()
    raise ConfigError("hydra.sweeper.pruner.kind", f"must be median or none, got {kind!r}")


class OptunaPruningCallback(pl.Callback):
    """Report the monitored value each epoch; prune (on every rank at once) when told.

    Only the global-zero rank touches the storage; the decision is broadcast so DDP ranks stop
    together. Multi-objective studies cannot prune (optuna reports one value per step), so the
    callback then does nothing.
    """

    def __init__(self, storage: str, study_name: str, trial_number: int, monitor: str | None = None):
        super().__init__()
        self.storage_url = storage
        self.study_name = study_name
        self.trial_number = int(trial_number)
        self.monitor = monitor
        self._trial: optuna.trial.Trial | None = None
        self._disabled = False
        self._sign = 1.0

    def _load_trial(self) -> optuna.trial.Trial | None:
        """Open the study and this job's trial (lazily: only rank zero, after any DDP spawn)."""
        if self._trial is not None or self._disabled:
            return self._trial
        storage = _open_storage(self.storage_url)
        try:
            study = optuna.load_study(study_name=self.study_name, storage=storage)
        except KeyError as err:
            raise ConfigError("optuna.study_name", f"no study {self.study_name!r} in {self.storage_url}") from err
        if len(study.directions) > 1:
            log.info("Study %r is multi-objective: pruning is off", self.study_name)
            self._disabled = True
            return None
        spec = study.user_attrs.get(PRUNER_STUDY_ATTR) or {}
        study.pruner = make_pruner(spec)
        self.monitor = self.monitor or spec.get("monitor") or DEFAULT_MONITOR
        # Pruners compare in the study's direction; a loss (mode min) in a study that maximises
        # S F1 is reported negated, so "worse than the median" means a higher loss.
        mode = str(spec.get("mode", "min")).lower()
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self._sign = -1.0 if (mode == "min") == maximize else 1.0
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, self.trial_number
        )
        self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = int(trainer.current_epoch)
        should_prune = False
        if trainer.is_global_zero:
            trial = self._load_trial()
            value = trainer.callback_metrics.get(self.monitor or DEFAULT_MONITOR)
            if trial is not None and value is not None:
                value = float(value)
                if math.isfinite(value):
                    trial.report(self._sign * value, step=epoch)
                    should_prune = trial.should_prune()
                    if should_prune:
                        trial.set_user_attr(PRUNED_ATTR, epoch)
        should_prune = bool(trainer.strategy.broadcast(should_prune))
        if should_prune:
            raise optuna.TrialPruned(
                f"trial {self.trial_number} of study {self.study_name!r} pruned at epoch {epoch}"
            )


def make_pruning_callback(optuna_cfg: Mapping[str, Any]) -> pl.Callback:
    """The callback for `cfg.optuna` = {storage, study_name, trial_number[, monitor]}."""
    missing = [k for k in ("storage", "study_name", "trial_number") if optuna_cfg.get(k) is None]
    if missing:
        raise ConfigError(f"optuna.{missing[0]}", "set by the optuna sweeper; missing here")
    return OptunaPruningCallback(
        storage=str(optuna_cfg["storage"]),
        study_name=str(optuna_cfg["study_name"]),
        trial_number=int(optuna_cfg["trial_number"]),
        monitor=optuna_cfg.get("monitor"),
    )
