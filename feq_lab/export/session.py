"""The one onnxruntime session builder (CPU, fixed thread count), for latency measurement,
benches and the monitor alike.

Why its own module: it imports onnxruntime only, never torch, so the monitor's ONNX path stays
within its memory goal while sharing the exact session settings the latency figures were
measured with.
"""

from __future__ import annotations

import os

import onnxruntime as ort


def onnx_session(path: str | os.PathLike, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session: `threads` intra-op, inter-op 1, sequential, all graph
    optimisations, warnings only from onnxruntime's log."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
