"""What a run *is*: the effective config (grid knobs resolved against the preset), its hash
(the identity `resume=true` matches on) and the flat params MLflow shows.

Why "effective": `rnn=null` on FEQ3 and `rnn=bilstm` on FEQ3 train the same model, so they must
hash alike and show the same `rnn` param. The hash is the *training* identity: keys that never
change the trained weights are left out — where results are logged, whether to resume, the
progress bar, the sweeper's trial bookkeeping, latency measurement settings, and the whole
evaluation (`thresholds`, `eval.*`): thresholds are evaluation, not training, so a threshold grid
finds the trained model of the same identity and only re-evaluates it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from feq_lab.errors import ConfigError
from feq_lab.models.spec import GRID_KNOBS as KNOBS
from feq_lab.plain import to_plain  # noqa: F401 - the one converter, used here and re-exported

VOLATILE_KEYS = ("resume", "tracking", "optuna", "hparams_search", "hydra", "train.progress_bar",
                 "measure", "thresholds", "eval", "stage_out", "study", "seeds",
                 "data.cache_mb", "data.num_workers")  # fmt: skip
# The code a trained model depends on: a change here makes earlier trainings stale for reuse.
TRAINING_CODE = ("data", "models", "training")


def model_config(cfg: Any) -> Any:
    """What the job runs: the `baseline` group's choice when one is made, else the `model` preset.

    `baseline=stalta` and the alias `model=stalta` give the same mapping (and so the same
    effective config): the root config always composes a model preset, which a baseline ignores.
    """
    baseline = cfg.get("baseline")
    return baseline if baseline else cfg.get("model")


def model_name(model_cfg: Mapping[str, Any]) -> str:
    name = model_cfg.get("name")
    if not name:
        raise ConfigError("model.name", "missing: every model preset names itself")
    return str(name)


def _drop(tree: dict[str, Any], dotted: str) -> None:
    node: Any = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def effective_config(cfg: Any, model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The composed config with the grid knobs (and `model`) replaced by what is really built:
    `model_config` is the learned model's `_target_` + `to_config()` (`JobPlan.spec`); a knob
    the family does not have is null. None: a classical baseline, taken as configured."""
    plain = to_plain(cfg)
    baseline = plain.pop("baseline", None)
    if baseline:  # baseline=stalta is recorded like model=stalta
        plain["model"] = baseline
    if model_config is not None:
        model = dict(model_config)
        plain["model"] = model
        for knob in KNOBS:
            plain[knob] = model.get(knob)
    else:  # the classical baseline: the network knobs do not apply
        for knob in KNOBS:
            plain[knob] = None
    return plain


def config_hash(effective: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex) of the effective config without volatile keys."""
    tree = json.loads(json.dumps(effective, default=str))
    for key in VOLATILE_KEYS:
        _drop(tree, key)
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    """sha256 (first 12 hex) of the package sources that shape a trained model (`TRAINING_CODE`).

    Why: reusing a FINISHED training by config hash alone would silently keep a model trained by
    older code; DVC tracks code as a dependency, the MLflow lookup needs this tag to do the same.
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for folder in TRAINING_CODE:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".c", ".h", ".csv") and path.is_file():
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (shown as text by MLflow)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def run_params(effective: Mapping[str, Any], data_version: str | None) -> dict[str, str]:
    """Flat params: every config key, plus `model` = the preset name and `data_version`."""
    tree = dict(effective)
    tree.pop("hydra", None)
    params = {k: _text(v) for k, v in flatten(tree).items()}
    model = effective.get("model")
    if isinstance(model, Mapping):
        params["model"] = str(model.get("name", ""))
    params["data_version"] = data_version or "unknown"
    return params


def _text(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return "null" if value is None else str(value)


def config_yaml(cfg: Any, effective: Mapping[str, Any]) -> str:
    """The run's config file: the effective config (what was built), as YAML."""
    return OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(effective, default=str))))
