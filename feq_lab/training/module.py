"""The LightningModule: a training recipe (`TrainSettings`, recipe.py) around any learned model
(`models.protocol.LearnedModel`).

Loss = the model's own `losses` with `train.loss_weights` (detection 0.05, P 0.40, S 0.55 by
default): for the EQT family the weighted sum of three binary cross-entropies on the pre-sigmoid
outputs (`binary_cross_entropy_with_logits` for numerical safety), for PhaseNet its softmax
cross-entropy. The optimiser, the schedule (EQT's
reduce-on-plateau on the validation loss, or warm-up + cosine per step), the He conv init and
the heads' label-prior bias are the recipe's (recipe.py says why each exists).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.models.protocol import TARGETS
from feq_lab.tracking import keys
from feq_lab.training.recipe import (
    OUTPUTS,
    TrainSettings,
    check_loss_weights,
    he_init,
    label_priors,
    resolved_init,
    warmup_cosine,
)

__all__ = ["MONITOR", "OUTPUTS", "TARGETS", "PickerModule", "check_loss_weights"]

MONITOR = keys.VAL_LOSS


class PickerModule(pl.LightningModule):
    """Trains any `LearnedModel` with its own loss (`model.losses`); `settings` defaults to EQT's
    protocol."""

    def __init__(self, model: nn.Module, settings: TrainSettings | None = None, fresh: bool = True):
        super().__init__()
        self.model = model
        # False for a fine-tune (`init_from`): the recipe's start state (he / prior init) would
        # overwrite the parent's weights
        self.fresh = fresh
        self.settings = settings or TrainSettings()
        self.loss_weights = dict(self.settings.loss_weights)
        self.pos_weight = dict(self.settings.pos_weight)
        # label priors the heads started from (None until the first training batch)
        self.initial_priors: dict[str, float] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x)

    def losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-output terms and their weighted sum (`loss`), as the model's family defines them
        (`LearnedModel.losses`; the EQT family: BCE with the positive term weighted by
        `pos_weight`)."""
        return self.model.losses(batch, self.loss_weights, self.pos_weight)

    def initialise(self, batch: Mapping[str, torch.Tensor]) -> None:
        """The recipe's start state, applied in place before the first optimiser step of a fresh
        run (a resumed run keeps its weights): `init: he` (or `auto` resolving to He for this
        model, `recipe.resolved_init`) re-initialises the convs, then
        `prior_init` sets each head's bias to logit(label prior of this first batch). In a
        distributed run the convs come from rank 0 and the priors are averaged over the ranks,
        so every replica starts from the same weights."""
        trainer = self._trainer
        distributed = trainer is not None and trainer.world_size > 1
        if resolved_init(self.settings.init, self.model) == "he":
            convs = he_init(self.model)
            if distributed:
                for param in (p for m in convs for p in m.parameters()):
                    param.data.copy_(trainer.strategy.broadcast(param.data, src=0))
        if self.settings.prior_init:
            priors = label_priors(batch, TARGETS)
            if distributed:
                values = torch.tensor([priors[n] for n in OUTPUTS], device=self.device)
                values = trainer.strategy.reduce(values, reduce_op="mean")
                priors = {n: float(v) for n, v in zip(OUTPUTS, values)}
            self.initial_priors = priors
            self.model.set_output_priors(priors)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if (self.fresh and self.trainer.global_step == 0 and batch_idx == 0
                and self.trainer.current_epoch == 0):
            self.initialise(batch)

    def on_train_epoch_start(self) -> None:
        """The learning rate this epoch trains with (a schedule's effect, visible per epoch)."""
        optimizers = self.trainer.optimizers
        if optimizers:
            self.log(keys.LR, float(optimizers[0].param_groups[0]["lr"]), on_step=False,
                     on_epoch=True)

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

    def configure_optimizers(self) -> Any:
        s = self.settings
        kind = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        params = list(self.model.parameters())
        # One fused update over all tensors instead of ~10 small ops per tensor: the same Adam
        # math; FEQ3 (134 tensors, 32k weights) at batch 16 on 1 thread: 3.7-6.0 -> 0.8-1.0 ms
        # per step, 6% of its train step (LEQ 4%, EQT 1%). Fused kernels exist for CPU and CUDA.
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        optimizer = kind(params, lr=s.lr, weight_decay=s.weight_decay, fused=fused or None)
        if s.schedule == "constant":
            return optimizer
        if s.schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=s.lr_factor, patience=s.lr_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR, "interval": "epoch"}}
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("trainer.max_epochs", "the cosine schedule needs a finite number of steps "
                              "(max_epochs or max_steps)")
        total = int(total)
        lam = warmup_cosine(round(s.warmup * total), total, s.final_lr_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
