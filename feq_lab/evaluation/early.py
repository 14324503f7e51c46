"""Early picking: P recall and precision as a function of the seconds of data after the onset.

Why: a real-time monitor (issue 16) runs a window right-aligned on the newest sample, so the
first chance to pick P is a window that ends `t` seconds after the onset, with nothing after it.
This module builds those windows from a split's earthquakes (t = 0.5, 1, 2, 4 s by default),
and scores the picks the shared decoder (`decode.decode_traces`, the study's protocol and
thresholds) makes on them.

The windows: the last `window` samples ending at P + t (P + t excluded). A 60-s STEAD trace
holds only 5-10 s before P, so the rest of the window's past is the trace's own pre-P noise,
mirrored back in time (`data.augment.extend_with_noise`, the same fill as the `right_edge`
training augmentation): the network sees continuous noise, then the onset, then the edge.

Scoring (`score_early`), per t, with the 0.5-s tolerance of the study's protocol (REFERENCE §3):
- TP: an earthquake window whose P pick is within tolerance of the true P;
- FN: an earthquake window without such a pick (no pick, or a far one);
- FP: a far pick on an earthquake window (a wrong provisional pick is what a consumer sees:
  it counts against precision, unlike the 60-s protocol), and a P pick on a noise trace of the
  split (the split's noise traces as they are, the same for every t).
Stored like the test probabilities (`probabilities.save_probabilities`), so thresholds chosen
later are re-scored without the model: rows are named ``<trace>|early_<t>s`` (noise rows keep
their plain name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feq_lab.data.augment import NOISE_GUARD, extend_with_noise
from feq_lab.errors import ConfigError
from feq_lab.evaluation.metrics import phase_metrics, picks_to_arrays
from feq_lab.evaluation.picks import extract_picks
from feq_lab.evaluation.probabilities import Probabilities
from feq_lab.evaluation.truth import Truth

EARLY_SECONDS = (0.5, 1.0, 2.0, 4.0)
TAG = "|early_"
# A predictor as the streaming engine's: (B, 3, T) raw float32 windows -> det, P, S (B, T)
# probabilities (normalisation is the caller's, as the model was trained).
Predict = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class EarlySettings:
    """`eval.early`: the seconds after onset, and a cap on the earthquakes used per split (the
    first ones in split order) so the evaluation stays cheap on a large test set."""

    seconds: tuple[float, ...] = EARLY_SECONDS
    max_earthquakes: int = 100
    max_noise: int = 25
    enabled: bool = True

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, key: str = "eval.early") -> EarlySettings:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{key}.{min(unknown)}", "unknown key (known: "
                              f"{sorted(cls.__dataclass_fields__)})")
        try:
            seconds = tuple(float(t) for t in cfg.get("seconds", EARLY_SECONDS))
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.seconds", f"not a list of numbers: {cfg['seconds']!r}") \
                from None
        if not seconds or not all(math.isfinite(t) and t > 0 for t in seconds):
            raise ConfigError(f"{key}.seconds", f"must be seconds > 0, got {seconds!r}")
        out = cls(seconds, int(cfg.get("max_earthquakes", 100)), int(cfg.get("max_noise", 25)),
                  bool(cfg.get("enabled", True)))
        for name in ("max_earthquakes", "max_noise"):
            if getattr(out, name) < 0:
                raise ConfigError(f"{key}.{name}", f"must be >= 0, got {getattr(out, name)}")
        return out


def seconds_label(t: float) -> str:
    """0.5 -> '0.5s', 1.0 -> '1s' (metric keys and row names)."""
    return f"{t:g}s"


def early_window(wave: np.ndarray, p_sample: float, seconds: float, window: int,
                 sampling_rate: float = 100.0) -> tuple[np.ndarray, float]:
    """(window samples ending `seconds` after P, P's index in it) from a (3, T) raw trace."""
    end = round(p_sample) + round(seconds * sampling_rate)
    end = min(end, wave.shape[-1])
    pad = max(window - end, 0)
    noise_end = max(round(p_sample) - NOISE_GUARD, 1)
    ext = extend_with_noise(np.asarray(wave, np.float32), pad, noise_end)
    stop = end + pad
    return ext[:, stop - window:stop], float(p_sample) + pad - (stop - window)


@dataclass(frozen=True)
class Trace:
    """One trace of a split as the early evaluation needs it: raw (3, T) waveform and truth."""

    name: str
    waveform: np.ndarray
    is_earthquake: bool
    p_sample: float
    s_sample: float


def early_rows(traces: Sequence[Trace], settings: EarlySettings, window: int,
               sampling_rate: float = 100.0) -> Iterator[tuple[str, np.ndarray, bool, float, float]]:
    """(row name, raw window, is_earthquake, P, S in the window) of every early-evaluation row:
    each of the first `max_earthquakes` earthquakes at each t, then the first `max_noise` noise
    traces as they are."""
    quakes = [t for t in traces if t.is_earthquake][: settings.max_earthquakes]
    noise = [t for t in traces if not t.is_earthquake][: settings.max_noise]
    for t in settings.seconds:
        for tr in quakes:
            x, p = early_window(tr.waveform, tr.p_sample, t, window, sampling_rate)
            yield f"{tr.name}{TAG}{seconds_label(t)}", x, True, p, p + tr.s_sample - tr.p_sample
    for tr in noise:
        yield tr.name, np.asarray(tr.waveform, np.float32)[:, -window:], False, math.nan, math.nan


def predict_early(predict: Predict, traces: Sequence[Trace], settings: EarlySettings,
                  window: int = 6000, sampling_rate: float = 100.0,
                  batch_size: int = 64) -> Probabilities | None:
    """Run `predict` on every early-evaluation row, in batches; None when there is none."""
    names: list[str] = []
    is_eq: list[bool] = []
    p_true: list[float] = []
    s_true: list[float] = []
    outs: list[list[np.ndarray]] = [[], [], []]
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            for k, o in enumerate(predict(np.stack(batch))[:3]):
                outs[k].append(np.asarray(o, np.float32).reshape(len(batch), -1))
            batch.clear()

    for name, x, eq, p, s in early_rows(traces, settings, window, sampling_rate):
        names.append(name)
        is_eq.append(eq)
        p_true.append(p)
        s_true.append(s)
        batch.append(x)
        if len(batch) == batch_size:
            flush()
    flush()
    if not names:
        return None
    det, p, s = (np.concatenate(o) for o in outs)
    return Probabilities(det, p, s, Truth(np.array(is_eq), np.array(p_true), np.array(s_true)),
                         names)


def row_seconds(names: Sequence[str]) -> list[str | None]:
    """The t label of each row ('1s'), None for noise rows."""
    return [n.rsplit(TAG, 1)[1] if TAG in n else None for n in names]


def score_early(probs: Probabilities, thresholds: Mapping[str, float], *,
                sampling_rate: float = 100.0, tolerance_s: float = 0.5,
                association_margin_s: float = 0.5, protocol: str = "eqt") -> dict[str, float]:
    """`early_p_recall_<t>`, `early_p_precision_<t>` for every t present in `probs`."""
    picks = extract_picks(probs.det, probs.p, probs.s, thresholds, sampling_rate=sampling_rate,
                          association_margin_s=association_margin_s, protocol=protocol)
    _, p_pick, _ = picks_to_arrays(picks)
    labels = row_seconds(probs.trace_names)
    noise = np.array([lab is None for lab in labels])
    out: dict[str, float] = {}
    for lab in dict.fromkeys(x for x in labels if x is not None):  # first-seen order
        rows = noise | np.array([x == lab for x in labels])
        m = phase_metrics("p", p_pick[rows], probs.truth.p_sample[rows],
                          probs.truth.is_earthquake[rows], tolerance_s * sampling_rate,
                          sampling_rate, far_pick_counts_fp=True)
        out[f"early_p_recall_{lab}"] = m["p_recall"]
        out[f"early_p_precision_{lab}"] = m["p_precision"]
    return out
