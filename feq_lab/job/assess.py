"""After training: test-set probabilities (stored once), EQT-protocol metrics at the headline
thresholds and over the threshold grid, evaluation figures, and the size/parameter/latency
measurements — all as plain values and files; `run` decides what gets logged."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from feq_lab.evaluation.decode import DEFAULT_PROTOCOL
from feq_lab.evaluation.metrics import evaluate
from feq_lab.evaluation.picks import TracePicks, extract_picks
from feq_lab.evaluation.probabilities import (
    Probabilities,
    ProbabilityCollector,
    as_stored,
    save_probabilities,
)
from feq_lab.evaluation.thresholds import threshold_grid
from feq_lab.models.compile import compile_for_inference
from feq_lab.paths import atomic_path

log = logging.getLogger(__name__)

PROBABILITIES_FILE = "test_probabilities.npz"
THRESHOLD_GRID_FILE = "threshold_grid.csv"
PLOTS_DIR = "plots"
SECTIONS = ("encoder", "bottleneck", "rnn_transformer", "decoder", "total")
# The keys every learned run logs (the list); failed jobs return them as NaN.
HEADLINE_KEYS = (
    "test/detection_f1", "test/p_f1", "test/s_f1",
    "test/detection_precision", "test/detection_recall",
    "test/p_precision", "test/p_recall", "test/s_precision", "test/s_recall",
    "test/detection_fn", "test/p_fn", "test/s_fn",
    "test/p_residual_mae_s", "test/s_residual_mae_s",
    "params/total_paper", "params/total_torch",
    *(f"params/{s}_paper" for s in SECTIONS if s != "total"),
    "size/model_mb", "latency/window_ms_p50",
)


@dataclass
class Assessment:
    """Metrics (flat, MLflow keys) and the files to log (artifact folder -> paths)."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, list[Path]] = field(default_factory=dict)

    def add(self, folder: str, path: Path | None) -> None:
        if path is not None:
            self.artifacts.setdefault(folder, []).append(Path(path))


def eval_settings(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring keyword arguments of `metrics.evaluate` / `threshold_grid` from `cfg.eval`."""
    return {
        "sampling_rate": float(eval_cfg.get("sampling_rate", 100)),
        "tolerance_s": float(eval_cfg.get("tolerance_s", 0.5)),
        "association_margin_s": float(eval_cfg.get("association_margin_s", 0.5)),
        "protocol": str(eval_cfg.get("protocol", DEFAULT_PROTOCOL)),
    }


@torch.no_grad()
def predict_test(model: torch.nn.Module, loader: Any, device: torch.device | str = "cpu") -> Probabilities:
    """Probabilities of every test trace, in the loader's (CSV) order (the model compiled
    for eager inference once: the same function, faster)."""
    frozen = compile_for_inference(model.to(device).eval(), target="eager")
    collector = ProbabilityCollector()
    for batch in loader:
        det, p, s = frozen(batch["x"].to(device))
        collector.add(batch, det, p, s)
    return collector.result()


def prefixed(metrics: Mapping[str, float], prefix: str = "test/") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


def write_table(table: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return path


def evaluate_probabilities(
    probs: Probabilities,
    thresholds: Mapping[str, float],
    eval_cfg: Mapping[str, Any],
    out_dir: Path,
    waveforms: Any | None = None,
) -> Assessment:
    """Store `probs`, score them at `thresholds` and over `eval.threshold_grid`, draw figures.

    Scores are computed from exactly what is stored (float16), so the headline metrics equal
    the threshold-grid row at the same thresholds, now and after a reload.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = eval_settings(eval_cfg)
    result = Assessment()
    result.add("", save_probabilities(out_dir / PROBABILITIES_FILE, probs))
    stored = as_stored(probs)
    scores = evaluate(stored, thresholds, **kw)
    result.metrics.update(prefixed(scores))
    grid = eval_cfg.get("threshold_grid")
    table = None
    if grid:
        table = threshold_grid(stored, grid, **kw)
        result.add("", write_table(table, out_dir / THRESHOLD_GRID_FILE))
    picks = extract_picks(stored.det, stored.p, stored.s, thresholds,
                          sampling_rate=kw["sampling_rate"],
                          association_margin_s=kw["association_margin_s"],
                          protocol=kw["protocol"])
    for path in draw_figures(out_dir / PLOTS_DIR, stored, picks, scores, table, thresholds,
                             kw, int(eval_cfg.get("n_plot_traces", 4)), waveforms):
        result.add(PLOTS_DIR, path)
    return result


def draw_figures(
    plot_dir: Path,
    probs: Probabilities | None,
    picks: Sequence[TracePicks],
    scores: Mapping[str, float],
    table: Any,
    thresholds: Mapping[str, float] | None,
    kw: Mapping[str, float],
    n_traces: int,
    waveforms: Any | None = None,
    truth: Any | None = None,
) -> list[Path]:
    """Example traces, confusion matrix, residual histograms, threshold curves.

    A figure that cannot be drawn is skipped with a warning: figures illustrate a run, they
    never decide whether it succeeded.
    """
    from feq_lab.evaluation import plots

    plot_dir.mkdir(parents=True, exist_ok=True)
    truth = truth if truth is not None else probs.truth  # type: ignore[union-attr]
    jobs: list[tuple[str, Any]] = [
        ("confusion_matrix.png", lambda p: plots.plot_confusion_matrix(p, scores)),
        ("residuals.png", lambda p: plots.plot_residual_histograms(
            p, picks, truth, sampling_rate=kw["sampling_rate"], tolerance_s=kw["tolerance_s"])),
    ]
    if probs is not None and n_traces > 0:
        def examples(p: Path) -> Path:
            idx = plots.choose_example_traces(probs.truth, n_traces)
            wf = None
            if waveforms is not None:
                wf = np.stack([np.asarray(waveforms(probs.trace_names[i])) for i in idx])
            return plots.plot_example_traces(
                p, probs.subset(idx), [picks[i] for i in idx], waveforms=wf,
                thresholds=thresholds, sampling_rate=kw["sampling_rate"], n=len(idx))
        jobs.insert(0, ("example_traces.png", examples))
    if table is not None:
        jobs.append(("threshold_curves.png", lambda p: plots.plot_threshold_curves(p, table)))
    written = []
    for name, draw in jobs:
        try:
            written.append(draw(plot_dir / name))
        except Exception as exc:  # noqa: BLE001 - see docstring
            log.warning("figure %s skipped: %s: %s", name, type(exc).__name__, exc)
    return written


def measure(model: torch.nn.Module, measure_cfg: Mapping[str, Any] | None) -> dict[str, float]:
    """Parameters per section (both conventions), size and batch-1/1-thread latency."""
    from feq_lab.models.params import count_parameters
    from feq_lab.profiling.latency import measure_latency
    from feq_lab.profiling.size import model_size_mb

    cfg = dict(measure_cfg or {})
    model = model.cpu().eval()
    out: dict[str, float] = {}
    for convention in ("paper", "torch"):
        counts = count_parameters(model, convention=convention)
        for section, value in counts.items():
            out[f"params/{section}_{convention}"] = float(value)
    out["size/model_mb"] = float(model_size_mb(model))
    if cfg.get("latency", True):
        result = measure_latency(model, backend="torch", batch=1, threads=1,
                                 warmup=int(cfg.get("latency_warmup", 5)),
                                 repeats=int(cfg.get("latency_repeats", 20)))
        out["latency/window_ms_p50"] = float(result.p50_ms)
        out["latency/window_ms_p90"] = float(result.p90_ms)
    else:
        out["latency/window_ms_p50"] = math.nan
    return out
