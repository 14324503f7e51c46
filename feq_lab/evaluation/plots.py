"""Evaluation figures for a run's artifacts, drawn with matplotlib's Agg canvas.

Figures are built on `matplotlib.figure.Figure` (no pyplot global state, no display needed, safe
in parallel jobs) and written to a temp file renamed onto the target PNG path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from feq_lab.errors import DataError
from feq_lab.evaluation.metrics import picks_to_arrays
from feq_lab.evaluation.picks import TracePicks
from feq_lab.evaluation.probabilities import Probabilities
from feq_lab.evaluation.truth import Truth
from feq_lab.paths import atomic_path

P_COLOR, S_COLOR, DET_COLOR = "tab:blue", "tab:red", "tab:green"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def choose_example_traces(truth: Truth, n: int = 4) -> list[int]:
    """A few indices to show: earthquakes first, then one noise trace when there is one."""
    eq = np.flatnonzero(truth.is_earthquake)
    noise = np.flatnonzero(~truth.is_earthquake)
    n_noise = 1 if (len(noise) and n > 1) else 0
    chosen = list(eq[: n - n_noise]) + list(noise[:n_noise])
    if len(chosen) < n:
        chosen += [i for i in range(len(truth)) if i not in chosen][: n - len(chosen)]
    return [int(i) for i in chosen]


def plot_example_traces(
    path: str | Path,
    probs: Probabilities,
    picks: Sequence[TracePicks],
    indices: Sequence[int] | None = None,
    *,
    waveforms: np.ndarray | None = None,
    thresholds: Mapping[str, float] | None = None,
    sampling_rate: float = 100.0,
    n: int = 4,
) -> Path:
    """Per trace: the Z waveform (when given) above the detection/P/S probabilities, with true
    (dashed) and picked (solid) P and S, and the thresholds as dotted lines."""
    if len(picks) != len(probs):
        raise DataError(f"{len(picks)} picks for {len(probs)} probability traces")
    idx = list(indices) if indices is not None else choose_example_traces(probs.truth, n)
    if not idx:
        raise DataError("no traces to plot")
    rows_per = 2 if waveforms is not None else 1
    fig = Figure(figsize=(10, 2.2 * rows_per * len(idx)), layout="constrained")
    axes = fig.subplots(rows_per * len(idx), 1, squeeze=False)[:, 0]
    t = np.arange(probs.det.shape[1]) / sampling_rate
    for k, i in enumerate(idx):
        ax_w = axes[rows_per * k] if waveforms is not None else None
        ax = axes[rows_per * k + rows_per - 1]
        truth_p, truth_s = probs.truth.p_sample[i], probs.truth.s_sample[i]
        if ax_w is not None:
            w = np.asarray(waveforms[i], np.float32)
            z = w[:, 2] if w.shape[-1] == 3 else w[2]
            ax_w.plot(t[: len(z)], z, color="k", lw=0.5)
            ax_w.set_ylabel("Z")
            ax_w.set_title(probs.trace_names[i], fontsize=9)
        else:
            ax.set_title(probs.trace_names[i], fontsize=9)
        ax.plot(t, probs.det[i], color=DET_COLOR, lw=1, label="detection")
        ax.plot(t, probs.p[i], color=P_COLOR, lw=1, label="P")
        ax.plot(t, probs.s[i], color=S_COLOR, lw=1, label="S")
        for a in [x for x in (ax, ax_w) if x is not None]:
            if np.isfinite(truth_p):
                a.axvline(truth_p / sampling_rate, color=P_COLOR, ls="--", lw=1)
            if np.isfinite(truth_s):
                a.axvline(truth_s / sampling_rate, color=S_COLOR, ls="--", lw=1)
            if picks[i].p_sample is not None:
                a.axvline(picks[i].p_sample / sampling_rate, color=P_COLOR, lw=1.5)
            if picks[i].s_sample is not None:
                a.axvline(picks[i].s_sample / sampling_rate, color=S_COLOR, lw=1.5)
        for on, off in picks[i].det_intervals:
            ax.axvspan(on / sampling_rate, off / sampling_rate, color=DET_COLOR, alpha=0.12)
        if thresholds:
            for key, color in (("detection", DET_COLOR), ("p", P_COLOR), ("s", S_COLOR)):
                if key in thresholds:
                    ax.axhline(float(thresholds[key]), color=color, ls=":", lw=0.8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("probability")
    axes[0].legend(*axes[rows_per - 1].get_legend_handles_labels(), loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s); dashed = true arrival, solid = pick")
    return _save(fig, path)


def plot_confusion_matrix(
    path: str | Path, metrics: Mapping[str, float], title: str = "detection"
) -> Path:
    """2x2 detection confusion matrix from `detection_tp/fn/fp/tn` of `metrics.score`."""
    try:
        m = np.array(
            [
                [metrics["detection_tp"], metrics["detection_fn"]],
                [metrics["detection_fp"], metrics["detection_tn"]],
            ],
            float,
        )
    except KeyError as exc:
        raise DataError(f"metrics lack {exc.args[0]!r} for the confusion matrix") from exc
    fig = Figure(figsize=(4, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues", vmin=0)
    for (r, c), v in np.ndenumerate(m):
        ax.text(
            c,
            r,
            f"{int(v)}",
            ha="center",
            va="center",
            color="white" if v > m.max() / 2 else "black",
            fontsize=12,
        )
    ax.set_xticks([0, 1], ["detected", "not detected"])
    ax.set_yticks([0, 1], ["earthquake", "noise"])
    ax.set_title(f"{title}: F1 {metrics.get('detection_f1', float('nan')):.3f}")
    return _save(fig, path)


def plot_residual_histograms(
    path: str | Path,
    picks: Sequence[TracePicks],
    truth: Truth,
    *,
    sampling_rate: float = 100.0,
    tolerance_s: float = 0.5,
    bins: int = 41,
) -> Path:
    """P and S residuals (true − predicted, s) of earthquake picks within ±2·tolerance; the
    shaded band is the TP tolerance."""
    if len(picks) != len(truth):
        raise DataError(f"{len(picks)} picks for {len(truth)} truth rows")
    _, p_pick, s_pick = picks_to_arrays(picks)
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    edges = np.linspace(-2 * tolerance_s, 2 * tolerance_s, bins + 1)
    for ax, phase, pick, true, color in (
        (axes[0], "P", p_pick, truth.p_sample, P_COLOR),
        (axes[1], "S", s_pick, truth.s_sample, S_COLOR),
    ):
        res = (true - pick)[truth.is_earthquake & np.isfinite(pick)] / sampling_rate
        shown = np.clip(res, edges[0], edges[-1])
        ax.hist(shown, bins=edges, color=color, alpha=0.8)
        ax.axvspan(-tolerance_s, tolerance_s, color="grey", alpha=0.12)
        inside = res[np.abs(res) <= tolerance_s]
        stats = f"n={len(res)}, within tol={len(inside)}" + (
            f"\nmean {inside.mean():.3f} s, std {inside.std():.3f} s" if len(inside) else ""
        )
        ax.set_title(f"{phase} residuals\n{stats}", fontsize=9)
        ax.set_xlabel("true − predicted (s), clipped at ±2·tolerance")
    axes[0].set_ylabel("picks")
    return _save(fig, path)


def plot_threshold_curves(path: str | Path, table: pd.DataFrame) -> Path:
    """F1 against each output's own threshold, from a `threshold_grid` table.

    Detection F1 depends only on the detection threshold; P/S F1 get one line per detection
    threshold (the other phase's threshold does not affect them).
    """
    needed = {"detection_threshold", "p_threshold", "s_threshold", "detection_f1", "p_f1", "s_f1"}
    missing = needed - set(table.columns)
    if missing or table.empty:
        raise DataError(f"threshold table is empty or lacks {sorted(missing)}")
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    det = (
        table.groupby("detection_threshold")[
            ["detection_f1", "detection_precision", "detection_recall"]
        ]
        .first()
        .sort_index()
    )
    axes[0].plot(det.index, det["detection_f1"], "o-", color=DET_COLOR, label="F1")
    axes[0].plot(det.index, det["detection_precision"], "--", color="grey", label="precision")
    axes[0].plot(det.index, det["detection_recall"], ":", color="black", label="recall")
    axes[0].set_title("detection")
    axes[0].set_xlabel("detection threshold")
    axes[0].set_ylabel("F1")
    axes[0].legend(fontsize=8)
    for ax, phase in ((axes[1], "p"), (axes[2], "s")):
        curves = table.groupby(["detection_threshold", f"{phase}_threshold"])[f"{phase}_f1"].first()
        for det_th, series in curves.groupby(level=0):
            series = series.droplevel(0).sort_index()
            ax.plot(series.index, series.values, "o-", ms=3, label=f"det ≥ {det_th:g}")
        ax.set_title(f"{phase.upper()} pick")
        ax.set_xlabel(f"{phase.upper()} threshold")
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylim(-0.02, 1.02)
    return _save(fig, path)
