"""Window-edge artefact on replayed noise (issue 16 acceptance: on 10 minutes of replayed noise,
no P or S probability above its threshold at any window edge).

    python bench/edges.py --checkpoint runs/x/model.pt [--checkpoint other.pt ...]
                          [--minutes 10] [--seed 0] [--data data/subset] [--every 1]

For each checkpoint, on the noise part of the replay scenario (`streaming.sources.
build_scenario`: `--minutes` test-split noise traces joined, amplitude-matched, as the monitor's
replay plays them):
1. the engine as configured (stride 3000, max stacking, no blinding; 60-s blocks): the stacked
   P/S maxima within +-0.5 s of a regular window edge and away from the edges;
2. the monitor's right-aligned windows: one window ending at every `--every` s of the record
   (after the first minute), raw outputs: maxima over their last 0.5 s (where an early pick
   would read the newest samples), first 0.5 s, and the rest; and the right edge's excess over
   the stacked regular windows on the same samples (the edge's own contribution: noise that
   triggers the model inside a window is no edge artefact), for the newest 0.5 s and for the
   0.5 s before them (`*_right_skip_excess`: what an early picker that confirms a peak 0.5 s
   later reads).
Prints one JSON object per checkpoint; `pass` (the acceptance) says whether the stacked P/S
within +-0.5 s of the regular window edges stays below the thresholds (`--p-threshold`,
`--s-threshold`, default 0.1 as the study); `right_edge_pass` the same for the right-aligned
windows' last 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feq_lab.data.labels import normalize
from feq_lab.evaluation.edges import (
    edge_maxima,
    regular_edges,
    right_edge_excess,
    window_end_maxima,
)
from feq_lab.streaming.engine import WINDOW, EngineConfig, StreamEngine
from feq_lab.streaming.sources import build_scenario, record_blocks

RATE = 100


def noise_record(data_dir: Path, minutes: int, seed: int) -> tuple[str, float, np.ndarray]:
    """(station, start time, (3, n) record) of the first `minutes` of a replay scenario: the
    noise the monitor's replay plays before its earthquake."""
    sc = build_scenario(data_dir, seed=seed, noise_minutes=minutes)
    return sc.station, sc.starttime, sc.data[:, : minutes * 60 * RATE]


def stacked(predict, station: str, start: float, data: np.ndarray, stride: int,
            combine: str) -> np.ndarray:
    """The engine's combined (3, n) det/P/S of the whole record."""
    cfg = EngineConfig(stride=stride, combine=combine, history_s=data.shape[1] / RATE + 600)
    engine = StreamEngine(predict, "bench", cfg)
    for block in record_blocks(station, start, data, block_s=60.0):
        engine.feed(block)
    engine.flush()
    st = engine.stations[station]
    return engine.probabilities(st, 0, st.final)


def window_ends(n: int, every_s: float) -> np.ndarray:
    """Record samples (exclusive) where the right-aligned windows end: every `every_s` s."""
    return np.arange(WINDOW, n + 1, max(int(every_s * RATE), 1))


def right_aligned(predict, data: np.ndarray, ends: np.ndarray,
                  batch: int = 32) -> list[np.ndarray]:
    """Raw det/P/S (B, WINDOW) of the windows ending at `ends`."""
    outs: list[list[np.ndarray]] = [[], [], []]
    for a in range(0, len(ends), batch):
        x = np.stack([data[:, e - WINDOW:e] for e in ends[a:a + batch]])
        for k, o in enumerate(predict(normalize(x))[:3]):
            outs[k].append(np.asarray(o, np.float32).reshape(x.shape[0], -1))
    return [np.concatenate(o) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--data", default="data/subset")
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--stride", type=int, default=3000)
    ap.add_argument("--combine", default="max")
    ap.add_argument("--half-width-s", type=float, default=0.5)
    ap.add_argument("--p-threshold", type=float, default=0.1)
    ap.add_argument("--s-threshold", type=float, default=0.1)
    args = ap.parse_args()

    from feq_lab.models import load_checkpoint
    from feq_lab.streaming.predictors import torch_predictor

    station, start, data = noise_record(Path(args.data), args.minutes, args.seed)
    half = round(args.half_width_s * RATE)
    for path in args.checkpoint:
        predict = torch_predictor(load_checkpoint(path), threads=1)
        prob = stacked(predict, station, start, data, args.stride, args.combine)
        edges = regular_edges(prob.shape[1], args.stride, WINDOW)
        engine_view = edge_maxima(prob, edges, half)
        ends = window_ends(data.shape[1], args.every)
        windows = right_aligned(predict, data, ends)
        window_view = window_end_maxima(windows, half)
        window_view.update(right_edge_excess(windows, ends, prob, half))
        later = right_edge_excess(windows, ends, prob, half, skip=half)  # read 0.5 s later
        window_view.update({k.replace("right", "right_skip"): v for k, v in later.items()})
        ok = (engine_view["p_edge_max"] < args.p_threshold
              and engine_view["s_edge_max"] < args.s_threshold)
        right_ok = (window_view["p_right_max"] < args.p_threshold
                    and window_view["s_right_max"] < args.s_threshold)
        print(json.dumps({
            "checkpoint": path, "minutes": args.minutes, "seed": args.seed,
            "n_edges": len(edges),
            "engine": {k: round(v, 4) for k, v in engine_view.items()},
            "right_aligned_windows": {k: round(v, 4) for k, v in window_view.items()},
            "pass": bool(ok), "right_edge_pass": bool(right_ok),
        }), flush=True)


if __name__ == "__main__":
    main()
