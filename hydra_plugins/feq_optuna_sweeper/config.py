"""The sweeper's structured config, registered as `hydra/sweeper=feq_optuna`.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module before
it is in sys.modules, and dataclasses then cannot resolve string annotations. Optional/List/Dict
stay: OmegaConf reads these annotations to type-check the config.
"""
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ObjectiveConf:
    """One objective: a key of the task function's returned dict and its direction."""

    metric: str = "val/s_f1"  # decide on validation; test/* is refused
    direction: str = "maximize"  # maximize | minimize


@dataclass
class SamplerConf:
    """tpe (single objective), nsga2 (multi-objective) or random; `auto` picks by objective count."""

    kind: str = "auto"
    seed: Optional[int] = None
    n_startup_trials: int = 5  # tpe: random trials before the model kicks in
    population_size: int = 8  # nsga2: trials per generation


@dataclass
class PrunerConf:
    """How jobs prune themselves from `monitor` (stored in the study, read by the callback)."""

    kind: str = "median"  # median | none
    monitor: str = "val/loss"
    mode: str = "min"  # min for a loss: reported negated when the study maximises
    n_startup_trials: int = 2  # trials that are never pruned
    n_warmup_steps: int = 1  # epochs of each trial that are never pruned


@dataclass
class FeqOptunaSweeperConf:
    """Study location, budget and search space (`params`: Hydra sweep syntax per key)."""

    _target_: str = "hydra_plugins.feq_optuna_sweeper.feq_optuna_sweeper.FeqOptunaSweeper"
    study_name: str = "feq-lab"
    # RDB storage so a killed search resumes by rerunning the same command; null = in memory.
    # `${hydra.runtime.cwd}`, not `${hydra:...}`: the sweeper is built before HydraConfig is set.
    storage: Optional[str] = "sqlite:///${hydra.runtime.cwd}/optuna.db"
    n_trials: int = 10
    # Trials launched together per batch; null = the launcher's own n_jobs (joblib), else 1.
    n_jobs: Optional[int] = None
    objectives: List[ObjectiveConf] = field(default_factory=lambda: [ObjectiveConf()])
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # Pass `++optuna.{storage,study_name,trial_number}` to each job (pruning callback).
    pass_trial_info: bool = True
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="feq_optuna", node=FeqOptunaSweeperConf, provider="feq_lab"
)
