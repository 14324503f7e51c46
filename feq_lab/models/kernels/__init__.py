"""Small native kernels for CPU inference, compiled on first use, with a torch fallback.

Why native code: PyTorch has no fused GRU on the CPU (its LSTM runs on oneDNN, its GRU as a
per-step loop of small ops), and at batch 1 that loop is a quarter of FEQ3's eager time. The
kernel is plain C99 built with the system C compiler into a per-user cache
(`$FEQ_LAB_KERNEL_CACHE`, default `~/.cache/feq_lab/kernels`), written to a temporary file and
renamed, so concurrent first uses never load a half-written library. Without a compiler, or with
`FEQ_LAB_NO_KERNELS=1`, every caller falls back to the torch modules (same function, slower).
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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from feq_lab.paths import atomic_path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gru.c")
CFLAGS = ("-O3", "-std=c99", "-shared", "-fPIC")


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "feq_lab" / "kernels"
    return Path(os.environ.get("FEQ_LAB_KERNEL_CACHE", default))


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed: logged once)."""
    if os.environ.get("FEQ_LAB_NO_KERNELS", "") not in ("", "0"):
        return None
    source = SOURCE.read_bytes()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    tag = hashlib.sha256(
        source + " ".join((*CFLAGS, str(compiler), platform.machine())).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"feq_gru-{tag}.so"
    try:
        if not target.exists():
            if compiler is None:
                log.warning("no C compiler found: the GRU runs as torch's per-step loop (slower)")
                return None
            with atomic_path(target, suffix=".so") as tmp:
                subprocess.run(
                    [compiler, *CFLAGS, "-o", str(tmp), str(SOURCE), "-lm"],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building %s failed, using torch's GRU instead: %s", SOURCE.name, detail)
        return None
    lib.feq_gru.restype = None
    lib.feq_gru.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6
    return lib


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
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and rnn.weight_hh_l0.dtype == torch.float32
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not (
            torch.is_grad_enabled()
            and (x.requires_grad or any(p.requires_grad for p in rnn.parameters()))
        )
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
