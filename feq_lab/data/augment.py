"""EQTransformer's training augmentations as small composable transforms (REFERENCE section 2).

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

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]


def _has_event(sample: Sample) -> bool:
    return bool(sample["is_earthquake"]) and math.isfinite(sample["p"]) and math.isfinite(
        sample["s"])


@dataclass
class ShiftEvent:
    """Roll the trace so the event lands elsewhere in the window, P and S (and the detection
    window's end) staying inside it. Earthquakes only."""

    prob: float = 0.99
    margin: int = 20

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not _has_event(sample) or rng.random() >= self.prob:
            return sample
        t = sample["waveform"].shape[-1]
        p, s = sample["p"], sample["s"]
        end = s + 0.4 * (s - p)
        lo = self.margin - p
        hi = min(t - 1 - self.margin - end, t - 1 - self.margin - s)
        if hi <= lo:
            return sample
        shift = int(rng.integers(math.ceil(lo), math.floor(hi) + 1))
        out = dict(sample)
        out["waveform"] = np.roll(sample["waveform"], shift, axis=-1)
        out["p"], out["s"] = p + shift, s + shift
        if math.isfinite(sample.get("coda_end", math.nan)):
            out["coda_end"] = min(sample["coda_end"] + shift, t)
        out["extra_events"] = [(a + shift, b + shift) for a, b in sample.get("extra_events", [])
                               if 0 <= a + shift < t and 0 <= b + shift < t]
        return out


@dataclass
class AddEvent:
    """Add a scaled copy of the event after its coda (labelled too), when it fits in the window."""

    prob: float = 0.6
    scale_range: tuple[float, float] = (0.1, 1.0)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not (_has_event(sample) and sample.get("snr_ok", False)) or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"]
        t = wave.shape[-1]
        p, s = sample["p"], sample["s"]
        coda = sample.get("coda_end", math.nan)
        start = coda if math.isfinite(coda) else s + 0.4 * (s - p)
        # The copy's P goes at least 1 s past the coda; its S and detection end must fit.
        room = t - 1 - (start + 100) - (s - p) * 1.4
        if room <= 0:
            return sample
        new_p = start + 100 + rng.uniform(0, room)
        shift = round(new_p - p)
        copy = np.roll(wave, shift, axis=-1)
        copy[..., : int(start)] = 0.0  # only the shifted event, not wrapped-around samples
        out = dict(sample)
        out["waveform"] = wave + np.float32(rng.uniform(*self.scale_range)) * copy
        out["extra_events"] = list(sample.get("extra_events", [])) + [(p + shift, s + shift)]
        return out


@dataclass
class AddNoise:
    """Add Gaussian noise with a per-channel std of 1-15% of that channel's peak amplitude."""

    prob: float = 0.3

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not (_has_event(sample) and sample.get("snr_ok", False)) or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"]
        peak = np.abs(wave).max(axis=-1, keepdims=True)
        std = rng.uniform(0.01, 0.15, (wave.shape[0], 1)) * peak
        out = dict(sample)
        out["waveform"] = (wave + rng.standard_normal(wave.shape) * std).astype(np.float32)
        return out


@dataclass
class DropChannel:
    """Zero one or two channels and rescale the rest so the total amplitude is kept."""

    prob: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not (_has_event(sample) and sample.get("snr_ok", False)) or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"].copy()
        n_drop = int(rng.integers(1, 3))
        dropped = rng.choice(wave.shape[0], n_drop, replace=False)
        wave[dropped] = 0.0
        wave *= np.float32(wave.shape[0] / (wave.shape[0] - n_drop))
        out = dict(sample)
        out["waveform"] = wave
        return out


@dataclass
class AddGap:
    """Zero a random stretch of all channels (a telemetry dropout). Noise traces only."""

    prob: float = 0.2
    max_fraction: float = 0.25

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample["is_earthquake"] or rng.random() >= self.prob:
            return sample
        wave = sample["waveform"].copy()
        t = wave.shape[-1]
        length = int(rng.integers(10, max(11, int(self.max_fraction * t))))
        start = int(rng.integers(0, t - length))
        wave[:, start:start + length] = 0.0
        out = dict(sample)
        out["waveform"] = wave
        return out


@dataclass
class Compose:
    """Apply transforms in order with one generator (seeded per sample by the caller)."""

    transforms: Sequence[Transform]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def from_config(augment: Mapping[str, Any] | None) -> Compose | None:
    """`data.augment` -> the EQT chain (shift, add event, add noise, drop channel, gap), or None.

    Order follows EQT: shift first (so an added copy follows the shifted event), then add
    event, noise, channel drop; gaps apply to noise traces.
    """
    if not augment or not augment.get("enabled", True):
        return None
    return Compose([
        ShiftEvent(float(augment.get("shift_event", 0.99))),
        AddEvent(float(augment.get("add_event", 0.6))),
        AddNoise(float(augment.get("add_noise", 0.3))),
        DropChannel(float(augment.get("drop_channel", 0.5))),
        AddGap(float(augment.get("add_gap", 0.2))),
    ])
