"""After training: test-set probabilities (stored once), EQT-protocol metrics at the headline
thresholds and over the threshold grid, evaluation figures, and the size/parameter/latency
measurements — all as plain values and files; `run` decides what gets logged."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from feq_lab.data.labels import normalize
from feq_lab.errors import ConfigError
from feq_lab.evaluation.decode import DEFAULT_PROTOCOL
from feq_lab.evaluation.early import EarlySettings, Trace, predict_early, score_early
from feq_lab.evaluation.metrics import evaluate, score
from feq_lab.evaluation.picks import THRESHOLD_KEYS, TracePicks, extract_picks
from feq_lab.evaluation.probabilities import (
    Probabilities,
    ProbabilityCollector,
    as_stored,
    save_probabilities,
)
from feq_lab.evaluation.significance import (
    Outcomes,
    interval_metrics,
    outcomes_from_picks,
    save_outcomes,
)
from feq_lab.evaluation.thresholds import threshold_grid
from feq_lab.models.compile import compile_for_inference
from feq_lab.paths import atomic_path
from feq_lab.tracking import keys
from feq_lab.tracking.records import RunResult

log = logging.getLogger(__name__)

PROBABILITIES_FILE = "test_probabilities.npz"
VAL_PROBABILITIES_FILE = "val_probabilities.npz"
EARLY_PROBABILITIES_FILE = "{split}_early_probabilities.npz"  # evaluation/early.py's windows
OUTCOMES_FILE = "{split}_outcomes.npz"
THRESHOLD_GRID_FILE = "threshold_grid.csv"
VAL_THRESHOLD_GRID_FILE = "val_threshold_grid.csv"
FIXED_STATS = ("_f1", "_precision", "_recall", "_fn")
PLOTS_DIR = "plots"
# The keys every learned run logs (declared in tracking/keys.py); failed jobs return them as NaN.
# `val/*` decides (thresholds, selection, searches), `test/*` is reported.
SPLIT_KEYS = keys.SPLIT_KEYS
HEADLINE_KEYS = keys.HEADLINE_KEYS


# What a job returns: plain values that tracking's one recorder logs.
Assessment = RunResult


def eval_settings(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring keyword arguments of `metrics.evaluate` / `threshold_grid` from `cfg.eval`."""
    return {
        "sampling_rate": float(eval_cfg.get("sampling_rate", 100)),
        "tolerance_s": float(eval_cfg.get("tolerance_s", 0.5)),
        "association_margin_s": float(eval_cfg.get("association_margin_s", 0.5)),
        "protocol": str(eval_cfg.get("protocol", DEFAULT_PROTOCOL)),
    }


@torch.no_grad()
def predict_splits(model: torch.nn.Module, loaders: Sequence[Any],
                   device: torch.device | str = "cpu") -> list[Probabilities]:
    """Probabilities of every trace of each loader, in the loader's (CSV) order. The model is
    compiled for eager inference once for all loaders (the same function, faster)."""
    frozen = compile_for_inference(model.to(device).eval(), target="eager")
    results = []
    for loader in loaders:
        collector = ProbabilityCollector()
        for batch in loader:
            det, p, s = frozen(batch["x"].to(device))
            collector.add(batch, det, p, s)
        results.append(collector.result())
    return results


@torch.no_grad()
def predict_early_splits(model: torch.nn.Module, splits: Mapping[str, Any],
                         eval_cfg: Mapping[str, Any],
                         device: torch.device | str = "cpu") -> dict[str, Probabilities]:
    """The early-pick windows (`evaluation/early.py`) of each split, predicted once.

    `splits` maps a split name to its `WaveformDataset` (raw waveforms + truth). Empty when
    `eval.early.enabled` is false. Cost: (earthquakes x seconds + noise) windows per split,
    capped by `eval.early.max_earthquakes` / `max_noise` (quick data: ~1,000 windows in all).
    """
    settings = EarlySettings.from_mapping(eval_cfg.get("early"))
    if not settings.enabled:
        return {}
    frozen = compile_for_inference(model.to(device).eval(), target="eager")

    def predict(x: np.ndarray) -> list[np.ndarray]:
        out = frozen(torch.from_numpy(normalize(x)).to(device))
        return [o.float().cpu().numpy() for o in out]

    rate = float(eval_cfg.get("sampling_rate", 100))
    result = {}
    for name, ds in splits.items():
        traces = [Trace(ds.trace_name[i], ds.data.get_waveform_at(i).T, bool(ds.is_eq[i]),
                        float(ds.p[i]), float(ds.s[i])) for i in _early_positions(ds, settings)]
        probs = predict_early(predict, traces, settings, sampling_rate=rate)
        if probs is not None:
            result[name] = probs
    return result


def _early_positions(ds: Any, settings: EarlySettings) -> list[int]:
    """The positions of the first `max_earthquakes` earthquakes and `max_noise` noise traces:
    only those waveforms are read."""
    eq = np.flatnonzero(ds.is_eq)[: settings.max_earthquakes]
    noise = np.flatnonzero(~ds.is_eq)[: settings.max_noise]
    return sorted(int(i) for i in np.concatenate([eq, noise]))


def prefixed(metrics: Mapping[str, float], prefix: str = "test/") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


def write_table(table: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return path


def resolve_thresholds(thresholds: Mapping[str, Any], eval_cfg: Mapping[str, Any],
                       val: Probabilities | None) -> tuple[dict[str, float], Any]:
    """The thresholds the headline metrics use, and the validation grid they were chosen on.

    A `thresholds.<output>` set to a number is used as given (a Hydra grid over
    `thresholds.detection=0.2,0.3,0.5` fixes one knob per job); a null one is tuned on the
    validation split (`eval.tune_thresholds_on=val`), with the fixed ones held at their values.
    Never on test: test is reported, never used to decide.
    """
    from feq_lab.evaluation.thresholds import check_grid, tune_thresholds

    fixed = {k: float(v) for k, v in thresholds.items() if v is not None}
    open_keys = [k for k in THRESHOLD_KEYS if k not in fixed]
    if not open_keys:
        return fixed, None
    if eval_cfg.get("tune_thresholds_on") != "val" or val is None:
        raise ConfigError(f"thresholds.{open_keys[0]}", "null (tune it) needs "
                          "eval.tune_thresholds_on=val and a validation split; or set a value")
    grid = check_grid(eval_cfg["threshold_grid"])
    grid.update({k: [v] for k, v in fixed.items()})
    table = threshold_grid(val, grid, **eval_settings(eval_cfg))
    tuned = tune_thresholds(table)
    log.info("thresholds tuned on the validation split (%d traces): detection %.2f, P %.2f, "
             "S %.2f", len(val), tuned["detection"], tuned["p"], tuned["s"])
    return tuned, table


def score_split(probs: Probabilities, thresholds: Mapping[str, float], eval_cfg: Mapping[str, Any],
                prefix: str) -> tuple[dict[str, float], list[TracePicks], Outcomes]:
    """`<prefix><metric>` at `thresholds` plus 95 % bootstrap intervals of the F1s and FNs."""
    kw = eval_settings(eval_cfg)
    picks = extract_picks(probs.det, probs.p, probs.s, thresholds,
                          sampling_rate=kw["sampling_rate"],
                          association_margin_s=kw["association_margin_s"],
                          protocol=kw["protocol"])
    scores = score(picks, probs.truth, kw["sampling_rate"], kw["tolerance_s"])
    outcomes = outcomes_from_picks(picks, probs.truth, kw["sampling_rate"], kw["tolerance_s"],
                                   probs.trace_names)
    boot = dict(eval_cfg.get("bootstrap") or {})
    metrics = prefixed(scores, prefix)
    metrics.update(interval_metrics(outcomes, prefix, int(boot.get("n", 1000)),
                                    float(boot.get("level", 0.95)), int(boot.get("seed", 0))))
    return metrics, picks, outcomes


def fixed_threshold_metrics(probs: Probabilities, eval_cfg: Mapping[str, Any],
                            prefix: str) -> dict[str, float]:
    """Scores at EQT's tester thresholds (`eval.fixed_thresholds`, 0.2 / 0.1 / 0.1), beside the
    tuned ones, so a reader can compare with the published protocol."""
    fixed = eval_cfg.get("fixed_thresholds")
    if not fixed:
        return {}
    scores = evaluate(probs, {k: float(v) for k, v in fixed.items()}, **eval_settings(eval_cfg))
    return prefixed({k: v for k, v in scores.items() if k.endswith(FIXED_STATS)}, prefix)


def evaluate_splits(
    val: Probabilities | None,
    test: Probabilities,
    thresholds: Mapping[str, Any],
    eval_cfg: Mapping[str, Any],
    out_dir: Path,
    waveforms: Any | None = None,
    early: Mapping[str, Probabilities] | None = None,
) -> Assessment:
    """Store both splits' probabilities, choose thresholds on val, score val and test alike.

    Logged: `val/*` and `test/*` with the same keys (+ `_ci_low`/`_ci_high`), `thresholds/*`,
    `val_eqt/*` and `test_eqt/*` at EQT's fixed thresholds; with `early` (split -> the
    early-pick windows' probabilities, stored too) `<split>/early_p_recall_<t>s` and
    `<split>/early_p_precision_<t>s` at the same thresholds. Scores are computed from exactly what
    is stored (float16), so a re-evaluation from the stored files gives the same numbers.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Assessment()
    splits = {"test": as_stored(test)}
    result.add("", save_probabilities(out_dir / PROBABILITIES_FILE, test))
    if val is not None:
        splits["val"] = as_stored(val)
        result.add("", save_probabilities(out_dir / VAL_PROBABILITIES_FILE, val))
    chosen, val_table = resolve_thresholds(thresholds, eval_cfg, splits.get("val"))
    result.metrics.update({keys.threshold_key(k): float(v) for k, v in chosen.items()})
    if val_table is not None:
        result.add("", write_table(val_table, out_dir / VAL_THRESHOLD_GRID_FILE))
    scored = {}
    for name, probs in splits.items():
        metrics, picks, outcomes = score_split(probs, chosen, eval_cfg, f"{name}/")
        result.metrics.update(metrics)
        result.metrics.update(fixed_threshold_metrics(probs, eval_cfg, f"{name}_eqt/"))
        result.add("", save_outcomes(out_dir / OUTCOMES_FILE.format(split=name), outcomes))
        scored[name] = (metrics, picks)
    kw = eval_settings(eval_cfg)
    for name, probs in (early or {}).items():
        result.add("", save_probabilities(out_dir / EARLY_PROBABILITIES_FILE.format(split=name),
                                          probs))
        result.metrics.update(prefixed(score_early(as_stored(probs), chosen, **kw), f"{name}/"))
    table = None
    grid = eval_cfg.get("threshold_grid")
    if grid:
        table = threshold_grid(splits["test"], grid, **kw)
        result.add("", write_table(table, out_dir / THRESHOLD_GRID_FILE))
    test_metrics, test_picks = scored["test"]
    scores = {k.removeprefix("test/"): v for k, v in test_metrics.items()}
    for path in draw_figures(out_dir / PLOTS_DIR, splits["test"], test_picks, scores, table,
                             chosen, kw, int(eval_cfg.get("n_plot_traces", 4)), waveforms):
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


def measure(model: torch.nn.Module, measure_cfg: Mapping[str, Any] | None,
            onnx_path: Path | None = None) -> dict[str, float]:
    """Parameters per section (both conventions), size and batch-1/1-thread latency, eager
    PyTorch and onnxruntime (the monitor's backend: what selection reads)."""
    from feq_lab.models.params import count_parameters
    from feq_lab.profiling.size import model_size_mb

    cfg = dict(measure_cfg or {})
    model = model.cpu().eval()
    out: dict[str, float] = {}
    for convention in ("paper", "torch"):
        counts = count_parameters(model, convention=convention)
        for section, value in counts.items():
            out[f"params/{section}_{convention}"] = float(value)
    out[keys.SIZE_MODEL_MB] = float(model_size_mb(model))
    out[keys.LATENCY_EAGER_P50] = out[keys.LATENCY_ONNX_P50] = math.nan
    if not cfg.get("latency", True):
        return out
    timing = _timing(cfg, int(cfg.get("latency_repeats", 20)))
    out.update(_timed(model, "torch", timing))
    try:
        out.update(_timed(model, "onnxruntime", timing, onnx_path))
    except Exception as exc:  # noqa: BLE001 - no onnxruntime / failed export: NaN, said once
        log.warning("onnxruntime latency not measured: %s: %s", type(exc).__name__, exc)
    return out


def replays_wanted(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """`eval.replays` when the job plays them (`measure.replays` and `measure.latency` on, at
    least one scenario), else None. Why both flags: replays and latency measure the model as it
    ships; the DVC training stages turn latency off and leave both to the `evaluate` stage."""
    measure_cfg = dict(cfg.get("measure") or {})
    replays = dict((cfg.get("eval") or {}).get("replays") or {})
    wanted = measure_cfg.get("latency", True) and measure_cfg.get("replays", False)
    return replays if wanted and int(replays.get("scenarios") or 0) > 0 else None


def measure_replays(result: Assessment, cfg: Mapping[str, Any], checkpoint: Path,
                    onnx_path: Path | None, subset_dir: Path, run_dir: Path) -> None:
    """Add the study's replays (`eval.replays`, `streaming.replay.study_replay_metrics`) of a
    trained model at its tuned thresholds to `result`: the `val/stream_*` metrics and the
    summary artifact, when `replays_wanted`. Why in the job: a grid or an Optuna search then has
    `val/stream_*` per run for the selection's constraint or as an objective."""
    from feq_lab.streaming.replay import study_replay_metrics, tuned_thresholds

    replays = replays_wanted(cfg)
    thresholds = tuned_thresholds(result.metrics)
    if replays is None or thresholds is None:
        return
    log.info("replaying %d scenarios of the %s split through the monitor", int(replays["scenarios"]),
             replays.get("split", "val"))
    metrics, summary = study_replay_metrics(checkpoint, onnx_path, thresholds, replays,
                                            subset_dir, run_dir / "replays")
    result.metrics.update(metrics)
    result.add("replays", summary)


# The p50/p90 keys each latency backend logs.
LATENCY_KEYS = {"torch": (keys.LATENCY_EAGER_P50, keys.LATENCY_EAGER_P90),
                "onnxruntime": (keys.LATENCY_ONNX_P50, keys.LATENCY_ONNX_P90)}


def _timing(cfg: Mapping[str, Any], repeats: int) -> dict[str, int]:
    """`measure_latency`'s keyword arguments from `cfg.measure`: batch 1, its threads/warmup."""
    return {"batch": 1, "threads": int(cfg.get("latency_threads", 1)),
            "warmup": int(cfg.get("latency_warmup", 5)), "repeats": repeats}


def _timed(model: torch.nn.Module, backend: str, timing: Mapping[str, int],
           onnx_path: Path | None = None) -> dict[str, float]:
    """One timing of `model` on `backend`: its p50/p90 keys (ms per window)."""
    from feq_lab.profiling.latency import measure_latency

    result = measure_latency(model, backend=backend, onnx_path=onnx_path, **timing)
    p50, p90 = LATENCY_KEYS[backend]
    return {p50: float(result.p50_ms), p90: float(result.p90_ms)}


def measure_latencies(models: Mapping[str, tuple[torch.nn.Module, Path | None]],
                      measure_cfg: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """Batch-1 latency (eager and onnxruntime) of several models, measured round-robin in one
    process: each pass times every model in turn, and a figure is the median over passes.

    Why: latency is a selection key, so the variants must be timed under the same conditions.
    The DVC training stages may run two at a time; timing each inside its own stage would
    measure the neighbour's load. The `evaluate` stage runs alone and calls this once.
    """
    cfg = dict(measure_cfg or {})
    passes = max(int(cfg.get("latency_passes", 4)), 1)
    timing = _timing(cfg, max(int(cfg.get("latency_repeats", 20)) // passes, 3))
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    for _ in range(passes):
        for name, (model, onnx_path) in models.items():
            model = model.cpu().eval()
            timed = _timed(model, "torch", timing)
            if onnx_path is not None and Path(onnx_path).is_file():
                timed.update(_timed(model, "onnxruntime", timing, onnx_path))
            for key, value in timed.items():
                samples[name].setdefault(key, []).append(value)
    return {name: {key: float(np.median(values)) for key, values in got.items()}
            for name, got in samples.items()}


def latency_context(measure_cfg: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags saying what a latency figure depends on: fused C kernels built or not, the thread
    count, the CPU model (a figure from another machine or build is another figure)."""
    from feq_lab.models import kernels
    from feq_lab.profiling.latency import device_name

    built = kernels.library() is not None
    return {"feq.latency.kernels": "built" if built else "torch ops (not built)",
            "feq.latency.threads": str(int(dict(measure_cfg or {}).get("latency_threads", 1))),
            "feq.latency.device": device_name()}
