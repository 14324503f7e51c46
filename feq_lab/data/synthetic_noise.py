"""Ambient seismic noise for the synthetic STEAD: every trace its own realisation, in m/s.

Why per trace: v3 cut all noise from six fixed series, so test noise was shifted training noise
(issue #14). Here each trace's noise is drawn afresh in the frequency domain (one FFT per
channel), so no two traces share waveform material, and it is not stationary:
- ambient level between Peterson's (1993) low and high noise models (NLNM/NHNM), a station
  property in [0, 1] interpolated in dB, with the secondary microseism peak at 0.1-0.3 Hz that
  the models carry (Peterson 1993; Longuet-Higgins 1950 for its origin);
- a slowly varying level (log-amplitude Gaussian process, correlation ~10-30 s), as diurnal and
  weather-driven noise changes within minutes (McNamara & Buland 2004, their PDFs are broad);
- transients with their own random carriers: impulsive cultural ones (footsteps, machinery,
  traffic: short rise, 3-30 Hz), emergent cultural ones (passing vehicles, trains) and wind
  gusts (emergent, 1-10 Hz, stronger on the horizontals) (Withers et al. 1996; McNamara &
  Buland 2004; Bonnefoy-Claudet et al. 2006 on the sources of high-frequency noise);
- station tones (electrical/mechanical pick-up) at a station frequency.
Everything is vectorised over a batch; `recording_filter` is the processing applied to every
trace (signal and noise alike).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import scipy.fft as sfft

FS = 100.0
N_SAMPLES = 6000


@functools.lru_cache(maxsize=1)
def peterson_models() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequencies Hz ascending, NLNM dB, NHNM dB) of acceleration PSD re 1 (m/s^2)^2/Hz.

    Read from obspy's data file (the same numbers as obspy.signal.spectral_estimation.get_nlnm /
    get_nhnm, Peterson 1993) without the heavy obspy.signal import."""
    spec = importlib.util.find_spec("obspy")
    if spec is None or spec.origin is None:  # pragma: no cover - obspy is a dependency
        raise ImportError("obspy is required for the Peterson noise models")
    data = np.load(Path(spec.origin).parent / "signal" / "data" / "noise_models.npz")
    freqs = 1.0 / data["model_periods"]
    order = np.argsort(freqs)
    return freqs[order], data["low_noise"][order], data["high_noise"][order]


def acceleration_psd_db(freqs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(n_levels, n_freqs) acceleration PSD in dB between NLNM (level 0) and NHNM (level 1).

    Interpolated in dB along log-frequency; outside the models' band (above 10 Hz) held flat."""
    f_mod, low_db, high_db = peterson_models()
    f = np.where(freqs > 0, freqs, freqs[freqs > 0][0] if np.any(freqs > 0) else 1.0)
    low = np.interp(np.log10(f), np.log10(f_mod), low_db)
    high = np.interp(np.log10(f), np.log10(f_mod), high_db)
    return low[None, :] + np.asarray(levels, dtype=np.float64).reshape(-1)[:, None] * (high - low)[None, :]


def velocity_psd(freqs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(n_levels, n_freqs) one-sided velocity PSD, (m/s)^2/Hz; zero at DC (a = i 2 pi f v)."""
    acc = 10.0 ** (acceleration_psd_db(freqs, levels) / 10.0)
    f = np.maximum(freqs, 1e-6)
    out = acc / (2 * np.pi * f[None, :]) ** 2
    out[:, freqs <= 0] = 0.0
    return out


def recording_filter(freqs: np.ndarray) -> np.ndarray:
    """Causal 1-45 Hz band-pass: 4-pole high-pass at 1 Hz, 4-pole low-pass at 45 Hz.

    The magnitude of EQTransformer's preprocessing (Mousavi et al. 2020: band-pass 1-45 Hz,
    2 corners, applied forward and backward), kept causal so no energy precedes an onset. The
    steep high-pass also keeps the microseism from dominating a 60-s window (few degrees of
    freedom: independent traces would look alike)."""
    s = 1j * np.asarray(freqs, dtype=np.float64) / 1.0
    hp = (s**2 / (s**2 + np.sqrt(2) * s + 1)) ** 2
    z = 1j * np.asarray(freqs, dtype=np.float64) / 45.0
    return hp / ((z**2 + 0.7654 * z + 1) * (z**2 + 1.8478 * z + 1))


@functools.lru_cache(maxsize=4)
def _band_power_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Recorded (filtered) velocity noise power on a grid of levels (for SNR planning)."""
    freqs = np.fft.rfftfreq(n, d=1.0 / FS)
    grid = np.linspace(0.0, 1.0, 101)
    h2 = np.abs(recording_filter(freqs)) ** 2
    power = (velocity_psd(freqs, grid) * h2[None, :]).sum(axis=1) * (freqs[1] - freqs[0])
    return grid, power


def noise_power(levels: np.ndarray, n: int = N_SAMPLES) -> np.ndarray:
    """Mean-square recorded ambient velocity (m/s)^2 at each station level (interpolated)."""
    grid, power = _band_power_table(n)
    return np.exp(np.interp(levels, grid, np.log(power)))


def _coloured(rng: np.random.Generator, amp: np.ndarray, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Gaussian series with one-sided PSD amp**2 (broadcast over `shape`), float32 (.., n).

    Var(x) = sum(PSD) df needs |X_k|^2 = n fs PSD_k / 2 in numpy's irfft convention."""
    nf = n // 2 + 1
    spec = (rng.standard_normal((*shape, nf), dtype=np.float32)
            + 1j * rng.standard_normal((*shape, nf), dtype=np.float32)).astype(np.complex64)
    spec *= (amp * np.sqrt(n * FS / 4.0)).astype(np.float32)
    return sfft.irfft(spec, n=n, axis=-1).astype(np.float32, copy=False)


def _smooth_process(rng: np.random.Generator, n_traces: int, corr_s: np.ndarray,
                    n: int) -> np.ndarray:
    """(n_traces, n) unit-variance Gaussian process with correlation time `corr_s` (s each).

    Built on a 1-s grid (cheap) and linearly interpolated to the samples."""
    m = int(np.ceil(n / FS)) + 2
    grid = rng.standard_normal((n_traces, m + 40))
    out = np.empty((n_traces, m))
    for i in range(n_traces):  # a short moving average per trace (its own correlation time)
        w = max(round(corr_s[i]), 1)
        kernel = np.ones(w) / np.sqrt(w)
        out[i] = np.convolve(grid[i], kernel, mode="valid")[:m]
    t = np.arange(n) / FS
    return np.stack([np.interp(t, np.arange(m), row) for row in out]).astype(np.float32)


def ambient_noise(rng: np.random.Generator, levels: np.ndarray, n: int = N_SAMPLES) -> np.ndarray:
    """(n_traces, 3, n) recorded ambient velocity noise (m/s), each trace its own realisation,
    with a slowly varying level (the non-stationarity of real ambient noise)."""
    freqs = np.fft.rfftfreq(n, d=1.0 / FS)
    amp = np.sqrt(velocity_psd(freqs, levels)) * np.abs(recording_filter(freqs))[None, :]
    x = _coloured(rng, amp[:, None, :], (len(levels), 3), n)
    sigma = rng.uniform(0.05, 0.45, len(levels)).astype(np.float32)
    drift = _smooth_process(rng, len(levels), rng.uniform(8.0, 30.0, len(levels)), n)
    x *= np.exp(sigma[:, None] * drift - 0.5 * sigma[:, None] ** 2)[:, None, :]
    return x


def _band(freqs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n, nf) smooth band-pass magnitudes (2-pole Butterworth-like edges)."""
    f = freqs[None, :]
    return (f / lo[:, None]) ** 2 / (1 + (f / lo[:, None]) ** 4) ** 0.5 / (
        1 + (f / hi[:, None]) ** 4) ** 0.5


TRANSIENT_KINDS = ("impulsive_cultural", "emergent_cultural", "wind")


def add_transients(rng: np.random.Generator, noise: np.ndarray, ambient_rms: np.ndarray,
                   rate: float = 1.2) -> np.ndarray:
    """In place on (n, 3, T): Poisson(rate) transients per trace; returns their count per trace.

    Each has its own carrier (band-limited white noise), an envelope (impulsive: rise 0.03-0.3 s,
    decay 0.5-3 s; emergent: rise and decay 2-12 s) and a peak of 1.5-15x the ambient RMS."""
    n, _, t_len = noise.shape
    counts = rng.poisson(rate, n)
    has = np.flatnonzero(counts > 0)
    if has.size == 0:
        return counts
    kind = rng.choice(3, has.size, p=[0.5, 0.25, 0.25])
    lo = np.where(kind == 0, rng.uniform(3.0, 10.0, has.size),
                  np.where(kind == 1, rng.uniform(1.5, 5.0, has.size), rng.uniform(1.0, 2.5, has.size)))
    hi = lo * rng.uniform(4.0, 10.0, has.size)  # broad-band: many degrees of freedom
    freqs = np.fft.rfftfreq(t_len, d=1.0 / FS)
    band = _band(freqs, lo, np.minimum(hi, 45.0))
    band /= np.sqrt((band**2).sum(axis=1, keepdims=True) * (freqs[1] - freqs[0]))  # unit variance
    carrier = _coloured(rng, band[:, None, :], (has.size, 3), t_len)
    t = np.arange(t_len, dtype=np.float32) / np.float32(FS)
    env = np.zeros((has.size, t_len), dtype=np.float32)
    for j, i in enumerate(has):
        for _ in range(int(counts[i])):
            impulsive = kind[j] == 0
            rise = rng.uniform(0.03, 0.3) if impulsive else rng.uniform(2.0, 12.0)
            decay = rng.uniform(0.5, 3.0) if impulsive else rng.uniform(2.0, 12.0)
            t0 = rng.uniform(-0.3 * rise, t_len / FS)
            peak = 10 ** rng.uniform(np.log10(1.5), np.log10(15.0))
            x = t - np.float32(t0)
            up = np.clip(x / np.float32(rise), 0.0, 1.0)
            down = np.exp(-np.maximum(x - np.float32(rise), 0.0) / np.float32(decay))
            env[j] += np.float32(peak) * up * down
    # Wind loads the horizontals (tilt), cultural sources are closer to isotropic.
    weights = np.where((kind == 2)[:, None], [1.0, 1.0, 0.4], [1.0, 1.0, 1.0]).astype(np.float32)
    weights *= rng.uniform(0.6, 1.0, (has.size, 3)).astype(np.float32)
    noise[has] += (carrier * env[:, None, :] * weights[:, :, None]
                   * ambient_rms[has, None, None].astype(np.float32))
    return counts


def add_tones(rng: np.random.Generator, noise: np.ndarray, tone_hz: np.ndarray,
              ambient_rms: np.ndarray) -> None:
    """In place: a station tone (NaN = none) at 0.1-0.5x the ambient RMS, per-channel pick-up."""
    idx = np.flatnonzero(np.isfinite(tone_hz))
    if idx.size == 0:
        return
    t = np.arange(noise.shape[-1], dtype=np.float64) / FS
    phase = rng.uniform(0, 2 * np.pi, idx.size)
    wave = np.sin(2 * np.pi * tone_hz[idx, None] * t[None, :] + phase[:, None]).astype(np.float32)
    amp = rng.uniform(0.1, 0.5, (idx.size, 3)) * ambient_rms[idx, None]
    noise[idx] += amp[:, :, None].astype(np.float32) * wave[:, None, :]
