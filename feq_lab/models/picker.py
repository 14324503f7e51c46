"""The one model: `ModelSpec` → `PickerModel` (detection, P and S probability traces).

EQT, LEQ and FEQ1–3 are presets of this single class; the grid knobs only change the spec.
`PickerModel.forward_logits` below is the whole computation, top to bottom, in the form
training runs; the layers' math is in `layers.py` (and `gru.py`), each written once.
Implementations of the same math are chosen at construction (`options.ModelOptions`); the fast
inference forms are built once from trained weights by `compile.compile_for_inference`.

Layout: encoder and residual stack work channel-first (B, C, T); the recurrent/attention middle
works batch-first (B, T, C), so the RNNs, 1×1 convs (linear layers) and attention need no
transposes; decoders go back to channel-first.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.errors import ConfigError, DataError
from feq_lab.models.fastdecode import build_stacked, grouped_decoders
from feq_lab.models.layers import (
    BottleneckBlock,
    Decoder,
    PickerBranch,
    RecurrentBlock,
    ResidualBlock,
    SameConv1d,
    SameMaxPool1d,
    SeparableFn,
    SpatialDropout,
    TransformerBlock,
    separable_stage,
)
from feq_lab.models.options import ModelOptions
from feq_lab.models.spec import ModelSpec, layer_indices, spec_from_config, spec_from_dict
from feq_lab.paths import atomic_path

CHECKPOINT_FORMAT = "feq-lab-checkpoint/1"


class Encoder(nn.Module):
    """[Conv + ReLU → MaxPool] stages with TF "same" padding; stages may share a conv.
    Separable stages run whole through `separable_fn` (conv halves + ReLU + pool)."""

    def __init__(self, spec: ModelSpec, separable_fn: SeparableFn = separable_stage):
        super().__init__()
        self.layer_of_stage = layer_indices(len(spec.encoder_filters), spec.encoder_shared)
        self.layers = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels, length = spec.in_channels, spec.in_samples
        separable = spec.encoder_conv == "separable"
        for i, (f, k, p) in enumerate(
            zip(spec.encoder_filters, spec.encoder_kernels, spec.encoder_pools)
        ):
            if self.layer_of_stage[i] == len(self.layers):
                self.layers.append(SameConv1d(channels, f, k, separable=separable))
            pool = SameMaxPool1d(p, length)
            self.pools.append(pool)
            channels, length = f, pool.out_length
        self.separable_fn = separable_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, pool in zip(self.layer_of_stage, self.pools):
            conv = self.layers[j]
            if conv.separable:
                x = self.separable_fn(
                    x, conv.depthwise.weight, conv.conv.weight, conv.conv.bias,
                    pool=pool.pool,
                )  # fmt: skip
            else:
                x = pool(F.relu(conv(x)))
        return x


class PickerModel(nn.Module):
    """(B, 3, 6000) waveforms → detection, P, S traces (B, 6000) each.

    `forward` returns probabilities, `forward_logits` the pre-sigmoid values (for a BCE-with-logits
    loss). Spatial dropout is off in eval; `mc_predict` switches it on explicitly. `options`
    choose implementations (never the function); they are not part of checkpoints.
    """

    def __init__(self, spec: ModelSpec, options: ModelOptions | None = None):
        super().__init__()
        options = (options or ModelOptions()).validate()
        self.spec = spec
        self.options = options
        gru_fn, separable_fn = options.gru_fn(), options.separable_fn()
        scores_fn = options.scores_fn()
        # the stacked decoders' training form runs separable stages fused, or folded when the
        # reference stage is all there is (fewer, larger ops than depthwise + pointwise)
        self._stacked_separable_fn = separable_fn if options.uses_fused_separable() else None
        self._decoder_form = options.decoder_form(spec.decoder_conv == "separable")
        self._separable_fn, self._conv_fn = separable_fn, options.conv_fn()
        self.encoder = Encoder(spec, separable_fn)
        width = spec.encoder_filters[-1]
        if spec.block == "residual":
            blocks = [ResidualBlock(width, k, spec.dropout) for k in spec.residual_kernels]
        else:
            blocks = [
                BottleneckBlock(width, spec.bottleneck_width, k, spec.dropout)
                for k in spec.residual_kernels
            ]
        self.bottleneck = nn.Sequential(*blocks)
        u = spec.units
        self.rnn_blocks = nn.ModuleList(
            RecurrentBlock(spec.rnn, width if i == 0 else u, u, spec.dropout, spec.gru_impl, gru_fn)
            for i in range(spec.rnn_blocks)
        )
        self.transformers = nn.ModuleList(
            TransformerBlock(
                u,
                spec.attention_units,
                spec.feedforward_units,
                spec.dropout,
                spec.layer_norm_eps,
                scores_fn,
            )
            for _ in range(spec.transformer_blocks)
        )
        width_local = spec.local_attention_width or None
        self.pickers = nn.ModuleList(
            PickerBranch(
                spec.picker_rnn,
                u,
                spec.attention_units,
                width_local,
                spec.dropout,
                spec.gru_impl,
                gru_fn,
            )
            for _ in ("p", "s")
        )
        decoder_layers = layer_indices(len(spec.decoder_filters), spec.decoder_shared)
        self.decoders = nn.ModuleList(
            Decoder(
                u,
                spec.decoder_filters,
                spec.decoder_kernels,
                spec.decoder_upsample,
                spec.decoder_crops,
                decoder_layers,
                spec.decoder_conv == "separable",
                spec.head_kernel,
                separable_fn,
            )
            for _ in ("detection", "p", "s")
        )

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-sigmoid detection, P and S traces, each (B, in_samples)."""
        check_input(self.spec, x)
        h = self.bottleneck(self.encoder(x)).transpose(1, 2)  # (B, T, C) from here on
        for block in self.rnn_blocks:
            h = block(h)
        for block in self.transformers:
            h = block(h)
        p, s = (branch(h) for branch in self.pickers)
        # "fused"/"stacked": the same three decoders as one grouped pass (options.ModelOptions)
        if self._decoder_form == "fused":
            features = torch.cat([h, p, s], dim=2).transpose(1, 2)
            return grouped_decoders(self.decoders, features, self._separable_fn, self._conv_fn)
        if self._decoder_form == "stacked":
            stacked = build_stacked(list(self.decoders), "train", self._stacked_separable_fn)
            return stacked(torch.cat([h, p, s], dim=2).transpose(1, 2))
        det_dec, p_dec, s_dec = self.decoders
        return det_dec(h.transpose(1, 2)), p_dec(p.transpose(1, 2)), s_dec(s.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det, p, s = self.forward_logits(x)
        return torch.sigmoid(det), torch.sigmoid(p), torch.sigmoid(s)

    def section_modules(self) -> dict[str, list[nn.Module]]:
        """Modules per report section (REFERENCE §5.1): decoder stages before the first crop
        belong to "RNN & transformer"; a shared layer goes where it is first used."""
        first_crop = self.spec.first_crop_stage
        early: list[nn.Module] = []
        late: list[nn.Module] = []
        for dec in self.decoders:
            seen: set[int] = set()
            for stage, j in enumerate(dec.layer_of_stage):
                if j in seen:
                    continue
                seen.add(j)
                (early if stage < first_crop else late).append(dec.layers[j])
            late.append(dec.head)
        return {
            "encoder": [self.encoder],
            "bottleneck": [self.bottleneck],
            "rnn_transformer": [self.rnn_blocks, self.transformers, self.pickers, *early],
            "decoder": late,
        }


def check_input(spec: ModelSpec, x: torch.Tensor) -> None:
    """One clear error for a wrongly shaped batch (before any layer fails obscurely)."""
    expected = (spec.in_channels, spec.in_samples)
    if x.dim() != 3 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{spec.name}: input must be (batch, {expected[0]}, {expected[1]}), got {tuple(x.shape)}"
        )


def build_model(
    preset: str | ModelSpec | Mapping[str, Any],
    options: ModelOptions | None = None,
    **overrides: Any,
) -> PickerModel:
    """Build a family member from a preset name, a preset mapping (`cfg.model`) or a spec.

    Overrides (`rnn`, `picker_rnn`, `cnn_blocks`, `rnn_blocks`, `gru_impl`, `dropout`, or any
    other spec field) equal to None keep the preset's value. Bad values raise ConfigError
    naming the key, before any module is built. `options`: implementations (`ModelOptions`).
    """
    if isinstance(preset, ModelSpec):
        spec = spec_from_config(preset.to_dict(), **overrides)
    elif isinstance(preset, (str, Mapping)) or hasattr(preset, "items"):
        spec = spec_from_config(preset, **overrides)
    else:
        raise ConfigError(
            "model", f"expected a preset name, mapping or ModelSpec, got {type(preset).__name__}"
        )
    return PickerModel(spec, options)


@contextmanager
def mc_dropout(model: PickerModel) -> Iterator[PickerModel]:
    """Eval mode with spatial dropout switched on (EQT's Monte-Carlo mode); restores modes."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, SpatialDropout):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


@torch.no_grad()
def mc_predict(
    model: PickerModel, x: torch.Tensor, n: int = 5
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """n Monte-Carlo passes → ((det, p, s) means, (det, p, s) standard deviations)."""
    if n < 1:
        raise ConfigError("mc_passes", f"must be >= 1, got {n}")
    with mc_dropout(model):
        runs = [model(x) for _ in range(n)]
    stacked = [torch.stack([r[i] for r in runs]) for i in range(3)]
    mean = tuple(t.mean(dim=0) for t in stacked)
    std = tuple(t.std(dim=0, unbiased=False) for t in stacked)
    return mean, std


def save_checkpoint(model: PickerModel, path: str | os.PathLike) -> Path:
    """Spec (plain dict) + state dict in one torch file, written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": model.spec.to_dict(),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    options: ModelOptions | None = None,
) -> PickerModel:
    """Rebuild the model from its stored spec and load the weights (eval mode). Checkpoints
    hold no implementation choices: `options` are this process's."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read checkpoint: {exc}", path=str(path)) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"not a feq-lab checkpoint (expected format {CHECKPOINT_FORMAT})", path=str(path)
        )
    model = PickerModel(spec_from_dict(payload["spec"]), options)
    model.load_state_dict(payload["state_dict"])
    return model.eval()
