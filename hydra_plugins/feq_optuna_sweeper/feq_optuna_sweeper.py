"""The Sweeper class Hydra discovers; the optuna work lives in `_impl` (imported lazily)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.feq_optuna_sweeper import config as _config  # noqa: F401  (registers the node)


class FeqOptunaSweeper(Sweeper):
    """Optuna search through Hydra's launcher: one batch of trials per launch, resumable."""

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int | None,
        objectives: Any,
        sampler: Any,
        pruner: Any,
        pass_trial_info: bool,
        params: Any,
    ) -> None:
        from hydra_plugins.feq_optuna_sweeper._impl import SweeperImpl

        self._impl = SweeperImpl(
            study_name=study_name,
            storage=storage,
            n_trials=n_trials,
            n_jobs=n_jobs,
            objectives=objectives,
            sampler=sampler,
            pruner=pruner,
            pass_trial_info=pass_trial_info,
            params=params,
        )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._impl.sweep(arguments)
