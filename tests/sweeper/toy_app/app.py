"""A toy Hydra app for the sweeper's tests: a known objective, NaN/crash/hang on chosen trials.

Run as a script: `python app.py -m ...` with the repo root on PYTHONPATH.
"""

from __future__ import annotations

import math
import os
import time

import hydra
from omegaconf import DictConfig


def _tiny_fit(cfg: DictConfig, val_loss: float) -> None:
    """One tiny Lightning fit whose val/loss is `val_loss` every epoch, with the pruning callback."""
    import pytorch_lightning as pl
    import torch

    from feq_lab.training.pruning import make_pruning_callback

    torch.set_num_threads(1)

    class Constant(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", torch.tensor(val_loss) + 0 * self.w.sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[make_pruning_callback(cfg.optuna)],
    )
    trainer.fit(Constant(), data, data)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    trial = cfg.optuna.trial_number if cfg.get("optuna") else None
    if trial is not None and str(trial) == os.environ.get("TOY_HANG_AT"):
        time.sleep(600)  # the test kills the search while this trial runs
    if trial in cfg.crash_at:
        raise RuntimeError(f"toy crash in trial {trial}")
    if trial in cfg.nan_at:
        return {"score": math.nan, "cost": math.nan}
    if cfg.lightning:
        _tiny_fit(cfg, val_loss=10.0 if trial in cfg.bad_at else 1.0)
    score = -((cfg.x - 0.3) ** 2) - 0.1 * cfg.y + (0.05 if cfg.kind == "a" else 0.0)
    cost = cfg.x + 0.2 * cfg.y
    return {"score": score, "cost": cost}


if __name__ == "__main__":
    main()
