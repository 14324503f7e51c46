"""`compile_for_inference`: a frozen, fast inference object built once from a trained model.

Why a separate step (a deploy / `fuse()` pass): the fastest inference forms re-arrange the
trained weights — the P and S RNNs fused into one block-diagonal RNN, the three decoders stacked
into one grouped pass with a polyphase last stage (`fastdecode.py`), both local attentions in
one pass (`fastpick.py`), BatchNorm after the recurrent blocks' projection folded into it,
separable convs folded into dense ones where PyTorch's depthwise conv is slow, the global
attention's tanh taken through sigmoid (PyTorch's CPU tanh is ~3× slower; tanh(a) =
2·sigmoid(2a) − 1 and the constants cancel in the softmax) — and, in eager on the CPU, C kernels
for the GRU recurrence and whole separable conv stages (`models/kernels/`). Built once from a
snapshot of the weights, none of this needs invalidating: train the model further and compile
again. The object computes the same (det, p, s) probabilities as `PickerModel.forward` in eval
mode (tests/models/test_parity.py: relative error ≤ 1e-4).

Targets: "eager" runs in PyTorch (always under `torch.no_grad`); "onnx" is what
`export.onnx.export_onnx` traces: the forms onnxruntime runs fastest (native ONNX LSTM/GRU ops,
units-first global attention, depthwise + pointwise pairs, upsampling as a 2-D Resize, crops as
convs, the head as a 1×1 conv plus shifted adds, channels padded with zero filters to whole
blocks of onnxruntime's NCHWc kernels (`InferenceOptions.nchwc_block`); see `export.layout`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.models import kernels
from feq_lab.models.fastdecode import NCHWC_GROUP_BLOCK, StackedDecoders, build_stacked
from feq_lab.models.fastpick import StackedLocalAttention, build_stacked_attention
from feq_lab.models.layers import (
    GRU,
    AdditiveSelfAttention,
    RecurrentBlock,
    SameConv1d,
    same_conv1d,
    same_max_pool1d,
)
from feq_lab.models.picker import PickerModel, check_input
from feq_lab.models.protocol import FrozenModel, LearnedModel
from feq_lab.models.spec import ModelSpec

TARGETS = ("eager", "onnx")
# eager: a separable conv without the C kernel runs folded into one dense conv where the fixed
# cost per depthwise call dwarfs the extra MACs (short inputs, or few channels: the 3-component
# input); longer, wider ones keep the two halves
FOLD_MAX_LENGTH = 1000
FOLD_MAX_CHANNELS = 4
# onnxruntime has no NCHWc kernel for a depthwise conv on fewer channels than its block (8 with
# AVX2) but runs a dense conv on them straight from the plain layout: the export folds those,
# unless that dense conv's filters fill no whole number of blocks (`nchwc_block`): it computes
# the padding filters too (8 filters in a block of 16: twice the work), and the plain
# depthwise conv + NCHWc pointwise pair costs less (FEQ3 first stage, batch 8, AVX-512,
# onnxruntime profiler: ~0.54 → ~0.45 ms per call; ~1.5% of the model)
NCHWC_BLOCK = 8


@dataclass(frozen=True)
class InferenceOptions:
    """`kernels`: eager on the CPU runs the GRU recurrence and separable conv stages through the
    C kernels where they build (no compiler, a failed build or `FEQ_LAB_NO_KERNELS=1`: torch
    ops, the same function). Ignored for target "onnx"."""

    kernels: bool = True
    # "onnx": the channel block of onnxruntime's NCHWc kernels on the CPU the export runs on
    # (16 with AVX-512, 8 with AVX2); convs whose channels per group are not a multiple of it
    # leave the blocked layout, so the export pads such channels with zero filters
    nchwc_block: int = NCHWC_GROUP_BLOCK


def compile_for_inference(
    model: LearnedModel, target: str = "eager", options: InferenceOptions | None = None
) -> nn.Module:
    """A frozen inference object for `model`'s current weights (eval-mode semantics: BatchNorm
    running statistics, no dropout). Calling it returns (det, p, s) probabilities like
    `model(x)`; `forward_logits` the pre-sigmoid traces. The model itself is left untouched.

    The one way every caller (evaluation, latency, export, pyfunc, monitor) runs any family:
    a family with faster inference forms registers them (`inference_form.register`); any other
    `LearnedModel` runs as an eval-mode snapshot (`protocol.FrozenModel`)."""
    if target not in TARGETS:
        raise ConfigError("target", f"unknown target {target!r}; expected eager or onnx")
    with torch.no_grad():
        return inference_form(model, target, options or InferenceOptions())


@functools.singledispatch
def inference_form(model: LearnedModel, target: str, options: InferenceOptions) -> nn.Module:
    return FrozenModel(model)


@inference_form.register
def _(model: PickerModel, target: str, options: InferenceOptions) -> nn.Module:
    kernels_ok = target == "eager" and options.kernels and kernels.library() is not None
    return InferenceModel(model, target, kernels_ok, options.nchwc_block)


class InferenceModel(nn.Module):
    """The compiled model: the same sections as `PickerModel`, each in its inference form."""

    def __init__(
        self,
        model: PickerModel,
        target: str,
        kernels_ok: bool,
        nchwc_block: int = NCHWC_GROUP_BLOCK,
    ):
        super().__init__()
        ref = copy.deepcopy(model).eval().requires_grad_(False)  # a snapshot of the weights
        spec: ModelSpec = ref.spec
        self.spec = spec
        self.target = target
        self.kernels_ok = kernels_ok
        self.encoder = FrozenEncoder(ref, target, kernels_ok, nchwc_block)
        self.bottleneck = ref.bottleneck
        self.rnn_blocks = nn.ModuleList(
            FrozenRecurrentBlock(b, target, kernels_ok) for b in ref.rnn_blocks
        )
        for block in ref.transformers:  # the block's own math, its attention in frozen form
            block.attention = FrozenGlobalAttention(block.attention, target)
        self.transformers = ref.transformers
        self.pickers = FrozenPickers(ref.pickers, spec.encoder_lengths[-1], target, kernels_ok)
        self.decoders: StackedDecoders = build_stacked(
            list(ref.decoders), target, kernels_ok=kernels_ok, nchwc_block=nchwc_block
        )
        super().train(False)

    def train(self, mode: bool = True) -> InferenceModel:
        """Frozen: always eval-mode semantics (compile the trained model again instead)."""
        return super().train(False)

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.target == "eager":
            with torch.no_grad():
                return self._logits(x)
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_input(self.spec, x)
        h = self.bottleneck(self.encoder(x)).transpose(1, 2)  # (B, T, C)
        for block in self.rnn_blocks:
            h = block(h)
        for block in self.transformers:
            h = block(h)
        features = torch.cat([h, self.pickers(h)], dim=2)  # (B, T, 3·C)
        return self.decoders(features.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det, p, s = self.forward_logits(x)
        return torch.sigmoid(det), torch.sigmoid(p), torch.sigmoid(s)


class FrozenEncoder(nn.Module):
    """The encoder's [conv + ReLU → pool] stages, each in the fastest form for the target.

    "onnx": a stage followed by a separable one has its output channels padded with zero
    filters to a multiple of `nchwc_block` (the next depthwise conv reads them with zero
    weights; ReLU and max-pool keep them 0), so that onnxruntime keeps conv → pool → conv in its
    NCHWc layout: on 8 channels (LEQ/FEQ's first stage) its max-pool left the blocked layout, a
    reorder either side and a plain pool (FEQ3, batch 8, AVX-512: ~0.4 of ~7 ms per call)."""

    def __init__(
        self, ref: PickerModel, target: str, kernels_ok: bool, nchwc_block: int = NCHWC_GROUP_BLOCK
    ):
        super().__init__()
        enc = ref.encoder
        self.target = target
        self.kernels_ok = kernels_ok
        self.layers = enc.layers
        self.stages: list[tuple[int, int, int, str]] = []  # (layer, pool, pool_left, form)
        lengths = (ref.spec.in_samples, *ref.spec.encoder_lengths[:-1])
        channels = (ref.spec.in_channels, *ref.spec.encoder_filters[:-1])
        folded: dict[int, torch.Tensor] = {}
        for j, pool, length, c_in in zip(enc.layer_of_stage, enc.pools, lengths, channels):
            conv: SameConv1d = enc.layers[j]
            if not conv.separable:
                form = "plain"
            elif target == "onnx":
                whole = int(conv.conv.weight.shape[0]) % nchwc_block == 0
                form = "dense" if c_in < NCHWC_BLOCK and whole else "pair"
            elif kernels_ok:
                form = "kernel"
            else:
                form = "dense" if length <= FOLD_MAX_LENGTH or c_in <= FOLD_MAX_CHANNELS else "pair"
            if form == "dense" and target != "onnx":  # "onnx": `_padded_encoder` folds
                folded[j] = conv.dense_weight().clone()
            self.stages.append((j, pool.pool, pool.left, form))
        for j, weight in folded.items():
            self.register_buffer(f"dense{j}", weight, persistent=False)
        self.export_convs: list[tuple[torch.Tensor, ...]] = []
        if target == "onnx":
            self.export_convs = _padded_encoder(enc, self.stages, ref.spec.in_channels, nchwc_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.target == "onnx":
            return self._export_form(x)
        for j, pool, pool_left, form in self.stages:
            conv = self.layers[j]
            y = None
            if form == "kernel":  # one fused C call: conv halves + ReLU + pool
                y = kernels.separable_conv(
                    x, conv.depthwise.weight, conv.conv.weight, conv.conv.bias,
                    pool=pool, pool_left=pool_left,
                )  # fmt: skip
                form = "pair" if y is None else form
            if form == "dense":
                y = F.relu(same_conv1d(x, getattr(self, f"dense{j}"), conv.conv.bias))
            elif form in ("pair", "plain"):
                y = F.relu(conv(x))
            x = y if form == "kernel" else same_max_pool1d(y, pool)
        return x

    def _export_form(self, x: torch.Tensor) -> torch.Tensor:
        for (_, pool, _, _), weights in zip(self.stages, self.export_convs):
            if len(weights) == 3:  # depthwise, pointwise, bias
                depthwise, pointwise, bias = weights
                y = same_conv1d(x, depthwise, None, groups=int(depthwise.shape[0]))
                y = F.conv1d(y, pointwise, bias)
            else:
                y = same_conv1d(x, *weights)
            x = same_max_pool1d(F.relu(y), pool)
        return x


def _padded_encoder(
    enc: nn.Module, stages: Sequence[tuple[int, int, int, str]], c_first: int, block: int
) -> list[tuple[torch.Tensor, ...]]:
    """Per stage the export's weights, (dense weight, bias) or (depthwise, pointwise, bias),
    the output channels of a stage followed by a depthwise one zero-padded to a multiple of
    `block` and the next stage's inputs padded to match (`FrozenEncoder`)."""
    out: list[tuple[torch.Tensor, ...]] = []
    c_in = c_first
    for i, (j, _, _, form) in enumerate(stages):
        conv: SameConv1d = enc.layers[j]
        c_out = int(conv.conv.weight.shape[0])
        # pad only what a depthwise conv reads next: zero inputs cost a dense conv full price
        # (EQT's second stage: 8 → 16 channels doubled its time, more than the pool saves)
        pad = i + 1 < len(stages) and stages[i + 1][3] == "pair"
        rows = -(-c_out // block) * block if pad else c_out
        grow_out, bias = rows - c_out, conv.conv.bias
        if form == "pair":
            depthwise, pointwise = conv.depthwise.weight, conv.conv.weight
            grow_in = c_in - int(depthwise.shape[0])
            out.append((
                F.pad(depthwise, (0, 0, 0, 0, 0, grow_in)).clone(),
                F.pad(pointwise, (0, 0, 0, grow_in, 0, grow_out)).clone(),
                F.pad(bias, (0, grow_out)).clone(),
            ))  # fmt: skip
        else:
            weight = conv.dense_weight()
            grow_in = c_in - int(weight.shape[1])
            out.append(
                (F.pad(weight, (0, 0, 0, grow_in, 0, grow_out)).clone(), F.pad(bias, (0, grow_out)))
            )
        c_in = rows
    return out


def plain_rnn(rnn: nn.Module) -> nn.Module:
    """The RNN as a stock `nn.GRU`/`nn.LSTM` (the C kernel and the ONNX exporter's native
    GRU op take those); a Keras-flavour GRU stays as it is (its own recurrence)."""
    if isinstance(rnn, GRU):
        plain = nn.GRU(
            rnn.input_size, rnn.hidden_size, batch_first=True, bidirectional=rnn.bidirectional
        )
        plain.load_state_dict(rnn.state_dict())
        return plain.to(rnn.weight_ih_l0.device).eval().requires_grad_(False)
    return rnn


def fuse_parallel_rnns(rnns: Sequence[nn.Module]) -> nn.Module | None:
    """One uni-directional nn.LSTM/nn.GRU equivalent to several run on the same input.

    The hidden state is the concatenation of theirs; gate rows are interleaved per gate and the
    recurrent matrix is block-diagonal, so each part only sees its own state: the same function,
    with one fused kernel call instead of one per branch (the P and S pickers share their input).
    Returns None for RNNs it cannot fuse (Keras GRU cells, bidirectional or multi-layer ones).
    """
    first = rnns[0]
    kind = nn.LSTM if isinstance(first, nn.LSTM) else nn.GRU if isinstance(first, nn.GRU) else None
    if kind is None or not all(isinstance(r, kind) for r in rnns):
        return None
    if any(r.bidirectional or r.num_layers != 1 or not r.bias or not r.batch_first for r in rnns):
        return None
    u, n = first.hidden_size, len(rnns)
    gates = 4 if kind is nn.LSTM else 3
    fused = kind(first.input_size, n * u, batch_first=True)
    for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
        parts = [getattr(r, name)[g * u : (g + 1) * u] for g in range(gates) for r in rnns]
        getattr(fused, name).copy_(torch.cat(parts))
    w_hh = torch.zeros(gates * n * u, n * u)
    for g in range(gates):
        for i, r in enumerate(rnns):
            rows = slice((g * n + i) * u, (g * n + i + 1) * u)
            w_hh[rows, i * u : (i + 1) * u] = r.weight_hh_l0[g * u : (g + 1) * u]
    fused.weight_hh_l0.copy_(w_hh)
    return fused.to(first.weight_ih_l0.device).eval().requires_grad_(False)


class FrozenRNN(nn.Module):
    """`rnn(x)[0]`; in eager a stock nn.GRU runs through the fused C kernel when it built
    (PyTorch's CPU GRU is a per-step loop of small ops, its LSTM already one oneDNN call)."""

    def __init__(self, rnn: nn.Module, target: str, kernels_ok: bool):
        super().__init__()
        self.rnn = rnn
        self.use_kernel = target == "eager" and kernels_ok and type(rnn) is nn.GRU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel:
            y = kernels.gru_forward(self.rnn, x)
            if y is not None:
                return y
        return self.rnn(x)[0]


class FrozenRecurrentBlock(nn.Module):
    """RNN → projection, the eval-mode BatchNorm folded into the projection (a per-channel
    affine map after a linear one: W' = diag(s)·W, b' = s·b + β − s·μ, s = γ/√(σ² + ε))."""

    def __init__(self, block: RecurrentBlock, target: str, kernels_ok: bool):
        super().__init__()
        self.rnn = FrozenRNN(plain_rnn(block.rnn), target, kernels_ok)
        norm, project = block.norm, block.project
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        self.project = nn.Linear(project.in_features, project.out_features).to(scale.device)
        self.project.weight.copy_(project.weight * scale.unsqueeze(1))
        self.project.bias.copy_(project.bias * scale + norm.bias - norm.running_mean * scale)
        self.project.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.rnn(x))


class FrozenGlobalAttention(nn.Module):
    """`AdditiveSelfAttention` (global) in inference form. b_a is dropped: the softmax is
    shift-invariant."""

    def __init__(self, att: AdditiveSelfAttention, target: str):
        super().__init__()
        self.target = target
        self.eps = att.eps
        scale = 2.0 if target == "eager" else 1.0  # eager: the sigmoid form (module docstring)
        self.register_buffer("query", att.query.weight * scale, persistent=False)
        self.register_buffer("hidden_bias", att.hidden_bias * scale, persistent=False)
        self.register_buffer("key", att.key.weight * scale, persistent=False)
        self.register_buffer("score", att.score.weight * scale, persistent=False)  # (1, U)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = F.linear(x, self.query, self.hidden_bias)  # (B, T, U)
        k = F.linear(x, self.key)
        if self.target == "onnx":
            return self._export_form(x, q, k)
        h = torch.sigmoid_(q.unsqueeze(2) + k.unsqueeze(1))  # (B, T, T, U)
        e = torch.matmul(h, self.score.t()).squeeze(-1)  # (B, T, T)
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        return a @ x

    def _export_form(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The ONNX form, units first: the (B, U, T, T) tensor has long contiguous rows (the
        (B, T, T, U) layout pairs 32-wide rows, which onnxruntime handles ~2× slower) and the
        scores are then one (1, U) × (U, T·T) MatMul."""
        length = int(x.shape[1])  # fixed by the model: a constant in the graph
        qt, kt = q.transpose(1, 2), k.transpose(1, 2)  # (B, U, T)
        # q_i + k_j as a K = 2 product [q_i, 1]·[1, k_j]: one batched MatMul writes the (U, T, T)
        # sums faster than onnxruntime's broadcasting Add (exact: the products are by 1)
        ones = torch.ones_like(qt)
        pairs = torch.matmul(torch.stack([qt, ones], dim=-1), torch.stack([ones, kt], dim=2))
        h = torch.tanh(pairs)  # (B, U, T, T)
        units = int(h.shape[1])
        e = torch.matmul(self.score, h.reshape(-1, units, length * length))
        e = e.reshape(-1, length, length)  # static shapes: no Shape/Slice/Concat in the graph
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        return a @ x


class FrozenPickers(nn.Module):
    """The P and S branches side by side (B, T, 2·C): their RNNs fused into one where they can
    be, both local attentions in one stacked pass (global ones, if a spec has them, one each)."""

    def __init__(self, pickers: Sequence[nn.Module], length: int, target: str, kernels_ok: bool):
        super().__init__()
        fused = fuse_parallel_rnns([b.rnn for b in pickers])
        rnns = [fused] if fused is not None else [plain_rnn(b.rnn) for b in pickers]
        self.rnns = nn.ModuleList(FrozenRNN(r, target, kernels_ok) for r in rnns)
        attentions = [b.attention for b in pickers]
        self.stacked: StackedLocalAttention | None = None
        self.global_attentions = nn.ModuleList()
        if attentions[0].width is not None:
            self.stacked = build_stacked_attention(attentions, length, target)
        else:
            self.global_attentions.extend(FrozenGlobalAttention(a, target) for a in attentions)

    def rnn(self, h: torch.Tensor) -> torch.Tensor:
        """The P and S RNN outputs side by side (B, T, 2·C)."""
        ys = [rnn(h) for rnn in self.rnns]
        return ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)

    def attention(self, y: torch.Tensor) -> torch.Tensor:
        if self.stacked is not None:
            return self.stacked(y)
        c = int(y.shape[2]) // 2
        return torch.cat(
            [a(y[..., i * c : (i + 1) * c]) for i, a in enumerate(self.global_attentions)], dim=2
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention(self.rnn(h))


__all__ = [
    "InferenceModel",
    "InferenceOptions",
    "compile_for_inference",
    "fuse_parallel_rnns",
]
