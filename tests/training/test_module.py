"""PickerModule and its recipe: EQT's weighted BCE on logits, validated settings (every impossible
value names its key), the robust recipe's init (He convs, heads at the label prior), the
warm-up + cosine schedule, and the trainer's lab-owned parts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from feq_lab.errors import ConfigError
from feq_lab.models import build_model
from feq_lab.training.module import PickerModule, check_loss_weights
from feq_lab.training.recipe import (
    TrainSettings,
    he_init,
    output_heads,
    resolved_init,
    train_settings,
    warmup_cosine,
)
from feq_lab.training.trainer import build_trainer, flushed_denormals

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(2, 6000)
    y[0, 1000:2500] = 1.0
    return {"x": torch.randn(2, 3, 6000, generator=g), "y_det": y,
            "y_p": torch.rand(2, 6000, generator=g), "y_s": torch.rand(2, 6000, generator=g)}


def test_loss_is_weighted_bce_of_the_three_outputs(batch):
    torch.manual_seed(0)
    module = PickerModule(build_model("feq2"), TrainSettings(loss_weights={"detection": 0.05, "p": 0.40, "s": 0.55}))
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


def test_pos_weight_scales_the_positive_term_only(batch):
    torch.manual_seed(0)
    model = build_model("feq2").eval()
    plain = PickerModule(model, train_settings({})).losses(batch)
    weighted = PickerModule(model, train_settings({"pos_weight": {"detection": 1, "p": 3, "s": 1}})).losses(batch)
    with torch.no_grad():
        _, p, _ = model(batch["x"])
    y = batch["y_p"]
    expected = -(3 * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert weighted["p"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert weighted["s"].item() == pytest.approx(plain["s"].item(), rel=1e-6)
    assert weighted["p"].item() > plain["p"].item()


def test_a_few_adam_steps_lower_the_loss(batch):
    torch.manual_seed(1)
    module = PickerModule(build_model("feq2"), train_settings({"lr": 1e-2, "schedule": "constant"}))
    module.eval()  # no dropout: the loss is a function of the weights only
    opt = module.configure_optimizers()
    assert opt.defaults["fused"] is True  # one fused update for all tensors on the CPU
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


@pytest.mark.parametrize("train, key", [
    ({"lr": 0}, "train.lr"),
    ({"lr": None}, "train.lr"),
    ({"lr_factor": 1.5}, "train.lr_factor"),
    ({"lr_patience": 1.5}, "train.lr_patience"),
    ({"patience": -1}, "train.patience"),
    ({"schedule": "onecycle"}, "train.schedule"),
    ({"schedule": "cosine", "warmup": 1.0}, "train.warmup"),
    ({"schedule": "plateau", "warmup": 0.1}, "train.warmup"),
    ({"final_lr_fraction": 2}, "train.final_lr_fraction"),
    ({"optimizer": "sgd"}, "train.optimizer"),
    ({"weight_decay": -0.1}, "train.weight_decay"),
    ({"init": "xavier"}, "train.init"),
    ({"prior_init": "yes"}, "train.prior_init"),
    ({"early_stopping": 1}, "train.early_stopping"),
    ({"grad_clip": 0}, "train.grad_clip"),
    ({"pos_weight": {"detection": 1, "p": 0, "s": 1}}, "train.pos_weight.p"),
    ({"pos_weight": {"detection": 1, "p": 2}}, "train.pos_weight.s"),
    ({"grad_clip": float("inf")}, "train.grad_clip"),
])
def test_impossible_recipe_values_name_the_key(train, key):
    with pytest.raises(ConfigError) as err:
        train_settings(train)
    assert err.value.key == key


def test_quick_experiment_uses_the_robust_recipe_and_train_eqt_restores_the_protocol():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        quick = train_settings(compose("config").train)
        eqt = train_settings(compose("config", overrides=["train=eqt"]).train)
        paper = train_settings(compose("config", overrides=["experiment=paper"]).train)
    assert (quick.schedule, quick.init, quick.prior_init, quick.early_stopping) == ("cosine", "auto", True, False)
    assert quick.warmup > 0 and quick.grad_clip is not None
    for protocol in (eqt, paper):  # EQTransformer's: Adam 1e-3, reduce on plateau, early stopping
        assert (protocol.optimizer, protocol.lr, protocol.schedule) == ("adam", 1e-3, "plateau")
        assert (protocol.init, protocol.prior_init, protocol.early_stopping) == ("torch", False, True)
    assert paper.patience == 12


def test_he_init_gives_the_heads_a_time_varying_start(batch):
    """PyTorch's default conv init leaves the decoders' output almost constant in time; He-uniform
    convs with zero biases let the input reach the heads (the reason for train.init=he)."""
    def temporal_std(model):
        model.eval()
        with torch.no_grad():
            _, p, _ = model.forward_logits(batch["x"])
        return float(p.std(dim=1).mean())

    torch.manual_seed(42)
    model = build_model("feq3")
    before = temporal_std(model)
    assert len(he_init(model)) > 10
    after = temporal_std(model)
    PickerModule(model, train_settings({"init": "torch"})).initialise({})  # the protocol keeps it
    assert temporal_std(model) == after
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d) and m.bias is not None]
    assert all(float(c.bias.abs().max()) == 0 for c in convs)
    assert after > 10 * before and after > 1e-2


@pytest.mark.parametrize("name, expected", [("eqt", "he"), ("phasenet", "he"), ("leq", "torch"),
                                            ("feq1", "torch"), ("feq3", "torch")])
def test_auto_init_is_he_for_plain_convs_and_torch_for_the_separable_family(name, expected):
    """`init: auto` re-initialises EQT's (and PhaseNet's) convs and keeps PyTorch's init for the
    separable LEQ family; a grid knob keeps the family's choice."""
    torch.manual_seed(0)
    model = build_model(name)
    assert resolved_init("auto", model) == expected
    assert resolved_init("he", model) == "he" and resolved_init("torch", model) == "torch"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv1d))
    before = conv.weight.detach().clone()
    PickerModule(model, train_settings({"init": "auto"})).initialise({})
    assert torch.equal(conv.weight, before) == (expected == "torch")
    if name == "feq3":
        gru = build_model("feq3", rnn="gru", cnn_blocks=4)
        assert resolved_init("auto", gru) == "torch"


def test_first_training_batch_sets_heads_at_the_label_prior():
    torch.manual_seed(0)
    module = PickerModule(build_model("feq2"), train_settings({"init": "he", "prior_init": True}))
    y_det = torch.zeros(4, 6000)
    y_det[:, :600] = 1.0        # prior 0.1
    y_p = torch.zeros(4, 6000)
    y_p[:, 100:124] = 1.0       # prior 0.004
    y_s = torch.zeros(4, 6000)  # no S at all: floored at one sample's share, never logit(0)
    module.initialise({"x": torch.zeros(4, 3, 6000), "y_det": y_det, "y_p": y_p, "y_s": y_s})
    bias = [float(conv.bias) for conv in output_heads(module.model)]
    assert bias[0] == pytest.approx(math.log(0.1 / 0.9), rel=1e-5)
    assert bias[1] == pytest.approx(math.log(0.004 / 0.996), rel=1e-5)
    assert math.isfinite(bias[2]) and bias[2] == pytest.approx(math.log(1 / (24000 - 1)), rel=1e-5)
    assert module.initial_priors["p"] == pytest.approx(0.004)


def test_warmup_cosine_rises_then_anneals():
    f = warmup_cosine(warmup_steps=10, total_steps=100, final_fraction=0.01)
    values = [f(step) for step in range(100)]
    assert values[0] == pytest.approx(0.01 + 0.99 / 10)
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 9
    assert all(a >= b for a, b in zip(values[9:], values[10:]))  # monotone decay after warm-up
    assert f(100) == pytest.approx(0.01)


def test_trainer_watches_val_loss_and_owns_its_callbacks(tmp_path):
    trainer, checkpoint = build_trainer({"accelerator": "cpu", "max_epochs": 1},
                                        {"patience": 5, "limit_train_batches": 3}, tmp_path)
    assert checkpoint.monitor == "val/loss" and checkpoint.dirpath == str(tmp_path / "checkpoints")
    early = [c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert early and early[0].monitor == "val/loss" and early[0].patience == 5
    assert trainer.limit_train_batches == 3
    with pytest.raises(ConfigError, match="trainer.logger"):
        build_trainer({"logger": True}, {}, tmp_path)


def test_robust_recipe_drops_early_stopping_and_clips_gradients(tmp_path):
    trainer, _ = build_trainer({"accelerator": "cpu", "max_epochs": 1},
                               {"early_stopping": False, "grad_clip": 1.0}, tmp_path)
    assert not [c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert trainer.gradient_clip_val == 1.0
    with pytest.raises(ConfigError) as err:
        build_trainer({"gradient_clip_val": 5.0}, {"grad_clip": 1.0}, tmp_path)
    assert err.value.key == "trainer.gradient_clip_val"


def test_training_flushes_subnormals_and_restores_the_default_mode():
    """Inside `flushed_denormals` (what the job trains in) a product in the subnormal range is
    zero; before and after it the CPU's default mode keeps it."""
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    before = float((tiny * 1e-10)[0])
    with flushed_denormals() as supported:
        inside = float((tiny * 1e-10)[0])
    after = float((tiny * 1e-10)[0])
    assert 0 < before < 1.2e-38 and after == before
    if supported:
        assert inside == 0.0

