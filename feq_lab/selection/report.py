"""The study's report regenerated from tracked runs: Markdown, PNG figures, the champion's metrics
(JSON, for `dvc metrics`) and its threshold trade-off (CSV, for `dvc plots`).

Every number comes from the `RunRecord`s given (i.e. from MLflow) and the champion's
threshold-grid artifact; nothing is typed in. Everything is rendered into a staging folder first
and moved into place only once all of it succeeded, so an error never leaves a half-written
report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from feq_lab.errors import DataError, SelectionError
from feq_lab.selection import figures, tables
from feq_lab.selection.policy import Objective, pareto_front
from feq_lab.selection.tables import OUTPUTS, param
from feq_lab.tracking.records import RunRecord

REPORT_MD = "report.md"
CHAMPION_METRICS = "champion_metrics.json"
THRESHOLD_CURVE = "threshold_curve.csv"
FIGURES_DIR = "figures"
CURVE_COLUMNS = ["output", "threshold", "precision", "recall", "f1"]
CHAMPION_KEYS = tuple(
    [f"test/{o}_{s}" for o in OUTPUTS for s in ("f1", "precision", "recall", "fn")]
    + ["test/p_residual_mae_s", "test/s_residual_mae_s", "params/total_paper",
       "params/total_torch", "size/model_mb", "latency/window_ms_p50"])


@dataclass
class ReportInputs:
    """What a report is made of: runs, the selection decision, the champion's threshold grid."""

    runs: Sequence[RunRecord]
    selection: Mapping[str, Any]
    threshold_grid: pd.DataFrame | None = None
    source: str = ""
    f1_key: str = "test/s_f1"


# --------------------------------------------------------------------------- threshold curve


def _find_col(df: pd.DataFrame, names: Sequence[str]) -> str | None:
    cols = {c.lower(): c for c in df.columns}
    for n in names:
        if n.lower() in cols:
            return cols[n.lower()]
    return None


def threshold_curve(grid: pd.DataFrame, headline: Mapping[str, float],
                    path: str = "threshold_grid.csv") -> pd.DataFrame:
    """Long table (output, threshold, precision, recall, f1) from a run's threshold grid.

    Accepts a long grid (`output`, `threshold`, stats) or a wide one with one threshold column per
    output (`detection_threshold` or `threshold_detection` ...) and `<output>_<stat>` columns.
    For a product grid each output's curve holds the other thresholds at their headline values
    (or the nearest grid value), so one curve moves one knob.
    """
    g = grid.rename(columns=lambda c: str(c).removeprefix("test/"))
    out_col, thr_col = _find_col(g, ["output"]), _find_col(g, ["threshold"])
    rows = []
    if out_col and thr_col:
        for o in OUTPUTS:
            part = g[g[out_col].astype(str).str.lower() == o]
            cols = {s: _find_col(part, [s, f"{o}_{s}"]) for s in ("precision", "recall", "f1")}
            if part.empty or not all(cols.values()):
                raise DataError(f"threshold grid lacks output {o!r} or its precision/recall/f1 "
                                f"columns (has {list(grid.columns)})", path=path)
            rows += [(o, float(t), *(float(part.loc[i, cols[s]]) for s in cols))
                     for i, t in part[thr_col].items()]
    else:
        thr = {o: _find_col(g, [f"{o}_threshold", f"threshold_{o}", f"thresholds.{o}",
                                f"thresholds/{o}", o]) for o in OUTPUTS}
        if not all(thr.values()):
            raise DataError(f"threshold grid has no threshold column for "
                            f"{[o for o, c in thr.items() if not c]} (columns {list(grid.columns)})",
                            path=path)
        for o in OUTPUTS:
            stats = {s: _find_col(g, [f"{o}_{s}"]) for s in ("precision", "recall", "f1")}
            if not all(stats.values()):
                raise DataError(f"threshold grid lacks {[f'{o}_{s}' for s, c in stats.items() if not c]}"
                                f" (columns {list(grid.columns)})", path=path)
            part = g
            for other in OUTPUTS:
                if other == o:
                    continue
                values = part[thr[other]].astype(float)
                want = float(headline.get(other, values.iloc[0]))
                nearest = values.iloc[(values - want).abs().argmin()]
                part = part[values == nearest]
            part = part.drop_duplicates(subset=[thr[o]]).sort_values(thr[o])
            rows += [(o, float(t), *(float(part.loc[i, stats[s]]) for s in stats))
                     for i, t in part[thr[o]].items()]
    curve = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    order = {o: i for i, o in enumerate(OUTPUTS)}
    return curve.sort_values(["output", "threshold"], key=lambda s: s.map(order)
                             if s.name == "output" else s).reset_index(drop=True)


def headline_thresholds(run: RunRecord) -> dict[str, float]:
    """The thresholds a run's headline metrics used: its `thresholds/*` metrics (logged by every
    run, tuned on the validation split when `eval.tune_thresholds_on=val`), else its
    `thresholds.*` params (runs logged before those metrics existed)."""
    out = {}
    for o in OUTPUTS:
        if f"thresholds/{o}" in run.metrics:
            out[o] = float(run.metrics[f"thresholds/{o}"])
            continue
        v = param(run, f"thresholds.{o}")
        if v is not None:
            try:
                out[o] = float(v)
            except ValueError:
                pass
    return out


# --------------------------------------------------------------------------- champion metrics


def champion_metrics(run: RunRecord) -> dict[str, Any]:
    """The champion's headline numbers nested by prefix (`{"test": {"s_f1": ...}}`), for
    `dvc metrics show/diff` (a curated set: the report's tables hold the rest)."""
    out: dict[str, dict[str, float]] = {}
    for k in CHAMPION_KEYS:
        v = run.metrics.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            group, _, name = k.partition("/")
            out.setdefault(group, {})[name] = float(v)
    return out


# --------------------------------------------------------------------------- the report


def _data_versions(runs: Sequence[RunRecord]) -> list[str]:
    return sorted({param(r, "data_version") or "unknown" for r in runs})


def _data_kinds(runs: Sequence[RunRecord]) -> list[str]:
    return sorted({param(r, "data.kind") or "unknown" for r in runs})


def render_markdown(inp: ReportInputs, finished: Sequence[RunRecord], labels: dict[str, str],
                    champ: RunRecord, figs: Mapping[str, str], front_ids: set[str],
                    curve: pd.DataFrame | None) -> str:
    """The report's text: decision, Tables 1–6, size/latency, Pareto, threshold trade-off."""
    sel = inp.selection
    presets = [r for r in finished if tables.is_preset(r)]
    variants = [r for r in finished if not tables.is_preset(r) and not tables.is_baseline(r)]
    baselines = [r for r in finished if tables.is_baseline(r)]
    learned = presets + variants
    star = lambda r: " **(champion)**" if r.run_id == champ.run_id else ""
    versions, kinds = _data_versions(finished), _data_kinds(finished)
    md = ["# feq-lab report: choosing the picker", ""]
    md.append(f"Data version (DVC md5 of the subset): `{'`, `'.join(versions)}`"
              + ("  **— runs disagree on the data version: the comparison is not like for like.**"
                 if len(versions) > 1 else ""))
    md.append(f"Data kind: {', '.join(kinds)}"
              + (" — every number below is measured on **synthetic** data and says nothing "
                 "about performance on real seismograms." if "synthetic" in kinds else ""))
    md.append(f"Runs: {len(finished)} FINISHED ({len(presets)} presets, {len(variants)} grid "
              f"variants, {len(baselines)} classical baseline(s)). {inp.source}".rstrip())
    md.append("Every number is read from MLflow; nothing is typed in.")
    skipped = [r for r in inp.runs if r.status != "FINISHED"]
    if skipped:
        md.append("Not FINISHED, left out: " + ", ".join(
            f"{tables.variant_label(r)} ({r.run_id[:8]}, {r.status})" for r in skipped) + ".")
    md += ["", "## Decision", "",
           f"Champion: **{labels[champ.run_id]}** (run `{champ.run_id}`), policy "
           f"`{sel.get('policy', '?')}`, "
           + (f"registered as `{sel['registered']}` (version {sel.get('model_version')})."
              if sel.get("registered") else "not registered (`select.register=false`)."),
           ""]
    md += [f"- {r}" for r in sel.get("reasons", [])]
    for title, group in (("Table 1 — parameters per section, the five presets", presets),
                         ("Table 2 — parameters per section, grid variants", variants)):
        md += ["", f"## {title}", ""]
        md.append(tables.params_table(group, labels) if group else "_No runs in this group._")
    md += ["", ("Counted in the study's (Keras 2.3.1) convention; the last row is PyTorch's "
                "`numel`."), "", "## Model size and latency", ""]
    md.append(tables.run_rows(learned + [b for b in baselines
                                         if "latency/window_ms_p50" in b.metrics],
                              labels, tables.SIZE_COLUMNS, star))
    md += ["", f"![parameters]({figs['params']})", f"![size]({figs['size']})",
           f"![latency]({figs['latency']})"]
    for n, (title, cols, group) in enumerate((
            ("F1 per output, presets", tables.F1_COLUMNS, presets),
            ("F1 per output, grid variants", tables.F1_COLUMNS, variants),
            ("false negatives, presets", tables.FN_COLUMNS, presets),
            ("false negatives, grid variants", tables.FN_COLUMNS, variants))):
        md += ["", f"## Table {n + 3} — {title} (with the classical baseline)", ""]
        md.append(tables.run_rows(group + baselines, labels, cols, star)
                  if group else "_No runs in this group._")
        if n == 1:
            md += ["", f"![F1 per output]({figs['f1']})"]
        if n == 3:
            md += ["", f"![false negatives]({figs['fn']})"]
    md += ["", "## Pareto view", "",
           f"{inp.f1_key} against latency, marker area proportional to model size. "
           f"Non-dominated on ({inp.f1_key} max, latency min, size min): "
           + (", ".join(labels[i] for i in sorted(front_ids, key=lambda i: labels[i])) or "none")
           + ".", "", f"![pareto]({figs['pareto']})", "",
           "## Threshold trade-off of the champion", ""]
    if curve is None:
        md.append("_The champion's run has no threshold grid artifact._")
    else:
        best = curve.loc[curve.groupby("output")["f1"].idxmax()]
        md.append(tables.markdown_table(
            ["Output", "Best threshold", "Precision", "Recall", "F1"],
            [[tables.OUTPUT_NAMES[r.output], f"{r.threshold:g}", f"{r.precision:.3f}",
              f"{r.recall:.3f}", f"{r.f1:.3f}"] for r in best.itertuples()]))
        md += ["", f"![threshold trade-off]({figs['thresholds']})",
               "", f"Full curve: `{THRESHOLD_CURVE}` (`dvc plots show`)."]
    return "\n".join(md) + "\n"


def build_report(inp: ReportInputs, out_dir: str | os.PathLike) -> list[Path]:
    """Write report.md, figures/*.png, champion_metrics.json, threshold_curve.csv into `out_dir`.

    Raises SelectionError when the selection's champion is not among the runs. Returns the
    written paths. All-or-nothing: files appear only after every one of them was rendered.
    """
    out_dir = Path(out_dir)
    finished = tables.order_runs(r for r in inp.runs if r.status == "FINISHED")
    champ_id = (inp.selection.get("champion") or {}).get("run_id")
    champ = next((r for r in finished if r.run_id == champ_id), None)
    if champ is None:
        raise SelectionError(f"the selection's champion run {champ_id!r} is not among the "
                             f"{len(finished)} FINISHED runs read from MLflow")
    labels = tables.unique_labels(finished)
    learned = [r for r in finished if not tables.is_baseline(r)]
    objs = [Objective(inp.f1_key, "max"), Objective("latency/window_ms_p50", "min"),
            Objective("size/model_mb", "min")]
    complete = [r for r in learned if all(_finite(r.metrics.get(o.key)) for o in objs)]
    front_ids = {r.run_id for r in pareto_front(complete, objs)}
    curve = (threshold_curve(inp.threshold_grid, headline_thresholds(champ))
             if inp.threshold_grid is not None else None)

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    try:
        fig_dir = staging / FIGURES_DIR
        fig_dir.mkdir()
        figs = {k: f"{FIGURES_DIR}/{k}.png" for k in
                ("params", "size", "latency", "f1", "fn", "pareto", "thresholds")}
        figures.bar_chart(learned, labels, "params/total_paper", "parameters (Keras count)",
                          "Parameters per model", staging / figs["params"], champ.run_id)
        figures.bar_chart(learned, labels, "size/model_mb", "MB", "Model size",
                          staging / figs["size"], champ.run_id)
        figures.bar_chart(finished, labels, "latency/window_ms_p50", "ms per 60-s window",
                          "Inference latency (p50, batch 1, 1 thread)",
                          staging / figs["latency"], champ.run_id)
        figures.grouped_bars(finished, labels, "f1", "F1", "F1 per output (* = champion)",
                             staging / figs["f1"], champ.run_id)
        figures.grouped_bars(finished, labels, "fn", "false negatives",
                             "False negatives per output (* = champion)",
                             staging / figs["fn"], champ.run_id)
        figures.pareto_scatter(finished, labels, inp.f1_key, front_ids, staging / figs["pareto"],
                               champ.run_id)
        if curve is not None:
            figures.threshold_curves(curve, f"Threshold trade-off of the champion "
                                            f"{labels[champ.run_id]}", staging / figs["thresholds"])
            curve.to_csv(staging / THRESHOLD_CURVE, index=False)
        else:
            pd.DataFrame(columns=CURVE_COLUMNS).to_csv(staging / THRESHOLD_CURVE, index=False)
        (staging / CHAMPION_METRICS).write_text(
            json.dumps(champion_metrics(champ), indent=2, sort_keys=True) + "\n")
        (staging / REPORT_MD).write_text(
            render_markdown(inp, finished, labels, champ, figs, front_ids, curve))
        return _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out_dir: Path) -> list[Path]:
    """Move every staged file into place (one rename each; the figures folder as a whole)."""
    written = []
    final_figs = out_dir / FIGURES_DIR
    if final_figs.exists():
        old = Path(tempfile.mkdtemp(prefix=".old-figures-", dir=out_dir))
        os.replace(final_figs, old / FIGURES_DIR)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging / FIGURES_DIR, final_figs)
    written += sorted(final_figs.glob("*.png"))
    for name in (THRESHOLD_CURVE, CHAMPION_METRICS, REPORT_MD):
        os.replace(staging / name, out_dir / name)
        written.append(out_dir / name)
    return written


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
