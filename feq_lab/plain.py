"""Configs as plain Python data: the one converter every stage uses on what Hydra hands it.

Why one: the model spec, the job's config hash, the data subset's identity, the Trainer's
arguments and the sweeper's settings must all see the same plain form of the same config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf


def _container(cfg: Any, resolve: bool) -> Any:
    """OmegaConf → containers; `${hydra:...}` cannot resolve outside a Hydra app (compose API,
    tests): such values are kept unresolved, section by section, instead of failing."""
    try:
        return OmegaConf.to_container(cfg, resolve=resolve)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:runtime.cwd} without a Hydra runtime
        if not OmegaConf.is_dict(cfg):
            return OmegaConf.to_container(cfg, resolve=False)
        out = {}
        for key in cfg:
            try:
                out[key] = _container(cfg[key], resolve) if OmegaConf.is_config(cfg[key]) else cfg[key]
            except Exception:  # noqa: BLE001 - this one value stays unresolved
                out[key] = OmegaConf.to_container(cfg, resolve=False)[key]
        return out


def to_plain(value: Any, resolve: bool = True) -> Any:
    """DictConfig/mapping → dict (str keys), ListConfig/list/tuple → list, recursively; scalars
    unchanged; interpolations resolved where they can be."""
    if OmegaConf.is_config(value):
        value = _container(value, resolve)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, resolve) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, resolve) for v in value]
    return value
