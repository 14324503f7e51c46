"""The three decoders as one stacked pass, the last stage in polyphase form.

Why: at batch 1 the detection, P and S decoders are three copies of ~20 small ops each, and most
of their time goes to fixed per-op costs, to copying the signal when upsampling and to the
im2col of long, thin convolutions at 6000 samples. Two exact rewrites remove most of that:

- *Stacking*: the three decoders run as one grouped computation on (B, 3·C, T) (groups = 3): one
  upsample, one crop, one grouped conv per stage instead of three of each.
- *Polyphase*: nearest upsampling by f followed by a "same" convolution equals f interleaved
  convolutions of the un-upsampled input (phase ρ of output sample f·i + ρ sees input samples
  i + ⌊(ρ + j − L)/f⌋), so the last stage runs at the low rate with a short kernel, and the head
  conv runs on those phases too; only the 1-channel logits are interleaved back to full rate.
  Only a stage without cropping qualifies (a crop shifts the zero padding off the phase grid).

Both are the same linear maps as the `Decoder` modules (their weights re-arranged, never learned
separately); outputs and gradients agree to float rounding (tests/models/test_parity.py).
`build_stacked` makes one for a `form`, fixed when it is built:
- "train": rebuilt on every training call, differentiably, so gradients reach the `Decoder`
  parameters (`ModelOptions(decoders="stacked")`);
- "eager": frozen constants for inference in PyTorch (`compile.compile_for_inference`):
  separable stages as one fused C call each where the kernels build (else the folded dense
  conv), a batch of one as tap-by-tap matmuls;
- "onnx": frozen constants in the forms onnxruntime runs fastest (see `export.layout`): a
  separable polyphase last stage per phase, its convs and the head's padded to whole blocks of
  onnxruntime's NCHWc kernels (`_PhaseTail`).
`grouped_decoders` is the training form without the polyphase rewrite
(`ModelOptions(decoders="fused")`): stacking alone, each stage and the heads one call of the
fused separable / conv kernels, which at full rate cost less than the folded polyphase convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from feq_lab.models import kernels
from feq_lab.models.layers import (
    ConvFn,
    SeparableFn,
    SeparableHeadFn,
    crop_edges,
    same_padding,
    upsample_nearest,
)

FORMS = ("train", "eager", "onnx")


@dataclass(frozen=True)
class _Conv:
    """A grouped (groups = 3) conv with explicit "same"-style (left, right) zero padding.
    `taps` (eager form only): the weight as (k, 3, C_out / 3, C_in), one matrix per tap."""

    weight: torch.Tensor  # (3·C_out, C_in, k)
    bias: torch.Tensor  # (3·C_out,)
    pad: tuple[int, int]
    taps: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.pad
        if self.taps is not None and x.shape[0] == 1 and x.device.type == "cpu":
            return self._by_taps(F.pad(x, (left, right)))
        if left != right:
            x = F.pad(x, (left, right))
            left = 0
        return F.conv1d(x, self.weight, self.bias, padding=left, groups=3)

    def time_major(self, y: torch.Tensor) -> torch.Tensor:
        """The same conv on a time-major signal y (B, T, C_in) → (B, T', C_out), run as a 2-D
        conv on (B, C, 1, T) in channels_last memory format, which is y's own memory: no layout
        copy in or out. Why: oneDNN's grouped conv on these thin, long signals is ~3× faster
        (backward above all) in NHWC than in the channel-first layout (EQT's polyphase head,
        batch 16, 1 thread: 58 → 17 ms forward + backward)."""
        left, right = self.pad
        if left != right:
            y = F.pad(y, (0, 0, left, right))
            left = 0
        x = y.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        weight = self.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = F.conv2d(x, weight, self.bias, padding=(0, left), groups=3)
        return out.squeeze(2).transpose(1, 2)

    def _by_taps(self, x: torch.Tensor) -> torch.Tensor:
        """One window on the CPU: the grouped conv as k batched matmuls on shifted views of the
        (padded) input, accumulated in place. No im2col copy; faster than oneDNN at batch 1
        for these thin convolutions."""
        c_out, c_in, k = self.weight.shape
        length = int(x.shape[-1]) - k + 1
        groups = x.reshape(3, c_in, -1)
        y = self.bias.reshape(3, c_out // 3, 1).expand(3, c_out // 3, length).contiguous()
        for j in range(k):
            y.baddbmm_(self.taps[j], groups[:, :, j : j + length])
        return y.reshape(1, c_out, length)


def _with_taps(conv: _Conv) -> _Conv:
    c_out, c_in, k = conv.weight.shape
    taps = conv.weight.reshape(3, c_out // 3, c_in, k).permute(3, 0, 1, 2).contiguous()
    return _Conv(conv.weight, conv.bias, conv.pad, taps)


@dataclass(frozen=True)
class _Stage:
    """Upsample → crop → conv → ReLU for the three decoders at once. `separable`: the stacked
    (depthwise (3·C_in, 1, k), pointwise (3·C_out, C_in, 1)) weights where the stage runs them
    as such (a fused call in "train"/"eager", the conv pair in "onnx"); else the folded `conv`."""

    upsample: int
    crop: tuple[int, int]
    conv: _Conv
    form: str
    separable: tuple[torch.Tensor, torch.Tensor] | None = None
    separable_fn: SeparableFn | None = None  # "train" with a fused separable stage
    phases: int = 1  # time-major "train" form: `conv` is the polyphase form of the stage

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "onnx":
            return self._export_form(x)
        if self.separable is not None:
            if self.form == "train":
                return self.separable_fn(
                    x,
                    *self.separable,
                    self.conv.bias,
                    groups=3,
                    upsample=self.upsample,
                    crop=self.crop,
                )
            y = kernels.separable_conv(
                x, *self.separable, self.conv.bias, groups=3, upsample=self.upsample, crop=self.crop
            )
            if y is not None:
                return y
        return F.relu(self.conv(crop_edges(upsample_nearest(x, self.upsample), *self.crop)))

    def time_major(self, y: torch.Tensor) -> torch.Tensor:
        """The stage on a time-major signal y (B, T, 3·C_in) → (B, T', 3·C_out) (the
        "train" form's channels_last path, `StackedDecoders.channels_last`); a fused separable
        stage runs channel-first, with a layout copy either side."""
        if self.separable is not None:
            return self(y.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        if self.phases > 1:
            # polyphase (module docstring): the conv at the low rate, no upsampled copy; its
            # (decoder, phase, filter) channels interleaved back to time-major in one copy
            z = F.relu(self.conv.time_major(y))
            batch, length, channels = z.shape
            f = self.phases
            z = z.reshape(batch, length, 3, f, channels // (3 * f)).transpose(2, 3)
            return z.reshape(batch, length * f, channels // f)
        left, right = self.crop
        y = _upsample_time_major(y, self.upsample)
        if left or right:
            y = y[:, left : int(y.shape[1]) - right]
        return F.relu(self.conv.time_major(y))

    def _export_form(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.crop
        x = upsample_for_export(x, self.upsample)
        if left or right:
            x = _crop_as_conv(x, left, right)
        if self.separable is not None:
            # onnxruntime runs a depthwise + grouped pointwise pair ~2× faster than the folded
            # dense conv (PyTorch eager is the other way round, hence the fold there)
            depthwise, pointwise = self.separable
            pad_left, pad_right = self.conv.pad
            if pad_left != pad_right:
                x, pad_left = F.pad(x, (pad_left, pad_right)), 0
            x = F.conv1d(x, depthwise, padding=pad_left, groups=int(depthwise.shape[0]))
            return F.relu(F.conv1d(x, pointwise, self.conv.bias, groups=3))
        return F.relu(self.conv(x))


def _upsample_time_major(y: torch.Tensor, factor: int) -> torch.Tensor:
    """`layers.upsample_nearest` on a time-major signal (B, T, C): each time row repeated
    `factor` times (one copy, contiguous (B, factor·T, C)); same values."""
    if factor == 1:
        return y
    batch, length, channels = y.shape
    return y.unsqueeze(2).expand(batch, length, factor, channels).reshape(
        batch, length * factor, channels
    )


def upsample_for_export(x: torch.Tensor, factor: int) -> torch.Tensor:
    """`layers.upsample_nearest` as the ONNX export writes it: a 2-D nearest Resize on
    (B, C, 1, T) with an integer scale (index i reads i // factor, exactly). Once
    `export.layout` has made the convs around it 2-D, onnxruntime runs it as an NCHWc Upsample
    inside the blocked layout, where `repeat_interleave`'s Tile, or a Concat, would force a
    round trip through the plain layout. Same values."""
    if factor == 1:
        return x
    up = F.interpolate(x.unsqueeze(2), scale_factor=(1.0, float(factor)), mode="nearest")
    return up.squeeze(2)


def _crop_as_conv(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """x[:, :, left : T − right] as an unpadded depthwise conv whose kernel (length
    left + right + 1) is 1 at tap `left` and 0 elsewhere: the same samples. For the export:
    between onnxruntime's NCHWc upsample and conv a Slice would need a round trip through the
    plain layout (two reorders), a depthwise conv does not."""
    channels = int(x.shape[1])
    kernel = torch.zeros(channels, 1, left + right + 1, dtype=x.dtype)
    kernel[:, :, left] = 1.0
    return F.conv1d(x, kernel, groups=channels)


@dataclass(frozen=True)
class StackedDecoders:
    """The three decoders as one computation: `stages` at full rate, then either a polyphase
    tail (`tail_conv`: last stage + head at the low rate, `tail_upsample` phases) or, when the
    last stage crops or does not upsample, only a plain head (`tail_upsample` == 1)."""

    stages: tuple[_Stage, ...]
    tail_upsample: int  # upsampling of the polyphase stage (1: no polyphase tail)
    tail_conv: _Conv | None  # the polyphase stage (output channels ordered decoder, phase, filter)
    head: _Conv  # on the phases when there is a tail (output channels ordered decoder, phase)
    form: str
    channels_last: bool = False  # "train": run time-major (NHWC convs), see `_time_major`
    phase_tail: _PhaseTail | None = None  # "onnx", separable tail: it and the head's products

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3·C, T), the detection, P and S decoder inputs stacked on channels."""
        if self.channels_last:
            return self._time_major(x.transpose(1, 2).contiguous())
        for stage in self.stages:
            x = stage(x)
        f = self.tail_upsample
        if self.tail_conv is not None and self.phase_tail is None:
            x = F.relu(self.tail_conv(x))
        if self.form != "onnx":
            head = self.head(x)
        elif self.phase_tail is not None:
            head = _sum_shifted(self.head, self.phase_tail(x))
        else:
            # the head as a 1×1 conv over every tap plus k shifted adds (see _sum_shifted)
            head = _sum_shifted(self.head, _tap_products(self.head.weight, x, self.head.pad))
        y = _interleave(head, f, 3)  # (B, 3, samples)
        return y[:, 0], y[:, 1], y[:, 2]

    def _time_major(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same pass with the signal held time-major, (B, T, 3·C) — the layout the
        recurrent middle already produces, so the decoders' input needs no copy — every conv a
        2-D conv in channels_last format (`_Conv.time_major`), upsampling and crops on the time
        axis; only the 3·f-channel head output is interleaved back to (B, 3, samples)."""
        for stage in self.stages:
            y = stage.time_major(y)
        if self.tail_conv is not None:
            y = F.relu(self.tail_conv.time_major(y))
        head = self.head.time_major(y)  # (B, T, 3·f): channels ordered (decoder, phase)
        batch, length, _ = head.shape
        f = self.tail_upsample
        out = head.reshape(batch, length, 3, f).permute(0, 2, 1, 3).reshape(batch, 3, length * f)
        det, p, s = out.unbind(1)  # one stack backward, not three zero-filled selects
        return det, p, s


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def _tap_products(
    weight: torch.Tensor, x: torch.Tensor, pad: tuple[int, int], block: int = 1
) -> torch.Tensor:
    """Every tap's product of a grouped (groups = 3) conv `weight` (C_out, C_in / 3, k) with x,
    as one 1×1 conv zero-padded by max(pad) on each side (its padded outputs are exact zeros:
    no bias): (B, 3·G, T + 2·max(pad)), channels ordered (group, tap, filter), then at least one
    zero row (`_sum_shifted` reads past the last tap) up to a multiple of `block` (whole NCHWc
    blocks: see `_PhaseTail`)."""
    c_out, c_in, k = weight.shape
    per_group = c_out // 3
    taps = weight.reshape(3, per_group, c_in, k).permute(0, 3, 1, 2).reshape(3, k * per_group, c_in)
    rows = _padded(k * per_group + 1, block)
    taps = F.pad(taps, (0, 0, 0, rows - k * per_group))
    return F.conv1d(x, taps.reshape(3 * rows, c_in, 1), padding=max(pad), groups=3)


def _sum_shifted(conv: _Conv, z: torch.Tensor) -> torch.Tensor:
    """The grouped conv from its tap products z (`_tap_products`): y[t] = b + Σ_j W_j x[t + j −
    left], the k shifted products summed. For the export of the head (few output channels):
    onnxruntime's Conv runs such a conv as im2col + a GEMM of 3 or so rows per group, which costs
    more than the 1×1 GEMM (no im2col) and k small adds.

    Each group's rows are read as one flat (rows · T') signal: tap j's C_out / 3 rows shifted by
    j samples are the contiguous range from row j·C_out/3, sample j, one (C_out/3 · T') long —
    a plain copy, where a slice of rows and then of samples would be two strided ones. Sample t
    of row r of that range is row r's sample t + j only for t < T' − j (after it the next row
    begins), which covers the `out` samples kept."""
    c_out, _, k = conv.weight.shape
    left, right = conv.pad
    per_group = c_out // 3
    padded = int(z.shape[-1])  # T' = T + 2·max(pad); static: only the batch is dynamic
    start = max(left, right) - left
    out = padded - 2 * max(left, right) + left + right - k + 1
    z = z.reshape(-1, 3, int(z.shape[1]) // 3 * padded)
    span = per_group * padded
    y = conv.bias.reshape(1, 3, per_group, 1).repeat(1, 1, 1, padded).reshape(1, 3, span)
    for j in range(k):
        first = j * span + j + start
        y = y + z[:, :, first : first + span]
    return y.reshape(-1, 3, per_group, padded)[..., :out].reshape(-1, c_out, out)


# onnxruntime's NCHWc kernels take a grouped conv only when its channels per group are a
# multiple of the block (8 with AVX2, 16 with AVX-512): 16 suits both
NCHWC_GROUP_BLOCK = 16


@dataclass(frozen=True)
class _TailBlock:
    """Phases of a `_PhaseTail` whose outputs share one padded block of P channels per decoder
    (their filters side by side, then zero filters), and the head's weight columns that read it.
    `depthwise` set (a block of one phase): the stage as depthwise → pointwise `weight`
    (3·P, C_in, 1); else `weight` (3·P, C_in, D) is the folded dense polyphase conv of the
    block's phases."""

    weight: torch.Tensor
    bias: torch.Tensor  # (3·P,)
    head: torch.Tensor  # (3·F, P, D_head): the polyphase head's columns for these phases
    depthwise: torch.Tensor | None = None  # (3·C_in, 1, D): this phase's depthwise taps


@dataclass(frozen=True)
class _PhaseTail:
    """ONNX form of a separable polyphase last stage and the head's tap products.

    The stage runs at the low rate per phase; the phases' outputs are kept as separate tensors
    with channels (decoder, filter) and the head's 1×1 tap products are summed over them (its
    weight split by input phase): no activation is transposed. onnxruntime runs a grouped conv
    in its NCHWc kernels only when its channels per group are a multiple of the block
    (`nchwc_block`), so the phases are packed into blocks of that many channels per decoder,
    zero filters filling the rest (FEQ: 8 filters, f = 3: phases {0, 1} in one block, {2} in
    another). A block of several phases runs as one dense polyphase conv (the depthwise taps
    folded into the pointwise weight; FEQ: 16 → 16 per decoder, 3 taps); a block of one phase as
    its depthwise conv (nearest upsampling then a depthwise "same" conv is, per phase, a
    depthwise conv of the un-upsampled input with ~k/f taps: `polyphase_weight`) then the
    pointwise conv. Measured with onnxruntime's profiler (FEQ3, batch 8, 1 thread, AVX-512, a
    shared machine; per call): the dense polyphase conv with the exact 24 filters per decoder
    (no NCHWc kernel: im2col + GEMM) ~1.7 ms plus ~0.5 ms for the head's tap products; all three
    phases separable with phases 0 and 1 sharing a block through two summed pointwise convs
    ~1.5 ms plus ~0.6 ms; phases 0 and 1 as one dense conv instead, ~2% of the whole model less
    again; all three in one dense block (24 filters padded to 32) ~4% more than that."""

    pad: tuple[int, int]  # the stage's zero padding at the low rate
    blocks: tuple[_TailBlock, ...]
    head_pad: tuple[int, int]
    nchwc_block: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.pad
        if left != right:
            x, left = F.pad(x, (left, right)), 0
        z = None
        for block in self.blocks:
            if block.depthwise is not None:
                y = F.conv1d(x, block.depthwise, padding=left, groups=int(x.shape[1]))
                y = F.conv1d(y, block.weight, block.bias, groups=3)
            else:
                y = F.conv1d(x, block.weight, block.bias, padding=left, groups=3)
            products = _tap_products(block.head, F.relu(y), self.head_pad, self.nchwc_block)
            z = products if z is None else z + products
        return z


def _phase_tail(convs: Sequence, head: _Conv, f: int, nchwc_block: int) -> _PhaseTail:
    """`_PhaseTail` of three separable decoder convs after upsampling by f; `head` is the
    polyphase head (`polyphase_head`, input channels ordered (decoder, phase, filter))."""
    depthwise, pad = polyphase_weight(_grouped(c.depthwise.weight for c in convs), f)
    depthwise = depthwise.reshape(f, -1, 1, depthwise.shape[-1])  # (phase, 3·C_in, 1, D)
    dense = _polyphase_conv(convs, f).weight  # (3·f·C_out, C_in, D): (decoder, phase, filter)
    c_out, c_in = int(convs[0].conv.weight.shape[0]), int(convs[0].conv.weight.shape[1])
    dense = dense.reshape(3, f, c_out, c_in, -1)
    rows = _padded(c_out, nchwc_block)
    per_block = max(1, rows // c_out)  # phases sharing one padded block
    columns = head.weight.reshape(head.weight.shape[0], f, c_out, -1)  # (3·F, phase, filter, D)
    blocks = []
    for first in range(0, f, per_block):
        n = min(f, first + per_block) - first
        grow = rows - n * c_out
        bias = _grouped(F.pad(c.conv.bias.repeat(n), (0, grow)) for c in convs)
        reads = columns[:, first : first + n].reshape(columns.shape[0], n * c_out, -1)
        reads = F.pad(reads, (0, 0, 0, grow)).contiguous()
        if n == 1:
            pointwise = _grouped(F.pad(c.conv.weight, (0, 0, 0, 0, 0, grow)) for c in convs)
            blocks.append(_TailBlock(pointwise, bias, reads, depthwise[first].contiguous()))
        else:
            weight = dense[:, first : first + n].reshape(3, n * c_out, c_in, -1)
            weight = F.pad(weight, (0, 0, 0, 0, 0, grow)).reshape(3 * rows, c_in, -1)
            blocks.append(_TailBlock(weight.contiguous(), bias, reads))
    return _PhaseTail(pad, tuple(blocks), head.pad, nchwc_block)


def _interleave(y: torch.Tensor, phases: int, groups: int) -> torch.Tensor:
    """(B, groups·phases·C, T), channels ordered (group, phase, c) → (B, groups·C, phases·T):
    sample phases·i + ρ of channel c is phase ρ at i."""
    if phases == 1:
        return y
    channels, length = int(y.shape[1]), int(y.shape[2])  # static: only the batch is dynamic
    c = channels // (groups * phases)
    y = y.reshape(-1, groups, phases, c, length).permute(0, 1, 3, 4, 2)
    return y.reshape(-1, groups * c, phases * length)


def _phase_offsets(kernel: int, phases: int) -> tuple[int, int, int]:
    """ "Same" left padding L of a `kernel` conv, and the range [d_min, d_max] of low-rate
    offsets ⌊(ρ + j − L) / phases⌋ its taps reach over all phases ρ."""
    left = same_padding(kernel)[0]
    return left, -((left + phases - 1) // phases), (phases - 1 + kernel - 1 - left) // phases


def polyphase_weight(weight: torch.Tensor, upsample: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Weight (f·C_out, C_in, D) and zero padding of the low-rate conv that equals nearest
    upsampling by f followed by a "same" conv with `weight`; output channel ρ·C_out + o is
    filter o at phase ρ. A linear map of `weight` (differentiable)."""
    c_out, c_in, k = weight.shape
    f = upsample
    left, d_min, d_max = _phase_offsets(k, f)
    select = weight.new_zeros(f, d_max - d_min + 1, k)  # tap j of phase ρ lands at offset d
    for rho in range(f):
        for j in range(k):
            select[rho, (rho + j - left) // f - d_min, j] = 1.0
    out = torch.einsum("rdj,ocj->rocd", select, weight)
    return out.reshape(f * c_out, c_in, -1), (-d_min, d_max)


def polyphase_head(weight: torch.Tensor, phases: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Weight (F, F·C_in, D) and padding of a "same" conv (`weight`: (1, C_in, k)) applied to a
    signal held as F phases (input channel ρ'·C_in + c is channel c at phase ρ'); output channel
    ρ is the result at phase ρ. A linear map of `weight` (differentiable)."""
    _, c_in, k = weight.shape
    big_f = phases
    left, d_min, d_max = _phase_offsets(k, big_f)
    select = weight.new_zeros(big_f, big_f, d_max - d_min + 1, k)
    for rho in range(big_f):
        for j in range(k):
            q = rho + j - left
            select[rho, q % big_f, q // big_f - d_min, j] = 1.0
    out = torch.einsum("rpdj,cj->rpcd", select, weight[0])
    return out.reshape(big_f, big_f * c_in, -1), (-d_min, d_max)


def _grouped(parts) -> torch.Tensor:
    return torch.cat(list(parts), dim=0).contiguous()


def grouped_decoders(
    decoders: Sequence,
    x: torch.Tensor,
    separable_fn: SeparableFn,
    conv_fn: ConvFn,
    head_fn: SeparableHeadFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three `Decoder`s on x (B, 3·C, T) (detection, P, S inputs stacked on channels) as one
    grouped (groups = 3) pass at full rate, differentiable in their own parameters
    (`ModelOptions(decoders="fused")`): each stage one `separable_fn` call (a dense stage: upsample,
    crop, one `conv_fn` call + ReLU), the heads one `conv_fn` call; with `head_fn`
    (`kernels.autograd.separable_head`) a separable last stage and the heads are one call, the
    same floats as those two. Why not the polyphase tail here: with fused kernels the full-rate
    separable stage and the grouped head cost less than the folded polyphase convs (FEQ3, batch
    32, forward + backward: ~95 vs ~200 ms)."""
    first = decoders[0]
    heads = [d.head.conv for d in decoders]
    head_weight, head_bias = _grouped(h.weight for h in heads), _grouped(h.bias for h in heads)
    fuse_tail = head_fn is not None and all(h.bias is not None for h in heads)
    last = len(first.layer_of_stage) - 1
    for i, j in enumerate(first.layer_of_stage):
        convs = [d.layers[j] for d in decoders]
        bias = _grouped(c.conv.bias for c in convs)
        upsample, crop = first.upsample[i], tuple(first.crops[i])
        if all(c.separable for c in convs):
            depthwise = _grouped(c.depthwise.weight for c in convs)
            pointwise = _grouped(c.conv.weight for c in convs)
            if fuse_tail and i == last:  # the last stage and the heads in one call
                y = head_fn(x, depthwise, pointwise, bias, head_weight, head_bias, groups=3,
                            upsample=upsample, crop=crop)  # fmt: skip
                break
            x = separable_fn(x, depthwise, pointwise, bias, groups=3, upsample=upsample, crop=crop)
        else:
            x = crop_edges(upsample_nearest(x, upsample), *crop)
            x = F.relu(conv_fn(x, _grouped(c.dense_weight() for c in convs), bias, groups=3))
    else:
        y = conv_fn(x, head_weight, head_bias, groups=3)
    det, p, s = y.unbind(1)  # backward: one stack, not three zero-filled (B, 3, T) selects
    return det, p, s


def build_stacked(
    decoders: Sequence,
    form: str,
    separable_fn: SeparableFn | None = None,
    kernels_ok: bool = False,
    channels_last: bool = False,
    nchwc_block: int = NCHWC_GROUP_BLOCK,
) -> StackedDecoders:
    """Re-arrange three `Decoder`s' weights into a `StackedDecoders` of the given `form`.

    "train" is differentiable (call it inside the forward pass); "eager"/"onnx" must be built
    from detached weights (under `torch.no_grad`). `separable_fn` ("train"): a fused separable
    stage to run separable stages with; None folds them into dense grouped convs. `kernels_ok`
    ("eager"): the C kernels built, so separable stages keep their two halves for them.
    `channels_last` ("train" only): hold the signal time-major and run the convs in NHWC
    (`StackedDecoders._time_major`; ModelOptions(decoder_layout=...)). `nchwc_block` ("onnx"):
    the channel block a separable polyphase tail pads its grouped convs to (`_PhaseTail`)."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    first = decoders[0]
    n = len(first.layer_of_stage)
    last_crop = first.crops[-1]
    polyphase = n > 0 and first.upsample[-1] > 1 and not any(last_crop)
    plain_stages = n - 1 if polyphase else n
    keep_separable = {"train": separable_fn is not None, "eager": kernels_ok, "onnx": True}[form]
    time_major = channels_last and form == "train"
    stages = []
    for i in range(plain_stages):
        convs = [d.layers[d.layer_of_stage[i]] for d in decoders]
        weights = [c.dense_weight() for c in convs]
        separable = None
        if keep_separable and all(c.separable for c in convs):
            separable = (
                _grouped(c.depthwise.weight for c in convs),
                _grouped(c.conv.weight for c in convs),
            )
        conv = _Conv(
            _grouped(weights),
            _grouped(c.conv.bias for c in convs),
            same_padding(int(weights[0].shape[-1])),
        )
        phases = 1
        if time_major and separable is None and first.upsample[i] > 1 and not any(first.crops[i]):
            # time-major training: interleaving phases is one copy, so every uncropped
            # upsampling stage runs polyphase (fewer multiply-adds: k taps at f·T → f·D at T)
            phases = first.upsample[i]
            conv = _polyphase_conv(convs, phases)
        stages.append(
            _Stage(
                first.upsample[i],
                tuple(first.crops[i]),
                _with_taps(conv) if form == "eager" else conv,
                form,
                separable,
                separable_fn if form == "train" else None,
                phases,
            )
        )
    heads = [d.head for d in decoders]
    f, tail = 1, None
    if polyphase:
        f = first.upsample[-1]
        tail = _polyphase_conv([d.layers[d.layer_of_stage[-1]] for d in decoders], f)
    if tail is not None:
        head_parts = [polyphase_head(h.conv.weight, f) for h in heads]
        head = _Conv(
            _grouped(w for w, _ in head_parts),
            _grouped(h.conv.bias.repeat(f) for h in heads),
            head_parts[0][1],
        )
    else:
        head = _Conv(
            _grouped(h.conv.weight for h in heads),
            _grouped(h.conv.bias for h in heads),
            same_padding(int(heads[0].conv.weight.shape[-1])),
        )
    if form == "eager":
        tail = None if tail is None else _with_taps(tail)
        head = _with_taps(head)
    phase_tail = None
    if form == "onnx" and tail is not None:
        last = [d.layers[d.layer_of_stage[-1]] for d in decoders]
        if all(c.separable for c in last):
            phase_tail = _phase_tail(last, head, f, nchwc_block)
    return StackedDecoders(tuple(stages), f, tail, head, form, time_major, phase_tail)


def _polyphase_conv(convs: Sequence, f: int) -> _Conv:
    """The three decoders' convs of one stage after upsampling by f, in polyphase form
    (`polyphase_weight`), grouped; output channels ordered (decoder, phase, filter)."""
    parts = [polyphase_weight(c.dense_weight(), f) for c in convs]
    return _Conv(
        _grouped(w for w, _ in parts),
        _grouped(c.conv.bias.repeat(f) for c in convs),
        parts[0][1],
    )
