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
- Dense grouped conv (the "fused" decoders' heads and dense stages): `layers.same_conv`
  (`ConvFn`); the fused one is `feq_lab.models.kernels.autograd.same_conv`.
- Elementwise dropout (recurrent blocks, transformers' feed-forward, pickers): `layers.dropout`
  (`DropoutFn`, torch's `F.dropout`); the fused one is `feq_lab.models.kernels.autograd.dropout`.
  The one exception to "same function": in training it draws its masks from another random
  stream (same distribution, seeded by torch's generator too); in eval both are the identity.
A backend "auto" takes the fused function when its C library was built (a system compiler was
found), else the fastest pure-torch one: the fused functions' own torch fallbacks compute the
reference step by step, which is slower than PyTorch's ops (aten GRU, folded separable stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from feq_lab.errors import ConfigError
from feq_lab.models.gru import GruFn, aten_gru_sequence, gru_sequence
from feq_lab.models.layers import (
    ConvFn,
    DropoutFn,
    ScoresFn,
    SeparableFn,
    SeparableHeadFn,
    additive_scores,
    dropout,
    same_conv,
    separable_stage,
)

from feq_lab.models.kernels import autograd as fused_kernels

GRU_BACKENDS = ("auto", "reference", "aten", "fused")
SEPARABLE_BACKENDS = ("auto", "reference", "fused")  # also the attention scores' backends
DECODER_FORMS = ("auto", "fused", "stacked", "per_decoder")
LAYOUTS = ("auto", "channels_first", "channels_last")  # the conv layouts' choices


@dataclass(frozen=True)
class ModelOptions:
    """`gru_backend`: "reference" = `gru.gru_sequence` (readable, a Python loop over steps),
    "aten" = `gru.aten_gru_sequence` (PyTorch's GRU op for the "torch" flavour, the reference
    for "keras"), "fused" = the fused kernels (an error if absent), "auto" = fused when present,
    else aten. `separable_backend`: "reference" = `layers.separable_stage`, "fused", "auto".
    `attention_backend` (the global attention's scores): "reference" = `layers.additive_scores`,
    "fused", "auto". `conv_backend` (dense grouped convs of the "fused" decoders, their heads
    above all): "reference" = `layers.same_conv`, "fused", "auto". `dropout_backend`
    (elementwise dropout in training): "reference" = `layers.dropout` (torch's bernoulli_ masks,
    one thread), "fused" (one C pass, hashed masks), "auto". Each may also be a function
    with the seam's signature (`GruFn`, `SeparableFn`, `ScoresFn`, `ConvFn`, `DropoutFn`).
    `decoders`: "per_decoder" runs the three `Decoder` modules one after the other (the
    reference); "stacked" runs them as one grouped pass with a polyphase last stage, its weights
    re-arranged from the decoders' own parameters on every call (`fastdecode.build_stacked`);
    "fused" runs them as one grouped pass at full rate, every stage one `separable_fn` call
    (a dense stage: `conv_fn`) and the three heads one `conv_fn` call
    (`fastdecode.grouped_decoders`). All are the same linear maps, so the same outputs and
    gradients; they differ in speed only. "auto" = "fused" for separable decoders when the
    separable stage is the fused kernel (measured 2x faster than "stacked" for FEQ3's
    decoders, forward + backward, bench/training.py), else "stacked" (dense decoders: oneDNN's
    polyphase convs beat the C conv; reference separable stages: folding them wins).
    `decoder_layout` (the "stacked" form only): "channels_first" runs its grouped convs on
    (B, C, T); "channels_last" holds the signal time-major (B, T, C), the layout the recurrent
    middle hands over, and runs every conv as a 2-D conv in NHWC (`fastdecode`,
    `StackedDecoders._time_major`, where every uncropped upsampling stage also runs
    polyphase); "auto" = "channels_last" (EQT's decoders, batch 16, 1 thread, forward +
    backward: ~240 → ~122 ms; oneDNN's backward gains most).
    `encoder_layout` (plain, non-separable encoder stages): "channels_first" runs conv → ReLU →
    pool on (B, C, T); "channels_last" on (B, C, 1, T) in NHWC, converted in and out once;
    "auto" = "channels_last" (EQT's encoder, batch 16, 1 thread, forward + backward:
    ~45 → ~29 ms)."""

    gru_backend: str | GruFn = "auto"
    separable_backend: str | SeparableFn = "auto"
    attention_backend: str | ScoresFn = "auto"
    conv_backend: str | ConvFn = "auto"
    dropout_backend: str | DropoutFn = "auto"
    decoders: str = "auto"
    decoder_layout: str = "auto"
    encoder_layout: str = "auto"

    @classmethod
    def reference(cls) -> ModelOptions:
        """The plain definition: reference GRU and separable stages, one decoder at a time."""
        return cls(
            gru_backend="reference",
            separable_backend="reference",
            attention_backend="reference",
            conv_backend="reference",
            dropout_backend="reference",
            decoders="per_decoder",
            decoder_layout="channels_first",
            encoder_layout="channels_first",
        )

    def validate(self) -> ModelOptions:
        for key, value, allowed in (
            ("gru_backend", self.gru_backend, GRU_BACKENDS),
            ("separable_backend", self.separable_backend, SEPARABLE_BACKENDS),
            ("attention_backend", self.attention_backend, SEPARABLE_BACKENDS),
            ("conv_backend", self.conv_backend, SEPARABLE_BACKENDS),
            ("dropout_backend", self.dropout_backend, SEPARABLE_BACKENDS),
            ("decoders", self.decoders, DECODER_FORMS),
            ("decoder_layout", self.decoder_layout, LAYOUTS),
            ("encoder_layout", self.encoder_layout, LAYOUTS),
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
        return _choose(self.separable_backend, separable_stage, "options.separable_backend")

    def scores_fn(self) -> ScoresFn:
        return _choose(self.attention_backend, additive_scores, "options.attention_backend")

    def conv_fn(self) -> ConvFn:
        return _choose(self.conv_backend, same_conv, "options.conv_backend")

    def dropout_fn(self) -> DropoutFn:
        return _choose(self.dropout_backend, dropout, "options.dropout_backend")

    def separable_head_fn(self) -> SeparableHeadFn | None:
        """The "fused" decoders' last separable stage and heads as one call
        (`kernels.autograd.separable_head`, the same floats as its two seams' fused functions)
        where both seams resolve to the fused kernels; else None (two calls)."""
        if (self.separable_fn() is fused_kernels.separable_stage
                and self.conv_fn() is fused_kernels.same_conv):  # fmt: skip
            return fused_kernels.separable_head
        return None

    def uses_fused_separable(self) -> bool:
        return self.separable_fn() is not separable_stage

    def decoder_form(self, separable_decoders: bool) -> str:
        """The decoders' form for a model whose decoder convs are (not) separable ("auto"
        resolved, see the class docstring)."""
        if self.decoders != "auto":
            return self.decoders
        return "fused" if separable_decoders and self.uses_fused_separable() else "stacked"

    def decoder_channels_last(self) -> bool:
        """Whether the "stacked" decoders run time-major in NHWC ("auto" resolved)."""
        return self.decoder_layout != "channels_first"

    def encoder_channels_last(self) -> bool:
        """Whether plain encoder stages run in NHWC ("auto" resolved)."""
        return self.encoder_layout != "channels_first"


def _choose(backend: str | Callable, reference: Callable, key: str) -> Callable:
    """A seam's function: `backend` itself when callable, the reference for "reference", else
    the fused kernels' function of the reference's name ("fused"/"auto", `_resolve`)."""
    if callable(backend):
        return backend
    if backend == "reference":
        return reference
    return _resolve(backend, reference.__name__, reference, key)


def _resolve(backend: str, name: str, fallback: Callable, key: str) -> Callable:
    """`backend` "fused": the fused kernels' function `name` (its torch fallback computes the
    same function when no C library could be built); "auto": that function when the C library
    is built, else `fallback` (the faster pure-torch form)."""
    fused = getattr(fused_kernels, name)
    if backend == "auto" and not fused_kernels.available():
        return fallback
    return fused
