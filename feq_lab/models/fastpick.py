"""Inference form of the P and S pickers' local attentions: both branches in one pass.

Why: after the fused P/S RNN (one block-diagonal RNN, see `compile.fuse_parallel_rnns`) the two
local attentions are two copies of ~25 tiny ops on (B, 56, 16). Block-diagonal query/key
projections and a branch axis for the scores run both at once, on the fused RNN's output as it
is, and hand the decoders the P and S features already side by side. Same function as
`AdditiveSelfAttention._local` per branch: the score bias b_a is dropped because the softmax is
shift-invariant, and in eager tanh is taken through sigmoid as in the global attention.
Built once from frozen weights by `compile.compile_for_inference`, in the form of its target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from feq_lab.models.layers import AdditiveSelfAttention, outside_mask


@dataclass(frozen=True)
class StackedLocalAttention:
    """n local additive attentions of equal shape, applied to (B, T, n·C) branch-major input.

    "eager": weights pre-scaled for the sigmoid form (tanh(a) = 2·sigmoid(2a) − 1; PyTorch's CPU
    sigmoid is faster, and the constants cancel in the softmax). "onnx": the tanh form, window
    axis leading, scores of all branches in one MatMul."""

    query: torch.Tensor  # (n·U, n·C), block-diagonal
    hidden_bias: torch.Tensor  # (n·U,)
    key: torch.Tensor  # (n·U, n·C), block-diagonal
    score: torch.Tensor  # eager: (n, U, 1); onnx: (n·U, n) block-diagonal
    mask: torch.Tensor  # (T, W) neighbours outside the sequence
    branches: int
    width: int
    eps: float
    form: str

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.form == "onnx":
            return self._export_form(y)
        n, units = self.branches, int(self.score.shape[1])
        batch, length, width = y.shape[0], int(y.shape[1]), self.width
        channels = int(y.shape[2]) // n
        lo = width // 2
        hi = width - 1 - lo
        q = F.linear(y, self.query, self.hidden_bias)  # (B, T, n·U), pre-scaled by 2
        k = F.linear(y, self.key)
        k_pad, y_pad = F.pad(k, (0, 0, lo, hi)), F.pad(y, (0, 0, lo, hi))
        k_win = torch.stack([k_pad[:, j : j + length] for j in range(width)], dim=-1)
        y_win = torch.stack([y_pad[:, j : j + length] for j in range(width)], dim=-1)
        h = torch.sigmoid(q.unsqueeze(-1) + k_win)  # (B, T, n·U, W)
        h = h.reshape(batch, length, n, units, width).transpose(3, 4)  # (B, T, n, W, U)
        e = torch.matmul(h, self.score).squeeze(-1)  # (B, T, n, W)
        e = e.masked_fill(self.mask.unsqueeze(1), -math.inf)
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        att = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        y_win = y_win.reshape(batch, length, n, channels, width)
        out = torch.matmul(y_win, att.unsqueeze(-1))  # (B, T, n, C, 1)
        return out.reshape(batch, length, n * channels)

    def _export_form(self, y: torch.Tensor) -> torch.Tensor:
        """The ONNX form, window axis leading: (B, W, T, n·U) tensors keep every broadcast
        over long contiguous rows (onnxruntime's Add on a trailing axis of W = 3 costs ~10× more
        per element), and the scores of all branches are one MatMul with the block-diagonal
        (n·U, n) score matrix."""
        n = self.branches
        length, width = int(y.shape[1]), self.width  # fixed by the model: graph constants
        channels = int(y.shape[2]) // n
        lo = width // 2
        q = F.linear(y, self.query, self.hidden_bias)  # (B, T, n·U)
        k = F.pad(F.linear(y, self.key), (0, 0, lo, width - 1 - lo))
        y_pad = F.pad(y, (0, 0, lo, width - 1 - lo))
        k_win = torch.stack([k[:, j : j + length] for j in range(width)], dim=1)  # (B, W, T, n·U)
        h = torch.tanh(q.unsqueeze(1) + k_win)
        e = torch.matmul(h, self.score)  # (B, W, T, n)
        e = e.masked_fill(self.mask.t().unsqueeze(-1), -math.inf)  # (W, T, 1)
        e = torch.exp(e - e.amax(dim=1, keepdim=True))
        att = (e / (e.sum(dim=1, keepdim=True) + self.eps)).unsqueeze(-1)  # (B, W, T, n, 1)
        out = 0
        for j in range(width):
            out = out + att[:, j] * y_pad[:, j : j + length].reshape(-1, length, n, channels)
        return out.reshape(-1, length, n * channels)


def build_stacked_attention(
    attentions: Sequence[AdditiveSelfAttention], length: int, form: str
) -> StackedLocalAttention:
    """Stack local attentions of equal shape for sequences of `length` steps (frozen: call
    under `torch.no_grad`)."""
    first = attentions[0]
    if first.width is None or any(a.width != first.width for a in attentions):
        raise ValueError("only local attentions of one width can be stacked")
    device = first.query.weight.device
    scale = 2.0 if form == "eager" else 1.0
    scores = [a.score.weight.reshape(-1, 1) for a in attentions]
    return StackedLocalAttention(
        query=torch.block_diag(*[a.query.weight for a in attentions]) * scale,
        hidden_bias=torch.cat([a.hidden_bias for a in attentions]) * scale,
        key=torch.block_diag(*[a.key.weight for a in attentions]) * scale,
        score=torch.stack(scores) * 2.0 if form == "eager" else torch.block_diag(*scores),
        mask=outside_mask(length, int(first.width), device),
        branches=len(attentions),
        width=int(first.width),
        eps=float(first.eps),
        form=form,
    )
