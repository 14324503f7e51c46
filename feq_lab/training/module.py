"""The LightningModule: EQTransformer's training recipe around any `PickerModel`.

Loss = weighted sum of three binary cross-entropies on the pre-sigmoid outputs
(detection 0.05, P 0.40, S 0.55 by default; `train.loss_weights`), computed with
`binary_cross_entropy_with_logits` for numerical safety. Adam with reduce-on-plateau on the
validation loss, which early stopping and checkpointing also watch.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.errors import ConfigError

OUTPUTS = ("detection", "p", "s")
TARGETS = {"detection": "y_det", "p": "y_p", "s": "y_s"}
MONITOR = "val/loss"


def check_loss_weights(weights: Mapping[str, Any], key: str = "train.loss_weights") -> dict[str, float]:
    """{detection, p, s} -> non-negative floats, not all zero; errors name the key."""
    out = {}
    for name in OUTPUTS:
        if name not in weights:
            raise ConfigError(f"{key}.{name}", "missing (need detection, p and s)")
        try:
            value = float(weights[name])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}.{name}", f"not a number: {weights[name]!r}") from exc
        if not value >= 0:
            raise ConfigError(f"{key}.{name}", f"must be >= 0, got {value}")
        out[name] = value
    extra = sorted(set(weights) - set(OUTPUTS))
    if extra:
        raise ConfigError(f"{key}.{extra[0]}", "unknown output (known: detection, p, s)")
    if sum(out.values()) <= 0:
        raise ConfigError(key, "all weights are zero")
    return out


class PickerModule(pl.LightningModule):
    """Trains a detector/picker with EQT's weighted BCE; `model` is any (det, p, s) network
    exposing `forward_logits(x)`."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        loss_weights: Mapping[str, float] | None = None,
        lr_patience: int = 3,
        lr_factor: float = 0.5,
    ):
        super().__init__()
        if not float(lr) > 0:
            raise ConfigError("train.lr", f"must be > 0, got {lr}")
        if not 0 < float(lr_factor) < 1:
            raise ConfigError("train.lr_factor", f"must be in (0, 1), got {lr_factor}")
        if int(lr_patience) < 0:
            raise ConfigError("train.lr_patience", f"must be >= 0, got {lr_patience}")
        self.model = model
        self.lr = float(lr)
        self.loss_weights = check_loss_weights(loss_weights or {"detection": 0.05, "p": 0.40, "s": 0.55})
        self.lr_patience = int(lr_patience)
        self.lr_factor = float(lr_factor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x)

    def losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-output BCE and their weighted sum (`loss`)."""
        logits = dict(zip(OUTPUTS, self.model.forward_logits(batch["x"])))
        parts = {name: F.binary_cross_entropy_with_logits(logits[name], batch[TARGETS[name]].to(logits[name].dtype))
                 for name in OUTPUTS}
        parts["loss"] = sum(self.loss_weights[n] * parts[n] for n in OUTPUTS)
        return parts

    def _step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        parts = self.losses(batch)
        size = int(batch["x"].shape[0])
        self.log(f"{stage}/loss", parts["loss"], on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=size)
        for name in OUTPUTS:
            self.log(f"{stage}/loss_{name}", parts[name], on_step=False, on_epoch=True, batch_size=size)
        return parts["loss"]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self.model(batch["x"])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.lr_factor, patience=self.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR, "interval": "epoch"}}
