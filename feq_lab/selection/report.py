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
from feq_lab.evaluation.significance import mean_sd, paired_bootstrap, paired_missed
from feq_lab.selection import figures, tables
from feq_lab.selection.policy import Objective, pareto_front
from feq_lab.selection.tables import OUTPUTS, param
from feq_lab.tracking import keys
from feq_lab.tracking.records import RunRecord

REPORT_MD = "report.md"
CHAMPION_METRICS = "champion_metrics.json"
THRESHOLD_CURVE = "threshold_curve.csv"
FIGURES_DIR = "figures"
CURVE_COLUMNS = ["output", "threshold", "precision", "recall", "f1"]
CHAMPION_KEYS = tuple(
    [f"{split}/{o}_{s}" for split in ("val", "test") for o in OUTPUTS
     for s in ("f1", "precision", "recall", "fn")]
    + [f"test/{o}_f1_ci_{e}" for o in OUTPUTS for e in ("low", "high")]
    + [f"test_eqt/{o}_f1" for o in OUTPUTS]
    + [keys.split_key("test", "p_residual_mae_s"), keys.split_key("test", "s_residual_mae_s"),
       keys.PARAMS_TOTAL_PAPER,
       keys.PARAMS_TOTAL_TORCH, keys.SIZE_MODEL_MB, keys.LATENCY_EAGER_P50,
       keys.LATENCY_ONNX_P50]
    + [keys.threshold_key(o) for o in OUTPUTS])


@dataclass
class ReportInputs:
    """What a report is made of: runs, the selection decision, the champion's threshold grid."""

    runs: Sequence[RunRecord]
    selection: Mapping[str, Any]
    threshold_grid: pd.DataFrame | None = None
    source: str = ""
    f1_key: str = keys.split_key("test", "s_f1")
    outcomes: Mapping[str, Any] | None = None   # run id -> test `significance.Outcomes`


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
                                keys.threshold_key(o), o]) for o in OUTPUTS}
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
        if keys.threshold_key(o) in run.metrics:
            out[o] = float(run.metrics[keys.threshold_key(o)])
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


def significance_section(champ: RunRecord, others: Sequence[RunRecord],
                         labels: Mapping[str, str], outcomes: Mapping[str, Any]) -> list[str]:
    """The champion against every other candidate on the same test traces: paired bootstrap of
    each F1 difference and McNemar's exact test on missed earthquakes, then one sentence."""
    md = ["", "## Is the champion's lead real? Paired tests on the same test traces", ""]
    if champ.run_id not in outcomes:
        return md + [("_The champion's run has no per-trace test outcomes (test_outcomes.npz): "
                      "no paired test possible._")]
    rows, significant, noise = [], [], []
    for r in others:
        if r.run_id not in outcomes:
            continue
        a, b = outcomes[champ.run_id], outcomes[r.run_id]
        cells, wins = [labels[r.run_id]], []
        for o in OUTPUTS:
            t = paired_bootstrap(a, b, o)
            cells.append(f"{t.difference:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}] "
                         f"p={t.p_value:.2g}" + (" *" if t.significant else ""))
            if t.significant:
                wins.append(f"{tables.OUTPUT_NAMES[o]} F1 {'higher' if t.difference > 0 else 'lower'}")
        m = paired_missed(a, b, "detection")
        cells.append(f"{int(m.detail['only_a_missed'])} vs {int(m.detail['only_b_missed'])} "
                     f"p={m.p_value:.2g}" + (" *" if m.significant else ""))
        if m.significant:
            wins.append("misses " + ("more" if m.difference > 0 else "fewer") + " earthquakes")
        rows.append(cells)
        (significant if wins else noise).append(
            f"{labels[r.run_id]} ({', '.join(wins)})" if wins else labels[r.run_id])
    if not rows:
        return md + ["_No other candidate has per-trace test outcomes._"]
    md.append(f"Each cell: F1({labels[champ.run_id]}) − F1(other), its 95 % paired-bootstrap "
              "interval (traces resampled together) and p-value; last column: earthquakes only "
              "the champion missed vs only the other missed, McNemar's exact test. * = "
              "significant at 5 %.")
    md += ["", tables.markdown_table(
        ["Against", "Δ detection F1", "Δ P F1", "Δ S F1", "Missed detections (McNemar)"], rows)]
    md.append("")
    md.append("**In words:** " + (
        f"against {'; '.join(significant)} the champion's difference is significant; "
        if significant else "no difference to the champion is significant; ")
        + (f"against {', '.join(noise)} the differences are within the noise of "
           f"{len(outcomes[champ.run_id])} test traces (the ranking between them is not "
           "established by this data)." if noise else "every compared difference is beyond "
           "the noise."))
    return md


REPLICATE_KEYS = tuple(f"{split}/{o}_f1" for split in ("val", "test") for o in OUTPUTS)


def replicates_section(learned: Sequence[RunRecord]) -> list[str]:
    """Variants trained with several seeds (e.g. `python -m feq_lab -m seed=0,1,2`): mean ± sd of
    each F1 over the replicates — how much of a difference between variants the seed alone
    makes."""
    groups: dict[str, list[RunRecord]] = {}
    for r in learned:
        groups.setdefault(tables.variant_label(r), []).append(r)
    multi = {k: v for k, v in groups.items()
             if len({tables.param(r, "seed") for r in v}) > 1}
    if not multi:
        return []
    md = ["", "## Seed replicates", "",
          ("Variants trained with more than one seed: mean ± sd (sample) over the replicates, "
           "validation and test F1. A difference between variants smaller than these spreads "
           "is not a property of the variant."), ""]
    rows = []
    for label, runs in sorted(multi.items()):
        values = {k: [r.metrics[k] for r in runs if _finite(r.metrics.get(k))]
                  for k in REPLICATE_KEYS}
        stats = mean_sd({k: v for k, v in values.items() if v})
        seeds = sorted({tables.param(r, "seed") or "?" for r in runs})
        rows.append([label, ", ".join(seeds)] + [
            f"{stats[k][0]:.3f} ± {stats[k][1]:.3f}" if k in stats and
            _finite(stats[k][0]) else tables.MISSING for k in REPLICATE_KEYS])
    md.append(tables.markdown_table(
        ["Variant", "Seeds"] + [f"{k.split('/')[0]} {tables.OUTPUT_NAMES[k.split('/')[1][:-3]]} F1"
                                for k in REPLICATE_KEYS], rows))
    return md


def render_markdown(inp: ReportInputs, finished: Sequence[RunRecord], labels: dict[str, str],
                    champ: RunRecord, figs: Mapping[str, str], front_ids: set[str],
                    curve: pd.DataFrame | None) -> str:
    """The report's text: decision (on validation), tables with a line each on what they show,
    paired tests, size/latency, Pareto, threshold trade-off."""
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
    md.append("")
    md.append(f"Data kind: **{', '.join(kinds)}**"
              + (" — every number below is measured on **synthetic** data and says nothing "
                 "about performance on real seismograms." if "synthetic" in kinds else ""))
    md.append("")
    md.append("How to read it: every decision (thresholds, champion) is made on the "
              "**validation** split (`val/*`); the **test** split (`test/*`) is only reported "
              "here and used for nothing. Intervals in brackets are 95 % bootstrap intervals "
              "over traces.")
    md.append("")
    md.append(f"Runs: {len(finished)} FINISHED ({len(presets)} presets, {len(variants)} grid "
              f"variants, {len(baselines)} classical baseline(s)); a configuration that builds "
              "the same model as a preset is reported once, under the preset's name. "
              f"{inp.source}".rstrip())
    md.append("Every number is read from MLflow; nothing is typed in.")
    skipped = [r for r in inp.runs if r.status != "FINISHED"]
    if skipped:
        md.append("Not FINISHED, left out: " + ", ".join(
            f"{tables.variant_label(r)} ({r.status})" for r in skipped) + ".")
    md += ["", "## Decision (on validation)", "",
           f"Champion: **{labels[champ.run_id]}** (run `{champ.run_id}`), policy "
           f"`{sel.get('policy', '?')}`, "
           + (f"registered as `{sel['registered']}` (version {sel.get('model_version')})."
              if sel.get("registered") else "not registered (`select.register=false`)."),
           ""]
    md += [f"- {r}" for r in sel.get("reasons", [])]
    md += ["", "What the decision read — the validation split at each run's tuned thresholds:",
           "", tables.run_rows(learned, labels, tables.VAL_COLUMNS, star)]
    md += significance_section(champ, [r for r in learned if r.run_id != champ.run_id]
                               + baselines, labels, inp.outcomes or {})
    md += replicates_section(learned)
    for title, line, group in (
            ("Table 1 — parameters per section, the five presets",
             "Where each preset spends its weights (Keras count, as the study tabulates).",
             presets),
            ("Table 2 — parameters per section, grid variants",
             "The same for the grid variants, named by what they change in their preset.",
             variants)):
        md += ["", f"## {title}", "", line, ""]
        md.append(tables.params_table(group, labels) if group else "_No runs in this group._")
    md += ["", ("Counted in the study's (Keras 2.3.1) convention; the last row is PyTorch's "
                "`numel`."), "", "## Model size and latency", "",
           ("What each model costs: size on disk and the median time to process one 60-s "
            "window (batch 1, 1 thread) on onnxruntime — what the monitor runs and what "
            "selection reads — beside eager PyTorch. The runs' tags `feq.latency.*` say on "
            "which CPU, with how many threads and whether the fused kernels were built."), ""]
    md.append(tables.run_rows(learned + [b for b in baselines
                                         if keys.LATENCY_EAGER_P50 in b.metrics],
                              labels, tables.SIZE_COLUMNS, star))
    md += ["", f"![parameters]({figs['params']})", f"![size]({figs['size']})",
           f"![latency]({figs['latency']})"]
    lines = {
        "f1": ("Test-split F1 per output at the thresholds each run chose on validation, with "
               "95 % intervals, beside the same model at EQT's fixed tester thresholds "
               "(detection 0.2, P 0.1, S 0.1)."),
        "fn": ("Missed earthquakes (detection) and missed picks (P, S) on the test split, "
               "tuned thresholds with 95 % intervals, then at EQT's tester thresholds."),
    }
    for n, (title, kind, cols, group) in enumerate((
            ("F1 per output, presets", "f1", tables.F1_COLUMNS, presets),
            ("F1 per output, grid variants", "f1", tables.F1_COLUMNS, variants),
            ("false negatives, presets", "fn", tables.FN_COLUMNS, presets),
            ("false negatives, grid variants", "fn", tables.FN_COLUMNS, variants))):
        md += ["", f"## Table {n + 3} — {title} (with the classical baseline)", "",
               lines[kind], ""]
        md.append(tables.run_rows(group + baselines, labels, cols, star)
                  if group else "_No runs in this group._")
        if n == 1:
            md += ["", "Precision and recall behind these F1s (test, tuned thresholds):", "",
                   tables.run_rows(learned + baselines, labels, tables.PR_COLUMNS, star)]
            md += ["", f"![F1 per output]({figs['f1']})"]
        if n == 3:
            md += ["", f"![false negatives]({figs['fn']})"]
    md += ["", "## Pareto view", "",
           f"{inp.f1_key} (test, reported) against onnxruntime latency, error bars = 95 % "
           f"bootstrap interval, marker area proportional to model size; numbers refer to the "
           f"legend. Non-dominated on ({inp.f1_key} max, latency min, size min): "
           + (", ".join(labels[i] for i in sorted(front_ids, key=lambda i: labels[i])) or "none")
           + ". This view illustrates; it is not what decided.", "",
           f"![pareto]({figs['pareto']})", "",
           "## Threshold trade-off of the champion", ""]
    if curve is None:
        md.append("_The champion's run has no threshold grid artifact._")
    else:
        used = headline_thresholds(champ)
        md.append("The champion's test-split precision, recall and F1 as each output's threshold "
                  "moves (the others held at the chosen values). The thresholds were chosen on "
                  "validation; the test curve shows what that choice costs or gains, it did not "
                  "choose them.")
        md.append("")
        rows = []
        for o in OUTPUTS:
            part = curve[curve["output"] == o]
            if part.empty or o not in used:
                continue
            at = part.iloc[(part["threshold"] - used[o]).abs().argmin()]
            best = part.loc[part["f1"].idxmax()]
            rows.append([tables.OUTPUT_NAMES[o], f"{used[o]:g}", f"{at.precision:.3f}",
                         f"{at.recall:.3f}", f"{at.f1:.3f}",
                         f"{best.threshold:g} ({best.f1:.3f})"])
        md.append(tables.markdown_table(
            ["Output", "Threshold (chosen on val)", "Precision", "Recall", "F1",
             "Test-best threshold (F1), for reference only"], rows))
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
    objs = [Objective(inp.f1_key, "max"), Objective(figures.LATENCY_KEY, "min"),
            Objective(keys.SIZE_MODEL_MB, "min")]
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
        figures.bar_chart(learned, labels, keys.PARAMS_TOTAL_PAPER, "parameters (Keras count)",
                          "Parameters per model", staging / figs["params"], champ.run_id)
        figures.bar_chart(learned, labels, keys.SIZE_MODEL_MB, "MB", "Model size",
                          staging / figs["size"], champ.run_id)
        figures.bar_chart(finished, labels, figures.LATENCY_KEY, "ms per 60-s window",
                          "Inference latency, onnxruntime (p50, batch 1, 1 thread)",
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
