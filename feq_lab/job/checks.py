"""Config checks that need no data and open nothing: every entry point runs them before it
creates a store, an MLflow run or a subset, so a typo costs milliseconds and leaves no trace
(issue 13: "an invalid value is one line on stderr naming the key, exit code 2, no run").

Each check delegates to the code that uses the value (the subset builder, the augmentation
chain, the data module, the threshold rules), so a rule lives in one place and is only *called
earlier* here.
"""

from __future__ import annotations

from typing import Any, Mapping

from feq_lab.data.augment import from_config
from feq_lab.data.datamodule import HalfAugmentedBatchSampler, SteadDataModule
from feq_lab.data.subset import content_config
from feq_lab.errors import ConfigError
from feq_lab.evaluation.picks import THRESHOLD_KEYS, check_thresholds
from feq_lab.evaluation.thresholds import check_grid
from feq_lab.job.config import to_plain


def check_data(data: Mapping[str, Any]) -> None:
    """`data`: the source (the subset's identity), the loader and the augmentation."""
    data = to_plain(data) if not isinstance(data, dict) else data
    content_config(data)
    for key in ("batch_size", "num_workers"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"data.{key}", f"must be an integer, got {value!r}")
    augment = from_config(data.get("augment"))
    SteadDataModule(".", batch_size=data.get("batch_size", 32),
                    num_workers=data.get("num_workers", 0),
                    cache_mb=data.get("cache_mb", 0))  # validates; reads nothing
    if augment is not None:  # augmented training draws half-augmented batches
        HalfAugmentedBatchSampler(0, data.get("batch_size", 32), seed=0)


def check_replays(replays: Any) -> None:
    """`eval.replays`: a mapping with `scenarios` >= 0, a `split` of the subset, an int `seed`."""
    replays = to_plain(replays or {})
    if not isinstance(replays, dict):
        raise ConfigError("eval.replays", f"must be a mapping, got {replays!r}")
    unknown = set(replays) - {"scenarios", "split", "seed", "subset_dir"}
    if unknown:
        raise ConfigError(f"eval.replays.{min(unknown)}", "unknown key")
    for key in ("scenarios", "seed"):
        value = replays.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"eval.replays.{key}", f"must be an integer >= 0, got {value!r}")
    if replays.get("split", "val") not in ("train", "val", "test"):
        raise ConfigError("eval.replays.split",
                          f"must be train, val or test, got {replays.get('split')!r}")


def check_evaluation(cfg: Any, thresholds: bool = True) -> dict[str, float | None]:
    """`eval` and (unless `thresholds=False`: the classical baseline has none) `thresholds`;
    returns the thresholds (None = tuned on validation)."""
    eval_cfg = cfg.get("eval") or {}
    if eval_cfg.get("threshold_grid"):
        check_grid(eval_cfg.get("threshold_grid"))
    tune_on = eval_cfg.get("tune_thresholds_on")
    if tune_on not in (None, "val"):
        raise ConfigError("eval.tune_thresholds_on", f"must be null or 'val', got {tune_on!r}")
    if tune_on and not eval_cfg.get("threshold_grid"):
        raise ConfigError("eval.tune_thresholds_on", "needs eval.threshold_grid to choose from")
    check_replays(eval_cfg.get("replays"))
    if not thresholds:
        return {}
    given = to_plain(cfg.get("thresholds") or {})
    for key in THRESHOLD_KEYS:
        if key not in given:
            raise ConfigError(f"thresholds.{key}", "missing (need detection, p and s; null = tune)")
    open_keys = [k for k in THRESHOLD_KEYS if given[k] is None]
    if open_keys and tune_on != "val":
        raise ConfigError(f"thresholds.{open_keys[0]}", "null (tuned on validation) needs "
                          "eval.tune_thresholds_on=val; or give a number")
    probe = {k: (0.5 if given[k] is None else given[k]) for k in THRESHOLD_KEYS}
    checked = check_thresholds(probe)
    return {k: None if given[k] is None else checked[k] for k in THRESHOLD_KEYS}
