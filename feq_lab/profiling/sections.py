"""Where a model's eager time goes: each section of the eval forward pass timed on its own.

Why: "FEQ3 is 10× smaller, why is it not 10× faster?" is answered per section — the encoder and
decoders shrink with the widths, the recurrent steps, attention and per-op costs do not. Each
section is fed the input it sees inside `forward`; sections of several models are timed
round-robin so a noisy machine slows them alike. Thread CPU time, median of all calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

from feq_lab.models.compile import compile_for_inference
from feq_lab.models.picker import PickerModel

SECTIONS = ("encoder", "bottleneck", "rnn blocks", "transformers", "picker rnn",
            "picker attention", "decoders", "whole model")


def section_calls(model: PickerModel, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """One zero-argument call per section of the model compiled for eager inference (what
    streaming and evaluation run), bound to that section's real input. The sections are the EQT
    family's stages (`PickerModel`); other families are timed whole (`latency.measure_latency`)."""
    if not isinstance(model, PickerModel):
        raise TypeError(f"per-section timing follows the EQT family's stages; "
                        f"{type(model).__name__} is timed whole (profiling.latency)")
    model.eval()  # as before: the caller's model is left in eval mode
    model = compile_for_inference(model, target="eager")  # type: ignore[assignment]
    with torch.inference_mode():
        enc = model.encoder(x)
        h = model.bottleneck(enc).transpose(1, 2)
        after_rnn = h
        for block in model.rnn_blocks:
            after_rnn = block(after_rnn)
        after_tr = after_rnn
        for block in model.transformers:
            after_tr = block(after_tr)
        picker_out = model.pickers.rnn(after_tr)
        features = torch.cat([after_tr, model.pickers.attention(picker_out)], dim=2).transpose(1, 2)

    def run(blocks, y):
        for block in blocks:
            y = block(y)
        return y

    calls: dict[str, Callable[[], object]] = {
        "encoder": lambda: model.encoder(x),
        "bottleneck": lambda: model.bottleneck(enc),
        "rnn blocks": lambda: run(model.rnn_blocks, h),
        "transformers": lambda: run(model.transformers, after_rnn),
    }
    calls["picker rnn"] = lambda: model.pickers.rnn(after_tr)
    calls["picker attention"] = lambda: model.pickers.attention(picker_out)
    calls["decoders"] = lambda: model.decoders(features)
    calls["whole model"] = lambda: model(x)
    return calls


def time_sections(
    models: Mapping[str, PickerModel], passes: int = 10, block: int = 5, threads: int = 1
) -> dict[str, dict[str, float]]:
    """{model: {section: median thread-CPU ms}} for one (1, 3, 6000) window, round-robin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.from_numpy(
            np.random.default_rng(0).standard_normal((1, 3, 6000)).astype(np.float32))
        calls = {(name, sec): fn for name, m in models.items()
                 for sec, fn in section_calls(m, x).items()}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        with torch.inference_mode():
            for fn in calls.values():
                fn()
            for _ in range(passes):
                for key, fn in calls.items():
                    fn()  # re-warm after the previous section ran
                    for _ in range(block):
                        start = time.thread_time()
                        fn()
                        times[key].append((time.thread_time() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for (name, sec), values in times.items():
        out[name][sec] = float(np.median(values))
    return out
