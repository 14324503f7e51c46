"""The training recipe of one run (`cfg.train`), validated once into a frozen dataclass.

Two recipes are spelled out in the configs: EQTransformer's protocol (Adam 1e-3, reduce on
plateau, early stopping with patience 12; Mousavi et al. 2020, conf/config.yaml's `train:`
block) and the quick experiment's robust recipe (conf/experiment/quick.yaml). Every knob the
robust recipe adds is a key here, so either recipe is a set of config values, not a code path:

- `init: he` re-initialises every Conv1d with He-uniform kernels and zero biases (He et al.
  2015, "Delving deep into rectifiers"). PyTorch's default conv init (kernel variance
  1/(3·fan_in), biases up to 1/sqrt(fan_in)) shrinks the time-varying part of the signal at
  every conv while the biases stay; after the five separable decoder stages the heads start out
  time-invariant. Measured on FEQ3, seed 42, 64 validation traces: temporal std of the P logit
  6e-4, and of the 8 channels feeding the P head 5 are zero everywhere and 3 never change sign
  (seed 1: 2.8e-3, one channel varies). With He init: std 0.13 and all 8 channels vary.
  `init: auto` (the robust recipe's) keeps He for EQT but PyTorch's init for the separable LEQ
  family: with distinct epochs on generator v4 the light models escape the flat start within
  ~600 steps and end with S F1 0.05-0.11 higher (validation, conf/train/robust.yaml's figures).
- `prior_init: true` starts each output head's bias at the logit of its label prior, measured on
  the first training batch (Lin et al. 2017, "Focal loss for dense object detection", §3.3).
  P and S labels cover ~0.4% of the samples: from sigmoid(0) = 0.5, EQT's recipe spent the first
  ~80 steps of seed 42 pushing the whole P trace down (mean P probability 0.48 -> 0.0007, P loss
  0.68 -> 0.026, the "never" level) with the P output no higher at the picks than elsewhere;
  an output that reaches the trivial minimum flat has almost no gradient left to localise.
- `schedule: cosine` with `warmup`: linear warm-up then cosine decay to `lr·final_lr_fraction`
  (a one-cycle schedule; Smith & Topin 2019), stepped per batch, so a fixed epoch budget ends
  annealed instead of depending on a plateau detector fed a 100-trace validation loss.
- `grad_clip`: the global gradient norm limit (Pascanu et al. 2013; the RNN blocks).
- `pos_weight`: per output, the weight of the BCE's positive term (torch's `pos_weight`). With
  soft labels y the loss's optimum is w·y / (w·y + 1 − y): still 1 at the label peak and 0 away
  from the pick, so pick times are unchanged, but the pull up at the picks is w times stronger.
  A short training (2 epochs) otherwise ends with localised but low peaks: LEQ seed 42's S
  output was 12× higher at the S picks than elsewhere yet never crossed EQT's 0.1 threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from feq_lab.errors import ConfigError

OUTPUTS = ("detection", "p", "s")
SCHEDULES = ("plateau", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw")
INITS = ("torch", "he", "auto")
DEFAULT_LOSS_WEIGHTS = {"detection": 0.05, "p": 0.40, "s": 0.55}  # EQT's trainer defaults
NO_POS_WEIGHT = {"detection": 1.0, "p": 1.0, "s": 1.0}  # plain BCE


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


def check_pos_weight(weights: Mapping[str, Any], key: str = "train.pos_weight") -> dict[str, float]:
    """{detection, p, s} -> the BCE weight of the positive term per output, each > 0."""
    out = check_loss_weights(weights, key)
    for name, value in out.items():
        if not value > 0:
            raise ConfigError(f"{key}.{name}", f"must be > 0 (1 = plain BCE), got {value}")
    return out


@dataclass(frozen=True)
class TrainSettings:
    """What `cfg.train` asks of the optimiser, the schedule, the initialisation and the stop rule.
    The defaults are EQTransformer's protocol."""

    lr: float = 1e-3
    loss_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    pos_weight: Mapping[str, float] = field(default_factory=lambda: dict(NO_POS_WEIGHT))
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "plateau"
    warmup: float = 0.0              # cosine: fraction of all training steps spent warming up
    final_lr_fraction: float = 0.0   # cosine: the last step's lr / lr (warm-up starts there too)
    lr_patience: int = 3             # plateau
    lr_factor: float = 0.5           # plateau
    init: str = "torch"
    prior_init: bool = False
    grad_clip: float | None = None
    early_stopping: bool = True
    patience: int = 12


def _number(train: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = train.get(key, default)
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"train.{key}", f"must be a number, got {value!r}")
    try:
        out = kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.{key}", f"must be a number, got {value!r}") from exc
    if kind is int and out != value:
        raise ConfigError(f"train.{key}", f"must be an integer, got {value!r}")
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"train.{key}", f"must be finite, got {value!r}")
    return out


def _flag(train: Mapping[str, Any], key: str, default: bool) -> bool:
    value = train.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"train.{key}", f"must be true or false, got {value!r}")
    return value


def _choice(train: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = train.get(key, default)
    if value not in allowed:
        raise ConfigError(f"train.{key}", f"must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def train_settings(train: Mapping[str, Any] | None) -> TrainSettings:
    """Validate `cfg.train` (a plain mapping); every impossible value raises ConfigError naming
    its key. Keys the recipe does not use (progress_bar, limit_*_batches) are the trainer's."""
    train = dict(train or {})
    d = TrainSettings()
    lr = _number(train, "lr", d.lr, float)
    if not lr > 0:
        raise ConfigError("train.lr", f"must be > 0, got {lr}")
    weight_decay = _number(train, "weight_decay", d.weight_decay, float)
    if weight_decay < 0:
        raise ConfigError("train.weight_decay", f"must be >= 0, got {weight_decay}")
    warmup = _number(train, "warmup", d.warmup, float)
    if not 0 <= warmup < 1:
        raise ConfigError("train.warmup", f"must be in [0, 1) (a fraction of the steps), got {warmup}")
    final = _number(train, "final_lr_fraction", d.final_lr_fraction, float)
    if not 0 <= final <= 1:
        raise ConfigError("train.final_lr_fraction", f"must be in [0, 1], got {final}")
    lr_factor = _number(train, "lr_factor", d.lr_factor, float)
    if not 0 < lr_factor < 1:
        raise ConfigError("train.lr_factor", f"must be in (0, 1), got {lr_factor}")
    lr_patience = _number(train, "lr_patience", d.lr_patience, int)
    if lr_patience < 0:
        raise ConfigError("train.lr_patience", f"must be >= 0, got {lr_patience}")
    patience = _number(train, "patience", d.patience, int)
    if patience < 0:
        raise ConfigError("train.patience", f"must be >= 0, got {patience}")
    clip = train.get("grad_clip", d.grad_clip)
    if clip is not None:
        clip = _number(train, "grad_clip", d.grad_clip, float)
        if not clip > 0:
            raise ConfigError("train.grad_clip", f"must be > 0 or null (no clipping), got {clip}")
    schedule = _choice(train, "schedule", d.schedule, SCHEDULES)
    if warmup > 0 and schedule != "cosine":
        raise ConfigError("train.warmup", f"only the cosine schedule warms up (schedule={schedule})")
    return TrainSettings(
        lr=lr,
        loss_weights=check_loss_weights(train.get("loss_weights") or DEFAULT_LOSS_WEIGHTS),
        pos_weight=check_pos_weight(train.get("pos_weight") or NO_POS_WEIGHT),
        optimizer=_choice(train, "optimizer", d.optimizer, OPTIMIZERS),
        weight_decay=weight_decay,
        schedule=schedule,
        warmup=warmup,
        final_lr_fraction=final,
        lr_patience=lr_patience,
        lr_factor=lr_factor,
        init=_choice(train, "init", d.init, INITS),
        prior_init=_flag(train, "prior_init", d.prior_init),
        grad_clip=clip,
        early_stopping=_flag(train, "early_stopping", d.early_stopping),
        patience=patience,
    )


def resolved_init(init: str, model: nn.Module) -> str:
    """`torch` or `he` for `model`: `auto` is PyTorch's default init for a model whose encoder
    uses separable convs (the LEQ family: LEQ, FEQ1-3) and He init for any other (EQT's plain
    convs, PhaseNet). Chosen on validation F1 (the quick experiment, 4-5 seeds and grid points
    per family; conf/train/robust.yaml gives the figures): the light presets' S F1 gains
    0.04-0.12 with PyTorch's init, our EQT loses P and S with it."""
    if init != "auto":
        return init
    spec = getattr(model, "spec", None)
    return "torch" if getattr(spec, "encoder_conv", None) == "separable" else "he"


def he_init(model: nn.Module) -> list[nn.Conv1d]:
    """He-uniform (fan-in, ReLU gain) kernels and zero biases for every Conv1d; returns the convs
    re-initialised. Recurrent, attention and normalisation layers keep their own init."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    for conv in convs:
        nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return convs


def output_heads(model: nn.Module) -> list[nn.Conv1d]:
    """The last Conv1d of each output decoder's head, in OUTPUTS order: the layer whose bias
    sets the pre-sigmoid offset of detection, P and S."""
    decoders = getattr(model, "decoders", None)
    if decoders is None or len(decoders) != len(OUTPUTS):
        raise TypeError(f"{type(model).__name__}: prior init needs three decoders with a head")
    heads = []
    for decoder in decoders:
        convs = [m for m in decoder.head.modules() if isinstance(m, nn.Conv1d)]
        if not convs or convs[-1].bias is None or convs[-1].out_channels != 1:
            raise TypeError(f"{type(model).__name__}: a decoder head without a biased 1-channel conv")
        heads.append(convs[-1])
    return heads


def label_priors(batch: Mapping[str, torch.Tensor], targets: Mapping[str, str]) -> dict[str, float]:
    """Mean label per output on one batch, floored at one labelled sample's share (a batch with
    no earthquake must not give logit(0) = -inf)."""
    out = {}
    for name in OUTPUTS:
        y = batch[targets[name]].detach().float()
        out[name] = min(max(float(y.mean()), 1.0 / y.numel()), 0.5)
    return out


@torch.no_grad()
def set_head_priors(model: nn.Module, priors: Mapping[str, float]) -> None:
    """Each head's bias = logit(prior): the initial output equals the label prior, so the
    gradient works on where the label is, not on how often it is 1."""
    for name, conv in zip(OUTPUTS, output_heads(model)):
        p = float(priors[name])
        conv.bias.fill_(math.log(p / (1.0 - p)))


def warmup_cosine(warmup_steps: int, total_steps: int, final_fraction: float):
    """lr multiplier per step: linear from `final_fraction` to 1 over the warm-up, then cosine
    down to `final_fraction` at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return final_fraction + (1.0 - final_fraction) * (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
