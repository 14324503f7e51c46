"""Building blocks of the EQT/LEQ/FEQ family (REFERENCE §5), channel-first (B, C, T) unless noted.

This is the reference: each layer's math is written here once, in the form training runs.
Faster inference forms of the same functions live only in `compile.py` (built once from trained
weights); faster training implementations of the GRU and of separable conv stages are chosen at
construction (`options.ModelOptions`) and have the same signatures as `gru.gru_sequence` and
`separable_stage` below.

Why custom layers: TensorFlow's "same" padding and pooling (extra sample on the right, −inf for
max-pooling), separable convolutions with a bias only on the pointwise half, additive
self-attention and a Keras `reset_after=False` GRU are what make the parameter counts and the
outputs match the Keras originals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.models.gru import GruFn, gru_sequence

BN_EPS = 1e-3  # Keras BatchNormalization default

SeparableFn = Callable[..., torch.Tensor]
ScoresFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ConvFn = Callable[..., torch.Tensor]
# a separable stage and the 1-output conv head after it as one call (no reference of its own:
# it is `separable_stage` then `same_conv`; `kernels.autograd.separable_head`)
SeparableHeadFn = Callable[..., torch.Tensor]
DropoutFn = Callable[[torch.Tensor, float, bool], torch.Tensor]


def same_padding(kernel: int) -> tuple[int, int]:
    """TensorFlow "same" padding of a stride-1 convolution: the odd extra sample goes right."""
    total = kernel - 1
    return total // 2, total - total // 2


def pool_padding(length: int, pool: int) -> tuple[int, int]:
    """TensorFlow "same" padding of a max-pool with stride = size."""
    out = math.ceil(length / pool)
    total = max((out - 1) * pool + pool - length, 0)
    return total // 2, total - total // 2


def same_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1
) -> torch.Tensor:
    """Stride-1 conv with TF "same" padding (an even kernel's extra zero goes on the right).
    x (B, C, T), or (B, C, 1, T): then the same conv as a 2-D one, which keeps x's memory format
    (channels_last: oneDNN's NHWC kernels, faster for long, thin signals; `ModelOptions`)."""
    left, right = same_padding(int(weight.shape[-1]))
    if right > left:
        x = F.pad(x, (0, right - left))
    if x.dim() == 4:
        weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, padding=(0, left), groups=groups)
    return F.conv1d(x, weight, bias, padding=left, groups=groups)


def same_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int = 1,
    padding: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The dense-conv seam's reference (`ConvFn`, e.g. the stacked decoders' heads): x
    (B, G·C, L), weight (G·O, C, k) grouped like `F.conv1d(groups=G)`, zero padding (left,
    right), by default TF "same" (`same_conv1d`)."""
    if padding is None:
        return same_conv1d(x, weight, bias, groups=groups)
    return F.conv1d(F.pad(x, (int(padding[0]), int(padding[1]))), weight, bias, groups=groups)


def same_max_pool1d(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Max-pool with stride = size and TF "same" padding (`pool_padding`; pads count as −inf),
    over the last axis of x (B, C, T) or (B, C, 1, T) (as `same_conv1d`: a 2-D pool keeping x's
    memory format)."""
    if pool == 1:
        return x
    if x.dim() == 4:
        def max_pool(y: torch.Tensor, **kw) -> torch.Tensor:
            padding = kw.pop("padding", 0)
            return F.max_pool2d(y, (1, pool), padding=(0, padding), **kw)
    else:
        def max_pool(y: torch.Tensor, **kw) -> torch.Tensor:
            return F.max_pool1d(y, pool, **kw)
    left, right = pool_padding(int(x.shape[-1]), pool)
    if left == 0 and right == 0:
        return max_pool(x)
    if left == 0:  # a partial window at the end: ceil_mode ignores the missing samples
        return max_pool(x, ceil_mode=True)
    if left == right and 2 * left <= pool:
        return max_pool(x, padding=left)
    return max_pool(F.pad(x, (left, right), value=-math.inf))


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each sample `factor` times along the last axis (Keras UpSampling1D)."""
    if factor == 1:
        return x
    return torch.repeat_interleave(x, factor, dim=2)


def crop_edges(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Drop `left` and `right` samples of the last axis (Keras Cropping1D)."""
    if not (left or right):
        return x
    return x[:, :, left : int(x.shape[2]) - right]


def separable_stage(
    x: torch.Tensor,
    depthwise: torch.Tensor,
    pointwise: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int = 1,
    upsample: int = 1,
    crop: tuple[int, int] = (0, 0),
    relu: bool = True,
    pool: int = 1,
) -> torch.Tensor:
    """One separable conv stage, the reference (`SeparableFn`): nearest upsample → crop →
    depthwise "same" conv (unbiased) → pointwise conv + bias → ReLU → "same" max-pool (stride =
    size; TF padding from the length, `pool_padding`). x (B, G·C, L); depthwise (G·C, 1, k);
    pointwise (G·O, C, 1) grouped as `F.conv1d(groups=G)` (G = 3: the stacked decoders)."""
    y = crop_edges(upsample_nearest(x, upsample), *crop)
    y = same_conv1d(y, depthwise, None, groups=int(depthwise.shape[0]))
    y = F.conv1d(y, pointwise, bias, groups=groups)
    if relu:
        y = F.relu(y)
    return same_max_pool1d(y, pool)


class SameConv1d(nn.Module):
    """Conv1D with TF "same" padding; plain or depthwise-separable (depthwise half unbiased).

    Parameter names (`depthwise.weight`, `conv.weight`, `conv.bias`) are the checkpoints'."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, separable: bool = False):
        super().__init__()
        left = same_padding(kernel)[0]
        if separable:
            self.depthwise: nn.Module | None = nn.Conv1d(
                in_channels, in_channels, kernel, padding=left, groups=in_channels, bias=False
            )
            self.conv = nn.Conv1d(in_channels, out_channels, 1)
        else:
            self.depthwise = None
            self.conv = nn.Conv1d(in_channels, out_channels, kernel, padding=left)

    @property
    def separable(self) -> bool:
        return self.depthwise is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise is None:
            return same_conv1d(x, self.conv.weight, self.conv.bias)
        return separable_stage(
            x, self.depthwise.weight, self.conv.weight, self.conv.bias, relu=False
        )

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
        return same_max_pool1d(x, self.pool)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The reference elementwise dropout (`DropoutFn`): `F.dropout` — in training each element
    kept with probability 1 − p and scaled by 1/(1 − p), else identity."""
    return F.dropout(x, p, training)


class Dropout(nn.Dropout):
    """`nn.Dropout` whose draw runs through `dropout_fn` (a seam: the reference or a fused
    implementation of the same distribution); no parameters, so checkpoints are unchanged."""

    def __init__(self, p: float, dropout_fn: DropoutFn | None = None):
        super().__init__(p)
        self.dropout_fn = dropout_fn or dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout_fn(x, self.p, self.training)


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


class GRU(nn.GRU):
    """A GRU with `nn.GRU`'s parameters (names, shapes, initialisation: checkpoints load
    unchanged) whose forward runs the chosen `gru_fn` (flavour "torch") per direction.
    Batch-first (B, T, C); returns (output, None) like `rnn(x)[:1]`."""

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool, gru_fn: GruFn):
        super().__init__(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)
        self.gru_fn = gru_fn

    def forward(self, x: torch.Tensor, hx: None = None) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        if hx is not None:
            raise ValueError("the model's GRUs start from a zero state; hx is not supported")
        outs = [
            self.gru_fn(
                x,
                getattr(self, f"weight_ih{s}"),
                getattr(self, f"weight_hh{s}"),
                getattr(self, f"bias_ih{s}"),
                getattr(self, f"bias_hh{s}"),
                reverse=reverse,
                flavour="torch",
            )
            for s, reverse in _directions(self.bidirectional)
        ]
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)), None


class KerasGRU(nn.Module):
    """GRU as Keras 2.3.1 builds it (`reset_after=False`): one bias, reset gate applied to h
    *before* the recurrent matmul (`gru.gru_sequence`, flavour "keras"). Batch-first (B, T, C).

    Parameter layout per direction: weight_ih (3u, in), weight_hh (3u, u), bias (3u), gate
    order z, r, n (Keras' order)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bidirectional: bool = False,
        gru_fn: GruFn = gru_sequence,
    ):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.gru_fn = gru_fn
        u = hidden_size
        bound = 1.0 / math.sqrt(u)
        for suffix, _ in _directions(bidirectional):
            self.register_parameter(
                f"weight_ih{suffix}",
                nn.Parameter(torch.empty(3 * u, input_size).uniform_(-bound, bound)),
            )
            self.register_parameter(
                f"weight_hh{suffix}", nn.Parameter(torch.empty(3 * u, u).uniform_(-bound, bound))
            )
            self.register_parameter(f"bias{suffix}", nn.Parameter(torch.zeros(3 * u)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        outs = [
            self.gru_fn(
                x,
                getattr(self, f"weight_ih{s}"),
                getattr(self, f"weight_hh{s}"),
                getattr(self, f"bias{s}"),
                None,
                reverse=reverse,
                flavour="keras",
            )
            for s, reverse in _directions(self.bidirectional)
        ]
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)), None


def _directions(bidirectional: bool) -> list[tuple[str, bool]]:
    """(parameter-name suffix, reverse) per direction, as `nn.GRU` names them."""
    return [("_l0", False), ("_l0_reverse", True)][: 2 if bidirectional else 1]


def make_rnn(
    kind: str, input_size: int, hidden_size: int, gru_impl: str, gru_fn: GruFn
) -> nn.Module:
    """An LSTM or GRU, uni- or bidirectional ("bi" prefix), batch-first, returning (out, state).
    LSTMs are `nn.LSTM` (one oneDNN call on the CPU); GRUs run `gru_fn` in either flavour."""
    bidirectional = kind.startswith("bi")
    cell = kind[2:] if bidirectional else kind
    if cell == "lstm":
        return nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)
    if gru_impl == "keras":
        return KerasGRU(input_size, hidden_size, bidirectional=bidirectional, gru_fn=gru_fn)
    return GRU(input_size, hidden_size, bidirectional, gru_fn)


class RecurrentBlock(nn.Module):
    """EQT BiLSTM block on (B, T, C): RNN → dropout → 1×1 conv (a per-step linear) → BN."""

    def __init__(
        self,
        kind: str,
        input_size: int,
        units: int,
        dropout: float,
        gru_impl: str,
        gru_fn: GruFn,
        dropout_fn: DropoutFn | None = None,
    ):
        super().__init__()
        self.rnn = make_rnn(kind, input_size, units, gru_impl, gru_fn)
        directions = 2 if kind.startswith("bi") else 1
        self.drop = Dropout(dropout, dropout_fn)
        self.project = nn.Linear(directions * units, units)
        self.norm = nn.BatchNorm1d(units, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.drop(self.rnn(x)[0]))
        return self.norm(y.transpose(1, 2)).transpose(1, 2)


class AdditiveSelfAttention(nn.Module):
    """keras-self-attention's additive SeqSelfAttention on (B, T, C).

    e[t, s] = w_a · tanh(W_t x_t + W_x x_s + b_h) + b_a, softmax over s (within `width` steps
    centred on t when `width` is set), output_t = Σ_s a[t, s] x_s. The softmax divides by
    (Σ exp + eps) as keras-self-attention does.
    """

    def __init__(
        self,
        channels: int,
        units: int = 32,
        width: int | None = None,
        eps: float = 1e-7,
        scores_fn: ScoresFn | None = None,
    ):
        super().__init__()
        self.scores_fn = scores_fn or additive_scores  # global attention's scores (a seam)
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
            e = self.scores_fn(q, k, self.score.weight.reshape(-1)) + self.score.bias  # (B, T, T)
            return softmax_eps(e, self.eps) @ x
        return self._local(x, q, k)

    def _local(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Banded attention: only the `width` neighbours s ∈ [t − width//2, t − width//2 + width)
        are scored (what the masked dense form computes, without the T×T tensor)."""
        width = self.width
        lo = width // 2
        hi = width - 1 - lo
        length = int(x.shape[1])
        k_pad, x_pad = F.pad(k, (0, 0, lo, hi)), F.pad(x, (0, 0, lo, hi))
        # (B, T, U, W) and (B, T, C, W): neighbour j of step t is step t − lo + j
        k_win = torch.stack([k_pad[:, j : j + length] for j in range(width)], dim=-1)
        x_win = torch.stack([x_pad[:, j : j + length] for j in range(width)], dim=-1)
        h = torch.tanh(q.unsqueeze(-1) + k_win)
        e = self.score(h.transpose(2, 3)).squeeze(-1)  # (B, T, W)
        e = e.masked_fill(outside_mask(length, width, x.device), -math.inf)
        return torch.matmul(x_win, softmax_eps(e, self.eps).unsqueeze(-1)).squeeze(-1)


def additive_scores(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The reference (`ScoresFn`): e[b, t, s] = Σ_u weight[u]·tanh(q[b, t, u] + k[b, s, u]),
    q (B, T, U), k (B, S, U), weight (U,) — the global attention's scores before b_a, through
    the (B, T, S, U) tensor."""
    return torch.matmul(torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)), weight)


def softmax_eps(e: torch.Tensor, eps: float) -> torch.Tensor:
    """keras-self-attention's softmax over the last axis: exp(e − max) / (Σ exp(e − max) + eps)."""
    e = torch.exp(e - e.amax(dim=-1, keepdim=True))
    return e / (e.sum(dim=-1, keepdim=True) + eps)


def outside_mask(length: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, W) mask of local-attention neighbours outside the sequence (neighbour j of step t is
    step t − width//2 + j)."""
    idx = (
        torch.arange(length, device=device).unsqueeze(1)
        - width // 2
        + torch.arange(width, device=device)
    )
    return (idx < 0) | (idx >= length)


class TransformerBlock(nn.Module):
    """EQT's global transformer on (B, T, C): x + attention → LayerNorm → + feed-forward → LayerNorm."""

    def __init__(
        self,
        channels: int,
        attention_units: int,
        ff_units: int,
        dropout: float,
        ln_eps: float,
        scores_fn: ScoresFn | None = None,
        dropout_fn: DropoutFn | None = None,
    ):
        super().__init__()
        self.attention = AdditiveSelfAttention(channels, attention_units, scores_fn=scores_fn)
        self.norm1 = nn.LayerNorm(channels, eps=ln_eps)
        self.ff_in = nn.Linear(channels, ff_units)
        self.ff_out = nn.Linear(ff_units, channels)
        self.drop = Dropout(dropout, dropout_fn)
        self.norm2 = nn.LayerNorm(channels, eps=ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x + self.attention(x))
        return self.norm2(y + self.ff_out(self.drop(F.relu(self.ff_in(y)))))


class PickerBranch(nn.Module):
    """P or S branch on (B, T, C): uni-directional RNN → dropout → local attention."""

    def __init__(
        self,
        kind: str,
        units: int,
        attention_units: int,
        width: int | None,
        dropout: float,
        gru_impl: str,
        gru_fn: GruFn,
        dropout_fn: DropoutFn | None = None,
    ):
        super().__init__()
        self.rnn = make_rnn(kind, units, units, gru_impl, gru_fn)
        self.drop = Dropout(dropout, dropout_fn)
        self.attention = AdditiveSelfAttention(units, attention_units, width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.drop(self.rnn(x)[0]))


class Decoder(nn.Module):
    """Upsample (nearest) → crop → conv + ReLU per stage, then a 1-channel head (logits).

    `layer_of_stage[i]` is the index of the conv used at stage i (equal indices share weights;
    indices are numbered in order of first use, see `spec.layer_indices`). Separable stages run
    through `separable_fn` (`separable_stage` or a fused implementation of it)."""

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
        separable_fn: SeparableFn = separable_stage,
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
        self.separable_fn = separable_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, j in enumerate(self.layer_of_stage):
            conv = self.layers[j]
            if conv.separable:
                x = self.separable_fn(
                    x, conv.depthwise.weight, conv.conv.weight, conv.conv.bias,
                    upsample=self.upsample[i], crop=self.crops[i],
                )  # fmt: skip
            else:
                x = F.relu(conv(crop_edges(upsample_nearest(x, self.upsample[i]), *self.crops[i])))
        return self.head(x).squeeze(1)
