"""Building blocks of the EQT/LEQ/FEQ family (REFERENCE §5), channel-first (B, C, T) unless noted.

Why custom layers: TensorFlow's "same" padding and pooling (extra sample on the right, −inf for
max-pooling), separable convolutions with a bias only on the pointwise half, additive
self-attention and a Keras `reset_after=False` GRU are what make the parameter counts and the
outputs match the Keras originals.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.models import kernels

BN_EPS = 1e-3  # Keras BatchNormalization default
# Inference fast paths (eval mode, not during ONNX export); each computes the same function as
# the training-time modules. Switches exist so tests can compare both paths.
# Eval-time folding of separable convs into one dense conv (see SameConv1d._folded_weight).
FOLD_SEPARABLE = True
FOLD_MAX_LENGTH = 1000
FOLD_MAX_CHANNELS = 4
FAST_ATTENTION = True  # eval: global attention's tanh computed through sigmoid (same function)
FAST_GRU = True  # inference: nn.GRU through the fused C kernel when it builds (models/kernels)
NCHWC_BLOCK = 8  # onnxruntime's NCHWc channel block on AVX2 (16 with AVX-512): see export.layout


@contextmanager
def untraced() -> Iterator[None]:
    """Build an eval-time cache (no gradient): outside the TorchScript tracer (ONNX export), so
    the cache is a constant of the exported graph, not a traced computation; and outside
    inference mode, so a cache first built under `torch.inference_mode` is an ordinary tensor
    that a later forward with autograd on (e.g. a gradient with respect to the input) may save
    for backward."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with torch.inference_mode(False), torch.no_grad():
            yield
    finally:
        torch._C._set_tracing_state(state)


def weights_key(tensors: Iterable[torch.Tensor]) -> tuple:
    """Identity + in-place version of weights: an eval-time cache built from them is stale when
    this changes (optimiser step, load_state_dict, .to()). Inference tensors (a model built under
    `torch.inference_mode`) have no version counter; their storage address is used alone."""
    return tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in tensors)


def same_padding(kernel: int) -> tuple[int, int]:
    """TensorFlow "same" padding of a stride-1 convolution: the odd extra sample goes right."""
    total = kernel - 1
    return total // 2, total - total // 2


def pool_padding(length: int, pool: int) -> tuple[int, int]:
    """TensorFlow "same" padding of a max-pool with stride = size."""
    out = math.ceil(length / pool)
    total = max((out - 1) * pool + pool - length, 0)
    return total // 2, total - total // 2


class SameConv1d(nn.Module):
    """Conv1D with TF "same" padding; plain or depthwise-separable (depthwise half unbiased)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, separable: bool = False):
        super().__init__()
        left, right = same_padding(kernel)
        self.extra_right = right - left  # 0 for odd kernels, 1 for even ones
        if separable:
            self.depthwise: nn.Module | None = nn.Conv1d(
                in_channels, in_channels, kernel, padding=left, groups=in_channels, bias=False
            )
            self.conv = nn.Conv1d(in_channels, out_channels, 1)
        else:
            self.depthwise = None
            self.conv = nn.Conv1d(in_channels, out_channels, kernel, padding=left)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_right:
            x = F.pad(x, (0, self.extra_right))
        if self.depthwise is None:
            return self.conv(x)
        if (
            not self.training
            and FOLD_SEPARABLE
            and (x.shape[-1] <= FOLD_MAX_LENGTH or x.shape[1] <= FOLD_MAX_CHANNELS)
            and not torch.onnx.is_in_onnx_export()  # onnxruntime is faster on the pair
        ):
            return F.conv1d(x, self._folded_weight(), self.conv.bias, padding=self.depthwise.padding)
        if torch.onnx.is_in_onnx_export() and x.shape[1] < NCHWC_BLOCK:
            # onnxruntime has no NCHWc kernel for a depthwise conv on < 8 channels (the 3-component
            # input), but runs a dense conv on them straight from the plain layout
            return F.conv1d(x, self.dense_weight(), self.conv.bias, padding=self.depthwise.padding)
        return self.conv(self.depthwise(x))

    def _folded_weight(self) -> torch.Tensor:
        """`dense_weight()` cached until a weight changes. Short inputs pay a fixed cost per
        depthwise call that dwarfs the extra MACs, so eval uses one dense conv there."""
        key = weights_key((self.depthwise.weight, self.conv.weight))
        cache = self.__dict__.get("_fold_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        with untraced():
            weight = self.dense_weight()
        self.__dict__["_fold_cache"] = (key, weight)
        return weight

    def dense_weight(self) -> torch.Tensor:
        """The (C_out, C_in, k) weight of this conv; a separable one folded into one dense conv,
        W[o, c, j] = P[o, c]·D[c, j] (the same linear map). Differentiable."""
        if self.depthwise is None:
            return self.conv.weight
        return self.conv.weight[:, :, 0].unsqueeze(-1) * self.depthwise.weight[:, 0, :].unsqueeze(0)


class SameMaxPool1d(nn.Module):
    """Max-pooling with stride = size and TF "same" padding (pads count as −inf)."""

    def __init__(self, pool: int, length: int):
        super().__init__()
        self.pool = pool
        self.left, self.right = pool_padding(length, pool)
        self.out_length = math.ceil(length / pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left == 0 and self.right == 0:
            return F.max_pool1d(x, self.pool)
        if self.left == 0:  # a partial window at the end: ceil_mode ignores the missing samples
            return F.max_pool1d(x, self.pool, ceil_mode=True)
        if self.left == self.right and 2 * self.left <= self.pool:
            return F.max_pool1d(x, self.pool, padding=self.left)
        return F.max_pool1d(F.pad(x, (self.left, self.right), value=-math.inf), self.pool)


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each sample `factor` times along the last axis (Keras UpSampling1D).

    Eager uses `repeat_interleave` (the fastest copy in torch). The ONNX export writes a 2-D
    nearest Resize on (B, C, 1, T) with an integer scale (index i reads i // factor, exactly):
    once `export.layout` has made the convs around it 2-D, onnxruntime runs it as an NCHWc
    Upsample inside the blocked layout, where `repeat_interleave`'s Tile, or a Concat, would
    force a round trip through the plain layout. Same values either way."""
    if factor == 1:
        return x
    if torch.onnx.is_in_onnx_export():
        up = F.interpolate(x.unsqueeze(2), scale_factor=(1.0, float(factor)), mode="nearest")
        return up.squeeze(2)
    return torch.repeat_interleave(x, factor, dim=2)


class SpatialDropout(nn.Dropout1d):
    """Drops whole channels of (B, C, T); off in eval unless Monte-Carlo mode switches it on."""


class ResidualBlock(nn.Module):
    """EQT residual block: [BN → ReLU → SpatialDropout → Conv(k)] × 2, plus identity."""

    def __init__(self, width: int, kernel: int, dropout: float):
        super().__init__()
        self.norm1 = nn.BatchNorm1d(width, eps=BN_EPS)
        self.conv1 = SameConv1d(width, width, kernel)
        self.norm2 = nn.BatchNorm1d(width, eps=BN_EPS)
        self.conv2 = SameConv1d(width, width, kernel)
        self.drop = SpatialDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.drop(F.relu(self.norm1(x))))
        y = self.conv2(self.drop(F.relu(self.norm2(y))))
        return x + y


class BottleneckBlock(nn.Module):
    """LEQNet bottleneck: BN → ReLU → 1×1 squeeze → BN → ReLU → SpatialDropout → Conv(k) → BN →
    ReLU → 1×1 expand, plus identity."""

    def __init__(self, width: int, squeeze: int, kernel: int, dropout: float):
        super().__init__()
        self.norm_in = nn.BatchNorm1d(width, eps=BN_EPS)
        self.squeeze = nn.Conv1d(width, squeeze, 1)
        self.norm_squeezed = nn.BatchNorm1d(squeeze, eps=BN_EPS)
        self.drop = SpatialDropout(dropout)
        self.conv = SameConv1d(squeeze, squeeze, kernel)
        self.norm_mid = nn.BatchNorm1d(squeeze, eps=BN_EPS)
        self.expand = nn.Conv1d(squeeze, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.squeeze(F.relu(self.norm_in(x)))
        y = self.conv(self.drop(F.relu(self.norm_squeezed(y))))
        y = self.expand(F.relu(self.norm_mid(y)))
        return x + y


class KerasGRU(nn.Module):
    """GRU as Keras 2.3.1 builds it (`reset_after=False`): one bias, reset gate applied to h
    *before* the recurrent matmul. Batch-first (B, T, C). Slow (a Python loop) but faithful.

    Parameter layout per direction: weight_ih (3u, in), weight_hh (3u, u), bias (3u), gate
    order z, r, n (Keras' order)."""

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = False):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        u = hidden_size
        bound = 1.0 / math.sqrt(u)
        for suffix in self._suffixes():
            self.register_parameter(
                f"weight_ih{suffix}",
                nn.Parameter(torch.empty(3 * u, input_size).uniform_(-bound, bound)),
            )
            self.register_parameter(
                f"weight_hh{suffix}", nn.Parameter(torch.empty(3 * u, u).uniform_(-bound, bound))
            )
            self.register_parameter(f"bias{suffix}", nn.Parameter(torch.zeros(3 * u)))

    def _suffixes(self) -> list[str]:
        return ["_l0", "_l0_reverse"][: self.num_directions]

    def _run(self, x: torch.Tensor, suffix: str, reverse: bool) -> torch.Tensor:
        u = self.hidden_size
        w_hh = getattr(self, f"weight_hh{suffix}")
        gates_x = F.linear(x, getattr(self, f"weight_ih{suffix}"), getattr(self, f"bias{suffix}"))
        h = x.new_zeros(x.shape[0], u)
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        out: list[torch.Tensor] = [h] * x.shape[1]
        for t in steps:
            gx = gates_x[:, t]
            zr = torch.sigmoid(gx[:, : 2 * u] + h @ w_hh[: 2 * u].t())
            z, r = zr[:, :u], zr[:, u:]
            n = torch.tanh(gx[:, 2 * u :] + (r * h) @ w_hh[2 * u :].t())
            h = z * h + (1 - z) * n
            out[t] = h
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        outs = [self._run(x, s, reverse=(i == 1)) for i, s in enumerate(self._suffixes())]
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)), None


def rnn_output(rnn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`rnn(x)[0]`; GRU inference goes through the fused kernel where it applies (same
    function: PyTorch's CPU GRU is a per-step loop of small ops, its LSTM already one oneDNN call)."""
    if FAST_GRU and isinstance(rnn, nn.GRU):
        y = kernels.gru_forward(rnn, x)
        if y is not None:
            return y
    return rnn(x)[0]


def make_rnn(kind: str, input_size: int, hidden_size: int, gru_impl: str) -> nn.Module:
    """An LSTM or GRU, uni- or bidirectional ("bi" prefix), batch-first, returning (out, state)."""
    bidirectional = kind.startswith("bi")
    cell = kind[2:] if bidirectional else kind
    if cell == "lstm":
        return nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)
    if gru_impl == "keras":
        return KerasGRU(input_size, hidden_size, bidirectional=bidirectional)
    return nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)


class RecurrentBlock(nn.Module):
    """EQT BiLSTM block on (B, T, C): RNN → dropout → 1×1 conv (a per-step linear) → BN."""

    def __init__(self, kind: str, input_size: int, units: int, dropout: float, gru_impl: str):
        super().__init__()
        self.rnn = make_rnn(kind, input_size, units, gru_impl)
        directions = 2 if kind.startswith("bi") else 1
        self.drop = nn.Dropout(dropout)
        self.project = nn.Linear(directions * units, units)
        self.norm = nn.BatchNorm1d(units, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.drop(rnn_output(self.rnn, x)))
        if self.training:
            return self.norm(y.transpose(1, 2)).transpose(1, 2)
        # eval: BN is a per-channel affine map; apply it on the last axis without transposes
        scale = self.norm.weight * torch.rsqrt(self.norm.running_var + self.norm.eps)
        return y * scale + (self.norm.bias - self.norm.running_mean * scale)


class AdditiveSelfAttention(nn.Module):
    """keras-self-attention's additive SeqSelfAttention on (B, T, C).

    e[t, s] = w_a · tanh(W_t x_t + W_x x_s + b_h) + b_a, softmax over s (within `width` steps
    centred on t when `width` is set), output_t = Σ_s a[t, s] x_s.
    """

    def __init__(self, channels: int, units: int = 32, width: int | None = None, eps: float = 1e-7):
        super().__init__()
        self.query = nn.Linear(channels, units, bias=False)  # W_t
        self.key = nn.Linear(channels, units, bias=False)  # W_x
        self.hidden_bias = nn.Parameter(torch.zeros(units))  # b_h
        self.score = nn.Linear(units, 1)  # w_a, b_a (b_a cancels in the softmax; kept for counts)
        self.width = width
        self.eps = eps
        for lin in (self.query, self.key, self.score):
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x) + self.hidden_bias  # (B, T, U)
        k = self.key(x)
        if self.width is None:
            if FAST_ATTENTION and not self.training and not torch.onnx.is_in_onnx_export():
                return self._global_eval(x, q, k)
            if torch.onnx.is_in_onnx_export():
                return self._global_export(x, q, k)
            h = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1))  # (B, T, T, U)
            if self.training:
                e = self.score(h).squeeze(-1)  # (B, T, T)
            else:  # b_a shifts every score of a row alike: the softmax drops it (one op less)
                e = torch.matmul(h, self.score.weight.t()).squeeze(-1)
            e = torch.exp(e - e.amax(dim=-1, keepdim=True))
            a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
            return a @ x
        return self._local(x, q, k)

    def _global_eval(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Eager inference: tanh(a) = 2·sigmoid(2a) − 1, and the softmax ignores the constant
        (−Σw_a + b_a), so e' = 2·w_a · sigmoid(2a) gives the same attention. Why: PyTorch's CPU
        tanh is ~3× slower than its sigmoid, and the T×T×U tensor here is the largest
        elementwise op of the recurrent section."""
        h = torch.sigmoid_((2.0 * q).unsqueeze(2) + (2.0 * k).unsqueeze(1))  # (B, T, T, U)
        e = torch.matmul(h, 2.0 * self.score.weight.t()).squeeze(-1)  # (B, T, T)
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        return a @ x

    def _global_export(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The ONNX form, units first: the (B, U, T, T) tensor has long contiguous rows (the
        (B, T, T, U) layout pairs 32-wide rows, which onnxruntime handles ~2× slower) and the
        scores are then one (1, U) × (U, T·T) MatMul. b_a is left out (the softmax is
        shift-invariant)."""
        length = int(x.shape[1])  # fixed by the model: a constant in the graph
        qt, kt = q.transpose(1, 2), k.transpose(1, 2)  # (B, U, T)
        # q_i + k_j as a K = 2 product [q_i, 1]·[1, k_j]: one batched MatMul writes the (U, T, T)
        # sums faster than onnxruntime's broadcasting Add (exact: the products are by 1)
        ones = torch.ones_like(qt)
        pairs = torch.matmul(torch.stack([qt, ones], dim=-1), torch.stack([ones, kt], dim=2))
        h = torch.tanh(pairs)  # (B, U, T, T)
        units = int(h.shape[1])
        e = torch.matmul(self.score.weight, h.reshape(-1, units, length * length))
        e = e.reshape(-1, length, length)  # static shapes: no Shape/Slice/Concat in the graph
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        return a @ x

    def _local(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Banded attention: only the `width` neighbours s ∈ [t − width//2, t − width//2 + width)
        are scored (what the masked dense form computes, without the T×T tensor)."""
        width = self.width
        lo = width // 2
        hi = width - 1 - lo
        length = int(x.shape[1])  # the sequence length is fixed by the model: a constant in ONNX
        k_pad, x_pad = F.pad(k, (0, 0, lo, hi)), F.pad(x, (0, 0, lo, hi))
        # (B, T, U, W) and (B, T, C, W): neighbour j of step t is step t − lo + j
        k_win = torch.stack([k_pad[:, j : j + length] for j in range(width)], dim=-1)
        x_win = torch.stack([x_pad[:, j : j + length] for j in range(width)], dim=-1)
        h = torch.tanh(q.unsqueeze(-1) + k_win)
        e = (
            torch.matmul(h.transpose(2, 3), self.score.weight.t()).squeeze(-1) + self.score.bias
        )  # (B, T, W)
        e = e.masked_fill(outside_mask(length, width, str(x.device)), -math.inf)
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        return torch.matmul(x_win, a.unsqueeze(-1)).squeeze(-1)


@functools.lru_cache(maxsize=32)
def outside_mask(length: int, width: int, device: str) -> torch.Tensor:
    """(T, W) mask of local-attention neighbours outside the sequence (neighbour j of step t is
    step t − width//2 + j); a constant of the exported graph, cached per (T, W, device)."""
    with untraced():
        idx = torch.arange(length, device=device).unsqueeze(1) - width // 2 + torch.arange(
            width, device=device
        )
        return (idx < 0) | (idx >= length)


class TransformerBlock(nn.Module):
    """EQT's global transformer on (B, T, C): x + attention → LayerNorm → + feed-forward → LayerNorm."""

    def __init__(
        self, channels: int, attention_units: int, ff_units: int, dropout: float, ln_eps: float
    ):
        super().__init__()
        self.attention = AdditiveSelfAttention(channels, attention_units)
        self.norm1 = nn.LayerNorm(channels, eps=ln_eps)
        self.ff_in = nn.Linear(channels, ff_units)
        self.ff_out = nn.Linear(ff_units, channels)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(channels, eps=ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x + self.attention(x))
        return self.norm2(y + self.ff_out(self.drop(F.relu(self.ff_in(y)))))


class PickerBranch(nn.Module):
    """P or S branch on (B, T, C): uni-directional RNN → dropout → local attention."""

    def __init__(
        self, kind: str, units: int, attention_units: int, width: int, dropout: float, gru_impl: str
    ):
        super().__init__()
        self.rnn = make_rnn(kind, units, units, gru_impl)
        self.drop = nn.Dropout(dropout)
        self.attention = AdditiveSelfAttention(units, attention_units, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.drop(rnn_output(self.rnn, x)))


class Decoder(nn.Module):
    """Upsample (nearest) → crop → conv + ReLU per stage, then a 1-channel head (logits).

    `layer_of_stage[i]` is the index of the conv used at stage i (equal indices share weights;
    indices are numbered in order of first use, see `picker.layer_indices`)."""

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        kernels: Sequence[int],
        upsample: Sequence[int],
        crops: Sequence[Sequence[int]],
        layer_of_stage: Sequence[int],
        separable: bool,
        head_kernel: int,
    ):
        super().__init__()
        self.layers = nn.ModuleList()
        channels = in_channels
        for i, (f, k) in enumerate(zip(filters, kernels)):
            if layer_of_stage[i] == len(self.layers):  # first use of this layer: build it
                self.layers.append(SameConv1d(channels, f, k, separable=separable))
            channels = f
        self.layer_of_stage = list(layer_of_stage)
        self.upsample = list(upsample)
        self.crops = [tuple(c) for c in crops]
        self.head = SameConv1d(channels, 1, head_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, j in enumerate(self.layer_of_stage):
            x = upsample_nearest(x, self.upsample[i])
            left, right = self.crops[i]
            if left or right:  # python ints: a constant Slice in ONNX, no Shape/Gather/Sub chain
                x = x[:, :, left : int(x.shape[2]) - right]
            x = F.relu(self.layers[j](x))
        return self.head(x).squeeze(1)


def fuse_parallel_rnns(rnns: Sequence[nn.Module]) -> nn.Module | None:
    """One uni-directional nn.LSTM/nn.GRU equivalent to several run on the same input.

    The hidden state is the concatenation of theirs; gate rows are interleaved per gate and the
    recurrent matrix is block-diagonal, so each part only sees its own state: the same function,
    with one fused kernel call instead of one per branch (the P and S pickers share their input).
    Returns None for RNNs it cannot fuse (Keras GRU cells, bidirectional or multi-layer ones).
    """
    first = rnns[0]
    kinds = {type(r) for r in rnns}
    if len(kinds) != 1 or first.__class__ not in (nn.LSTM, nn.GRU):
        return None
    if any(r.bidirectional or r.num_layers != 1 or not r.bias or not r.batch_first for r in rnns):
        return None
    u, n = first.hidden_size, len(rnns)
    gates = 4 if isinstance(first, nn.LSTM) else 3
    with untraced():
        fused = first.__class__(first.input_size, n * u, batch_first=True)
    with untraced():
        for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
            parts = [getattr(r, name)[g * u : (g + 1) * u] for g in range(gates) for r in rnns]
            getattr(fused, name).copy_(torch.cat(parts))
        w_hh = torch.zeros(gates * n * u, n * u)
        for g in range(gates):
            for i, r in enumerate(rnns):
                rows = slice((g * n + i) * u, (g * n + i + 1) * u)
                w_hh[rows, i * u : (i + 1) * u] = r.weight_hh_l0[g * u : (g + 1) * u]
        fused.weight_hh_l0.copy_(w_hh)
    with untraced():
        fused.to(first.weight_ih_l0.device)
    fused.requires_grad_(False)
    return fused.eval()
