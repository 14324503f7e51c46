"""Model loading and the engine's predict functions (torch, onnxruntime, Monte-Carlo).

Why the onnxruntime path never imports torch: the monitor's memory goal (≤ 150 MB) leaves no room
for torch's ~300 MB; with an ONNX file the monitor runs on numpy + onnxruntime alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from feq_lab.errors import ConfigError
from feq_lab.streaming.engine import Predictor

log = logging.getLogger("feq_lab.streaming")


def onnx_predictor(path: str | os.PathLike, threads: int = 1) -> Predictor:
    """onnxruntime CPU session with a fixed thread count (intra-op `threads`, inter-op 1)."""
    from feq_lab.export.session import onnx_session

    session = onnx_session(path, threads)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()][:3]

    def predict(x: np.ndarray):
        return session.run(output_names, {input_name: np.ascontiguousarray(x, dtype=np.float32)})

    return predict


def torch_predictor(model: Any, threads: int = 1, mc_passes: int = 0) -> Predictor:
    """PyTorch inference (eval mode); `mc_passes` > 0 adds the Monte-Carlo spread (6 outputs)."""
    import torch

    from feq_lab.models.compile import compile_for_inference

    torch.set_num_threads(int(threads))
    model.eval()
    frozen = None if mc_passes else compile_for_inference(model, target="eager")  # built once

    def predict(x: np.ndarray):
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if mc_passes:
            from feq_lab.models import mc_predict

            mean, std = mc_predict(model, xt, int(mc_passes))
            return [t.numpy() for t in (*mean, *std)]
        return [t.numpy() for t in frozen(xt)]

    return predict


def parse_model_uri(uri: str) -> tuple[str, str]:
    """'models:/NAME@ALIAS' -> (NAME, ALIAS)."""
    prefix = "models:/"
    if not str(uri).startswith(prefix) or "@" not in str(uri):
        raise ConfigError(
            "model_uri", f"{uri!r}: expected models:/NAME@ALIAS (e.g. models:/feq-picker@champion)"
        )
    name, alias = str(uri)[len(prefix) :].split("@", 1)
    if not name or not alias:
        raise ConfigError("model_uri", f"{uri!r}: empty name or alias")
    return name, alias


def load_model(
    cfg: Mapping[str, Any],
) -> tuple[Any, Path | None, str, dict[str, float] | None]:
    """(LearnedModel, ONNX path or None, model label, thresholds or None) from the stream config.

    Precedence: `model=<preset>` (+ `checkpoint=PATH`, else seeded untrained weights, warned),
    then `checkpoint=PATH` alone, then `model_uri` (default: the registered champion). Only a
    registry model comes with thresholds: those its run's headline metrics were measured at.
    """
    preset = cfg.get("model")
    checkpoint = cfg.get("checkpoint")
    if preset:
        from feq_lab.models import build_model, load_checkpoint

        if checkpoint:
            model = load_checkpoint(checkpoint)
            return model, None, f"{model.name}:{Path(checkpoint).name}", None
        import torch

        torch.manual_seed(int(cfg.get("seed", 0)))
        model = build_model(dict(preset)).eval()
        log.warning(
            "model: %s with UNTRAINED seeded weights (give checkpoint=PATH for trained ones)",
            model.name,
        )
        return model, None, f"{model.name}:untrained", None
    if checkpoint:
        from feq_lab.models import load_checkpoint

        model = load_checkpoint(checkpoint)
        return model, None, f"{model.name}:{Path(checkpoint).name}", None
    uri = cfg.get("model_uri") or "models:/feq-picker@champion"
    name, alias = parse_model_uri(uri)
    from feq_lab.tracking.pyfunc import load_champion

    tracking = cfg.get("tracking") or {}
    model, onnx_path, thresholds = load_champion(tracking.get("uri"), name=name, alias=alias)
    return model, onnx_path, f"{model.name}:{name}@{alias}", thresholds


def make_predictor(
    model: Any, onnx_path: Path | None, backend: str, threads: int, mc_passes: int, work_dir: Path
) -> Predictor:
    """The predict function for `backend`; exports ONNX into `work_dir` when none came with it."""
    if int(threads) < 1:
        raise ConfigError("threads", f"must be >= 1, got {threads}")
    if mc_passes and backend != "torch":
        log.warning("mc_passes=%d needs dropout at inference: using the torch backend", mc_passes)
        backend = "torch"
    if backend == "torch":
        return torch_predictor(model, threads, int(mc_passes or 0))
    if backend == "onnxruntime":
        from feq_lab.export.onnx import export_onnx, is_current_export

        if onnx_path is not None and Path(onnx_path).exists() and not is_current_export(onnx_path):
            log.info(
                "%s comes from an older exporter (same outputs, slower graph); exporting again",
                Path(onnx_path).name,
            )
            onnx_path = None
        if onnx_path is None or not Path(onnx_path).exists():
            onnx_path = export_onnx(model, Path(work_dir) / "model.onnx")
            log.info("model exported to %s for onnxruntime", onnx_path)
        return onnx_predictor(onnx_path, threads)
    raise ConfigError("backend", f"must be torch or onnxruntime, got {backend!r}")
