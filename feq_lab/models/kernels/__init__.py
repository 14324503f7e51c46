"""Small native kernels for CPU inference, compiled on first use, with a torch fallback.

Why native code: PyTorch has no fused GRU on the CPU (its LSTM runs on oneDNN, its GRU as a
per-step loop of small ops), and its CPU depthwise conv1d is so slow at batch 1 that folding a
separable conv into a dense one, several times the work, was faster; GRUs and separable convs
are what FEQ3 uses to be small. `gru.c` runs the GRU recurrence,
`sepconv.c` a whole separable conv stage (upsample, crop, depthwise, pointwise, ReLU, pool). Both
are plain C99 (the training kernels, `*_train.c`, also use GNU C vector extensions through
`simd.h`: GCC and Clang), built together with the system C compiler into a per-user cache
(`$FEQ_LAB_KERNEL_CACHE`, default `~/.cache/feq_lab/kernels`), written to a temporary file and
renamed, so concurrent first uses never load a half-written library. Without a compiler, or with
`FEQ_LAB_NO_KERNELS=1`, every caller falls back to the torch ops (same function, slower).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.paths import atomic_path

log = logging.getLogger(__name__)

SOURCES = tuple(sorted(Path(__file__).parent.glob("*.c")))
HEADERS = tuple(sorted(Path(__file__).parent.glob("*.h")))  # part of the build's cache key
CFLAGS = ("-O3", "-std=c99", "-shared", "-fPIC")
# One build of every source, once per machine and source version. sep_train.c alone compiles for
# 28-48 s per instruction-set clone (three clones: ~140 s on a 2-core AMD EPYC VM), so the limit
# leaves room for a slow or busy machine: a build cut short falls back to torch's ops (slower).
BUILD_TIMEOUT_S = 900


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "feq_lab" / "kernels"
    return Path(os.environ.get("FEQ_LAB_KERNEL_CACHE", default))


def openmp_flags() -> tuple[str, ...]:
    """`-fopenmp` where torch's own ops run on OpenMP: the training kernels' batch chunks then run
    on torch's team (`parallel.c` says why); elsewhere, and where the compiler lacks OpenMP, they
    run one after another (same results)."""
    backend = torch.__config__.parallel_info()
    return ("-fopenmp",) if "parallel backend: OpenMP" in backend else ()


def compile_command(
    compiler: str,
    output: Path,
    sources: Sequence[Path | str] = SOURCES,
    *,
    extra: Sequence[str] = (),
) -> list[str]:
    """The one build line of the kernel library (also for benches and tests building variants)."""
    return [compiler, *CFLAGS, *extra, "-o", str(output), *map(str, sources), "-lm"]


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed: logged once)."""
    if os.environ.get("FEQ_LAB_NO_KERNELS", "") not in ("", "0"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: GRUs and separable convs run as torch ops (slower)")
        return None
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    failure: Exception | None = None
    for extra in dict.fromkeys((openmp_flags(), ())):  # without OpenMP if it does not build
        flags = (*CFLAGS, *extra, compiler, platform.machine())
        tag = hashlib.sha256(source + " ".join(flags).encode())
        target = cache_dir() / f"feq_kernels-{tag.hexdigest()[:16]}.so"
        try:
            if not target.exists():
                log.info("building the C kernels into %s (once per machine and source version; "
                         "a few minutes on a 2-core machine)", target)  # fmt: skip
                with atomic_path(target, suffix=".so") as tmp:
                    subprocess.run(
                        compile_command(compiler, tmp, extra=extra),
                        check=True,
                        capture_output=True,
                        text=True,
                        timeout=BUILD_TIMEOUT_S,
                    )
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.SubprocessError) as exc:
            failure = exc
    else:
        detail = (
            f"the compiler ran past {BUILD_TIMEOUT_S} s"
            if isinstance(failure, subprocess.TimeoutExpired)
            else getattr(failure, "stderr", "") or failure
        )
        log.warning("building the C kernels failed, using torch's modules instead: %s", detail)
        return None
    lib.feq_gru.restype = None
    lib.feq_gru.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6
    lib.feq_separable.restype = ctypes.c_int
    lib.feq_separable.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 13
    return lib


def _inference_input(x: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """CPU float32 inference with nothing for autograd or the tracer (the ONNX export traces) to
    record. Cheap checks only: this runs once per kernel call, several times per forward."""
    if not (x.is_cpu and x.dtype == torch.float32) or torch.jit.is_tracing():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    return all(p.is_cpu and p.dtype == torch.float32 for p in params)


def gru_applies(rnn: nn.Module, x: torch.Tensor) -> bool:
    """The kernel covers single-layer, biased, batch-first nn.GRU inference on CPU float32
    (either direction) with no gradient to track; anything else takes the torch path."""
    return (
        type(rnn) is nn.GRU
        and not rnn.training
        and rnn.num_layers == 1
        and rnn.bias
        and rnn.batch_first
        and rnn.proj_size == 0
        and x.dim() == 3
        and _inference_input(x, rnn._flat_weights)
    )


def gru_forward(rnn: nn.GRU, x: torch.Tensor) -> torch.Tensor | None:
    """`rnn(x)[0]` (zero initial state) through the fused kernel; None where it does not apply
    or is unavailable, so the caller runs the module instead."""
    if not gru_applies(rnn, x):
        return None
    lib = library()
    if lib is None:
        return None
    batch, steps, _ = x.shape
    hidden = rnn.hidden_size
    directions = 2 if rnn.bidirectional else 1
    out = torch.empty(batch, steps, directions * hidden)
    if batch == 0 or steps == 0:
        return out
    for d, suffix in enumerate(("_l0", "_l0_reverse")[:directions]):
        gi = F.linear(x, getattr(rnn, f"weight_ih{suffix}"), getattr(rnn, f"bias_ih{suffix}"))
        gi = gi.contiguous()
        w_hh = getattr(rnn, f"weight_hh{suffix}").t().contiguous()
        b_hh = getattr(rnn, f"bias_hh{suffix}").contiguous()
        lib.feq_gru(
            gi.data_ptr(), w_hh.data_ptr(), b_hh.data_ptr(), None, out.data_ptr(),
            batch, steps, hidden, directions * hidden, d * hidden, d,
        )  # fmt: skip
    return out


def separable_conv(
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
    pool_left: int = 0,
) -> torch.Tensor | None:
    """One fused call for [nearest upsample → crop → depthwise "same" conv (unbiased) →
    pointwise conv + bias → ReLU → "same" max-pool (stride = size)] on (B, G·C, L_in):
    depthwise (G·C, 1, k), pointwise (G·O, C, 1) grouped like `F.conv1d(groups=G)`; the pool
    skips `pool_left` samples' worth of −inf padding at the start. None where the kernel does
    not apply (training, autograd, tracing, not CPU float32) or is unavailable."""
    params = [depthwise, pointwise] + ([] if bias is None else [bias])
    if x.dim() != 3 or not _inference_input(x, params):
        return None
    lib = library()
    if lib is None:
        return None
    batch, total_in, length_in = x.shape
    kernel = int(depthwise.shape[-1])
    channels, outputs = total_in // groups, int(pointwise.shape[0]) // groups
    length = length_in * upsample - crop[0] - crop[1]
    out = torch.empty(batch, groups * outputs, -(-length // pool))
    if out.numel() == 0:
        return out
    x = x.contiguous()
    dw, pw = depthwise.contiguous(), pointwise.contiguous()
    b = None if bias is None else bias.contiguous()
    status = lib.feq_separable(
        x.data_ptr(), dw.data_ptr(), pw.data_ptr(), None if b is None else b.data_ptr(),
        out.data_ptr(), batch, groups, channels, outputs, length_in, upsample, crop[0], length,
        kernel, (kernel - 1) // 2, int(relu), pool, pool_left,
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"separable conv kernel: no memory for a ({channels}, {length}) buffer")
    return out
