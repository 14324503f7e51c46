"""The classical reference row (`model=stalta`): obspy's recursive STA/LTA trigger + AR-AIC picker.

Per trace: demean and band-pass each channel, take the 3-component envelope
``sqrt(E² + N² + Z²)``, run `recursive_sta_lta` on it and `trigger_onset` (on/off ratios) for the
detection intervals. The recursive LTA starts from zero, so the first ``lta_s`` of the ratio would
be meaningless (obspy zeroes them): the envelope is prefixed with its own first samples mirrored so
the LTA is warm when the window starts (STEAD windows put P only 5-10 s in).
Detected traces are then picked with `ar_pick` (Akazawa AR-AIC) on the raw Z, N, E channels, and a
P/S pick is kept only inside an association region built as for the learned models (trigger
intervals widened by ``association_margin_s``, 1 s by default, see DEFAULTS), and an S before its
P is dropped; `metrics.score` then judges both with one rule. `p_prob` / `s_prob` hold the
STA/LTA ratio at the pick (not a probability).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from obspy.signal.filter import bandpass
from obspy.signal.trigger import ar_pick, recursive_sta_lta, trigger_onset

from feq_lab.errors import ConfigError, DataError
from feq_lab.evaluation.picks import TracePicks

DEFAULTS: dict[str, Any] = {
    "sampling_rate": 100.0,
    "channels": "ENZ",  # order of the channel axis (STEAD: E, N, Z)
    "freqmin": 1.0,  # band-pass of the trigger's envelope (Hz)
    "freqmax": 20.0,
    "sta_s": 0.5,
    "lta_s": 5.0,
    "trigger_on": 3.5,
    "trigger_off": 1.5,
    # wider than the learned models' 0.5 s: an STA/LTA trigger turns on after the onset, late
    # by up to the STA window, while the AR picker places P at the onset itself
    "association_margin_s": 1.0,
    # obspy.signal.trigger.ar_pick arguments (obspy's documented example values)
    "ar_f1": 1.0,
    "ar_f2": 20.0,
    "ar_lta_p": 1.0,
    "ar_sta_p": 0.1,
    "ar_lta_s": 4.0,
    "ar_sta_s": 1.0,
    "ar_m_p": 2,
    "ar_m_s": 8,
    "ar_l_p": 0.1,
    "ar_l_s": 0.2,
}
# Keys a model-group config may carry besides the baseline's own (ignored, not errors).
_IGNORED_KEYS = {"name", "preset", "kind", "type", "description", "_target_"}


def stalta_config(cfg: Mapping[str, Any] | None, key_prefix: str = "model") -> dict[str, Any]:
    """DEFAULTS overridden by `cfg` (or `cfg["stalta"]` when nested); unknown keys are errors.

    Errors name `<key_prefix>.<key>`: the group the settings came from (`baseline=stalta`, or
    its alias `model=stalta`; conf/baseline/stalta.yaml).
    """
    cfg = dict(cfg or {})
    if isinstance(cfg.get("stalta"), Mapping):
        cfg = dict(cfg["stalta"])
    unknown = sorted(set(cfg) - set(DEFAULTS) - _IGNORED_KEYS)
    if unknown:
        raise ConfigError(
            f"{key_prefix}.{unknown[0]}", f"unknown baseline setting (known: {', '.join(DEFAULTS)})"
        )
    out = {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}
    if sorted(str(out["channels"]).upper()) != ["E", "N", "Z"]:
        raise ConfigError(
            f"{key_prefix}.channels", f"must be a permutation of ENZ, got {out['channels']!r}"
        )
    for key in ("sampling_rate", "sta_s", "lta_s", "trigger_on", "trigger_off"):
        if not float(out[key]) > 0:
            raise ConfigError(f"{key_prefix}.{key}", f"must be > 0, got {out[key]}")
    if not float(out["sta_s"]) < float(out["lta_s"]):
        raise ConfigError(f"{key_prefix}.sta_s", "must be shorter than lta_s")
    if not 0 < float(out["freqmin"]) < float(out["freqmax"]) < float(out["sampling_rate"]) / 2:
        raise ConfigError(f"{key_prefix}.freqmin", "need 0 < freqmin < freqmax < Nyquist")
    return out


def _channels_last(waveforms: np.ndarray) -> np.ndarray:
    x = np.asarray(waveforms)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise DataError(f"waveforms must be (N, T, 3) or (N, 3, T), got shape {x.shape}")
    if x.shape[2] == 3:
        return x
    if x.shape[1] == 3:
        return np.swapaxes(x, 1, 2)
    raise DataError(f"waveforms must have a channel axis of 3, got shape {x.shape}")


def characteristic_function(trace: np.ndarray, c: Mapping[str, Any]) -> np.ndarray:
    """Recursive STA/LTA of the band-passed 3-component envelope of one (T, 3) trace."""
    sr = float(c["sampling_rate"])
    x = np.asarray(trace, np.float64)
    x = x - x.mean(axis=0)
    filtered = np.stack(
        [
            bandpass(x[:, k], c["freqmin"], c["freqmax"], sr, corners=4, zerophase=False)
            for k in range(3)
        ]
    )
    envelope = np.sqrt((filtered**2).sum(axis=0))
    nsta, nlta = round(c["sta_s"] * sr), round(c["lta_s"] * sr)
    pad = min(2 * nlta, len(envelope))
    warm = np.concatenate([envelope[:pad][::-1], envelope])
    return recursive_sta_lta(warm, nsta, nlta)[pad:]


def _pick_one(trace: np.ndarray, c: Mapping[str, Any]) -> TracePicks:
    n_samples = trace.shape[0]
    if not np.isfinite(trace).all():
        raise DataError("waveform has NaN or infinite samples")
    if not np.any(trace != trace[0]):
        return TracePicks(detected=False)
    cft = characteristic_function(trace, c)
    onsets = trigger_onset(cft, c["trigger_on"], c["trigger_off"])
    if len(onsets) == 0:
        return TracePicks(detected=False)
    intervals = tuple((int(a), int(min(b + 1, n_samples))) for a, b in onsets)
    sr = float(c["sampling_rate"])
    order = str(c["channels"]).upper()
    z, n, e = (np.ascontiguousarray(trace[:, order.index(ch)], np.float32) for ch in "ZNE")
    p_s, s_s = ar_pick(
        z,
        n,
        e,
        sr,
        c["ar_f1"],
        c["ar_f2"],
        c["ar_lta_p"],
        c["ar_sta_p"],
        c["ar_lta_s"],
        c["ar_sta_s"],
        int(c["ar_m_p"]),
        int(c["ar_m_s"]),
        c["ar_l_p"],
        c["ar_l_s"],
        True,
    )
    margin = round(float(c["association_margin_s"]) * sr)

    def keep(seconds: float) -> tuple[float | None, float | None]:
        sample = float(seconds) * sr
        if not np.isfinite(sample) or not 0 < sample < n_samples:
            return None, None
        if not any(a - margin <= sample < b + margin for a, b in intervals):
            return None, None
        return round(sample, 2), float(cft[min(int(sample), n_samples - 1)])

    p_sample, p_prob = keep(p_s)
    s_sample, s_prob = keep(s_s)
    if p_sample is not None and s_sample is not None and s_sample <= p_sample:
        s_sample, s_prob = None, None  # an S before its P is not an S
    return TracePicks(True, intervals, p_sample, p_prob, s_sample, s_prob)


def stalta_picks(
    waveforms: np.ndarray,
    cfg: Mapping[str, Any] | None = None,
    trace_names: list[str] | None = None,
) -> list[TracePicks]:
    """`TracePicks` per (T, 3) or (3, T) trace of `waveforms`; score with `metrics.score`."""
    c = stalta_config(cfg)
    x = _channels_last(waveforms)
    out = []
    for i in range(x.shape[0]):
        try:
            out.append(_pick_one(x[i], c))
        except DataError as exc:
            name = trace_names[i] if trace_names else f"index {i}"
            raise DataError(str(exc), trace=name) from exc
    return out


class StaLtaDetector:
    """The STA/LTA baseline as a `models.protocol.Detector` (`_target_` of
    conf/model/stalta.yaml): the settings are validated once, at construction."""

    name = "stalta"
    display_name = "STA/LTA"

    def __init__(self, **settings: Any):
        self.settings = stalta_config(settings)

    def picks(self, waveforms: np.ndarray, trace_names: list[str] | None = None) -> list[TracePicks]:
        return stalta_picks(waveforms, self.settings, trace_names=trace_names)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}
