"""Differentiable fused kernels for TRAINING: C forward and backward, with a torch fallback.

Why: a training step of the small presets is dominated by many small, memory-bound ops, not by
FLOPs. PyTorch has no fused CPU GRU (its GRU is ~10 ATen ops per time step, and as many autograd
nodes back); a separable conv stage is a chain of depthwise conv (slow on PyTorch's CPU),
pointwise conv, ReLU and pooling, each a full pass over the signal forward and backward; and
oneDNN runs thin dense convs such as the decoders' 8 → 1 channel heads at ~1 GMAC/s (backward
worst). Measured on FEQ3's shapes (batch 32, one thread, forward + backward): GRU direction 2.7×
faster than nn.GRU, 5× than the Keras-style cell in torch; the encoder's separable stages ~6×,
the decoders' 2-6× the unfolded torch ops; the heads ~12× oneDNN (`bench/training.py
--kernels-only`; on AVX-512 the C loops are register-blocked, kernels/simd.h).

- `gru_sequence`: one GRU direction, `nn.GRU` ("torch") or Keras 2.3.1 reset_after=False
  ("keras") semantics (gru_train.c).
- `separable_stage`: [upsample → crop → depthwise → pointwise + bias → ReLU → max-pool], the
  encoder's and decoders' stages, several side by side with `groups` (sep_train.c; an
  upsampling stage's depthwise half in polyphase form where that needs fewer taps).
- `same_conv`: dense grouped conv with "same" padding, e.g. the decoders' heads (conv_train.c).
- `separable_head`: a decoder's last separable stage and its head as one call, the same floats
  as `separable_stage` then `same_conv` (their loops, conv_rows.h): the stage's (B, 24, 6000)
  output goes through the heads while in cache and its gradient never leaves it.

Each is a `torch.autograd.Function` whose forward and backward are C loops (built with the other
kernels, `feq_lab.models.kernels.library`), with large matrix products (the GRU's input
projections and weight gradients) left to torch's GEMMs. The batch is split into up to
`torch.get_num_threads()` chunks, run on torch's own OpenMP threads (`parallel.c`: a second
thread pool beside torch's spinning one made FEQ3's 2-thread step no faster than 1 thread's);
weight gradients are summed from per-chunk copies in chunk order.

Each public function computes the same function as its `*_reference` twin written in plain torch
ops; the twin runs instead (transparently) when the kernels are unavailable (no compiler,
`FEQ_LAB_NO_KERNELS=1`), when `native=False` is passed, or for inputs the kernels do not cover
(not CPU float32, e.g. CUDA or float64). Gradients equal autograd's through the reference up to
float rounding (tests/models/test_train_kernels.py).
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from feq_lab.models import kernels
from feq_lab.models.gru import gru_sequence as reference_gru
from feq_lab.models.layers import additive_scores as reference_scores
from feq_lab.models.layers import dropout as reference_dropout
from feq_lab.models.layers import same_conv as reference_conv
from feq_lab.models.layers import separable_stage as reference_separable

FLAVOURS = ("torch", "keras")
# below this many multiply-adds per call a second thread costs more than it saves
_PARALLEL_MIN_WORK = 200_000


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    """The kernel library with this module's entry points declared (None where unavailable)."""
    lib = kernels.library()
    if lib is None:
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.feq_gru_train_fwd.restype = None
    lib.feq_gru_train_fwd.argtypes = [ptr] * 6 + [i32] * 7
    lib.feq_gru_train_bwd.restype = None
    lib.feq_gru_train_bwd.argtypes = [ptr] * 7 + [i32] * 7
    lib.feq_sep_fwd.restype = ctypes.c_int
    lib.feq_sep_fwd.argtypes = [ptr] * 6 + [i32] * 16
    lib.feq_sep_bwd.restype = ctypes.c_int
    lib.feq_sep_bwd.argtypes = [ptr] * 10 + [i32] * 16
    lib.feq_conv_fwd.restype = ctypes.c_int
    lib.feq_conv_fwd.argtypes = [ptr] * 4 + [i32] * 10
    lib.feq_conv_bwd.restype = ctypes.c_int
    lib.feq_conv_bwd.argtypes = [ptr] * 6 + [i32] * 10
    lib.feq_attn_fwd.restype = None
    lib.feq_attn_fwd.argtypes = [ptr] * 4 + [i32] * 6
    lib.feq_attn_bwd.restype = None
    lib.feq_attn_bwd.argtypes = [ptr] * 7 + [i32] * 6
    lib.feq_dropout.restype = None
    lib.feq_dropout.argtypes = [ptr, ptr, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32,
                                ctypes.c_float, i32]  # fmt: skip
    names = ["gru_train_fwd", "gru_train_bwd", "sep_fwd", "sep_bwd", "conv_fwd", "conv_bwd",
             "attn_fwd", "attn_bwd"]  # fmt: skip
    if hasattr(lib, "feq_sephead_fwd"):  # absent from older revisions' builds (bench --against)
        lib.feq_sephead_fwd.restype = ctypes.c_int
        lib.feq_sephead_fwd.argtypes = [ptr] * 8 + [i32] * 14
        lib.feq_sephead_bwd.restype = ctypes.c_int
        lib.feq_sephead_bwd.argtypes = [ptr] * 12 + [i32] * 14
        names += ["sephead_fwd", "sephead_bwd"]
    # the batch-parallel drivers (parallel.c): the kernel's arguments without b0, b1 + chunks
    for name in names:
        kernel, driver = getattr(lib, f"feq_{name}"), getattr(lib, f"feq_{name}_mt")
        driver.restype = kernel.restype
        driver.argtypes = kernel.argtypes[:-2] + [i32]  # b0, b1 are last but for sep's `pooled`
        if name.startswith("sep_"):
            driver.argtypes = kernel.argtypes[:-3] + [i32, i32]
    return lib


def available() -> bool:
    """Whether the C kernels are built and loaded (otherwise everything runs the references)."""
    return _lib() is not None


def _chunks(batch: int, work: int) -> int:
    """How many contiguous batch chunks a call splits into, one per thread (`parallel.c` runs
    them on torch's OpenMP team); callers size per-chunk partial sums with it."""
    return max(1, min(torch.get_num_threads(), batch, work // _PARALLEL_MIN_WORK))


def _native(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.is_cpu and t.dtype == torch.float32) for t in tensors)


# --------------------------------------------------------------------------------------------
# GRU


def _shape_error(what: str, tensor: torch.Tensor | None, expected: tuple[int, ...]) -> None:
    if tensor is not None and tuple(tensor.shape) != expected:
        raise ValueError(f"{what}: expected shape {expected}, got {tuple(tensor.shape)}")


def _check_gru(x, weight_ih, weight_hh, bias_ih, bias_hh, flavour) -> None:
    """Shapes are checked before any C loop indexes memory with them."""
    if flavour not in FLAVOURS:
        raise ValueError(f"gru flavour must be one of {FLAVOURS}, got {flavour!r}")
    if flavour == "keras" and bias_hh is not None:
        raise ValueError("the keras GRU flavour has one bias: pass it as bias_ih, bias_hh=None")
    if x.dim() != 3:
        raise ValueError(f"gru_sequence: x must be (batch, steps, inputs), got {tuple(x.shape)}")
    u = int(weight_hh.shape[0]) // 3
    _shape_error("weight_ih", weight_ih, (3 * u, int(x.shape[2])))
    _shape_error("weight_hh", weight_hh, (3 * u, u))
    _shape_error("bias_ih", bias_ih, (3 * u,))
    _shape_error("bias_hh", bias_hh, (3 * u,))


def gru_sequence_reference(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    *,
    reverse: bool,
    flavour: str,
) -> torch.Tensor:
    """All hidden states (B, T, u) of one GRU direction from h0 = 0: the model's reference
    (`feq_lab.models.gru.gru_sequence`, where the math is written once; flavours and layouts are
    described there), after this module's shape checks."""
    _check_gru(x, weight_ih, weight_hh, bias_ih, bias_hh, flavour)
    return reference_gru(
        x, weight_ih, weight_hh, bias_ih, bias_hh, reverse=reverse, flavour=flavour
    )


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_ih, weight_hh, bias_ih, bias_hh, reverse, flavour):  # type: ignore[override]
        lib = _lib()
        batch, steps, _ = x.shape
        u = weight_hh.shape[1]
        keras = int(flavour == "keras")
        gi = F.linear(x, weight_ih, bias_ih).contiguous()
        whh_t = weight_hh.t().contiguous()
        bhh = torch.zeros(3 * u) if bias_hh is None else bias_hh.contiguous()
        out = x.new_empty(batch, steps, u)
        gates = x.new_empty(batch, steps, 3 * u)
        aux = x.new_empty(batch, steps, u)
        if out.numel():
            ptrs = (gi.data_ptr(), whh_t.data_ptr(), bhh.data_ptr(), out.data_ptr(),
                    gates.data_ptr(), aux.data_ptr())  # fmt: skip

            chunks = _chunks(batch, steps * 3 * u * u * batch)
            lib.feq_gru_train_fwd_mt(*ptrs, batch, steps, u, int(reverse), keras, chunks)
        ctx.save_for_backward(x, weight_ih, weight_hh, out, gates, aux)
        ctx.reverse, ctx.keras = reverse, bool(keras)
        ctx.biases = (bias_ih is not None, bias_hh is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight_ih, weight_hh, out, gates, aux = ctx.saved_tensors
        lib = _lib()
        batch, steps, inputs = x.shape
        u = weight_hh.shape[1]
        grad_out = grad_out.contiguous()
        w_hh = weight_hh.contiguous()
        dgi = x.new_empty(batch, steps, 3 * u)
        dgh = x.new_empty(batch, steps, 3 * u) if not ctx.keras else dgi
        if out.numel():
            ptrs = (w_hh.data_ptr(), out.data_ptr(), gates.data_ptr(), aux.data_ptr(),
                    grad_out.data_ptr(), dgi.data_ptr(), dgh.data_ptr())  # fmt: skip

            chunks = _chunks(batch, steps * 3 * u * u * batch)
            lib.feq_gru_train_bwd_mt(
                *ptrs, batch, steps, u, int(ctx.reverse), int(ctx.keras), chunks
            )
        # h_{t-1} in processing order (zero before the first step)
        if ctx.reverse:
            h_prev = torch.cat([out[:, 1:], out.new_zeros(batch, 1, u)], dim=1)
        else:
            h_prev = torch.cat([out.new_zeros(batch, 1, u), out[:, :-1]], dim=1)
        flat_dgi = dgi.reshape(-1, 3 * u)
        grads = [None] * 7
        if ctx.needs_input_grad[0]:
            grads[0] = dgi @ weight_ih
        if ctx.needs_input_grad[1]:
            grads[1] = flat_dgi.t() @ x.reshape(-1, inputs)
        if ctx.needs_input_grad[2]:
            if ctx.keras:
                grads[2] = torch.cat([
                    flat_dgi[:, : 2 * u].t() @ h_prev.reshape(-1, u),
                    flat_dgi[:, 2 * u :].t() @ aux.reshape(-1, u),
                ])  # fmt: skip
            else:
                grads[2] = dgh.reshape(-1, 3 * u).t() @ h_prev.reshape(-1, u)
        if ctx.biases[0] and ctx.needs_input_grad[3]:
            grads[3] = flat_dgi.sum(0)
        if ctx.biases[1] and ctx.needs_input_grad[4]:
            grads[4] = dgh.reshape(-1, 3 * u).sum(0)
        return tuple(grads)


def gru_sequence(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    *,
    reverse: bool,
    flavour: str,
    native: bool = True,
) -> torch.Tensor:
    """One GRU direction over x (B, T, I) from h0 = 0 → all hidden states (B, T, u); weights
    (3u, I), (3u, u), biases (3u,) or None, laid out as `gru_sequence_reference` describes.
    Differentiable in x, weights and biases through the fused C kernels (CPU float32), else
    (or with native=False) through the reference's torch ops."""
    _check_gru(x, weight_ih, weight_hh, bias_ih, bias_hh, flavour)
    if native and _native(x, weight_ih, weight_hh, bias_ih, bias_hh) and _lib() is not None:
        return _GRU.apply(
            x.contiguous(), weight_ih, weight_hh, bias_ih, bias_hh, bool(reverse), flavour
        )
    return gru_sequence_reference(
        x, weight_ih, weight_hh, bias_ih, bias_hh, reverse=reverse, flavour=flavour
    )


# --------------------------------------------------------------------------------------------
# Separable conv stage


def _same(kernel: int) -> tuple[int, int]:
    """TensorFlow "same" padding of a stride-1 conv (the odd extra sample on the right)."""
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2


def _pool_same(length: int, pool: int) -> tuple[int, int]:
    """TensorFlow "same" padding of a max-pool with stride = size."""
    total = max(math.ceil(length / pool) * pool - length, 0)
    return total // 2, total - total // 2


def _check_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int,
    what: str,
    channels: int | None = None,
) -> None:
    """x (B, G·C, L) with a grouped weight (G·O, C, k) and bias (G·O,), checked before any C loop
    indexes memory with these sizes (`channels`: C when the pointwise half follows the
    depthwise one, whose output has x's channel count)."""
    if x.dim() != 3 or weight.dim() != 3 or groups < 1:
        raise ValueError(f"{what}: expected x (B, C, L) and a (O, C, k) weight, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}, groups={groups}")  # fmt: skip
    total = int(x.shape[1])
    per_group = total // groups if channels is None else channels
    if total != groups * per_group or int(weight.shape[1]) != per_group or weight.shape[0] % groups:
        raise ValueError(f"{what}: shape {tuple(weight.shape)} does not fit {total} input "
                         f"channels in {groups} groups")  # fmt: skip
    _shape_error(f"{what} bias", bias, (int(weight.shape[0]),))


def _check_separable(x: torch.Tensor, depthwise: torch.Tensor, pointwise: torch.Tensor,
                     bias: torch.Tensor | None, groups: int) -> None:
    """A separable stage's shapes (`_check_conv` on each half), before any C loop runs."""
    _check_conv(x, depthwise, None, groups=int(x.shape[1]) if x.dim() == 3 else 1, what="depthwise")
    _check_conv(x, pointwise, bias, groups=groups, what="pointwise",
                channels=int(pointwise.shape[1]) if groups else 0)  # fmt: skip
    if depthwise.shape[0] != x.shape[1] or pointwise.shape[-1] != 1:
        raise ValueError(f"separable stage: depthwise {tuple(depthwise.shape)} must have one row "
                         f"per input channel, pointwise {tuple(pointwise.shape)} kernel 1")  # fmt: skip


def _stage_length(x: torch.Tensor, upsample: int, crop: tuple[int, int]) -> int:
    length = int(x.shape[-1]) * upsample - crop[0] - crop[1]
    if length <= 0:
        raise ValueError(f"separable stage: crop {crop} leaves no samples of {x.shape[-1]}")
    return length


def separable_stage_reference(
    x: torch.Tensor,
    depthwise: torch.Tensor,
    pointwise: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int = 1,
    upsample: int = 1,
    crop: tuple[int, int] = (0, 0),
    pool: int = 1,
    relu: bool = True,
) -> torch.Tensor:
    """One separable conv stage: the model's reference (`feq_lab.models.layers.separable_stage`,
    where the math is written once: upsample → crop → depthwise (TF "same") → pointwise + bias →
    ReLU → TF "same" max-pool)."""
    return reference_separable(
        x, depthwise, pointwise, bias, groups=groups, upsample=upsample, crop=crop, pool=pool,
        relu=relu,
    )


class _Separable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, depthwise, pointwise, bias, groups, upsample, crop, pool, relu):  # type: ignore[override]
        lib = _lib()
        batch, total_in, length_in = x.shape
        kernel = int(depthwise.shape[-1])
        channels, outputs = total_in // groups, int(pointwise.shape[0]) // groups
        length = _stage_length(x, upsample, crop)
        pooled = -(-length // pool)
        pool_left = _pool_same(length, pool)[0] if pool > 1 else 0
        dw, pw = depthwise.contiguous(), pointwise.contiguous()
        b = None if bias is None else bias.contiguous()
        out = x.new_empty(batch, groups * outputs, pooled)
        idx = torch.empty(out.shape, dtype=torch.int32) if pool > 1 else None
        dims = (batch, groups, channels, outputs, length_in, upsample, crop[0], length, kernel,
                _same(kernel)[0], int(relu), pool, pool_left)  # fmt: skip
        if out.numel():
            ptrs = (x.data_ptr(), dw.data_ptr(), pw.data_ptr(), None if b is None else b.data_ptr(),
                    out.data_ptr(), None if idx is None else idx.data_ptr())  # fmt: skip

            if lib.feq_sep_fwd_mt(*ptrs, *dims, pooled, _chunks(batch, _stage_work(dims))):
                raise MemoryError("separable stage kernel: out of memory")
        ctx.save_for_backward(x, dw, pw, out, idx)  # depthwise output: recomputed
        ctx.dims, ctx.pooled, ctx.has_bias = dims, pooled, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, dw, pw, out, idx = ctx.saved_tensors
        lib = _lib()
        dims, pooled = ctx.dims, ctx.pooled
        batch = dims[0]
        grad_out = grad_out.contiguous()
        gx = torch.empty_like(x)
        chunks = _chunks(batch, _stage_work(dims))
        gdw = x.new_zeros(chunks, *dw.shape)
        gpw = x.new_zeros(chunks, *pw.shape)
        gbias = x.new_zeros(chunks, pw.shape[0])
        if out.numel():
            ptrs = (x.data_ptr(), dw.data_ptr(), pw.data_ptr(), out.data_ptr(),
                    None if idx is None else idx.data_ptr(), grad_out.data_ptr(), gx.data_ptr())  # fmt: skip

            status = lib.feq_sep_bwd_mt(
                *ptrs, gdw.data_ptr(), gpw.data_ptr(), gbias.data_ptr(), *dims, pooled, chunks
            )
            if status != 0:
                raise MemoryError("separable stage kernel: out of memory")
        else:
            gx.zero_()
        return (
            gx, gdw.sum(0), gpw.sum(0), gbias.sum(0) if ctx.has_bias else None,
            None, None, None, None, None,
        )  # fmt: skip


def _stage_work(dims: tuple[int, ...]) -> int:
    batch, groups, channels, outputs, _, _, _, length, kernel = dims[:9]
    return batch * groups * channels * length * (kernel + outputs)


def separable_stage(
    x: torch.Tensor,
    depthwise: torch.Tensor,
    pointwise: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int = 1,
    upsample: int = 1,
    crop: tuple[int, int] = (0, 0),
    pool: int = 1,
    relu: bool = True,
    native: bool = True,
) -> torch.Tensor:
    """The separable stage `separable_stage_reference` defines, differentiable in x and all
    weights, forward and backward as one fused C call each (CPU float32), else (or with
    native=False) through the reference's torch ops."""
    _check_separable(x, depthwise, pointwise, bias, groups)
    if native and _native(x, depthwise, pointwise, bias) and _lib() is not None:
        crop = (int(crop[0]), int(crop[1]))
        return _Separable.apply(
            x.contiguous(), depthwise, pointwise, bias, int(groups), int(upsample), crop,
            int(pool), bool(relu),
        )  # fmt: skip
    return separable_stage_reference(
        x, depthwise, pointwise, bias, groups=groups, upsample=upsample, crop=crop, pool=pool,
        relu=relu,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Dense conv with "same" padding (the decoders' heads)


def same_conv_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int = 1,
    padding: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Stride-1 conv1d, x (B, G·C, L) with weight (G·O, C, k) grouped like `F.conv1d`, zero
    padding (left, right), by default TensorFlow's "same" (the odd extra sample on the right):
    the model's `layers.same_conv` (the conv seam's reference)."""
    return reference_conv(x, weight, bias, groups=groups, padding=padding)


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, padding):  # type: ignore[override]
        lib = _lib()
        batch, total_in, length_in = x.shape
        kernel = int(weight.shape[-1])
        channels, outputs = total_in // groups, int(weight.shape[0]) // groups
        length_out = length_in + padding[0] + padding[1] - kernel + 1
        w = weight.contiguous()
        b = None if bias is None else bias.contiguous()
        y = x.new_empty(batch, groups * outputs, max(length_out, 0))
        dims = (batch, groups, channels, outputs, length_in, kernel, padding[0], length_out)
        if y.numel():
            ptrs = (x.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr())

            if lib.feq_conv_fwd_mt(*ptrs, *dims, _chunks(batch, _conv_work(dims))) != 0:
                raise MemoryError("conv kernel: out of memory")
        ctx.save_for_backward(x, w)
        ctx.dims, ctx.has_bias = dims, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w = ctx.saved_tensors
        lib = _lib()
        dims = ctx.dims
        batch = dims[0]
        grad_out = grad_out.contiguous()
        gx = torch.empty_like(x)  # the kernel writes every sample of it (no zeroing pass)
        chunks = _chunks(batch, _conv_work(dims))
        gw = x.new_zeros(chunks, *w.shape)
        gbias = x.new_zeros(chunks, w.shape[0])
        if grad_out.numel():
            ptrs = (x.data_ptr(), w.data_ptr(), grad_out.data_ptr(), gx.data_ptr())

            status = lib.feq_conv_bwd_mt(*ptrs, gw.data_ptr(), gbias.data_ptr(), *dims, chunks)
            if status != 0:
                raise MemoryError("conv kernel: out of memory")
        else:
            gx.zero_()
        return gx, gw.sum(0), gbias.sum(0) if ctx.has_bias else None, None, None


def _conv_work(dims: tuple[int, ...]) -> int:
    batch, groups, channels, outputs, _, kernel, _, length_out = dims
    return batch * groups * channels * outputs * kernel * max(length_out, 0)


def same_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    groups: int = 1,
    padding: tuple[int, int] | None = None,
    native: bool = True,
) -> torch.Tensor:
    """The conv `same_conv_reference` defines, differentiable in x, weight and bias, forward and
    backward as one C call each (CPU float32), else (or with native=False) through torch."""
    pad = _same(int(weight.shape[-1])) if padding is None else (int(padding[0]), int(padding[1]))
    _check_conv(x, weight, bias, groups=groups, what="weight")
    if native and _native(x, weight, bias) and _lib() is not None:
        return _Conv.apply(x.contiguous(), weight, bias, int(groups), pad)
    return same_conv_reference(x, weight, bias, groups=groups, padding=pad)


# --------------------------------------------------------------------------------------------
# A decoder's last separable stage with its head (the "fused" decoders' tail)


def separable_head_reference(
    x: torch.Tensor,
    depthwise: torch.Tensor,
    pointwise: torch.Tensor,
    bias: torch.Tensor | None,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    *,
    groups: int = 1,
    upsample: int = 1,
    crop: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """The separable stage (ReLU, no pooling) followed by the grouped 1-output "same" conv head
    (G, O, hk): exactly `separable_stage` then `same_conv`, the two seams it fuses."""
    y = separable_stage_reference(x, depthwise, pointwise, bias, groups=groups,
                                  upsample=upsample, crop=crop)  # fmt: skip
    return same_conv_reference(y, head_weight, head_bias, groups=groups)


class _SeparableHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, depthwise, pointwise, bias, head_weight, head_bias, groups, upsample,  # type: ignore[override]
                crop):  # fmt: skip
        lib = _lib()
        batch, total_in, length_in = x.shape
        kernel, hkernel = int(depthwise.shape[-1]), int(head_weight.shape[-1])
        channels, outputs = total_in // groups, int(pointwise.shape[0]) // groups
        length = _stage_length(x, upsample, crop)
        dw, pw = depthwise.contiguous(), pointwise.contiguous()
        b = None if bias is None else bias.contiguous()
        hw, hb = head_weight.contiguous(), head_bias.contiguous()
        out = x.new_empty(batch, groups * outputs, length)  # the stage's output, for backward
        z = x.new_empty(batch, groups, length)
        dims = (batch, groups, channels, outputs, length_in, upsample, crop[0], length, kernel,
                _same(kernel)[0], hkernel, _same(hkernel)[0])  # fmt: skip
        if z.numel():
            ptrs = (x.data_ptr(), dw.data_ptr(), pw.data_ptr(), None if b is None else b.data_ptr(),
                    hw.data_ptr(), hb.data_ptr(), out.data_ptr(), z.data_ptr())  # fmt: skip
            # the stage's work measure (`_stage_work` reads dims' first nine): the batch splits
            # as in the two calls, so per-chunk weight gradients sum in the same order
            if lib.feq_sephead_fwd_mt(*ptrs, *dims, _chunks(batch, _stage_work(dims))):
                raise MemoryError("separable stage + head kernel: out of memory")
        ctx.save_for_backward(x, dw, pw, hw, out)
        ctx.dims, ctx.has_bias = dims, bias is not None
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z):  # type: ignore[override]
        x, dw, pw, hw, out = ctx.saved_tensors
        lib = _lib()
        dims = ctx.dims
        batch = dims[0]
        grad_z = grad_z.contiguous()
        gx = torch.empty_like(x)
        chunks = _chunks(batch, _stage_work(dims))
        gdw, gpw = x.new_zeros(chunks, *dw.shape), x.new_zeros(chunks, *pw.shape)
        gbias = x.new_zeros(chunks, pw.shape[0])
        ghw, ghb = x.new_zeros(chunks, *hw.shape), x.new_zeros(chunks, hw.shape[0])
        if grad_z.numel():
            ptrs = (x.data_ptr(), dw.data_ptr(), pw.data_ptr(), hw.data_ptr(), out.data_ptr(),
                    grad_z.data_ptr(), gx.data_ptr(), gdw.data_ptr(), gpw.data_ptr(),
                    gbias.data_ptr(), ghw.data_ptr(), ghb.data_ptr())  # fmt: skip
            if lib.feq_sephead_bwd_mt(*ptrs, *dims, chunks) != 0:
                raise MemoryError("separable stage + head kernel: out of memory")
        else:
            gx.zero_()
        return (
            gx, gdw.sum(0), gpw.sum(0), gbias.sum(0) if ctx.has_bias else None, ghw.sum(0),
            ghb.sum(0), None, None, None,
        )  # fmt: skip


def separable_head(
    x: torch.Tensor,
    depthwise: torch.Tensor,
    pointwise: torch.Tensor,
    bias: torch.Tensor | None,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    *,
    groups: int = 1,
    upsample: int = 1,
    crop: tuple[int, int] = (0, 0),
    native: bool = True,
) -> torch.Tensor:
    """`separable_head_reference` (x (B, G·C, L_in) → logits (B, G, L)) differentiable in x and
    all weights, forward and backward as one C call each (CPU float32): each sample's stage output
    goes through its head while in cache, and its gradient never leaves it. The C loops are
    `separable_stage`'s and `same_conv`'s own, so it returns the same floats as those two calls
    (tests/models/test_train_kernels.py). Else (or with native=False) the two reference seams."""
    _check_separable(x, depthwise, pointwise, bias, groups)
    outputs = int(pointwise.shape[0]) // groups
    if head_weight.dim() != 3 or tuple(head_weight.shape[:2]) != (groups, outputs):
        raise ValueError(f"head: weight {tuple(head_weight.shape)} must be ({groups}, {outputs}, "
                         "k): one output per group over the stage's outputs")  # fmt: skip
    _shape_error("head bias", head_bias, (groups,))
    args = (x, depthwise, pointwise, bias, head_weight, head_bias)
    lib = _lib()
    if native and _native(*args) and lib is not None:
        crop = (int(crop[0]), int(crop[1]))
        if hasattr(lib, "feq_sephead_fwd_mt"):
            return _SeparableHead.apply(x.contiguous(), *args[1:], int(groups), int(upsample), crop)
        # an older revision's build (bench/training.py --against): its two fused calls
        y = separable_stage(x, depthwise, pointwise, bias, groups=groups, upsample=upsample,
                            crop=crop)  # fmt: skip
        return same_conv(y, head_weight, head_bias, groups=groups)
    return separable_head_reference(*args, groups=groups, upsample=upsample, crop=crop)


# --------------------------------------------------------------------------------------------
# Additive attention scores (the global transformer's attention)


def additive_scores_reference(
    q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """e[b, t, s] = Σ_u weight[u]·tanh(q[b, t, u] + k[b, s, u]): the model's reference
    (`feq_lab.models.layers.additive_scores`, where the math is written once)."""
    return reference_scores(q, k, weight)


class _Scores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, weight):  # type: ignore[override]
        lib = _lib()
        batch, steps, units = q.shape
        keys = int(k.shape[1])
        kt = k.transpose(1, 2).contiguous()
        w = weight.contiguous()
        e = q.new_empty(batch, steps, keys)
        dims = (batch, steps, keys, units)
        if e.numel():
            ptrs = (q.data_ptr(), kt.data_ptr(), w.data_ptr(), e.data_ptr())
            lib.feq_attn_fwd_mt(*ptrs, *dims, _chunks(batch, e.numel() * units))
        ctx.save_for_backward(q, kt, w)
        return e

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_e):  # type: ignore[override]
        q, kt, w = ctx.saved_tensors
        lib = _lib()
        batch, steps, units = q.shape
        keys = int(kt.shape[2])
        grad_e = grad_e.contiguous()
        dq, dkt = torch.zeros_like(q), torch.zeros_like(kt)
        work = batch * steps * keys * units
        chunks = _chunks(batch, work)
        dw = q.new_zeros(chunks, units)
        if grad_e.numel():
            ptrs = (q.data_ptr(), kt.data_ptr(), w.data_ptr(), grad_e.data_ptr(), dq.data_ptr(),
                    dkt.data_ptr())  # fmt: skip

            lib.feq_attn_bwd_mt(*ptrs, dw.data_ptr(), batch, steps, keys, units, chunks)
        return dq, dkt.transpose(1, 2), dw.sum(0)


def additive_scores(
    q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, *, native: bool = True
) -> torch.Tensor:
    """The scores `additive_scores_reference` defines, differentiable in q, k and weight, without
    the (B, T, S, U) tensor: one C call each way (CPU float32), else (or with native=False)
    through the reference's torch ops."""
    weight = weight.reshape(-1)
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"additive scores: q (B, T, U) and k (B, S, U), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")  # fmt: skip
    _shape_error("additive scores weight", weight, (int(q.shape[2]),))
    if native and _native(q, k, weight) and _lib() is not None:
        return _Scores.apply(q.contiguous(), k, weight)
    return additive_scores_reference(q, k, weight)


# --------------------------------------------------------------------------------------------
# Dropout (elementwise, training)

# below this many elements per thread a second thread costs more than it saves
_DROPOUT_MIN_CHUNK = 32_768


def _dropout_call(x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """x scaled by 1/(1-p) where the mask of `seed` keeps it, else 0 (dropout_train.c)."""
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        threshold = min(round(p * 2**32), 2**32 - 1)
        chunks = max(1, min(torch.get_num_threads(), n // _DROPOUT_MIN_CHUNK))
        _lib().feq_dropout(x.data_ptr(), y.data_ptr(), n, seed, threshold, 1.0 / (1.0 - p), chunks)
    return y


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):  # type: ignore[override]
        ctx.p, ctx.seed = p, seed
        return _dropout_call(x, seed, p)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        return _dropout_call(grad_out.contiguous(), ctx.seed, ctx.p), None, None


def dropout(x: torch.Tensor, p: float, training: bool, *, native: bool = True) -> torch.Tensor:
    """Elementwise dropout as `layers.dropout` (the reference, `F.dropout`) defines it: in
    training each element kept with probability 1 − p and scaled by 1/(1 − p), else identity.
    Its mask comes from a counter-based hash seeded by one draw from torch's default generator
    (so `torch.manual_seed` fixes it), one C pass forward and one backward (CPU float32, p < 1);
    otherwise, or with native=False, the reference. Same distribution as the reference, not the
    same draws."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if native and p < 1.0 and _native(x) and _lib() is not None:
        seed = int(torch.empty((), dtype=torch.int64).random_())  # [0, 2^63)
        return _Dropout.apply(x.contiguous(), float(p), seed)
    return reference_dropout(x, p, training)
