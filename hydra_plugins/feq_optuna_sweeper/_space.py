"""Search space: Hydra sweep syntax (choice/range/interval/tag) ↔ optuna distributions.

`params` in the sweeper config and sweep overrides on the command line share one syntax:
  rnn: choice(lstm, gru, bilstm, bigru)     categorical (also `rnn=lstm,gru` on the CLI)
  cnn_blocks: range(1, 5)                   integers 1..4 (Python's stop-exclusive range)
  train.lr: tag(log, interval(1e-4, 1e-2))  float, log scale
  rnn_blocks: tag(int, interval(1, 3))      integers 1..3 (inclusive bounds)
Anything else is a fixed override passed to every trial.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from feq_lab.errors import ConfigError

_PLAIN_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-./]*$")
_KEYWORDS = {"true", "false", "null", "nan", "inf", "none"}


@dataclass
class SearchSpace:
    """What each trial samples (`distributions`) and what every trial gets as is (`fixed`)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)


def _key_of(line: str) -> str:
    """The override's key as typed, `+`/`++` prefix included."""
    return line.split("=", 1)[0].strip()


def _to_distribution(key: str, override: Override, where: str) -> BaseDistribution:
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        choices = list(override.sweep_iterator())
        bad = [c for c in choices if isinstance(c, (list, dict))]
        if bad or not choices:
            raise ConfigError(where, f"choice() needs plain values, got {choices!r}")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(where, f"range() of {key} is empty")
        step = sweep.step
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return IntDistribution(min(values), max(values), step=abs(int(step)))
        return FloatDistribution(min(values), max(values), step=abs(float(step)))
    if isinstance(sweep, IntervalSweep):
        tags = set(sweep.tags or ())
        unknown = tags - {"log", "int"}
        if unknown:
            raise ConfigError(where, f"unknown tag(s) {sorted(unknown)}; use log and/or int")
        low, high = float(sweep.start), float(sweep.end)
        if not low < high:
            raise ConfigError(where, f"interval({low}, {high}) needs start < end")
        log = "log" in tags
        if log and low <= 0:
            raise ConfigError(where, "a log interval needs a start > 0")
        if "int" in tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log)
        return FloatDistribution(low, high, log=log)
    raise ConfigError(where, f"unsupported sweep {override.input_line!r}")


# Keys a search must not sample: changing them never changes the trained model.
EVALUATION_KEYS = ("thresholds.", "eval.")


def build_search_space(
    params: Mapping[str, Any] | None, arguments: Iterable[str] = ()
) -> SearchSpace:
    """Merge config `params` with command-line `arguments` (the CLI wins for a shared key)."""
    lines: dict[str, tuple[str, str]] = {}
    for key, value in (params or {}).items():
        text = value if isinstance(value, str) else format_value(value)
        lines[_key_of(f"{key}=")] = (f"{key}={text}", f"hydra.sweeper.params.{key}")
    for line in arguments:
        lines[_key_of(line)] = (line, f"command-line override {line!r}")

    parser = OverridesParser.create()
    space = SearchSpace()
    for key, (line, where) in lines.items():
        try:
            (override,) = parser.parse_overrides([line])
        except Exception as err:  # hydra's OverrideParseException and friends
            raise ConfigError(where, f"cannot parse {line!r}: {err}") from err
        if override.is_sweep_override():
            if key.startswith(EVALUATION_KEYS):
                raise ConfigError(where, f"{key} is an evaluation setting, not part of the "
                                  "training identity: searching it would retrain for every "
                                  "value. Thresholds are tuned on validation (thresholds.*=null) "
                                  "or gridded from stored probabilities (-m thresholds.detection=...)")
            space.distributions[key] = _to_distribution(key, override, where)
        else:
            space.fixed.append(line)
    return space


def format_value(value: Any) -> str:
    """A sampled value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN_STRING.match(text) and text.lower() not in _KEYWORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """`key=value` overrides for one trial's sampled params."""
    return [f"{key}={format_value(value)}" for key, value in params.items()]
