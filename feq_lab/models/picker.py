"""The one builder: `ModelSpec` → `PickerModel` (detection, P and S probability traces).

EQT, LEQ and FEQ1–3 are presets of this single class; the grid knobs only change the spec.
Layout: encoder and residual stack work channel-first (B, C, T); the recurrent/attention middle
works batch-first (B, T, C), so the RNNs, 1×1 convs (linear layers) and attention need no
transposes; decoders go back to channel-first.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.models import kernels
from feq_lab.models.fastdecode import StackedDecoders, build_stacked
from feq_lab.models.fastpick import StackedLocalAttention, build_stacked_attention
from feq_lab.models.layers import (
    BottleneckBlock,
    Decoder,
    PickerBranch,
    RecurrentBlock,
    ResidualBlock,
    SameConv1d,
    SameMaxPool1d,
    SpatialDropout,
    TransformerBlock,
    fuse_parallel_rnns,
    rnn_output,
    weights_key,
)
from feq_lab.models.spec import ModelSpec, layer_indices, spec_from_config, spec_from_dict
from feq_lab.paths import atomic_path

CHECKPOINT_FORMAT = "feq-lab-checkpoint/1"
FUSE_PICKER_RNNS = True  # eval: run the P and S RNNs as one block-diagonal RNN (same function)
STACK_DECODERS = True  # eval: the three decoders as one stacked, polyphase pass (fastdecode.py)
# training: the same stacked pass, its weights rebuilt from the decoders' parameters every step
STACK_DECODERS_IN_TRAINING = True
# eval: separable encoder stages as one fused C call (conv halves + ReLU + pool; models/kernels)
FUSED_SEPARABLE_STAGES = True


class Encoder(nn.Module):
    """[Conv (+ReLU) → MaxPool] stages with TF "same" padding; stages may share a conv."""

    def __init__(self, spec: ModelSpec):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, pool in zip(self.layer_of_stage, self.pools):
            conv = self.layers[j]
            y = None
            if FUSED_SEPARABLE_STAGES and conv.depthwise is not None and not self.training:
                y = kernels.separable_conv(
                    x,
                    conv.depthwise.weight,
                    conv.conv.weight,
                    conv.conv.bias,
                    pool=pool.pool,
                    pool_left=pool.left,
                )
            x = pool(F.relu(conv(x))) if y is None else y
        return x


class PickerModel(nn.Module):
    """(B, 3, 6000) waveforms → detection, P, S traces (B, 6000) each.

    `forward` returns probabilities, `forward_logits` the pre-sigmoid values (for a BCE-with-logits
    loss). Spatial dropout is off in eval; `mc_predict` switches it on explicitly.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec)
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
            RecurrentBlock(spec.rnn, width if i == 0 else u, u, spec.dropout, spec.gru_impl)
            for i in range(spec.rnn_blocks)
        )
        self.transformers = nn.ModuleList(
            TransformerBlock(
                u, spec.attention_units, spec.feedforward_units, spec.dropout, spec.layer_norm_eps
            )
            for _ in range(spec.transformer_blocks)
        )
        width_local = spec.local_attention_width or None
        self.pickers = nn.ModuleList(
            PickerBranch(
                spec.picker_rnn, u, spec.attention_units, width_local, spec.dropout, spec.gru_impl
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
            )
            for _ in ("detection", "p", "s")
        )

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-sigmoid detection, P and S traces, each (B, in_samples)."""
        expected = (self.spec.in_channels, self.spec.in_samples)
        if x.dim() != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{self.spec.name}: input must be (batch, {expected[0]}, {expected[1]}), got {tuple(x.shape)}"
            )
        h = self.bottleneck(self.encoder(x)).transpose(1, 2)  # (B, T, C) from here on
        for block in self.rnn_blocks:
            h = block(h)
        for block in self.transformers:
            h = block(h)
        if not self.training and STACK_DECODERS:
            features = torch.cat([h, self._picker_features(h)], dim=2)  # (B, T, 3·C)
            return self._stacked_decoders()(features.transpose(1, 2))
        p_branch, s_branch = self._picker_branches(h)
        if self.training and STACK_DECODERS_IN_TRAINING:
            stacked = build_stacked(list(self.decoders), differentiable=True)
            return stacked(torch.cat([h, p_branch, s_branch], dim=2).transpose(1, 2))
        det = self.decoders[0](h.transpose(1, 2))
        p = self.decoders[1](p_branch.transpose(1, 2))
        s = self.decoders[2](s_branch.transpose(1, 2))
        return det, p, s

    def _picker_features(self, h: torch.Tensor) -> torch.Tensor:
        """Eval: the P and S branch outputs side by side (B, T, 2·C); with the fused RNN both
        local attentions run as one stacked pass (fastpick.py)."""
        fused = self._fused_picker_rnn() if FUSE_PICKER_RNNS else None
        if fused is None or self.pickers[0].attention.width is None:
            return torch.cat(self._picker_branches(h), dim=2)
        return self._stacked_attention()(rnn_output(fused, h))

    def _stacked_attention(self) -> StackedLocalAttention:
        return self._eval_cache(
            "attention", lambda: build_stacked_attention([b.attention for b in self.pickers])
        )

    def _eval_cache(self, part: str, build: Callable[[], Any]) -> Any:
        """`build()` for one part of the model, kept until one of that part's weights changes
        (training, loading); a plain attribute, never a submodule or a state-dict entry."""
        key = weights_key(self._params_of(part))
        caches = self.__dict__.setdefault("_eval_caches", {})
        cache = caches.get(part)
        if cache is None or cache[0] != key:
            cache = caches[part] = (key, build())
        return cache[1]

    def _params_of(self, part: str) -> list[torch.Tensor]:
        """Parameters behind an eval-time cache, listed once: walking the module tree on every
        call cost ~0.2 ms per forward. The lists are dropped when parameters may be replaced
        (`_apply`: .to(), .float(), ...); in-place updates are caught by `weights_key`."""
        lists = self.__dict__.setdefault("_param_lists", {})
        if part not in lists:
            modules = {
                "decoders": [self.decoders],
                "attention": [b.attention for b in self.pickers],
                "picker_rnns": [b.rnn for b in self.pickers],
            }[part]
            lists[part] = [p for m in modules for p in m.parameters()]
        return lists[part]

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        self.__dict__.pop("_param_lists", None)
        return super()._apply(fn, *args, **kwargs)

    def _stacked_decoders(self) -> StackedDecoders:
        """The decoders' eval-time stacked form."""
        return self._eval_cache("decoders", lambda: build_stacked(list(self.decoders)))

    def _picker_branches(self, h: torch.Tensor) -> list[torch.Tensor]:
        """P and S branches; in eval their RNNs run as one fused RNN (same function, one kernel)."""
        fused = None if self.training or not FUSE_PICKER_RNNS else self._fused_picker_rnn()
        if fused is None:
            return [branch(h) for branch in self.pickers]
        y = rnn_output(fused, h)
        u = self.spec.units
        return [
            branch.attention(y[..., i * u : (i + 1) * u]) for i, branch in enumerate(self.pickers)
        ]

    def _fused_picker_rnn(self) -> nn.Module | None:
        """The fused P/S RNN (None where the RNNs cannot be fused)."""
        return self._eval_cache(
            "picker_rnns", lambda: fuse_parallel_rnns([branch.rnn for branch in self.pickers])
        )

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


def build_model(preset: str | ModelSpec | Mapping[str, Any], **overrides: Any) -> PickerModel:
    """Build a family member from a preset name, a preset mapping (`cfg.model`) or a spec.

    Overrides (`rnn`, `picker_rnn`, `cnn_blocks`, `rnn_blocks`, `gru_impl`, `dropout`, or any
    other spec field) equal to None keep the preset's value. Bad values raise ConfigError
    naming the key, before any module is built.
    """
    if isinstance(preset, ModelSpec):
        spec = spec_from_config(preset.to_dict(), **overrides)
    elif isinstance(preset, (str, Mapping)) or hasattr(preset, "items"):
        spec = spec_from_config(preset, **overrides)
    else:
        raise ConfigError(
            "model", f"expected a preset name, mapping or ModelSpec, got {type(preset).__name__}"
        )
    return PickerModel(spec)


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
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> PickerModel:
    """Rebuild the model from its stored spec and load the weights (eval mode)."""
    from feq_lab.errors import DataError

    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read checkpoint: {exc}", path=str(path)) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"not a feq-lab checkpoint (expected format {CHECKPOINT_FORMAT})", path=str(path)
        )
    model = PickerModel(spec_from_dict(payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()
