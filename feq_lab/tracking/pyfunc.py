"""A small MLflow pyfunc wrapper around a run's checkpoint, so `models:/feq-picker@champion`
loads with `mlflow.pyfunc.load_model` and predicts on raw windows.

Why not `mlflow.pytorch.log_model`: its default format (pt2 export) took minutes for a small
model; the checkpoint (spec + state dict) is what the lab already writes, and ONNX rides along.
The model is saved "from code" (`pyfunc_entry.py`), so nothing is pickled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from feq_lab.errors import DataError
from feq_lab.tracking.registry import Registry

CHECKPOINT_KEY = "checkpoint"
ONNX_KEY = "onnx"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")


# MLflow warns at class definition that `predict` has no type hints; it has none on purpose
# (MLflow would read them as a schema). MLflow raises it under its own "once" filter, so a
# filter cannot silence it: the warnings of this class definition are recorded and dropped.
with warnings.catch_warnings(record=True):

    class PickerPyfunc(mlflow.pyfunc.PythonModel):
        """Input: raw waveforms (3, 6000), (B, 3, 6000) or channel-last (B, 6000, 3) E,N,Z counts.
        Output: dict of (B, 6000) float32 arrays `detection`, `p`, `s` (probabilities)."""

        def load_context(self, context: Any) -> None:
            from feq_lab.models import compile_for_inference, load_checkpoint

            model = load_checkpoint(context.artifacts[CHECKPOINT_KEY])
            self.model = compile_for_inference(model, target="eager")  # frozen: built once

        def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
            import torch

            from feq_lab.data.labels import normalize

            x = np.asarray(model_input, dtype=np.float32)
            if x.ndim == 2:
                x = x[None]
            if x.ndim != 3 or 3 not in x.shape[1:]:
                raise ValueError(f"expected (3, T), (B, 3, T) or (B, T, 3) waveforms, got shape {x.shape}")
            if x.shape[1] != 3:
                x = np.transpose(x, (0, 2, 1))
            with torch.no_grad():
                det, p, s = self.model(torch.from_numpy(normalize(x)))
            return {"detection": det.numpy(), "p": p.numpy(), "s": s.numpy()}


def save_pyfunc_model(path: str | os.PathLike, checkpoint: str | os.PathLike,
                      onnx_path: str | os.PathLike | None = None) -> Path:
    """Write an MLflow pyfunc model directory at `path` holding the checkpoint (and ONNX)."""
    artifacts = {CHECKPOINT_KEY: str(checkpoint)}
    if onnx_path is not None and Path(onnx_path).is_file():
        artifacts[ONNX_KEY] = str(onnx_path)
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(ENTRY),
        artifacts=artifacts,
        pip_requirements=["feq-lab", "torch", "numpy", "mlflow"],
    )
    return Path(path)


def model_files(model_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """(checkpoint, onnx or None) inside a downloaded pyfunc model directory."""
    root = Path(model_dir)
    ckpts = sorted(root.glob("artifacts/*.pt"))
    if not ckpts:
        raise DataError("registered model has no checkpoint (artifacts/*.pt)", path=str(root))
    onnx = sorted(root.glob("artifacts/*.onnx"))
    return ckpts[0], (onnx[0] if onnx else None)


def load_champion(
    uri: str, name: str = "feq-picker", alias: str = "champion",
    dst: str | os.PathLike | None = None,
) -> tuple[Any, Path | None, dict[str, float] | None]:
    """(model in eval mode, ONNX path or None, thresholds or None) of the registered
    `name@alias`. Thresholds: the detection/p/s its run's headline metrics used (the run's
    `thresholds/*`), read from the same model version; None when the version has no run or the
    run logged none."""
    from feq_lab.models import load_checkpoint  # torch: only when a model is loaded

    files = Registry(uri).download(name, alias, dst)
    checkpoint, onnx_path = model_files(files.directory)
    return load_checkpoint(checkpoint), onnx_path, files.thresholds
