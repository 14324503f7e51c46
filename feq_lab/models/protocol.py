"""The interfaces the lab runs models through: `LearnedModel` (every trained family) and
`Detector` (the classical baselines).

Why a protocol: the job, the measuring harness, the ONNX export, checkpoints, the registry's
pyfunc model and the monitor all need the same few things of a model — probabilities for a
(B, C, T) batch, the loss of a batch, a config that rebuilds it, its parameters per report
section, and names for an ONNX graph. Asking for those, never for a concrete class, is what lets
a new family be one model file and one `conf/model/<name>.yaml` whose `_target_` names its
`from_config` (SeisBench's `WaveformModel` — hooks around one shared core — is the pattern).

The contract every family keeps (REFERENCE §2–3):
- input: (B, in_channels, in_samples) windows, channels E, N, Z, normalised per channel
  (`data.labels.normalize`);
- `forward(x)` → (detection, P, S) probability traces, each (B, in_samples) — what evaluation,
  streaming and export consume, whatever the family computes inside;
- `forward_logits(x)` → what the family's `losses` consumes (pre-sigmoid traces for the
  EQT-family's BCE; PhaseNet's three class logits for its softmax cross-entropy);
- `losses(batch, weights, pos_weight)` → {"detection", "p", "s", "loss"} from a batch of the data
  contract (`x`, `y_det`, `y_p`, `y_s`); `loss` is what is minimised.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from hydra.utils import get_method
from torch import nn

from feq_lab.errors import ConfigError

OUTPUTS = ("detection", "p", "s")
# batch keys of each output's target (the data contract, docs/CONTRACTS.md)
TARGETS = {"detection": "y_det", "p": "y_p", "s": "y_s"}
# the report's parameter sections (REFERENCE §4); a family maps its modules onto these names and
# leaves a section empty where it has no such part (PhaseNet has no recurrent/attention middle)
SECTIONS = ("encoder", "bottleneck", "rnn_transformer", "decoder")


@dataclass(frozen=True)
class OnnxSignature:
    """Names and dynamic axes of an exported graph (`torch.onnx.export` arguments)."""

    input_names: tuple[str, ...] = ("waveform",)
    output_names: tuple[str, ...] = OUTPUTS
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(
        default_factory=lambda: {n: {0: "batch"} for n in ("waveform", *OUTPUTS)}
    )


class LearnedModel(nn.Module, ABC):
    """A trainable picker/detector family. Subclasses implement the abstract members; the loss,
    the ONNX signature and the prior init have defaults for (detection, P, S) sigmoid heads."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The variant's name as configs and tables write it (e.g. "feq3", "phasenet")."""

    @property
    @abstractmethod
    def in_channels(self) -> int: ...

    @property
    @abstractmethod
    def in_samples(self) -> int: ...

    @abstractmethod
    def forward_logits(self, x: torch.Tensor) -> Any:
        """What `losses` consumes (see the module docstring)."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(detection, P, S) probabilities, each (B, in_samples)."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """Plain (JSON-able) fields that `from_config` rebuilds this architecture from."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, /, options: Any = None,
                    **fields: Any) -> LearnedModel:
        """Build from a config mapping and/or keyword fields (what `hydra.utils.instantiate`
        passes for `_target_: <module>.<Class>.from_config`); keyword fields equal to None keep
        the mapping's value (the root config's `rnn: null`). `options`: implementation choices
        of the family, if it has any (never part of the config)."""

    @abstractmethod
    def section_modules(self) -> Mapping[str, Sequence[nn.Module]]:
        """Modules per report section (keys ⊆ SECTIONS); every parameter in exactly one."""

    def losses(self, batch: Mapping[str, torch.Tensor], weights: Mapping[str, float],
               pos_weight: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """EQTransformer's loss (Mousavi et al. 2020): per-output binary cross-entropy on the
        pre-sigmoid traces (positive term weighted by `pos_weight`) and their weighted sum."""
        return weighted_bce(self.forward_logits(batch["x"]), batch, weights, pos_weight)

    @torch.no_grad()
    def set_output_priors(self, priors: Mapping[str, float]) -> None:
        """Start each output at its label prior (the recipe's `prior_init`, Lin et al. 2017)."""
        raise NotImplementedError(f"{type(self).__name__} has no prior initialisation")

    def onnx_signature(self) -> OnnxSignature:
        return OnnxSignature()

    @property
    def target(self) -> str:
        """The `_target_` that rebuilds this family (configs and checkpoints store it)."""
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}.from_config"


def weighted_bce(logits: Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor],
                 weights: Mapping[str, float], pos_weight: Mapping[str, float]
                 ) -> dict[str, torch.Tensor]:
    """{output: BCE-with-logits, "loss": Σ weights[output]·BCE} for (det, P, S) logits."""
    parts = {}
    for name, z in zip(OUTPUTS, logits):
        w = float(pos_weight.get(name, 1.0))
        parts[name] = F.binary_cross_entropy_with_logits(
            z, batch[TARGETS[name]].to(z.dtype),
            pos_weight=None if w == 1.0 else torch.tensor(w, dtype=z.dtype, device=z.device))
    parts["loss"] = sum(float(weights[n]) * parts[n] for n in OUTPUTS)
    return parts


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@runtime_checkable
class Detector(Protocol):
    """A classical (untrained) detector/picker: picks for raw windows, nothing to learn.

    `picks(waveforms, trace_names)`: raw counts (N, T, 3) or (N, 3, T), one `TracePicks` per
    window, scored by the same `evaluation.metrics.score` as every learned model."""

    name: str

    def picks(self, waveforms: Any, trace_names: Sequence[str] | None = None) -> list[Any]: ...

    def to_config(self) -> dict[str, Any]: ...


class FrozenModel(nn.Module):
    """The generic inference form of a `LearnedModel`: an eval-mode snapshot of its weights run
    under `torch.no_grad` (what `compile_for_inference` builds for families without a faster
    form of their own)."""

    def __init__(self, model: LearnedModel):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenModel:  # a snapshot stays in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.model(x)

    def forward_logits(self, x: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.model.forward_logits(x)


# A model config without `_target_` (configs and checkpoints written before the protocol) is an
# EQT-family preset.
DEFAULT_TARGET = "feq_lab.models.picker.PickerModel.from_config"


def locate(target: str, key: str = "model._target_") -> Any:
    """The callable a `_target_` names; one ConfigError naming the key when it does not exist."""
    try:
        return get_method(str(target))
    except Exception as exc:
        raise ConfigError(key, f"cannot locate {target!r}: {exc}") from exc


def is_detector_target(factory: Any) -> bool:
    """Whether a located `_target_` builds a classical detector (a class implementing
    `Detector`) rather than a learned family (`<Family>.from_config`)."""
    return isinstance(factory, type) and not issubclass(factory, LearnedModel) and hasattr(
        factory, "picks")


def instantiate(model_cfg: Mapping[str, Any], options: Any = None,
                **overrides: Any) -> LearnedModel | Detector:
    """The learned model or detector a `model`-group entry names by `_target_`.

    Grid knobs (`overrides`) equal to None are dropped; a detector takes no knobs (they do not
    apply to it and are ignored, as the STA/LTA config says).
    """
    fields = {str(k): v for k, v in model_cfg.items()}
    factory = locate(fields.pop("_target_", None) or DEFAULT_TARGET)
    if is_detector_target(factory):
        return factory(**fields)
    knobs = {k: v for k, v in overrides.items() if v is not None}
    return factory(fields, options=options, **knobs)
