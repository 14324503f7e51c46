"""The study's figures from run records: bar charts, F1 per output, the Pareto scatter and the
champion's threshold trade-off. Each function saves one PNG and returns nothing else.

Why the Agg backend and explicit figure objects: reports are built headless (DVC, CI) and in
parallel with other work; pyplot's global state is never relied on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from feq_lab.selection.tables import OUTPUT_NAMES, OUTPUTS
from feq_lab.tracking import keys
from feq_lab.tracking.records import RunRecord

CHAMPION_COLOR = "#d62728"
COLOR = "#1f77b4"
BASELINE_COLOR = "#7f7f7f"


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def bar_chart(runs: Sequence[RunRecord], labels: dict[str, str], key: str, ylabel: str,
              title: str, path: Path, champion_id: str | None = None) -> None:
    """One bar per run having `key` (Figures 12–14: parameters, size, latency)."""
    have = [r for r in runs if _finite(r.metrics.get(key))]
    fig = Figure(figsize=(max(5.0, 0.8 * len(have) + 2), 3.6))
    ax = fig.add_subplot()
    values = [r.metrics[key] for r in have]
    colors = [CHAMPION_COLOR if r.run_id == champion_id else COLOR for r in have]
    bars = ax.bar(range(len(have)), values, color=colors)
    ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(have)), [labels[r.run_id] for r in have], rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def grouped_bars(runs: Sequence[RunRecord], labels: dict[str, str], stat: str, ylabel: str,
                 title: str, path: Path, champion_id: str | None = None) -> None:
    """Detection / P / S side by side per run (Figure 15 for F1; the same for FN), with the
    95 % bootstrap interval as an error bar where the run logged one."""
    fig = Figure(figsize=(max(6.0, 1.0 * len(runs) + 2), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / len(OUTPUTS)
    x = np.arange(len(runs))
    for i, o in enumerate(OUTPUTS):
        vals = [r.metrics.get(f"test/{o}_{stat}", math.nan) for r in runs]
        heights = [v if _finite(v) else 0.0 for v in vals]
        err = [[max(0.0, h - r.metrics.get(f"test/{o}_{stat}_ci_low", h)),
                max(0.0, r.metrics.get(f"test/{o}_{stat}_ci_high", h) - h)]
               for h, r in zip(heights, runs)]
        ax.bar(x + (i - 1) * width, heights, width, label=OUTPUT_NAMES[o],
               yerr=np.array(err).T if runs else None, capsize=2,
               error_kw={"elinewidth": 0.7})
    ax.set_xticks(x, [labels[r.run_id] + (" *" if r.run_id == champion_id else "")
                      for r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if stat == "f1":
        ax.set_ylim(0, 1.2)
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


LATENCY_KEY = keys.LATENCY_ONNX_P50   # what the monitor runs (onnxruntime)


def pareto_scatter(runs: Sequence[RunRecord], labels: dict[str, str], f1_key: str,
                   front_ids: set[str], path: Path, champion_id: str | None = None,
                   latency_key: str = LATENCY_KEY) -> None:
    """F1 (with its 95 % bootstrap interval as an error bar) vs latency, marker area
    proportional to model size; front joined, champion in red.

    Why numbers and a legend instead of text labels: the light variants' latencies lie within a
    few percent of each other, so text beside the markers overlaps into an unreadable cluster;
    a number in each marker and a legend beside the axes never collide.
    """
    have = [r for r in runs if _finite(r.metrics.get(f1_key))
            and _finite(r.metrics.get(latency_key))]
    fig = Figure(figsize=(9.0, 4.6))
    ax = fig.add_subplot()
    sizes = [r.metrics.get(keys.SIZE_MODEL_MB, math.nan) for r in have]
    finite_sizes = [s for s in sizes if _finite(s)] or [1.0]
    scale = 600.0 / max(finite_sizes)
    handles = []
    for i, (r, s) in enumerate(zip(have, sizes), start=1):
        x, y = r.metrics[latency_key], r.metrics[f1_key]
        low = r.metrics.get(f"{f1_key}_ci_low")
        high = r.metrics.get(f"{f1_key}_ci_high")
        color = CHAMPION_COLOR if r.run_id == champion_id else (
            COLOR if r.run_id in front_ids else BASELINE_COLOR)
        if _finite(low) and _finite(high):
            ax.errorbar([x], [y], yerr=[[max(0.0, y - low)], [max(0.0, high - y)]], fmt="none",
                        ecolor=color, elinewidth=0.9, capsize=3, alpha=0.8)
        ax.scatter([x], [y], s=max(40.0, (s if _finite(s) else 0.0) * scale), color=color,
                   alpha=0.55, edgecolors="black", linewidths=0.5)
        ax.annotate(str(i), (x, y), fontsize=7, ha="center", va="center", fontweight="bold")
        handles.append(ax.scatter([], [], s=30, color=color, edgecolors="black", linewidths=0.5,
                                  label=f"{i}  {labels[r.run_id]}"
                                  + ("  (champion)" if r.run_id == champion_id else "")))
    front = sorted((r for r in have if r.run_id in front_ids),
                   key=lambda r: r.metrics[latency_key])
    if len(front) > 1:
        ax.plot([r.metrics[latency_key] for r in front],
                [r.metrics[f1_key] for r in front], "--", color=COLOR, linewidth=0.8)
    ax.set_xlabel("latency p50 per 60-s window (ms, onnxruntime, batch 1, 1 thread)")
    ax.set_ylabel(f"{f1_key} (bars: 95 % bootstrap interval)")
    ax.set_title("Pareto view: F1 vs latency (marker area = model size; red = champion)",
                 fontsize=10)
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  frameon=False, handletextpad=0.3)
    _save(fig, path)


def threshold_curves(curve: pd.DataFrame, title: str, path: Path) -> None:
    """Precision, recall and F1 against each output's threshold (the champion's trade-off)."""
    fig = Figure(figsize=(10.0, 3.4))
    for i, o in enumerate(OUTPUTS):
        ax = fig.add_subplot(1, len(OUTPUTS), i + 1)
        part = curve[curve["output"] == o].sort_values("threshold")
        for stat in ("precision", "recall", "f1"):
            ax.plot(part["threshold"], part[stat], marker="o", markersize=3, label=stat)
        ax.set_title(f"{OUTPUT_NAMES[o]}", fontsize=10)
        ax.set_xlabel("threshold")
        ax.set_ylim(0, 1.05)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _short(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"
