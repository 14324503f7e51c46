"""Latency of the five presets (batch 1 unless --batch, 1 thread; torch eager and onnxruntime)
against SeisBench's EQTransformer(lstm_blocks=2) eager as the peer, all in one process. "eager"
for our presets is the model compiled for inference (`compile_for_inference(model,
target="eager")`).

    python bench/models.py [--passes 12] [--block 5] [--batch 1] [--sections]

Goals (issue 3): FEQ3 on its best backend ≤ 0.12 × peer; FEQ3 eager ≤ 0.5 × our EQT eager.
Candidates are timed round-robin: per pass each runs one untimed call (its caches warm again
after the previous candidate) then `block` timed calls, so a noisy, shared machine slows them
alike while each is measured warm, as in streaming use; the figure is the median over all calls.
Both wall-clock and thread CPU time
are reported: on a shared machine the CPU-time ratios are the trustworthy ones. `--sections` adds
where the eager time goes, section by section, for our EQT and FEQ3 (feq_lab.profiling.sections).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feq_lab.export.onnx import export_onnx, onnx_session, run_onnx
from feq_lab.models import PRESETS, build_model, compile_for_inference
from feq_lab.profiling.latency import device_name, time_calls

PEER = "seisbench EQTransformer(lstm_blocks=2) eager"


def candidates(tmp: Path, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    try:
        import seisbench.models as sbm

        peer = sbm.EQTransformer(lstm_blocks=2).eval()
        out[PEER] = lambda: _eager(peer, x)
    except ImportError:
        print("seisbench not installed: no peer (pip install seisbench)")
    arr = x.numpy()
    for name in PRESETS:
        torch.manual_seed(0)
        model = build_model(name).eval()
        session = onnx_session(export_onnx(model, tmp / f"{name}.onnx"), threads=1)
        frozen = compile_for_inference(model, target="eager")
        out[f"{name} eager"] = lambda m=frozen: _eager(m, x)
        out[f"{name} onnxruntime"] = lambda s=session: run_onnx(s, arr)
    return out


def _eager(model: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.inference_mode():
        return model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=12, help="round-robin passes")
    parser.add_argument("--block", type=int, default=5, help="timed calls per candidate per pass")
    parser.add_argument(
        "--batch", type=int, default=1, help="windows per call (the monitor batches 8)"
    )
    parser.add_argument("--sections", action="store_true", help="eager time per model section")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (args.batch, 3, 6000)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        fns = candidates(Path(tmp), x)
        for fn in fns.values():
            time_calls(fn, warmup=5, repeats=1)
        times: dict[str, dict[str, list[float]]] = {
            c: {k: [] for k in fns} for c in ("wall", "cpu")
        }
        for _ in range(args.passes):
            for key, fn in fns.items():
                fn()  # re-warm caches after the previous candidate ran
                for _ in range(args.block):
                    wall, cpu = time.perf_counter(), time.thread_time()
                    fn()
                    times["cpu"][key].append((time.thread_time() - cpu) * 1e3)
                    times["wall"][key].append((time.perf_counter() - wall) * 1e3)
    print(
        f"device: {device_name()}; torch {torch.__version__}; 1 thread; batch {args.batch}; "
        f"{args.passes} passes × {args.block} timed calls each (after one re-warming call)"
    )
    for clock, label in (
        ("wall", "wall-clock"),
        ("cpu", "thread CPU time (stable on a shared machine)"),
    ):
        report(label, times[clock])
    if args.sections:
        report_sections(args.passes)


def report_sections(passes: int) -> None:
    from feq_lab.profiling.sections import SECTIONS, time_sections

    torch.manual_seed(0)
    per = time_sections({"eqt": build_model("eqt"), "feq3": build_model("feq3")}, passes=passes)
    print("\neager time per section (thread CPU ms, 1 thread, batch 1; sections timed alone, so "
          "they do not add up to the whole model exactly)")
    print(f"{'section':20s} {'eqt':>8s} {'feq3':>8s} {'feq3/eqt':>9s}")
    for sec in SECTIONS:
        a, b = per["eqt"].get(sec), per["feq3"].get(sec)
        if a is None or b is None:
            continue
        print(f"{sec:20s} {a:8.3f} {b:8.3f} {b / a:9.2f}")


def report(label: str, times: dict[str, list[float]]) -> None:
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
    base = p50.get(PEER)
    print(f"\n{label}\n{'candidate':48s} {'p50 ms':>8s} {'p90 ms':>8s} {'× peer':>8s}")
    for key, median in p50.items():
        ratio = f"{median / base:8.3f}" if base else "     n/a"
        print(f"{key:48s} {median:8.2f} {p90[key]:8.2f} {ratio}")
    best = min(("feq3 eager", "feq3 onnxruntime"), key=p50.__getitem__)
    if base:
        r = p50[best] / base
        print(
            f"goal 1: FEQ3 best backend ({best}) / peer = {r:.3f} (goal ≤ 0.12: {'met' if r <= 0.12 else 'NOT met'})"
        )
    r = p50["feq3 eager"] / p50["eqt eager"]
    print(
        f"goal 2: FEQ3 eager / our EQT eager = {r:.3f} (goal ≤ 0.5: {'met' if r <= 0.5 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
