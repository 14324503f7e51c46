"""Model size: bytes of the serialized state dict (what a checkpoint costs) and of an ONNX file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

BYTES_PER_MB = 1_000_000  # decimal megabytes, like file managers and the FEQ report


def state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def model_size_mb(model: nn.Module) -> float:
    """Size in MB (10^6 bytes) of `torch.save(model.state_dict())`."""
    return state_dict_bytes(model) / BYTES_PER_MB


def file_size_mb(path: str | os.PathLike) -> float:
    """Size in MB (10^6 bytes) of a file, e.g. an exported ONNX model."""
    return Path(path).stat().st_size / BYTES_PER_MB
