"""How a `PickerModel` computes — never what: implementations chosen when the model is built.

Why a dataclass passed to the constructor (as nanoGPT picks flash attention next to its fallback
once, at construction): every choice here computes the same function with the same gradients
(the parity harness, tests/models/test_parity.py, checks each one against the reference), so a
choice is fixed for the model's life and no module-level switch exists to flip it behind a
running model's back. Inference-only forms live in `compile.compile_for_inference`.

The seams for fused training kernels are plain functions with the reference's signature:
- GRU: `gru.gru_sequence` (`GruFn`); the fused one is
  `feq_lab.models.kernels.autograd.gru_sequence`.
- Separable conv stage: `layers.separable_stage` (`SeparableFn`); the fused one is
  `feq_lab.models.kernels.autograd.separable_stage`.
- Global attention scores: `layers.additive_scores` (`ScoresFn`); the fused one is
  `feq_lab.models.kernels.autograd.additive_scores`.
A backend "auto" takes the fused function when that module provides it, else the fastest
pure-torch one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from feq_lab.errors import ConfigError
from feq_lab.models.gru import GruFn, aten_gru_sequence, gru_sequence
from feq_lab.models.layers import ScoresFn, SeparableFn, additive_scores, separable_stage

try:  # the fused training kernels (C forward + backward with a torch fallback), when present
    from feq_lab.models.kernels import autograd as fused_kernels
except ImportError:  # pragma: no cover - depends on the installed kernels
    fused_kernels = None

GRU_BACKENDS = ("auto", "reference", "aten", "fused")
SEPARABLE_BACKENDS = ("auto", "reference", "fused")  # also the attention scores' backends
DECODER_FORMS = ("stacked", "per_decoder")


@dataclass(frozen=True)
class ModelOptions:
    """`gru_backend`: "reference" = `gru.gru_sequence` (readable, a Python loop over steps),
    "aten" = `gru.aten_gru_sequence` (PyTorch's GRU op for the "torch" flavour, the reference
    for "keras"), "fused" = the fused kernels (an error if absent), "auto" = fused when present,
    else aten. `separable_backend`: "reference" = `layers.separable_stage`, "fused", "auto".
    `attention_backend` (the global attention's scores): "reference" = `layers.additive_scores`,
    "fused", "auto". Each may also be a function with the seam's signature (`GruFn`,
    `SeparableFn`, `ScoresFn`).
    `decoders`: "per_decoder" runs the three `Decoder` modules one after the other (the
    reference); "stacked" runs them as one grouped pass with a polyphase last stage, its weights
    re-arranged from the decoders' own parameters on every call (`fastdecode.py`: the same
    linear maps, so the same outputs and gradients; fewer, larger ops)."""

    gru_backend: str | GruFn = "auto"
    separable_backend: str | SeparableFn = "auto"
    attention_backend: str | ScoresFn = "auto"
    decoders: str = "stacked"

    @classmethod
    def reference(cls) -> ModelOptions:
        """The plain definition: reference GRU and separable stages, one decoder at a time."""
        return cls(
            gru_backend="reference",
            separable_backend="reference",
            attention_backend="reference",
            decoders="per_decoder",
        )

    def validate(self) -> ModelOptions:
        for key, value, allowed in (
            ("gru_backend", self.gru_backend, GRU_BACKENDS),
            ("separable_backend", self.separable_backend, SEPARABLE_BACKENDS),
            ("attention_backend", self.attention_backend, SEPARABLE_BACKENDS),
            ("decoders", self.decoders, DECODER_FORMS),
        ):
            if not callable(value) and value not in allowed:
                raise ConfigError(
                    f"options.{key}",
                    f"unknown value {value!r}; expected one of {', '.join(allowed)}",
                )
        return self

    def gru_fn(self) -> GruFn:
        if callable(self.gru_backend):
            return self.gru_backend
        if self.gru_backend == "reference":
            return gru_sequence
        if self.gru_backend == "aten":
            return aten_gru_sequence
        return _resolve(self.gru_backend, "gru_sequence", aten_gru_sequence, "options.gru_backend")

    def separable_fn(self) -> SeparableFn:
        if callable(self.separable_backend):
            return self.separable_backend
        if self.separable_backend == "reference":
            return separable_stage
        return _resolve(
            self.separable_backend, "separable_stage", separable_stage, "options.separable_backend"
        )

    def scores_fn(self) -> ScoresFn:
        if callable(self.attention_backend):
            return self.attention_backend
        if self.attention_backend == "reference":
            return additive_scores
        return _resolve(
            self.attention_backend, "additive_scores", additive_scores, "options.attention_backend"
        )

    def uses_fused_separable(self) -> bool:
        return self.separable_fn() is not separable_stage


def _resolve(backend: str, name: str, fallback: Callable, key: str) -> Callable:
    """`backend` "fused" or "auto": the fused kernels' function `name`, else (auto) `fallback`."""
    fused = getattr(fused_kernels, name, None)
    if backend == "auto" and fused is None:
        return fallback
    if fused is None:
        raise ConfigError(
            key, f"fused kernels unavailable (no feq_lab.models.kernels.autograd.{name})"
        )
    return fused
