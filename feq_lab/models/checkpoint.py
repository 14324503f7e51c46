"""Checkpoints of any learned family: the family's `_target_`, its config and its state dict in
one torch file, written atomically; read back without knowing the family in advance.

Format 2 (this module) stores `target` + `config`; format 1 (written before the model protocol)
stored an EQT-family `spec` and still loads.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from feq_lab.errors import ConfigError, DataError
from feq_lab.models.protocol import DEFAULT_TARGET, LearnedModel, locate
from feq_lab.paths import atomic_path

CHECKPOINT_FORMAT = "feq-lab-checkpoint/2"
LEGACY_FORMATS = ("feq-lab-checkpoint/1",)  # {"spec": ModelSpec dict, "state_dict"}


def save_checkpoint(model: LearnedModel, path: str | os.PathLike) -> Path:
    """Target + config (plain dict) + state dict in one torch file, written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "target": model.target,
        "config": model.to_config(),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """The checkpoint's payload normalised to format 2 ({target, config, state_dict})."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read checkpoint: {exc}", path=str(path)) from exc
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt in LEGACY_FORMATS:
        return {"target": DEFAULT_TARGET, "config": payload["spec"],
                "state_dict": payload["state_dict"]}
    if fmt != CHECKPOINT_FORMAT:
        raise DataError(
            f"not a feq-lab checkpoint (expected format {CHECKPOINT_FORMAT})", path=str(path)
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    options: Any = None,
) -> LearnedModel:
    """Rebuild the model from its stored target and config and load the weights (eval mode).
    Checkpoints hold no implementation choices: `options` are this process's."""
    payload = read_checkpoint(path, map_location)
    try:
        build = locate(payload["target"], key="checkpoint.target")
    except ConfigError as exc:
        raise DataError(str(exc), path=str(path)) from exc
    model = build(dict(payload["config"]), options=options)
    model.load_state_dict(payload["state_dict"])
    return model.eval()
