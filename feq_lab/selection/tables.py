"""The study's tables rebuilt from run records: pure data in, Markdown text out.

Why separate from the figures: tables are plain strings, cheap to test exactly; every number is
read from a `RunRecord` (i.e. from MLflow), none is typed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

from feq_lab.errors import ConfigError
from feq_lab.models.spec import GRID_KNOBS, load_preset
from feq_lab.tracking import keys
from feq_lab.tracking.records import RunRecord

PRESET_ORDER = ("eqt", "leq", "feq1", "feq2", "feq3")
GRID_PARAMS = GRID_KNOBS  # declared once, in conf/knobs.yaml
BASELINE_MODELS = ("stalta",)
BASELINE_NAMES = {"stalta": "STA/LTA (obspy)"}
OUTPUTS = ("detection", "p", "s")
OUTPUT_NAMES = {"detection": "Detection", "p": "P", "s": "S"}
SECTIONS = (("encoder", "Encoder"), ("bottleneck", "ResNet / bottleneck"),
            ("rnn_transformer", "LSTM (GRU) & Transformer"), ("decoder", "Decoder"))
UNSET = {"", "none", "null", "nan"}
MISSING = "—"


def param(run: RunRecord, key: str) -> str | None:
    """A param by dotted key, whatever separator the flattening used ('.', '/', '_').

    `model` falls back to `model.name` (the preset's own name) when logged as a nested config.
    """
    keys = [key, key.replace(".", "/"), key.replace(".", "_")]
    if key == "model":
        keys += ["model.name", "model/name", "model_name"]
    for k in keys:
        v = run.params.get(k)
        if v is not None and str(v).strip().lower() not in UNSET:
            return str(v)
    return None


def is_baseline(run: RunRecord) -> bool:
    """A classical (non-learned) reference run, e.g. model=stalta."""
    return (param(run, "model") or "").lower() in BASELINE_MODELS


@cache
def preset_knobs(model: str) -> dict[str, str]:
    """The grid knobs' own values in the preset `conf/model/<model>.yaml` as composed (FEQ1-3
    inherit LEQ's); empty when there is no such learned preset (e.g. the baseline)."""
    try:
        spec = load_preset(model)
    except ConfigError:
        return {}
    return {k: str(spec[k]) for k in GRID_PARAMS if spec.get(k) is not None}


def overridden_knobs(run: RunRecord) -> dict[str, str]:
    """Grid knobs whose logged value differs from the preset's own value.

    The reference is the preset file (`conf/model/<model>.yaml`): the main job logs resolved
    knobs (with overrides applied) both at the top level and under `model.*`. Without a preset
    file, a knob counts as overridden when it differs from `model.<knob>` (or is set at all).
    """
    model = (param(run, "model") or "").lower()
    ref = preset_knobs(model) if model else {}
    out = {}
    for k in GRID_PARAMS:
        value = param(run, k)
        base = ref.get(k) if ref else param(run, f"model.{k}")
        if value is not None and value != base:
            out[k] = value
    return out


def is_preset(run: RunRecord) -> bool:
    """A learned run with the preset's own architecture: one of the five published models."""
    return not is_baseline(run) and not overridden_knobs(run)


def variant_label(run: RunRecord) -> str:
    """Model preset plus the knobs it overrides, e.g. 'FEQ3 rnn=gru cnn_blocks=4'."""
    model = param(run, "model")
    if model is None or model.startswith("{"):
        return run.label
    if model.lower() in BASELINE_NAMES:
        return BASELINE_NAMES[model.lower()]
    extra = [f"{k}={v}" for k, v in overridden_knobs(run).items()]
    return " ".join([model.upper() if model in PRESET_ORDER else model] + extra)


def _identity(run: RunRecord) -> tuple:
    """What makes two runs the same result: training identity, data, and the thresholds used."""
    chash = run.tags.get("feq.config_hash")
    if not chash:
        return ("run", run.run_id)
    th = tuple(round(run.metrics.get(keys.threshold_key(o), float("nan")), 9) for o in OUTPUTS)
    return (chash, param(run, "data_version"), th)


def unique_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """One run per identical result: runs of the same effective configuration (e.g. the FEQ3
    preset and the grid point `rnn=bilstm cnn_blocks=2`, which builds the same model), on the same
    data, scored at the same thresholds, are one row; FINISHED before others, then the run whose
    logged name is the preset's own (no knob override asked), then the oldest listed."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(_identity(r), []).append(r)
    keep = set()
    for members in groups.values():
        ranked = sorted(enumerate(members), key=lambda im: (
            im[1].status != "FINISHED", "=" in (im[1].name or "").split(" @ ")[0], im[0]))
        keep.add(ranked[0][1].run_id)
    return [r for r in runs if r.run_id in keep]


def _distinguish(run: RunRecord, others: Sequence[RunRecord]) -> str:
    """What tells `run` apart from same-label runs: thresholds, else the seed (never a hash)."""
    parts = []
    for o, short in (("detection", "det"), ("p", "P"), ("s", "S")):
        values = {x.metrics.get(keys.threshold_key(o)) for x in others}
        if len(values) > 1 and keys.threshold_key(o) in run.metrics:
            parts.append(f"{short}={run.metrics[f'thresholds/{o}']:g}")
    if parts:
        return "@ " + " ".join(parts)
    seeds = {param(x, "seed") for x in others}
    if len(seeds) > 1 and param(run, "seed") is not None:
        return f"seed={param(run, 'seed')}"
    return ""


def unique_labels(runs: Sequence[RunRecord]) -> dict[str, str]:
    """run_id -> label; runs sharing a label are told apart by their thresholds or seed, else
    numbered in order (#2, #3): a reader never has to decode a hash."""
    labels = {r.run_id: variant_label(r) for r in runs}
    by_label: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_label.setdefault(labels[r.run_id], []).append(r)
    out = {}
    for label, members in by_label.items():
        for i, r in enumerate(members):
            if len(members) == 1:
                out[r.run_id] = label
                continue
            extra = _distinguish(r, members)
            out[r.run_id] = f"{label} {extra}" if extra else f"{label} #{i + 1}"
    return out


def order_runs(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """Presets in the study's order, then grid variants, then baselines; stable by label."""
    def key(r: RunRecord):
        model = (param(r, "model") or "").lower()
        group = 2 if is_baseline(r) else (0 if is_preset(r) else 1)
        pos = PRESET_ORDER.index(model) if model in PRESET_ORDER else len(PRESET_ORDER)
        return (group, pos, variant_label(r), r.run_id)
    return sorted(runs, key=key)


def fmt(v: Any, kind: str = "auto") -> str:
    """Numbers as the study prints them: counts with thousands separators, ratios 3 decimals."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    if kind == "int" or (kind == "auto" and float(v).is_integer() and abs(v) >= 10):
        return f"{round(v):,}"
    if kind == "f1":
        return f"{v:.3f}"
    if kind == "mb":
        return f"{v:.3f}"
    if kind == "ms":
        return f"{v:.2f}"
    return f"{v:.4g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; first column left-aligned, the rest right."""
    align = align or ("l" + "r" * (len(header) - 1))
    seps = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(seps) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def params_table(runs: Sequence[RunRecord], labels: dict[str, str]) -> str:
    """Tables 1/2: parameters per section (Keras 'paper' convention), models as columns."""
    header = ["Section"] + [labels[r.run_id] for r in runs]
    rows = [[name] + [fmt(r.metrics.get(f"params/{key}_paper"), "int") for r in runs]
            for key, name in SECTIONS]
    rows.append(["**Total**"] + [fmt(r.metrics.get(keys.PARAMS_TOTAL_PAPER), "int") for r in runs])
    rows.append(["Total (PyTorch numel)"]
                + [fmt(r.metrics.get(keys.PARAMS_TOTAL_TORCH), "int") for r in runs])
    return markdown_table(header, rows)


def fmt_cell(run: RunRecord, key: str, kind: str) -> str:
    """A metric, with its 95 % bootstrap interval when the run logged one ("0.981 [0.97–0.99]");
    kind `thr` prints the run's three thresholds (`key` is ignored)."""
    if kind == "thr":
        values = [run.metrics.get(keys.threshold_key(o)) for o in OUTPUTS]
        return " / ".join(MISSING if v is None else f"{v:g}" for v in values)
    text = fmt(run.metrics.get(key), kind)
    low, high = run.metrics.get(f"{key}_ci_low"), run.metrics.get(f"{key}_ci_high")
    if text != MISSING and low is not None and high is not None and math.isfinite(low) \
            and math.isfinite(high):
        text += f" [{fmt(low, kind)}–{fmt(high, kind)}]"
    return text


def run_rows(runs: Sequence[RunRecord], labels: dict[str, str],
             columns: Sequence[tuple[str, str, str]],
             mark: Callable[[RunRecord], str] | None = None) -> str:
    """One row per run; `columns` = (header, metric key, format kind)."""
    header = ["Model"] + [c[0] for c in columns]
    rows = []
    for r in runs:
        name = labels[r.run_id] + (mark(r) if mark else "")
        rows.append([name] + [fmt_cell(r, key, kind) for _, key, kind in columns])
    return markdown_table(header, rows)


SIZE_COLUMNS = [("Params (paper)", keys.PARAMS_TOTAL_PAPER, "int"),
                ("Params (torch)", keys.PARAMS_TOTAL_TORCH, "int"),
                ("Size (MB)", keys.SIZE_MODEL_MB, "mb"),
                ("Latency p50, onnxruntime (ms / 60-s window)", keys.LATENCY_ONNX_P50, "ms"),
                ("Latency p50, eager PyTorch (ms)", keys.LATENCY_EAGER_P50, "ms")]
# Test split at the thresholds chosen on validation (with 95 % bootstrap intervals), then at
# EQT's fixed tester thresholds 0.2 / 0.1 / 0.1 (`test_eqt/*`).
F1_COLUMNS = ([(f"{OUTPUT_NAMES[o]} F1 [95 % CI]", f"test/{o}_f1", "f1") for o in OUTPUTS]
              + [("Thresholds det / P / S (tuned on val)", "", "thr")]
              + [(f"{OUTPUT_NAMES[o]} F1 @ EQT 0.2/0.1/0.1", f"test_eqt/{o}_f1", "f1")
                 for o in OUTPUTS]
              + [("P MAE (s)", keys.split_key("test", "p_residual_mae_s"), "f1"),
                 ("S MAE (s)", keys.split_key("test", "s_residual_mae_s"), "f1")])
PR_COLUMNS = [(f"{OUTPUT_NAMES[o]} {s}", f"test/{o}_{s}", "f1")
              for o in OUTPUTS for s in ("precision", "recall")]
FN_COLUMNS = ([(f"{OUTPUT_NAMES[o]} FN [95 % CI]", f"test/{o}_fn", "int") for o in OUTPUTS]
              + [(f"{OUTPUT_NAMES[o]} FN @ EQT 0.2/0.1/0.1", f"test_eqt/{o}_fn", "int")
                 for o in OUTPUTS])
# What the decision read: the validation split (same keys, same thresholds).
VAL_COLUMNS = ([(f"val {OUTPUT_NAMES[o]} F1 [95 % CI]", f"val/{o}_f1", "f1") for o in OUTPUTS]
               + [(f"val {OUTPUT_NAMES[o]} FN [95 % CI]", f"val/{o}_fn", "int")
                  for o in ("detection",)])
