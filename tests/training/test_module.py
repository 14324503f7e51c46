"""PickerModule: EQT's weighted BCE on logits, validated settings; the trainer's lab-owned parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feq_lab.errors import ConfigError
from feq_lab.models import build_model
from feq_lab.training.module import PickerModule, check_loss_weights
from feq_lab.training.trainer import build_trainer


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(2, 6000)
    y[0, 1000:2500] = 1.0
    return {"x": torch.randn(2, 3, 6000, generator=g), "y_det": y,
            "y_p": torch.rand(2, 6000, generator=g), "y_s": torch.rand(2, 6000, generator=g)}


def test_loss_is_weighted_bce_of_the_three_outputs(batch):
    torch.manual_seed(0)
    module = PickerModule(build_model("feq2"), loss_weights={"detection": 0.05, "p": 0.40, "s": 0.55})
    module.eval()
    with torch.no_grad():
        parts = module.losses(batch)
        det, p, s = module.model(batch["x"])  # probabilities
    expected = {name: F.binary_cross_entropy(prob.double(), batch[key].double()).item()
                for name, prob, key in (("detection", det, "y_det"), ("p", p, "y_p"), ("s", s, "y_s"))}
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-4)
    total = 0.05 * expected["detection"] + 0.40 * expected["p"] + 0.55 * expected["s"]
    assert parts["loss"].item() == pytest.approx(total, rel=1e-4)


def test_a_few_adam_steps_lower_the_loss(batch):
    torch.manual_seed(1)
    module = PickerModule(build_model("feq2"), lr=1e-2)
    module.eval()  # no dropout: the loss is a function of the weights only
    opt = module.configure_optimizers()["optimizer"]
    start = module.losses(batch)["loss"].item()
    for _ in range(3):
        opt.zero_grad()
        module.losses(batch)["loss"].backward()
        opt.step()
    assert module.losses(batch)["loss"].item() < start


@pytest.mark.parametrize("weights, key", [
    ({"detection": 0.05, "p": 0.4}, "train.loss_weights.s"),
    ({"detection": -1, "p": 0.4, "s": 0.5}, "train.loss_weights.detection"),
    ({"detection": 0, "p": 0, "s": 0}, "train.loss_weights"),
    ({"detection": 0.1, "p": 0.4, "s": 0.5, "coda": 1}, "train.loss_weights.coda"),
])
def test_bad_loss_weights_name_the_key(weights, key):
    with pytest.raises(ConfigError) as err:
        check_loss_weights(weights)
    assert err.value.key == key


def test_bad_optimiser_settings_name_the_key():
    model = build_model("feq2")
    with pytest.raises(ConfigError, match="train.lr"):
        PickerModule(model, lr=0)
    with pytest.raises(ConfigError, match="train.lr_factor"):
        PickerModule(model, lr_factor=1.5)


def test_trainer_watches_val_loss_and_owns_its_callbacks(tmp_path):
    trainer, checkpoint = build_trainer({"accelerator": "cpu", "max_epochs": 1},
                                        {"patience": 5, "limit_train_batches": 3}, tmp_path)
    assert checkpoint.monitor == "val/loss" and checkpoint.dirpath == str(tmp_path / "checkpoints")
    early = [c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert early and early[0].monitor == "val/loss" and early[0].patience == 5
    assert trainer.limit_train_batches == 3
    with pytest.raises(ConfigError, match="trainer.logger"):
        build_trainer({"logger": True}, {}, tmp_path)
