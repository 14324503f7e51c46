"""The search loop: open (or resume) the study, ask a batch, launch it, tell the outcomes."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from feq_lab.errors import ConfigError
from feq_lab.plain import to_plain as _plain
from hydra_plugins.feq_optuna_sweeper._report import log_to_parent_run, write_study_report
from hydra_plugins.feq_optuna_sweeper._space import (
    build_search_space,
    format_value,
    trial_overrides,
)

log = logging.getLogger(__name__)

# Trial user attributes written by the sweeper and by feq_lab.training.pruning.
OUTCOME_ATTR = "feq:outcome"  # "complete" | "pruned" | "failed: <why>" | "interrupted"
METRICS_ATTR = "feq:metrics"  # the finite floats the job returned
JOB_DIR_ATTR = "feq:job_dir"
PRUNED_ATTR = "feq:pruned_at_epoch"  # set by the pruning callback before it raises
PRUNER_STUDY_ATTR = "feq:pruner"  # study attr: how jobs build their pruner
SQLITE_TIMEOUT_S = 60


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


def parse_objectives(objectives: Any) -> list[Objective]:
    """Validate `hydra.sweeper.objectives` (a list of {metric, direction})."""
    items = _plain(objectives)
    if not items or not isinstance(items, (list, tuple)):
        raise ConfigError("hydra.sweeper.objectives", "give a non-empty list of {metric, direction}")
    parsed = []
    for i, item in enumerate(items):
        key = f"hydra.sweeper.objectives[{i}]"
        if not isinstance(item, Mapping) or not item.get("metric"):
            raise ConfigError(key, f"needs a metric and a direction, got {item!r}")
        direction = str(item.get("direction", "")).lower()
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{key}.direction", f"must be maximize or minimize, got {direction!r}")
        if str(item["metric"]).startswith(("test/", "test_")):
            raise ConfigError(f"{key}.metric", f"{item['metric']!r} is a test-split metric: a "
                              "search decides on validation (val/*); test is only reported")
        parsed.append(Objective(str(item["metric"]), direction))
    return parsed


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """An RDB storage; SQLite gets a long lock timeout since parallel jobs write to it too."""
    if url is None:
        return None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        db_path = url[len("sqlite:///"):]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def absolute_storage_url(url: str | None) -> str | None:
    """Make a relative SQLite path absolute (against the launch dir) so every job finds the file."""
    if url is None or not url.startswith("sqlite:///"):
        return url
    db_path = url[len("sqlite:///"):]
    if not db_path or db_path == ":memory:" or os.path.isabs(db_path):
        return url
    return "sqlite:///" + os.path.abspath(db_path)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials: complete, pruned, or failed after their job ran (not killed mid-run)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    outcome = str(trial.user_attrs.get(OUTCOME_ATTR, ""))
    return trial.state == TrialState.FAIL and outcome.startswith("failed")


def fail_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed search as FAIL; they do not count toward n_trials.

    Why: a resumed search must not wait for, nor be charged for, trials whose process is gone.
    Only one sweeper may drive a study at a time.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    if stale:
        log.warning(
            "Study %r: %d trial(s) left running by an interrupted search marked FAIL: %s",
            study.study_name, len(stale), [t.number for t in stale],
        )
    return len(stale)


def make_sampler(cfg: Mapping[str, Any], n_objectives: int, seed_offset: int) -> optuna.samplers.BaseSampler:
    """TPE for one objective, NSGA-II for several (or as configured).

    The seed is offset by the trials already in the study, so a resumed search draws new points
    instead of replaying the first ones.
    """
    kind = str(cfg.get("kind", "auto")).lower()
    if kind == "auto":
        kind = "tpe" if n_objectives == 1 else "nsga2"
    seed = cfg.get("seed")
    seed = None if seed is None else int(seed) + seed_offset
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(cfg.get("n_startup_trials", 5)))
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(cfg.get("population_size", 8)))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError("hydra.sweeper.sampler.kind", f"must be auto, tpe, nsga2 or random, got {kind!r}")


def objective_values(
    objectives: Sequence[Objective], returned: Any
) -> tuple[list[float] | None, str, dict[str, float]]:
    """(values or None, why it failed, finite metrics) from a task function's return value."""
    if isinstance(returned, Mapping):
        metrics = dict(returned)
    elif isinstance(returned, (int, float)) and len(objectives) == 1:
        metrics = {objectives[0].metric: returned}
    else:
        raise ConfigError(
            "hydra.sweeper.objectives",
            f"the task function must return a dict of metrics, got {type(returned).__name__}",
        )
    finite = {
        str(k): float(v) for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    values = []
    for i, objective in enumerate(objectives):
        if objective.metric not in metrics:
            raise ConfigError(
                f"hydra.sweeper.objectives[{i}].metric",
                f"{objective.metric!r} is not among the returned metrics {sorted(metrics)}",
            )
        value = metrics[objective.metric]
        if objective.metric not in finite:
            return None, f"failed: {objective.metric} is {value!r}", finite
        values.append(finite[objective.metric])
    return values, "complete", finite


class SweeperImpl(Sweeper):
    """The work behind `FeqOptunaSweeper` (kept in a `_` module so Hydra's scan skips it)."""

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
        if not study_name:
            raise ConfigError("hydra.sweeper.study_name", "give the study a name")
        if n_trials is None or int(n_trials) < 0:
            raise ConfigError("hydra.sweeper.n_trials", f"must be >= 0, got {n_trials!r}")
        if n_jobs is not None and int(n_jobs) < 1:
            raise ConfigError("hydra.sweeper.n_jobs", f"must be >= 1 or null, got {n_jobs!r}")
        self.study_name = str(study_name)
        self.storage_url = absolute_storage_url(storage)
        self.n_trials = int(n_trials)
        self.n_jobs = None if n_jobs is None else int(n_jobs)
        self.objectives = parse_objectives(objectives)
        self.sampler_cfg = dict(_plain(sampler) or {})
        self.pruner_cfg = dict(_plain(pruner) or {})
        self.pass_trial_info = bool(pass_trial_info)
        self.params = dict(_plain(params) or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        # Hydra sets HydraConfig only inside jobs; set it here so `${hydra:...}` interpolations
        # in the app's config (e.g. tracking.uri) resolve in the sweeper process too.
        HydraConfig.instance().set_config(config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- study -------------------------------------------------------------------------------
    def open_study(self) -> optuna.Study:
        """Create or load the study; refuse one whose directions differ from the config."""
        directions = [o.direction for o in self.objectives]
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage_url),
            directions=directions,
            load_if_exists=True,
        )
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise ConfigError(
                "hydra.sweeper.objectives",
                f"study {self.study_name!r} in {self.storage_url} has directions {stored}, the "
                f"config asks {directions}; pick another hydra.sweeper.study_name",
            )
        study.sampler = make_sampler(self.sampler_cfg, len(directions), len(study.trials))
        study.set_user_attr(PRUNER_STUDY_ATTR, self.pruner_cfg)
        study.set_user_attr("feq:objectives", [o.metric for o in self.objectives])
        return study

    def batch_size(self) -> int:
        """Trials per launch: hydra.sweeper.n_jobs, else the launcher's parallelism, else 1."""
        if self.n_jobs is not None:
            return self.n_jobs
        assert self.config is not None
        launcher_cfg = self.config.hydra.get("launcher") or {}
        for key in ("n_jobs", "array_parallelism"):
            value = launcher_cfg.get(key)
            if isinstance(value, int) and value != 0:
                return value if value > 0 else (os.cpu_count() or 1)
        return 1

    def trial_info(self, trial: optuna.trial.Trial) -> list[str]:
        """Overrides that let the job find its trial (for the pruning callback)."""
        if not self.pass_trial_info or self.storage_url is None:
            return []
        return [
            f"++optuna.storage={format_value(self.storage_url)}",
            f"++optuna.study_name={format_value(self.study_name)}",
            f"++optuna.trial_number={trial.number}",
        ]

    # -- loop --------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        space = build_search_space(self.params, arguments)
        if not space.distributions:
            raise ConfigError("hydra.sweeper.params", "the search space is empty")
        if self.storage_url is None:
            log.warning("hydra.sweeper.storage is null: in-memory study, no resume, no pruning")
        study = self.open_study()
        fail_interrupted(study)
        done = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
        remaining = max(0, self.n_trials - done)
        log.info(
            "Study %r (%s): %d finished trial(s), %d to run of n_trials=%d; objectives %s",
            self.study_name, self.storage_url, done, remaining, self.n_trials,
            [f"{o.direction} {o.metric}" for o in self.objectives],
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        per_batch = self.batch_size()
        while remaining > 0:
            size = min(per_batch, remaining)
            trials = [study.ask(space.distributions) for _ in range(size)]
            batch = [space.fixed + trial_overrides(t.params) + self.trial_info(t) for t in trials]
            try:
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
                for trial, result in zip(trials, results):
                    self.tell(study, trial, result)
            except BaseException:
                for trial in trials:  # the search stops here: leave no trial RUNNING
                    if trial.number not in _finished_numbers(study, trials):
                        trial.set_user_attr(OUTCOME_ATTR, "interrupted")
                        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            returns.append(results)
            remaining -= size

        paths = write_study_report(study, self.objectives, sweep_dir)
        log.info("Study report written: %s", ", ".join(p.name for p in paths))
        log_to_parent_run(self.config, sweep_dir, paths)
        return returns

    def tell(self, study: optuna.Study, trial: optuna.trial.Trial, result: JobReturn) -> None:
        """Record one job's outcome: COMPLETE, PRUNED (its callback said so) or FAIL."""
        job_dir = _job_output_dir(result)
        if job_dir:
            trial.set_user_attr(JOB_DIR_ATTR, job_dir)
        pruned_at = _stored_user_attrs(study, trial.number).get(PRUNED_ATTR)  # the job wrote it
        error = result._return_value if result.status != JobStatus.COMPLETED else None
        if pruned_at is None and isinstance(error, optuna.TrialPruned):
            pruned_at = "?"
        if pruned_at is not None:
            trial.set_user_attr(OUTCOME_ATTR, "pruned")
            study.tell(trial, state=TrialState.PRUNED)
            log.info("Trial %d pruned at epoch %s", trial.number, pruned_at)
            return
        if result.status != JobStatus.COMPLETED:
            trial.set_user_attr(OUTCOME_ATTR, f"failed: {type(error).__name__}: {error}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed: %s: %s", trial.number, type(error).__name__, error)
            return
        try:
            values, outcome, metrics = objective_values(self.objectives, result.return_value)
        except ConfigError:
            trial.set_user_attr(OUTCOME_ATTR, "failed: bad objective config")
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr(METRICS_ATTR, metrics)
        trial.set_user_attr(OUTCOME_ATTR, outcome)
        if values is None:
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d recorded as failed (%s); the search goes on", trial.number, outcome)
        else:
            study.tell(trial, values)
            log.info("Trial %d: %s", trial.number, dict(zip([o.metric for o in self.objectives], values)))


def _stored_user_attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    """A trial's user attrs as stored now (a `Trial` object caches what it saw when asked)."""
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            return dict(frozen.user_attrs)
    return {}


def _job_output_dir(result: JobReturn) -> str | None:
    """The job's Hydra output dir (its working dir only when hydra.job.chdir is true)."""
    try:
        return str(result.hydra_cfg.hydra.runtime.output_dir)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - an older JobReturn without hydra_cfg
        return str(result.working_dir) if result.working_dir else None


def _finished_numbers(study: optuna.Study, trials: Sequence[optuna.trial.Trial]) -> set[int]:
    wanted = {t.number for t in trials}
    return {
        t.number for t in study.get_trials(deepcopy=False)
        if t.number in wanted and t.state.is_finished()
    }
