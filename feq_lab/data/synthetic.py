"""A physics-based synthetic STEAD, written in the real format (the lab's embedded default).

Why synthetic: the real STEAD (85 GB) cannot be fetched everywhere; tests and the default
pipeline need data that behaves like it. Each earthquake trace is built by the stochastic method
(band-limited noise under an envelope, shaped by a source/path spectrum):
- magnitude, distance and depth drawn to STEAD's quantiles (REFERENCE 1.4);
- P and S first arrivals from TauP iasp91 (`traveltime` table), P sample mostly a whole second
  5-10 s into the window as in STEAD;
- Brune omega-squared source, corner frequency from Mw and a stress drop of 1-10 MPa
  (P corner 1.5x S's), 1/r spreading, anelastic attenuation exp(-pi f t/Q) plus a site kappa,
  S several times P, P mostly on Z and S on the horizontals (incidence + back-azimuth rotation),
  an exponentially decaying coda whose end (`coda_end_sample`) is where it sinks into the noise;
- ambient noise coloured between Peterson's NLNM and NHNM (precomputed once), station tones,
  spikes, dropouts (gaps), single-channel stations (Z copied to E and N);
- about 10% of earthquake traces carry a second, weaker event later in the window;
- the station noise level in counts (gain x ground noise) is set so that the SNR spread matches
  STEAD's (selection-biased) distribution; `snr_db` itself is then *measured* on the final
  waveform (`feq_lab.data.snr`), never copied from the target.
Everything is vectorised over a batch of traces and seeded (numpy Generator).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feq_lab.data import traveltime
from feq_lab.data.snr import waveform_snr_db

FS = 100.0
N_SAMPLES = 6000
FREQS = np.fft.rfftfreq(N_SAMPLES, d=1.0 / FS)
GENERATOR_VERSION = "3"  # bump when the output for a given seed changes
DEFAULT_SPLIT = {"train": 0.85, "val": 0.05, "test": 0.10}

# STEAD's mean-of-channels SNR (dB) quantiles (stead_stats.json), used as the target spread.
_SNR_Q = np.array([0.0, 0.05, 0.075, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1.0])
_SNR_DB = np.array([-1.0, 7.5, 10.0, 11.0, 16.0, 23.0, 32.0, 41.0, 48.0, 60.0, 80.0])

_NETWORKS = ["CI", "NC", "TA", "US", "AK", "UW", "HV", "NN", "UU", "IU", "BK", "PB", "OK", "GS",
             "NM", "AV", "MB", "WY", "ET", "SC", "BC", "AZ", "CN", "N4"]
_RECEIVER_TYPES = np.array(["HH", "BH", "EH", "HN", "SH"])
_RECEIVER_P = np.array([0.46, 0.20, 0.29, 0.03, 0.02])
_MAG_TYPES = np.array(["ml", "md", "mb", "mw", "mc", "mh"])
_MAG_TYPE_P = np.array([0.58, 0.30, 0.05, 0.04, 0.02, 0.01])
_STATUSES = np.array(["manual", "automatic", "autopicker"])
_STATUS_P = np.array([0.70, 0.20, 0.10])


def _peterson_models() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(periods, NLNM dB, NHNM dB) read from obspy's data file (no heavy obspy.signal import)."""
    import importlib.util

    spec = importlib.util.find_spec("obspy")
    if spec is None or spec.origin is None:  # pragma: no cover - obspy is a dependency
        raise ImportError("obspy is required for the Peterson noise models")
    data = np.load(Path(spec.origin).parent / "signal" / "data" / "noise_models.npz")
    return data["model_periods"], data["low_noise"], data["high_noise"]


def noise_shapes(freqs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Velocity amplitude spectra between NLNM (level 0) and NHNM (level 1), one row per level.

    Interpolated in dB (acceleration PSD), converted to velocity; above 10 Hz the acceleration
    level is held flat. Zero at DC.
    """
    periods, low_db, high_db = _peterson_models()
    f = np.where(freqs > 0, freqs, freqs[1])
    order = np.argsort(1.0 / periods)
    logf = np.log10(1.0 / periods[order])
    low = np.interp(np.log10(f), logf, low_db[order])
    high = np.interp(np.log10(f), logf, high_db[order])
    acc_db = low[None, :] + np.asarray(levels)[:, None] * (high - low)[None, :]
    amp = np.sqrt(10 ** (acc_db / 10.0)) / (2 * np.pi * f[None, :])
    amp[:, freqs <= 0] = 0.0
    return amp


def recording_filter(freqs: np.ndarray) -> np.ndarray:
    """Causal 1-45 Hz band-pass (2-pole high-pass, 4-pole low-pass Butterworth) as in STEAD."""
    s = 1j * freqs / 1.0
    hp = s**2 / (s**2 + np.sqrt(2) * s + 1)
    z = 1j * freqs / 45.0
    return hp / ((z**2 + 0.7654 * z + 1) * (z**2 + 1.8478 * z + 1))


_ENERGY_FREQS = np.linspace(0.1, 50.0, 400)
_BP_POWER = None


def spectrum_energy(fc: np.ndarray, tstar: np.ndarray) -> np.ndarray:
    """Sum of |source_path_spectrum|^2 on a 0.05-Hz grid, in real arithmetic (amplitude scaling)."""
    global _BP_POWER
    f = _ENERGY_FREQS[None, :]
    if _BP_POWER is None:
        _BP_POWER = np.abs(recording_filter(_ENERGY_FREQS)) ** 2
    power = ((2 * np.pi * f) ** 2 / (1.0 + (f / fc[:, None]) ** 2) ** 2
             * np.exp(-2 * np.pi * f * tstar[:, None]) * _BP_POWER[None, :])
    return power.sum(axis=1)


def source_path_spectrum(freqs: np.ndarray, fc: np.ndarray, tstar: np.ndarray) -> np.ndarray:
    """Causal velocity response: Brune omega^2 (1/(1+i f/fc)^2) x i 2 pi f x exp(-pi f t*) x band-pass.

    Shape only (unit moment, unit distance); one row per (fc, t*) pair.
    """
    f = freqs[None, :]
    return (2j * np.pi * f / (1.0 + 1j * f / fc[:, None]) ** 2
            * np.exp(-np.pi * f * tstar[:, None]) * recording_filter(freqs)[None, :])


# Banks of precomputed band-limited series (why: per-trace FFTs cost ~10x the 2,000 traces/s
# target). Signal classes: a log grid of corner frequency x t*; each trace uses its nearest class
# for the waveform's *shape* and its exact parameters for the *amplitude*.
BANK_LENGTH = 1 << 15
NOISE_BANK_LENGTH = 1 << 17
FC_GRID = np.geomspace(0.5, 100.0, 14)
TSTAR_GRID = np.geomspace(0.01, 0.3, 7)
NOISE_LEVELS = np.linspace(0.0, 1.0, 6)
_BANK_SEED = 20191015  # fixed: the banks are part of the generator (GENERATOR_VERSION)


@functools.lru_cache(maxsize=1)
def signal_bank() -> np.ndarray:
    """(n_fc * n_tstar, BANK_LENGTH) float32 unit-variance series, one per (fc, t*) class."""
    rng = np.random.default_rng(_BANK_SEED)
    freqs = np.fft.rfftfreq(BANK_LENGTH, d=1.0 / FS)
    fc, ts = np.meshgrid(FC_GRID, TSTAR_GRID, indexing="ij")
    shape = source_path_spectrum(freqs, fc.ravel(), ts.ravel())
    white = np.fft.rfft(rng.standard_normal((shape.shape[0], BANK_LENGTH)), axis=1)
    series = np.fft.irfft(white * shape, n=BANK_LENGTH, axis=1)
    series /= series.std(axis=1, keepdims=True)
    return series.astype(np.float32)


@functools.lru_cache(maxsize=1)
def noise_bank() -> np.ndarray:
    """(n_levels, NOISE_BANK_LENGTH) float32 unit-variance ambient noise, NLNM -> NHNM shapes."""
    rng = np.random.default_rng(_BANK_SEED + 1)
    freqs = np.fft.rfftfreq(NOISE_BANK_LENGTH, d=1.0 / FS)
    amp = noise_shapes(freqs, NOISE_LEVELS) * np.abs(recording_filter(freqs))[None, :]
    phase = rng.standard_normal((len(NOISE_LEVELS), freqs.size)) + 1j * rng.standard_normal(
        (len(NOISE_LEVELS), freqs.size))
    series = np.fft.irfft(phase * amp, n=NOISE_BANK_LENGTH, axis=1)
    series /= series.std(axis=1, keepdims=True)
    return series.astype(np.float32)


def _class_index(fc: np.ndarray, tstar: np.ndarray) -> np.ndarray:
    i = np.abs(np.log(fc)[:, None] - np.log(FC_GRID)[None, :]).argmin(axis=1)
    j = np.abs(np.log(tstar)[:, None] - np.log(TSTAR_GRID)[None, :]).argmin(axis=1)
    return i * len(TSTAR_GRID) + j


@dataclass
class _Events:
    """Per-trace event parameters (arrays of length n)."""

    magnitude: np.ndarray
    distance_km: np.ndarray
    depth_km: np.ndarray
    p_sample: np.ndarray
    s_sample: np.ndarray
    p_travel: np.ndarray
    back_azimuth: np.ndarray


def _draw_events(rng: np.random.Generator, n: int) -> _Events:
    # Magnitude: shifted log-normal fitted to q25 0.8 / q50 1.3 / q75 2.0 (mean 1.53).
    mag = -0.5 + 1.8 * np.exp(0.485 * rng.standard_normal(n))
    mag = np.round(np.clip(mag, -0.5, 7.9), 2)
    # Distance: gamma(1.1, 46) matches mean 50.8 / median 39 / q75 71 km; capped at 346 km.
    dist = np.round(np.clip(rng.gamma(1.1, 46.0, n), 0.1, 346.0), 2)
    # Depth: log-normal (median 8.5, q25 4.1, q75 14.2) plus 4% deeper events; 0-200 km.
    depth = 8.5 * np.exp(0.92 * rng.standard_normal(n))
    deep = rng.random(n) < 0.04
    depth[deep] = rng.uniform(30.0, 200.0, deep.sum())
    depth = np.round(np.clip(depth, 0.0, traveltime.MAX_DEPTH_KM), 2)
    tp, ts = traveltime.first_arrivals(dist, depth)
    # P sample: mostly whole seconds 4-9 s into the window (STEAD: median 700), some off-grid.
    p = 100.0 * rng.choice(np.arange(4, 10), n, p=[0.10, 0.15, 0.20, 0.25, 0.20, 0.10])
    off = rng.random(n) < 0.12
    p[off] = np.round(rng.uniform(300.0, 1000.0, off.sum()), 0)
    s = p + np.round((ts - tp) * FS)
    # Keep >= 5 s after S inside the window (far events: start closer to P).
    over = s > N_SAMPLES - 500
    p[over] -= s[over] - (N_SAMPLES - 500)
    s[over] = N_SAMPLES - 500
    baz = np.round(rng.uniform(0.0, 360.0, n), 1)
    return _Events(mag, dist, depth, p, s, tp, baz)


def _envelope(t: np.ndarray, onset: np.ndarray, rise: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """(n, T) float32 envelope: zero before onset, linear rise over `rise` samples, then
    exp(-(t - onset - rise) / decay). Computed as min(ramp, decay curve) in a few fused passes."""
    f32 = np.float32
    inv_rise = (1.0 / rise).astype(f32)[:, None]
    env = t[None, :] * inv_rise - (onset / rise).astype(f32)[:, None]
    np.clip(env, 0.0, 1.0, out=env)
    inv_decay = (1.0 / decay).astype(f32)[:, None]
    tail = ((onset + rise) / decay).astype(f32)[:, None] - t[None, :] * inv_decay
    np.minimum(tail, 0.0, out=tail)
    np.exp(tail, out=tail)
    return np.minimum(env, tail, out=env)


def _earthquake_batch(rng: np.random.Generator, n: int):
    """n earthquake traces: waveforms (n, 6000, 3) float32 and per-trace event parameters."""
    ev = _draw_events(rng, n)
    t = np.arange(N_SAMPLES, dtype=np.float32)
    r_hyp = np.sqrt(ev.distance_km**2 + ev.depth_km**2) + 1.0
    m0 = 10 ** (1.5 * ev.magnitude + 9.1)
    stress = 10 ** rng.uniform(6.0, 7.0, n)  # 1-10 MPa
    fc_s = 0.37 * 3500.0 * (16 * stress / (7 * m0)) ** (1 / 3)
    fc_p = 1.5 * fc_s
    ts_sec = ev.p_travel + (ev.s_sample - ev.p_sample) / FS
    kappa = rng.uniform(0.01, 0.04, n)
    tstar_p = ev.p_travel / 600.0 + kappa
    tstar_s = ts_sec / 300.0 + kappa

    # Envelopes: P decays into a P coda; S rises then decays exponentially (the coda).
    coda_tau = 100.0 * 10 ** (0.12 * ev.magnitude + 0.15 + 0.1 * rng.standard_normal(n))
    coda_tau *= 1.0 + ev.distance_km / 150.0
    rise_p = np.clip(FS / fc_p, 3.0, 60.0)
    rise_s = np.clip(FS / fc_s, 5.0, 100.0) + 0.05 * (ev.s_sample - ev.p_sample)
    env_p = _envelope(t, ev.p_sample, rise_p, 0.6 * coda_tau)
    env_s = _envelope(t, ev.s_sample, rise_s, coda_tau)
    # A second, weaker event in ~10% of traces, later in the window (unlabelled, as in STEAD).
    second = rng.random(n) < 0.10
    if second.any():
        idx = np.nonzero(second)[0]
        sp2 = rng.uniform(100.0, 1500.0, idx.size)
        p2 = rng.uniform(ev.s_sample[idx] + 200.0, N_SAMPLES - 200.0)
        weaker = (10 ** -rng.uniform(0.3, 1.5, idx.size)).astype(np.float32)[:, None]
        env_p[idx] += weaker * _envelope(t, p2, rise_p[idx], 0.6 * coda_tau[idx])
        env_s[idx] += weaker * _envelope(t, p2 + sp2, rise_s[idx], coda_tau[idx])

    # Peak amplitudes from the spectra (Parseval: energy / effective duration), so S/P ratios,
    # corner frequencies and attenuation act on amplitude; (beta/alpha)^3 ~ 0.19 for P.
    e_p = spectrum_energy(fc_p, tstar_p)
    e_s = spectrum_energy(fc_s, tstar_s)
    rad_p = rng.uniform(0.3, 1.0, n)
    rad_s = rng.uniform(0.4, 1.0, n)
    # Effective durations (integral of envelope^2: ramp/3 + decay/2), in seconds.
    dur_p = (rise_p / 3 + 0.3 * coda_tau) / FS
    dur_s = (rise_s / 3 + 0.5 * coda_tau) / FS
    amp_p = 0.19 * rad_p * m0 / r_hyp * np.sqrt(e_p / dur_p)
    amp_s = rad_s * m0 / r_hyp * np.sqrt(e_s / dur_s)
    amp_p, amp_s = amp_p / amp_s, np.ones(n)  # the absolute scale is set by the SNR draw below

    # Six component series per trace: P, SV, SH (band-limited by the trace's spectrum class,
    # under their envelopes) and three ambient-noise channels.
    cls_p, cls_s = _class_index(fc_p, tstar_p), _class_index(fc_s, tstar_s)
    env_p *= amp_p[:, None].astype(np.float32)
    comp = np.empty((n, 6, N_SAMPLES), dtype=np.float32)
    bank = signal_bank()
    starts = rng.integers(0, bank.shape[1] - N_SAMPLES, (n, 3))
    for i in range(n):
        for k, (row, env) in enumerate(((cls_p[i], env_p[i]), (cls_s[i], env_s[i]),
                                        (cls_s[i], env_s[i]))):
            s0 = starts[i, k]
            np.multiply(bank[row, s0:s0 + N_SAMPLES], env, out=comp[i, k])
    _noise_into(rng, comp[:, 3:])

    # Rotation onto E, N, Z: near-vertical incidence, so P on Z and S on the horizontals.
    inc = np.deg2rad(rng.uniform(10.0, 35.0, n))
    az = np.deg2rad((ev.back_azimuth + 180.0) % 360.0)
    sin_i, cos_i, sin_a, cos_a = np.sin(inc), np.cos(inc), np.sin(az), np.cos(az)
    sv = rng.uniform(0.5, 1.5, n)
    w_sv, w_sh = sv / np.sqrt(1 + sv**2), 1.0 / np.sqrt(1 + sv**2)
    mix = np.empty((n, 3, 3))  # [channel E, N, Z] x [P, SV, SH]
    mix[:, 0] = np.stack([sin_i * sin_a, w_sv * cos_i * sin_a, w_sh * cos_a], axis=1)
    mix[:, 1] = np.stack([sin_i * cos_a, w_sv * cos_i * cos_a, -w_sh * sin_a], axis=1)
    mix[:, 2] = np.stack([cos_i, -w_sv * sin_i, np.zeros(n)], axis=1)

    # Noise level: per-channel powers in the 5 s windows around P (from the components:
    # a 3x3 Gram matrix of P/SV/SH in the signal window, noise power in the noise window).
    pi = ev.p_sample.astype(np.int64)
    gram = np.empty((n, 3, 3))
    pn = np.empty((n, 3))
    chan = (1.0 + 0.15 * rng.standard_normal((n, 3))).clip(0.5, 1.5)  # per-channel noise level
    for i in range(n):
        seg = comp[i, :3, pi[i]:pi[i] + 500].astype(np.float64)
        gram[i] = seg @ seg.T / seg.shape[1]
        nseg = comp[i, 3:, max(pi[i] - 500, 0):pi[i]].astype(np.float64)
        pn[i] = np.einsum("ct,ct->c", nseg, nseg) / max(nseg.shape[1], 1) * chan[i] ** 2
    ps = np.einsum("ncs,nst,nct->nc", mix, gram, mix)
    target = np.interp(rng.random(n), _SNR_Q, _SNR_DB)
    scale = _noise_scale(ps, pn, target)

    # Raw counts: stations differ by orders of magnitude in gain. One batched (T,6)@(6,3)
    # product mixes, scales, adds the noise and lays the result out as (T, 3) at once.
    gain = 10 ** rng.uniform(1.0, 4.0, n)
    out_mix = np.zeros((n, 3, 6))
    out_mix[:, :, :3] = mix * (gain / scale)[:, None, None]
    out_mix[:, [0, 1, 2], [3, 4, 5]] = chan * gain[:, None]
    waves = np.matmul(comp.transpose(0, 2, 1), out_mix.astype(np.float32).transpose(0, 2, 1))
    _add_glitches(rng, waves, prob=0.04)
    snr = waveform_snr_db(waves, ev.p_sample)
    # Coda end: where the S envelope sinks to the noise RMS (the noise has unit variance
    # before gain, so the S peak in noise units is sqrt(mean channel S gain^2) / scale).
    peak = np.sqrt(np.mean(mix[:, :, 1] ** 2 + mix[:, :, 2] ** 2, axis=1)) / scale
    coda_end = ev.s_sample + rise_s + coda_tau * np.log(np.maximum(peak, 1.0))
    coda_end = np.clip(np.round(coda_end), ev.s_sample + 50, N_SAMPLES)
    return waves, ev, snr, coda_end


def _noise_into(rng: np.random.Generator, out: np.ndarray) -> None:
    """Fill (n, 3, 6000) with unit-variance coloured noise between NLNM and NHNM (+ tones)."""
    n = out.shape[0]
    bank = noise_bank()
    level = rng.integers(0, len(NOISE_LEVELS), n)
    starts = rng.integers(0, bank.shape[1] - N_SAMPLES, (n, 3))
    for i in range(n):
        for c in range(3):
            out[i, c] = bank[level[i], starts[i, c]:starts[i, c] + N_SAMPLES]
    # Station-specific narrow-band tones (electrical/mechanical) in ~15% of stations.
    tone = np.nonzero(rng.random(n) < 0.15)[0]
    if tone.size:
        f0 = rng.uniform(2.0, 30.0, tone.size)
        amp = rng.uniform(0.1, 0.6, (tone.size, 3))  # per channel (the pick-up differs)
        phase = rng.uniform(0, 2 * np.pi, tone.size)
        t = np.arange(N_SAMPLES, dtype=np.float32) / np.float32(FS)
        wave = np.sin(np.float32(2 * np.pi) * f0[:, None].astype(np.float32) * t[None, :]
                      + phase[:, None].astype(np.float32))
        out[tone] += amp[:, :, None].astype(np.float32) * wave[:, None, :]


def _noise_scale(ps: np.ndarray, pn: np.ndarray, target_db: np.ndarray) -> np.ndarray:
    """Per-trace divisor of the signal so the mean-of-channels window SNR hits `target_db`."""
    n = ps.shape[0]
    ps = np.maximum(ps, 1e-30)
    pn = np.maximum(pn, 1e-30)
    # Bisection on log10(divisor^2): mean_c 10 log10(1 + ps/(d pn)) is decreasing in d.
    lo = np.full(n, -30.0)
    hi = np.full(n, 60.0)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        snr = np.mean(10 * np.log10(1 + ps / (10**mid[:, None] * pn)), axis=1)
        above = snr > target_db
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return np.sqrt(10 ** (0.5 * (lo + hi)))


def _add_glitches(rng: np.random.Generator, waves: np.ndarray, prob: float,
                  gap_prob: float = 0.0) -> None:
    """In place on (n, T, 3): spikes in a fraction of traces; zeroed gaps (dropouts)."""
    n = waves.shape[0]
    for i in np.nonzero(rng.random(n) < prob)[0]:
        rms = float(np.sqrt(np.mean(np.square(waves[i], dtype=np.float64)))) + 1e-30
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, N_SAMPLES - 3))
            width = int(rng.integers(1, 4))
            waves[i, at:at + width, int(rng.integers(0, 3))] += (
                rng.choice([-1.0, 1.0]) * rms * rng.uniform(5, 50))
    if gap_prob > 0:
        for i in np.nonzero(rng.random(n) < gap_prob)[0]:
            length = int(rng.integers(50, 1500))
            at = int(rng.integers(0, N_SAMPLES - length))
            waves[i, at:at + length, :] = 0.0


def _noise_batch(rng: np.random.Generator, n: int):
    """n noise traces (n, 6000, 3) float32; ~3% single-channel stations, spikes, gaps."""
    single = rng.random(n) < 0.03
    comp = np.empty((n, 3, N_SAMPLES), dtype=np.float32)
    _noise_into(rng, comp)
    gain = 10 ** rng.uniform(1.0, 4.0, n)
    chan = (1.0 + 0.15 * rng.standard_normal((n, 3))).clip(0.5, 1.5)
    out_mix = np.zeros((n, 3, 3))
    out_mix[:, [0, 1, 2], [0, 1, 2]] = chan * gain[:, None]
    out_mix[single] = 0.0
    out_mix[single, :, 2] = gain[single, None]  # single-channel station: Z copied to E and N
    waves = np.matmul(comp.transpose(0, 2, 1), out_mix.astype(np.float32).transpose(0, 2, 1))
    _add_glitches(rng, waves, prob=0.08, gap_prob=0.05)
    waves[single, :, 0] = waves[single, :, 2]  # a glitch on a one-sensor station shows everywhere
    waves[single, :, 1] = waves[single, :, 2]
    return waves, single


# ---------------------------------------------------------------------------- metadata

def _stations(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """A pool of stations (code, network, type, coordinates) the traces are recorded on."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    codes = set()
    while len(codes) < n:
        length = rng.integers(3, 6)
        codes.add("".join(rng.choice(letters[:26], 1)) + "".join(rng.choice(letters, length - 1)))
    codes = sorted(codes)
    rng.shuffle(codes)
    return pd.DataFrame({
        "receiver_code": codes,
        "network_code": rng.choice(_NETWORKS, n),
        "receiver_type": rng.choice(_RECEIVER_TYPES, n, p=_RECEIVER_P),
        "receiver_latitude": np.round(rng.uniform(19.0, 62.0, n), 4),
        "receiver_longitude": np.round(rng.uniform(-155.0, -66.0, n), 4),
        "receiver_elevation_m": np.round(np.clip(rng.gamma(2.2, 450.0, n) - 40.0, -50, 4000), 1),
    })


def _start_times(rng: np.random.Generator, n: int) -> pd.DatetimeIndex:
    """Random trace start times 2000-2018 at 10 ms resolution (as merged.csv)."""
    t0 = pd.Timestamp("2000-01-01").value // 10**7
    t1 = pd.Timestamp("2018-12-31").value // 10**7
    centis = rng.integers(t0, t1, n)
    return pd.to_datetime(centis * 10**7)


def _unique_names(stations: pd.DataFrame, times: pd.DatetimeIndex, fmt: str, suffix: str) -> list[str]:
    names, seen = [], set()
    for sta, net, ts in zip(stations["receiver_code"], stations["network_code"], times):
        name = f"{sta}.{net}_{ts.strftime(fmt)}_{suffix}"
        bump = 0
        while name in seen:  # same station, same second/minute: move on by one unit
            bump += 1
            step = pd.Timedelta(seconds=bump) if fmt.endswith("%S") else pd.Timedelta(minutes=bump)
            name = f"{sta}.{net}_{(ts + step).strftime(fmt)}_{suffix}"
        seen.add(name)
        names.append(name)
    return names


def _earthquake_rows(rng: np.random.Generator, ev: _Events, snr: np.ndarray,
                     coda_end: np.ndarray, stations: pd.DataFrame) -> pd.DataFrame:
    n = len(ev.magnitude)
    st = stations.iloc[rng.integers(0, len(stations), n)].reset_index(drop=True)
    start = _start_times(rng, n)
    # Origin time rounded to 10 ms like merged.csv; p_travel_sec then holds exactly.
    origin = (start + pd.to_timedelta(ev.p_sample / FS - ev.p_travel, unit="s")).round("10ms")
    p_travel = (start - origin).total_seconds().to_numpy() + ev.p_sample / FS
    # Event position from station, back-azimuth and distance (local flat-earth approximation).
    baz = np.deg2rad(ev.back_azimuth)
    dlat = ev.distance_km * np.cos(baz) / traveltime.KM_PER_DEG
    dlon = ev.distance_km * np.sin(baz) / (traveltime.KM_PER_DEG
                                             * np.cos(np.deg2rad(st["receiver_latitude"])))
    maybe = lambda values, p_null: [None if rng.random() < p_null else v for v in values]
    name_time = start - pd.to_timedelta(rng.uniform(1.0, 2.0, n), unit="s")
    snr32 = np.round(snr, 1).astype(np.float32).astype(np.float64)
    rows = pd.DataFrame({
        **{c: st[c] for c in ("network_code", "receiver_code", "receiver_type",
                              "receiver_latitude", "receiver_longitude", "receiver_elevation_m")},
        "p_arrival_sample": ev.p_sample,
        "p_status": rng.choice(_STATUSES, n, p=_STATUS_P),
        "p_weight": np.round(rng.uniform(0.45, 1.0, n), 2),
        "p_travel_sec": np.round(p_travel, 2),
        "s_arrival_sample": ev.s_sample,
        "s_status": rng.choice(_STATUSES, n, p=_STATUS_P),
        "s_weight": np.round(rng.uniform(0.4, 1.0, n), 2),
        "source_id": [str(v) for v in rng.integers(10**6, 10**8, n)],
        "source_origin_time": origin,
        "source_origin_uncertainty_sec": np.round(rng.uniform(0.05, 1.2, n), 2),
        "source_latitude": np.round(st["receiver_latitude"] + dlat, 4),
        "source_longitude": np.round(st["receiver_longitude"] + dlon, 4),
        "source_error_sec": np.array(maybe(np.round(rng.uniform(0.05, 1.5, n), 4), 0.3), dtype=float),
        "source_gap_deg": np.array(maybe(np.round(rng.uniform(20, 300, n), 3), 0.3), dtype=float),
        "source_horizontal_uncertainty_km": np.array(
            maybe(np.round(rng.gamma(2.0, 1.2, n), 4), 0.3), dtype=float),
        "source_depth_km": ev.depth_km,
        "source_depth_uncertainty_km": np.array(
            maybe(np.round(rng.gamma(2.0, 0.8, n), 2), 0.35), dtype=float),
        "source_magnitude": ev.magnitude,
        "source_magnitude_type": rng.choice(_MAG_TYPES, n, p=_MAG_TYPE_P),
        "source_magnitude_author": maybe(st["network_code"].tolist(), 0.6),
        "source_mechanism_strike_dip_rake": [None] * n,
        "source_distance_deg": np.round(ev.distance_km / traveltime.KM_PER_DEG, 2),
        "source_distance_km": ev.distance_km,
        "back_azimuth_deg": ev.back_azimuth,
        "snr_db": list(snr32),
        "coda_end_sample": coda_end,
        "trace_start_time": start,
        "trace_category": "earthquake_local",
    })
    rows["trace_name"] = _unique_names(rows, name_time, "%Y%m%d%H%M%S", "EV")
    return rows


def _noise_rows(rng: np.random.Generator, n: int, stations: pd.DataFrame) -> pd.DataFrame:
    st = stations.iloc[rng.integers(0, len(stations), n)].reset_index(drop=True)
    start = _start_times(rng, n)
    rows = st.copy()
    rows["trace_start_time"] = start
    rows["trace_category"] = "noise"
    rows["trace_name"] = _unique_names(rows, start, "%Y%m%d%H%M", "NO")
    return rows


# ---------------------------------------------------------------------------- public API

def generate(n_earthquakes: int, n_noise: int, seed: int, batch_size: int = 256):
    """Yield (waveforms (b, 6000, 3) float32, metadata rows DataFrame) batches, seeded.

    Earthquakes come first, then noise; `make_synthetic_subset` shuffles the order on disk.
    """
    if n_earthquakes < 0 or n_noise < 0:
        raise ValueError("n_earthquakes and n_noise must be >= 0")
    rng = np.random.default_rng(seed)
    stations = _stations(rng, max(20, (n_earthquakes + n_noise) // 25))
    done = 0
    while done < n_earthquakes:
        b = min(batch_size, n_earthquakes - done)
        waves, ev, snr, coda_end = _earthquake_batch(rng, b)
        yield waves, _earthquake_rows(rng, ev, snr, coda_end, stations)
        done += b
    done = 0
    while done < n_noise:
        b = min(batch_size, n_noise - done)
        waves, _ = _noise_batch(rng, b)
        yield waves, _noise_rows(rng, b, stations)
        done += b


def assign_split(categories: np.ndarray, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """Random train/val/test labels, stratified by category so every split sees both classes."""
    names = list(fractions)
    weights = np.array([float(fractions[k]) for k in names])
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all zero: {dict(fractions)}")
    weights = weights / weights.sum()
    rng = np.random.default_rng(seed)
    out = np.empty(len(categories), dtype=object)
    for cat in pd.unique(categories):
        idx = np.nonzero(categories == cat)[0]
        idx = idx[rng.permutation(idx.size)]
        counts = np.floor(weights * idx.size).astype(int)
        for k in np.argsort(-(weights * idx.size - counts))[: idx.size - counts.sum()]:
            counts[k] += 1
        out[idx] = np.repeat(names, counts)
    return out


def make_synthetic_subset(out_dir: str | os.PathLike, n_earthquakes: int, n_noise: int,
                          seed: int, split: Mapping[str, float] | None = None) -> Path:
    """Write `subset.hdf5`, `subset.csv` (+ split) and `summary.json` into `out_dir`.

    Deterministic for a given (n_earthquakes, n_noise, seed, split). Files are written to temp
    names and renamed, so an interrupted run leaves no partial subset.
    """
    from feq_lab.data.stead import SteadWriter
    from feq_lab.data.summary import summarize
    from feq_lab.paths import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = dict(split or DEFAULT_SPLIT)
    n = int(n_earthquakes) + int(n_noise)
    # Final CSV order: a seeded shuffle of earthquakes and noise; splits follow that order.
    # Waveforms stream to the HDF5 file batch by batch (bounded memory).
    order = np.random.default_rng([seed, 1]).permutation(n)  # CSV position -> generation index
    categories = np.array(["earthquake_local"] * int(n_earthquakes) + ["noise"] * int(n_noise))
    split_by_index = np.empty(n, dtype=object)
    split_by_index[order] = assign_split(categories[order], split, seed)
    with SteadWriter(out / "subset.hdf5", out / "subset.csv", extra_columns=("split",),
                     defer_csv=True) as writer:
        index = 0
        for waves, meta in generate(n_earthquakes, n_noise, seed):
            for wave, row in zip(waves, meta.to_dict("records")):
                row["split"] = split_by_index[index]
                writer.add(wave, row)
                index += 1
        writer.csv_order = order.tolist()
    config = {"kind": "synthetic", "n_earthquakes": int(n_earthquakes), "n_noise": int(n_noise),
              "seed": int(seed), "split": split, "generator_version": GENERATOR_VERSION}
    summary = summarize(out, config=config)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_jsonable))
    os.chmod(out / "summary.json", 0o644)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    return str(value)
