"""ONNX export of any learned model (`models.protocol.LearnedModel`): the names and dynamic
axes are the model's `onnx_signature()` — input `waveform` (B, 3, 6000), outputs `detection`,
`p`, `s` (probabilities), dynamic batch — opset ≥ 17. Written atomically."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from feq_lab.errors import ConfigError
from feq_lab.export.layout import lift_to_2d
from feq_lab.export.session import onnx_session  # noqa: F401 - the one builder, re-exported
from feq_lab.models.compile import compile_for_inference
from feq_lab.paths import atomic_path

INPUT_NAME = "waveform"
# Written into every export's metadata; bump when the exported graph's form changes, so that
# files exported earlier (same outputs, slower graph) are recognised and exported again.
EXPORT_FORMAT_KEY = "feq_lab.export_format"
# 3: channels padded to whole NCHWc blocks (encoder, decoder tail and head; models/compile.py,
# models/fastdecode.py); 2: 2-D NCHWc layout (export.layout); 1 / absent: the 1-D graph
EXPORT_FORMAT = "3"
OUTPUT_NAMES = ("detection", "p", "s")
MIN_OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17) -> Path:
    """Export `model` (a LearnedModel; its eval-mode function) to `path`; the batch axis is
    dynamic. What is traced is `compile_for_inference(model, target="onnx")`, the forms written
    for onnxruntime; the model itself is left as it was.

    Uses the TorchScript-based exporter: it handles nn.LSTM/nn.GRU natively (fused ONNX LSTM/GRU
    ops, which onnxruntime runs fast) and is quicker than the dynamo exporter for these models.
    The 1-D convs and pools are then written as 2-D ones (`layout.lift_to_2d`), the form that
    onnxruntime's NCHWc kernels take.
    """
    if opset < MIN_OPSET:
        raise ConfigError("opset", f"must be >= {MIN_OPSET} (LayerNormalization), got {opset}")
    signature = model.onnx_signature()  # type: ignore[operator]
    frozen = compile_for_inference(model, target="onnx")  # type: ignore[arg-type]
    example = torch.zeros(2, model.in_channels, model.in_samples)  # type: ignore[arg-type]
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            frozen,
            (example,),
            str(tmp),
            input_names=list(signature.input_names),
            output_names=list(signature.output_names),
            dynamic_axes={k: dict(v) for k, v in signature.dynamic_axes.items()},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
        graph = lift_to_2d(onnx.load(str(tmp)))
        onnx.helper.set_model_props(graph, {EXPORT_FORMAT_KEY: EXPORT_FORMAT})
        onnx.save(graph, str(tmp))
    return Path(path)


def is_current_export(path: str | os.PathLike) -> bool:
    """Whether `path` was written by this version's exporter (its EXPORT_FORMAT metadata)."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get(EXPORT_FORMAT_KEY) == EXPORT_FORMAT


def run_onnx(session, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detection, p, s) from an onnxruntime session for a (B, 3, 6000) float32 array."""
    det, p, s = session.run(
        list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
    )
    return det, p, s
