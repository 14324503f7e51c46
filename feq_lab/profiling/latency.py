"""One latency harness for runs, benches and reports: fixed thread count (restored afterwards),
warm-up, then the median and 90th percentile of `repeats` timed calls, on torch eager or
onnxruntime. Deterministic inference (eval mode, no Monte-Carlo dropout) unless `mc_passes` asks.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.models.compile import compile_for_inference

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LatencyResult:
    """Milliseconds per call of one batch (`window_ms_*` = per 60-s window, i.e. / batch)."""

    p50_ms: float
    p90_ms: float
    backend: str
    device: str
    batch: int
    threads: int
    repeats: int
    mc_passes: int = 0

    @property
    def window_ms_p50(self) -> float:
        return self.p50_ms / self.batch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "window_ms_p50": self.window_ms_p50}


def device_name() -> str:
    """What the numbers were measured on, e.g. 'cpu (x86_64, AMD EPYC ..., 2 cores)'."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({platform.machine()}, {cpu}, {os.cpu_count()} cores)"


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, clock: str = "wall") -> np.ndarray:
    """Milliseconds of each of `repeats` calls after `warmup` untimed calls.

    `clock="cpu"` counts the calling thread's CPU time: with one compute thread (torch and
    onnxruntime both run single-threaded work on the caller) it is what the call costs, and
    it stays stable on a machine shared with other jobs, where wall time mostly measures waiting.
    """
    if clock not in CLOCKS:
        raise ConfigError("clock", f"unknown clock {clock!r}; expected wall or cpu")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        start = now()
        fn()
        times[i] = (now() - start) * 1e3
    return times


def measure_latency(
    model: nn.Module,
    backend: str = "torch",
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    mc_passes: int = 0,
    onnx_path: str | os.PathLike | None = None,
    seed: int = 0,
) -> LatencyResult:
    """Latency of one forward pass of `batch` windows (torch: of the model compiled for eager
    inference, `compile_for_inference`, as streaming and evaluation run it).

    `mc_passes` > 0 times Monte-Carlo inference (torch only); `onnx_path` reuses an existing
    export for onnxruntime (otherwise the model is exported to a temp file first).
    """
    if backend not in BACKENDS:
        raise ConfigError(
            "backend", f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}"
        )
    for key, value, low in (
        ("batch", batch, 1),
        ("threads", threads, 1),
        ("repeats", repeats, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigError(key, f"must be an integer >= {low}, got {value!r}")
    if mc_passes and backend != "torch":
        raise ConfigError("mc_passes", "Monte-Carlo dropout is timed on the torch backend only")
    x = torch.from_numpy(
        np.random.default_rng(seed)
        .standard_normal((batch, model.in_channels, model.in_samples))  # type: ignore[attr-defined]
        .astype(np.float32)
    )
    previous_threads = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(threads)
    try:
        model.eval()
        if backend == "torch":
            times = _time_torch(model, x, warmup, repeats, mc_passes)
        else:
            times = _time_onnx(model, x, warmup, repeats, threads, onnx_path)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return LatencyResult(
        p50_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        backend=backend,
        device=device_name(),
        batch=batch,
        threads=threads,
        repeats=repeats,
        mc_passes=mc_passes,
    )


def _time_torch(
    model: nn.Module, x: torch.Tensor, warmup: int, repeats: int, mc_passes: int
) -> np.ndarray:
    if mc_passes:
        from feq_lab.models.picker import mc_predict

        def call() -> Any:
            return mc_predict(model, x, mc_passes)  # type: ignore[arg-type]
    else:
        frozen = compile_for_inference(model, target="eager")  # type: ignore[arg-type]

        def call() -> Any:
            with torch.inference_mode():
                return frozen(x)

    return time_calls(call, warmup, repeats)


def _time_onnx(
    model: nn.Module,
    x: torch.Tensor,
    warmup: int,
    repeats: int,
    threads: int,
    onnx_path: str | os.PathLike | None,
) -> np.ndarray:
    from feq_lab.export.onnx import export_onnx, onnx_session, run_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = (
            Path(onnx_path)
            if onnx_path is not None
            else export_onnx(model, Path(tmp) / "model.onnx")
        )
        session = onnx_session(path, threads=threads)
        arr = x.numpy()
        return time_calls(lambda: run_onnx(session, arr), warmup, repeats)
