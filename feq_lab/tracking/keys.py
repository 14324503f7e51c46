"""The names of every metric a run logs: one place, so the job, the reports, the selection
policies and the Optuna objectives can never disagree on a spelling.

Keys are MLflow metric names, `<group>/<name>`. `val/*` decides (thresholds, selection,
searches); `test/*` is reported only. Configs naming a metric (`conf/select/*.yaml`,
`hydra.sweeper.objectives`) are checked against `is_known` at start-up (`check_metric_key`), so a
typo is a ConfigError before any run, not a silently missing column after a sweep.
"""

from __future__ import annotations

import difflib
import re

from feq_lab.errors import ConfigError

OUTPUTS = ("detection", "p", "s")
SPLITS = ("val", "test")
PICKS = ("p", "s")

# -- training (per epoch: step = epoch) and its end --------------------------------------------
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"                     # Lightning's monitor: early stopping, checkpoints
LR = "lr"
TRAIN_EPOCHS = "train/epochs"
VAL_BEST_LOSS = "val/best_loss"
LOSS_PARTS = tuple(f"{stage}/loss_{o}" for stage in ("train", "val") for o in OUTPUTS)  # per head

# -- measurements of the trained model ----------------------------------------------------------
SIZE_MODEL_MB = "size/model_mb"
LATENCY_EAGER_P50 = "latency/window_ms_p50"      # eager PyTorch, ms per 60-s window
LATENCY_EAGER_P90 = "latency/window_ms_p90"
LATENCY_ONNX_P50 = "latency/onnx_window_ms_p50"  # onnxruntime: what the monitor runs
LATENCY_ONNX_P90 = "latency/onnx_window_ms_p90"
PARAMS_TOTAL_PAPER = "params/total_paper"        # Keras-convention count (the paper's tables)
PARAMS_TOTAL_TORCH = "params/total_torch"

# -- scores per split: `<split>/<output>_<stat>` -------------------------------------------------
COUNT_STATS = ("fn", "fp", "tp")           # detection also logs `tn`
SCORE_STATS = ("f1", "precision", "recall")
RESIDUAL_STATS = ("residual_mae_s", "residual_mean_s", "residual_std_s")   # P and S only
INTERVAL_STATS = ("f1", "fn")              # 95 % bootstrap intervals: `_ci_low`, `_ci_high`
FIXED_PREFIX = "_eqt"                      # `<split>_eqt/*`: at EQT's tester thresholds
# What every learned job reports per split (failed jobs return these as NaN).
SPLIT_KEYS = (
    "detection_f1", "p_f1", "s_f1",
    "detection_precision", "detection_recall",
    "p_precision", "p_recall", "s_precision", "s_recall",
    "detection_fn", "p_fn", "s_fn",
    "p_residual_mae_s", "s_residual_mae_s",
)
PARAM_SECTIONS = ("encoder", "bottleneck", "rnn_transformer", "decoder")


def split_key(split: str, name: str) -> str:
    """`val/s_f1` from ("val", "s_f1")."""
    return f"{split}/{name}"


def threshold_key(output: str) -> str:
    """`thresholds/<output>`: the threshold a run's headline scores used."""
    return f"thresholds/{output}"


def params_key(section: str, convention: str = "paper") -> str:
    """`params/<section>_<paper|torch>`."""
    return f"params/{section}_{convention}"


# The keys every learned run logs; failed jobs return them as NaN.
HEADLINE_KEYS = (
    *(split_key("val", k) for k in SPLIT_KEYS), *(split_key("test", k) for k in SPLIT_KEYS),
    PARAMS_TOTAL_PAPER, PARAMS_TOTAL_TORCH,
    *(params_key(s) for s in PARAM_SECTIONS),
    SIZE_MODEL_MB, LATENCY_EAGER_P50, LATENCY_ONNX_P50,
)
# The headline of a finished run's log line.
SUMMARY_KEYS = ("test/detection_f1", "test/p_f1", "test/s_f1", LATENCY_EAGER_P50)


def _split_names() -> set[str]:
    names = set()
    for o in OUTPUTS:
        names.update(f"{o}_{s}" for s in (*SCORE_STATS, *COUNT_STATS))
        names.update(f"{o}_{s}_ci_{e}" for s in INTERVAL_STATS for e in ("low", "high"))
    names.add("detection_tn")
    names.update(f"{o}_{s}" for o in PICKS for s in RESIDUAL_STATS)
    return names


def _known() -> frozenset[str]:
    keys = {TRAIN_LOSS, VAL_LOSS, LR, TRAIN_EPOCHS, VAL_BEST_LOSS, *LOSS_PARTS, SIZE_MODEL_MB,
            LATENCY_EAGER_P50, LATENCY_EAGER_P90, LATENCY_ONNX_P50, LATENCY_ONNX_P90}
    names = _split_names()
    for split in SPLITS:
        keys.update(split_key(split, n) for n in names)
        keys.update(split_key(split + FIXED_PREFIX, f"{o}_{s}") for o in OUTPUTS
                    for s in (*SCORE_STATS, "fn"))
    keys.update(threshold_key(o) for o in OUTPUTS)
    return frozenset(keys)


# The monitor's replay summary, logged on the model's run (`python -m feq_lab.stream scenarios=N`
# with a registered model): onset-to-pick latency and pick quality, usable as objectives.
STREAM_PREFIX = "stream/"
STREAM_KEYS = tuple(STREAM_PREFIX + k for k in (
    "p_latency_s_p50", "p_latency_s_p95", "s_latency_s_p50", "s_latency_s_p95",
    "p_within_0.5s", "false_events", "retractions"))
STREAM_P_LATENCY_P50 = STREAM_KEYS[0]
# The study's replays on a split (`evaluate` stage, `eval.replays`): the same monitor and summary,
# logged as `<split>/stream_<name>` on the variant's evaluation run. `val/stream_*` may decide
# (the selection's constraint on real-time P accuracy), `test/stream_*` would be report-only.
# `p_within_0.5s_rate`: the fraction of scenarios whose final P lies within 0.5 s of the truth
# (a rate, so a bound does not depend on how many scenarios were played).
STREAM_SPLIT_NAMES = ("p_within_0.5s_rate", "p_latency_s_p50", "p_latency_s_p95",
                      "s_latency_s_p50", "false_events", "retractions", "misses")


def stream_key(split: str, name: str) -> str:
    """`val/stream_p_within_0.5s_rate` from ("val", "p_within_0.5s_rate")."""
    return f"{split}/stream_{name}"


# Early picking (evaluation/early.py): P recall/precision t seconds after the onset.
EARLY_SECONDS = ("0.5s", "1s", "2s", "4s")


def early_key(split: str, stat: str, seconds: str) -> str:
    """`<split>/early_p_<recall|precision>_<t>s`."""
    return f"{split}/early_p_{stat}_{seconds}"


KNOWN_KEYS = _known() | set(STREAM_KEYS) | {
    stream_key(split, name) for split in SPLITS for name in STREAM_SPLIT_NAMES} | {
    early_key(split, stat, t) for split in SPLITS for stat in ("recall", "precision")
    for t in EARLY_SECONDS}
# Parameter counts per section: a family names its own sections (`params/<section>_paper|torch`);
# early-pick keys at other `eval.early.seconds` than the default ones.
_PARAMS_PATTERN = re.compile(r"params/[a-z0-9_]+_(paper|torch)")
_EARLY_PATTERN = re.compile(r"(val|test)/early_p_(recall|precision)_[0-9.]+s")


def is_known(key: str) -> bool:
    """Whether a run can log `key` (so a config may name it)."""
    return (key in KNOWN_KEYS or bool(_PARAMS_PATTERN.fullmatch(key))
            or bool(_EARLY_PATTERN.fullmatch(key)))


def check_metric_key(key: object, where: str) -> str:
    """`key` as a string, or a ConfigError on `where` naming it and the closest known keys."""
    text = str(key)
    if not is_known(text):
        close = difflib.get_close_matches(text, sorted(KNOWN_KEYS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(where, f"unknown metric key {text!r}{hint} (feq_lab/tracking/keys.py "
                                 "lists what a run logs)")
    return text
