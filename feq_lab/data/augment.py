"""EQTransformer's training augmentations as small composable transforms.

Facts from EQTransformer's DataGenerator (``EqT_utils.py``; Mousavi et al. 2020, Nat. Commun.
11:3952; REFERENCE §2 and §3), reproduced point by point:

- Every batch is half original traces, half augmented copies (the datamodule's batch sampler).
  The *original* half is shifted too, with half the shift probability (``shift_event_r / 2``).
- Shift: the trace is rotated forward by ``int(uniform(1, 6000 - coda_end))`` samples, so the
  coda never wraps round to before P; kept only when P and S stay inside the window.
- Add event (augmented earthquakes with all three SNRs >= 10 dB): a copy of the trace from P on,
  scaled by ``1 / randint(1, 10)`` (1, 1/2, ..., 1/9), starting at ``randint(coda_end,
  6000 - (S - P) - 21)``; only when ``6000 - (S - P) - 21 - coda_end > 20``. Its P and S get labels.
- Add noise (same SNR gate): Gaussian noise with a per-channel std of ``uniform(0.01, 0.15)`` times
  the channel's peak.
- Drop channels: each channel kept with probability 1/2 (nothing happens when all three would
  go); earthquakes (same SNR gate) are rescaled by 3 / (channels left), noise traces are not
  (EQT's ``_drop_channel_noise``; no SNR gate: noise has none).
- Gaps (noise traces only): all channels zeroed from ``randint(0, 4000)`` to
  ``randint(start, 5500)`` — up to 5,499 samples.
- Order: earthquakes shift, add event, add noise, drop channel; noise drop channel, gap.

Plus one lab augmentation, off by default (issue 16): `RightEdge` puts P within the last
0.5-4 s of the window (S possibly beyond it, labels cut there), as a continuous stream's newest
window sees an event that has just begun; a fraction of those windows (`right_edge_before`)
ends 0.5-4 s before P instead (pre-P noise cut mid-signal, labels zero).

A sample is a dict: `waveform` float32 (3, T) channel-first E,N,Z (raw, before normalisation),
`p`, `s`, `coda_end` floats (NaN for noise), `is_earthquake` bool, `snr_ok` bool (all three
SNRs >= min_snr_db), and `extra_events` (list of (p, s) pairs that get labels too). Each
transform takes (sample, rng) and returns a (possibly new) sample; `Compose` chains them.
Probabilities come from `data.augment` in the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feq_lab.data.labels import detection_end
from feq_lab.errors import ConfigError

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]

ADD_EVENT_S_MARGIN = 21  # EQT: the added copy's S stays 21 samples inside the window
ADD_EVENT_ROOM = 20  # EQT: an event is added only when more than 20 samples of room remain
GAP_START_MAX = 4000  # EQT: gap start randint(0, 4000)
GAP_END_MAX = 5500  # EQT: gap end randint(start, 5500)
MAX_SCALE_DIVISOR = 10  # EQT: added event scaled by 1 / randint(1, 10)
# Samples before a labelled P left out of the pre-P noise that fills a moved trace: a label may
# be late by a few tenths of a second (STEAD's manual picks; the synthetic set imitates them).
NOISE_GUARD = 50


def _has_event(sample: Sample) -> bool:
    return bool(sample["is_earthquake"]) and math.isfinite(sample["p"]) and math.isfinite(
        sample["s"])


def _gated(sample: Sample) -> bool:
    """EQT augments an earthquake's amplitudes only when all three SNRs are >= 10 dB."""
    return _has_event(sample) and bool(sample.get("snr_ok", False))


def _coda_end(sample: Sample) -> float:
    """The trace's coda end; the detection label's end when the metadata has none."""
    coda = sample.get("coda_end", math.nan)
    return float(coda) if math.isfinite(coda) else detection_end(sample["p"], sample["s"])


def _moved(sample: Sample, waveform: np.ndarray, shift: int) -> Sample:
    """`sample` with a new waveform whose picks (and coda, extra events) moved by `shift`."""
    t = waveform.shape[-1]
    out = dict(sample)
    out["waveform"] = waveform
    out["p"], out["s"] = sample["p"] + shift, sample["s"] + shift
    if math.isfinite(sample.get("coda_end", math.nan)):
        out["coda_end"] = min(sample["coda_end"] + shift, t)
    out["extra_events"] = [(a + shift, b + shift) for a, b in sample.get("extra_events", [])
                           if 0 <= a + shift < t and 0 <= b + shift < t]
    return out


@dataclass
class ShiftEvent:
    """Rotate the trace forward by 1 .. (T - coda_end - 1) samples (EQT's `_shift_event`): the
    coda never wraps round to before P. Earthquakes only; kept when P and S stay inside."""

    prob: float = 0.99

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _has_event(sample) or rng.random() >= self.prob:
            return sample
        t = sample["waveform"].shape[-1]
        room = int(t - _coda_end(sample))
        if room <= 1:  # the coda reaches the window's end: nothing may rotate
            return sample
        shift = int(rng.uniform(1, room))
        if not (0 <= sample["p"] + shift < t and 0 <= sample["s"] + shift < t):
            return sample
        return _moved(sample, np.roll(sample["waveform"], shift, axis=-1), shift)


@dataclass
class AddEvent:
    """Add a copy of the event (from P on) after its coda, scaled by 1/randint(1, 10), labelled
    too (EQT's `_add_event`). Earthquakes with all SNRs >= 10 dB only."""

    prob: float = 0.6

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _gated(sample) or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"]
        t = wave.shape[-1]
        p, s = int(sample["p"]), int(sample["s"])
        coda = int(_coda_end(sample))
        sp = s - p
        if not t - sp - ADD_EVENT_S_MARGIN - coda > ADD_EVENT_ROOM:
            return sample
        start = int(rng.integers(coda, t - sp - ADD_EVENT_S_MARGIN))
        scale = 1.0 / int(rng.integers(1, MAX_SCALE_DIVISOR))
        space = t - start
        out = dict(sample)
        added = wave.copy()
        copy = wave[:, p:p + space]
        added[:, start:start + copy.shape[-1]] += np.float32(scale) * copy
        out["waveform"] = added
        out["added_scale"] = scale  # kept for tests and inspection; labels ignore it
        out["extra_events"] = list(sample.get("extra_events", [])) + [
            (float(start), float(start + sp))]
        return out


@dataclass
class AddNoise:
    """Add Gaussian noise with a per-channel std of 1-15% of that channel's peak amplitude
    (EQT's `_add_noise`; the peak is taken as |x| so a trace of negative samples works).
    Earthquakes with all SNRs >= 10 dB only."""

    prob: float = 0.3

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _gated(sample) or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"]
        peak = np.abs(wave).max(axis=-1, keepdims=True)
        std = rng.uniform(0.01, 0.15, (wave.shape[0], 1)) * peak
        out = dict(sample)
        out["waveform"] = (wave + rng.standard_normal(wave.shape) * std).astype(np.float32)
        return out


@dataclass
class DropChannel:
    """Zero each channel with probability 1/2 (never all three; EQT's `_drop_channel` and
    `_drop_channel_noise`). Earthquakes: only with all SNRs >= 10 dB, and the rest rescaled by
    3 / (channels left) (`_adjust_amplitude_for_multichannels`); noise traces: no gate, no
    rescaling. (Per-channel normalisation makes the rescaling immaterial to the input.)"""

    prob: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        is_eq = bool(sample["is_earthquake"])
        if (is_eq and not _gated(sample)) or rng.random() >= self.prob:
            return sample
        keep = rng.integers(0, 2, sample["waveform"].shape[0]).astype(bool)
        if not keep.any() or keep.all():
            return sample
        wave = sample["waveform"].copy()
        wave[~keep] = 0.0
        if is_eq:
            live = int(np.count_nonzero(np.abs(wave).max(axis=-1)))
            if live:
                wave *= np.float32(wave.shape[0] / live)
        out = dict(sample)
        out["waveform"] = wave
        return out


@dataclass
class AddGap:
    """Zero all channels from randint(0, 4000) to randint(start, 5500) (EQT's `_add_gaps`, up
    to 5,499 samples: a telemetry dropout). Noise traces only, as EQT."""

    prob: float = 0.2

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample["is_earthquake"] or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"].copy()
        t = wave.shape[-1]
        start = int(rng.integers(0, min(GAP_START_MAX, t - 1)))
        stop = int(rng.integers(start, max(start + 1, min(GAP_END_MAX, t))))
        wave[:, start:stop] = 0.0
        out = dict(sample)
        out["waveform"] = wave
        return out


def extend_with_noise(wave: np.ndarray, before: int, noise_end: int) -> np.ndarray:
    """`wave` (C, T) with `before` samples prepended, made of its own first `noise_end` samples
    (pre-P noise) mirrored back in time, as often as needed.

    Why mirrored: the prepended samples meet the trace (and each other) without a jump, so
    the network never sees an artificial step that would look like an onset. Used by
    `RightEdge` and by the early-pick evaluation (`feq_lab.evaluation.early`), which both need
    more past than a 60-s trace holds before its P.
    """
    if before <= 0:
        return wave
    if not 0 < noise_end <= wave.shape[-1]:
        raise ValueError(f"noise_end must be in (0, {wave.shape[-1]}], got {noise_end}")
    noise = wave[:, :noise_end]
    fill = np.pad(noise, ((0, 0), (before, 0)), mode="symmetric")[:, :before]
    return np.concatenate([fill, wave], axis=-1).astype(wave.dtype, copy=False)


@dataclass
class RightEdge:
    """Put P within the last `min_s`-`max_s` seconds of the window; S may fall beyond the
    window's end and the labels are cut there (issue 16: the newest window of a continuous
    stream sees events that have just begun). The trace moves right; the samples it leaves at
    the start are filled with its own pre-P noise, mirrored (`extend_with_noise`). Earthquakes
    only; off by default.

    With probability `before` the window instead ends `min_s`-`max_s` seconds *before* P: noise
    cut mid-signal at the right edge, all labels zero. Why: the monitor's newest window ends in
    noise almost always; a model shown P near the right edge but never noise ending there
    learns that the edge itself announces an onset (measured: right_edge without these windows
    raised the S probability in the last 0.5 s of noise windows to 0.14).
    """

    prob: float = 0.0
    min_s: float = 0.5
    max_s: float = 4.0
    before: float = 0.0
    sampling_rate: float = 100.0
    noise_guard: int = NOISE_GUARD

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _has_event(sample) or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"]
        t = wave.shape[-1]
        p = int(sample["p"])
        noise_end = p - self.noise_guard
        if noise_end < 10:  # no pre-P noise to fill with
            return sample
        lead = rng.uniform(self.min_s, self.max_s) * self.sampling_rate
        if self.before > 0 and rng.random() < self.before:
            lead = -lead  # the window ends before P: pre-P noise only
        shift = round(t - lead) - p
        if shift <= 0:  # P is already that close to the end
            return sample
        moved = extend_with_noise(wave, shift, noise_end)[:, :t].astype(np.float32)
        out = _moved(sample, moved, shift)
        out["coda_end"] = float(t)  # nothing after this event fits: no shift, no added event
        return out


@dataclass
class Compose:
    """Apply transforms in order with one generator (seeded per sample by the caller)."""

    transforms: Sequence[Transform]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


@dataclass
class Augmentation:
    """The two chains of an EQT batch: `original` for the original half (a shift at half the
    probability) and `augmented` for the augmented copies."""

    original: Compose
    augmented: Compose

    def __call__(self, sample: Sample, rng: np.random.Generator, augmented: bool = True) -> Sample:
        return (self.augmented if augmented else self.original)(sample, rng)


def _prob(augment: Mapping[str, Any], key: str, default: float) -> float:
    value = augment.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"data.augment.{key}", f"not a number: {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"data.augment.{key}", f"must be a probability in [0, 1], got {value}")
    return value


def from_config(augment: Mapping[str, Any] | None) -> Augmentation | None:
    """`data.augment` -> EQT's two chains, or None when augmentation is off.

    Keys (probabilities, EQT's defaults): shift_event 0.99, shift_original (the original half's
    shift; default shift_event / 2 as EQT), add_event 0.6, add_noise 0.3, drop_channel 0.5,
    add_gap 0.2, right_edge 0 (with right_edge_s [0.5, 4.0] and right_edge_before 0.25, the
    fraction of those windows that end before P instead).
    """
    if not augment or not augment.get("enabled", True):
        return None
    shift = _prob(augment, "shift_event", 0.99)
    shift_original = augment.get("shift_original")
    shift_original = shift / 2 if shift_original is None else _prob(
        augment, "shift_original", 0.0)
    edge = augment.get("right_edge_s", (0.5, 4.0))
    if not (isinstance(edge, Sequence) and len(edge) == 2 and 0 < float(edge[0]) <= float(edge[1])):
        raise ConfigError("data.augment.right_edge_s", f"must be [min_s, max_s] > 0, got {edge!r}")
    return Augmentation(
        original=Compose([ShiftEvent(shift_original)]),
        augmented=Compose([
            RightEdge(_prob(augment, "right_edge", 0.0), float(edge[0]), float(edge[1]),
                      _prob(augment, "right_edge_before", 0.25)),
            ShiftEvent(shift),
            AddEvent(_prob(augment, "add_event", 0.6)),
            AddNoise(_prob(augment, "add_noise", 0.3)),
            DropChannel(_prob(augment, "drop_channel", 0.5)),
            AddGap(_prob(augment, "add_gap", 0.2)),
        ]),
    )
