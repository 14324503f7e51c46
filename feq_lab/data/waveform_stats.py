"""Waveform statistics of a STEAD-format set, each beside the band real data fall in.

Why: metadata medians say nothing about whether a waveform looks real (issue #14: S/P
amplitudes, onsets, noise stationarity and spectra were where v3's shortcuts lived). These
numbers go into `summary.json` (`prepare`) and are the generator's acceptance checks; they work
on any STEAD-format set, and use the synthetic generator's true arrivals and station gains
(HDF5 attributes) where present, the labelled picks otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.fft as sfft
from scipy.signal import welch

from feq_lab.data.synthetic_noise import peterson_models, recording_filter

FS = 100.0
RMS_WINDOW = 500  # 5 s
PSD_FREQS = (0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
DISTANCE_BINS_KM = (0.0, 20.0, 50.0, 100.0, 350.0)

# The bands (value ranges real seismograms give) and where they come from.
BANDS: dict[str, dict[str, Any]] = {
    "s_to_p_peak_ratio_median": {
        "band": [2.5, 10.0],
        "source": "horizontal S / vertical P peak on local records: (alpha/beta)^3 ~ 5 times "
                  "the radiation ratio (Aki & Richards 2002); issue #14"},
    "rise_time_frac_over_0.1s": {
        "band": [0.2, 1.0],
        "source": "share of P onsets whose envelope takes > 0.1 s from 10% to 50% of its peak in "
                  "the first 0.5 s: emergent onsets at regional distance (Sato 1989 envelope "
                  "broadening; issue #14)"},
    "noise_rms_max_over_median_q90": {
        "band": [3.0, None],
        "source": "max/median of 5-s RMS windows per noise trace, 90th percentile: cultural and "
                  "wind transients (McNamara & Buland 2004); issue #14"},
    "noise_psd_frac_within_peterson": {
        "band": [0.9, 1.0],
        "source": "share of (trace, frequency) PSD values between NLNM and NHNM, 0.15-20 Hz "
                  "(Peterson 1993); needs the station gain"},
    "dominant_frequency_falls_with_distance": {
        "band": [True, True],
        "source": "median dominant P frequency per distance bin decreases with distance "
                  "(t* grows with travel time: Anderson & Hough 1984)"},
}


def _envelope(x: np.ndarray) -> np.ndarray:
    """Analytic-signal magnitude along the last axis (FFT Hilbert transform)."""
    n = x.shape[-1]
    spec = sfft.fft(x, axis=-1)
    h = np.zeros(n)
    h[0] = 1.0
    h[1:(n + 1) // 2] = 2.0
    if n % 2 == 0:
        h[n // 2] = 1.0
    return np.abs(sfft.ifft(spec * h, axis=-1))


def onset_rise_time(wave: np.ndarray, p: float) -> float:
    """Seconds the 3-component envelope takes from 10% to 50% of its peak in [P, P + 0.5 s);
    NaN where P is too near the edges. Envelope of the demeaned trace around P, 5-sample mean."""
    p = round(p)
    if p < 200 or p + 300 > wave.shape[0]:
        return float("nan")
    seg = wave[p - 200:p + 300].astype(np.float64)
    seg = seg - seg[:200].mean(axis=0)
    env = np.sqrt(np.sum(_envelope(seg.T) ** 2, axis=0))
    env = np.convolve(env, np.ones(5) / 5.0, mode="same")[200:250]
    peak = env.max()
    if not peak > 0:
        return float("nan")
    t10 = int(np.argmax(env >= 0.1 * peak))
    t50 = t10 + int(np.argmax(env[t10:] >= 0.5 * peak))
    return (t50 - t10) / FS


def s_to_p_peak_ratio(wave: np.ndarray, p: float, s: float) -> float:
    """max |E, N| in [S, S + 3 s) / max |Z| in [P, min(P + 3 s, S)); NaN if S - P < 1 s or a
    channel is dead."""
    p, s = round(p), round(s)
    if s - p < 100 or s >= wave.shape[0]:
        return float("nan")
    x = wave.astype(np.float64) - wave.mean(axis=0)
    hp = np.abs(x[s:s + 300, :2]).max()
    vp = np.abs(x[p:min(p + 300, s), 2]).max()
    if not (hp > 0 and vp > 0) or not np.any(x[:, 0]) or not np.any(x[:, 1]):
        return float("nan")
    return float(hp / vp)


def dominant_frequency(wave: np.ndarray, p: float) -> float:
    """Frequency (Hz) of the largest smoothed power of Z in [P, P + 2.56 s) (Hann taper)."""
    p = round(p)
    seg = wave[p:p + 256, 2].astype(np.float64)
    if seg.size < 256 or not np.any(seg):
        return float("nan")
    seg = (seg - seg.mean()) * np.hanning(seg.size)
    power = np.convolve(np.abs(np.fft.rfft(seg)) ** 2, np.ones(3) / 3.0, mode="same")
    f = np.fft.rfftfreq(seg.size, 1.0 / FS)
    return float(f[1:][np.argmax(power[1:])])


def rms_nonstationarity(wave: np.ndarray) -> float:
    """max / median of the 5-s RMS of the vertical (the live channel with most energy if Z is
    dead); NaN for an all-zero trace."""
    x = wave.astype(np.float64)
    live = [c for c in (2, 1, 0) if np.any(x[:, c])]
    if not live:
        return float("nan")
    z = x[:, live[0]] - x[:, live[0]].mean()
    n = z.size // RMS_WINDOW
    rms = np.sqrt(np.mean(z[:n * RMS_WINDOW].reshape(n, RMS_WINDOW) ** 2, axis=1))
    med = np.median(rms)
    return float(rms.max() / med) if med > 0 else float("nan")


def acceleration_psd_db(wave: np.ndarray, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """(freqs, dB re 1 (m/s^2)^2/Hz) of Z: Welch (20.48-s Hann segments) of counts / gain,
    corrected for the recording filter, differentiated (x (2 pi f)^2)."""
    z = wave[:, 2].astype(np.float64) / gain
    f, pxx = welch(z - z.mean(), fs=FS, nperseg=2048, noverlap=1024)
    h2 = np.abs(recording_filter(f)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = pxx / np.maximum(h2, 1e-30) * (2 * np.pi * f) ** 2
        return f, 10 * np.log10(acc)


def artefact_flags(wave: np.ndarray) -> dict[str, bool]:
    """Single-channel copy (E = N = Z), zero gap (>= 50 samples, all channels, not the whole
    trace), dead channel (all zero while another lives), clipping (>= 3 samples at the max)."""
    x = wave
    live = [bool(np.any(x[:, c])) for c in range(3)]
    single = live[2] and np.array_equal(x[:, 0], x[:, 2]) and np.array_equal(x[:, 1], x[:, 2])
    zero_all = ~np.any(x != 0, axis=1)
    gap = False
    if any(live) and zero_all.any():
        padded = np.concatenate([[0], zero_all.astype(np.int8), [0]])
        d = np.diff(padded)
        runs = np.flatnonzero(d == -1) - np.flatnonzero(d == 1)
        gap = bool(runs.max() >= 50)
    clipped = False
    for c in range(3):
        if live[c]:
            a = np.abs(x[:, c])
            clipped |= int(np.count_nonzero(a == a.max())) >= 3
    return {"single_channel": bool(single), "gap": gap,
            "dead_channel": bool(any(live) and not all(live)), "clipped": bool(clipped)}


def _quantiles(v: np.ndarray) -> dict[str, Any]:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0}
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"count": int(v.size), "q10": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "q90": float(q[4])}


def _check(name: str, value: Any) -> dict[str, Any]:
    band = BANDS[name]["band"]
    lo, hi = band
    ok = None
    if value is not None and not (isinstance(value, float) and np.isnan(value)):
        ok = bool((lo is None or value >= lo) and (hi is None or value <= hi))
    return {"value": value, "band": band, "ok": ok, "source": BANDS[name]["source"]}


def compute(waves: np.ndarray, meta: pd.DataFrame, truth: Mapping[str, np.ndarray] | None = None,
            gains: np.ndarray | None = None) -> dict[str, Any]:
    """All waveform statistics for (n, 6000, 3) `waves` and their metadata rows.

    `truth`: optional arrays `p_arrival_sample_true`/`s_arrival_sample_true` (NaN = unknown)
    used instead of the labels; `gains`: counts per m/s (NaN = unknown) for the noise PSD."""
    cat = meta["trace_category"].to_numpy()
    eq = np.flatnonzero(cat == "earthquake_local")
    no = np.flatnonzero(cat == "noise")
    p = meta["p_arrival_sample"].to_numpy(dtype=np.float64)
    s = meta["s_arrival_sample"].to_numpy(dtype=np.float64)
    truth = truth or {}
    pt = np.asarray(truth.get("p_arrival_sample_true", np.full(len(meta), np.nan)), dtype=np.float64)
    st = np.asarray(truth.get("s_arrival_sample_true", np.full(len(meta), np.nan)), dtype=np.float64)
    pt = np.where(np.isfinite(pt), pt, p)
    st = np.where(np.isfinite(st), st, s)
    out: dict[str, Any] = {"n_earthquakes": int(eq.size), "n_noise": int(no.size),
                           "arrivals": "true" if truth else "labelled"}

    rise = np.array([onset_rise_time(waves[i], pt[i]) for i in eq])
    ratio = np.array([s_to_p_peak_ratio(waves[i], pt[i], st[i]) for i in eq])
    fdom = np.array([dominant_frequency(waves[i], pt[i]) for i in eq])
    dist = meta["source_distance_km"].to_numpy(dtype=np.float64)[eq] if eq.size else np.zeros(0)
    out["onset_rise_time_sec"] = _quantiles(rise)
    finite = rise[np.isfinite(rise)]
    out["rise_time_frac_over_0.1s"] = _check(
        "rise_time_frac_over_0.1s", float((finite > 0.1).mean()) if finite.size else None)
    out["s_to_p_peak_ratio"] = _quantiles(ratio)
    out["s_to_p_peak_ratio_median"] = _check(
        "s_to_p_peak_ratio_median", out["s_to_p_peak_ratio"].get("median"))
    by_bin = {}
    medians = []
    for lo, hi in itertools.pairwise(DISTANCE_BINS_KM):
        sel = (dist >= lo) & (dist < hi) & np.isfinite(fdom)
        med = float(np.median(fdom[sel])) if sel.sum() >= 5 else None
        by_bin[f"{lo:g}-{hi:g}km"] = {"count": int(sel.sum()), "median_hz": med}
        if med is not None:
            medians.append(med)
    out["dominant_frequency_by_distance"] = by_bin
    # Emergent onsets should be rarer near the source than at regional distance.
    out["rise_time_frac_over_0.1s_by_distance"] = {
        f"{lo:g}-{hi:g}km": (float((rise[sel] > 0.1).mean()) if sel.sum() >= 5 else None)
        for lo, hi in itertools.pairwise(DISTANCE_BINS_KM)
        for sel in [(dist >= lo) & (dist < hi) & np.isfinite(rise)]}
    falls = bool(len(medians) >= 2 and medians[-1] < medians[0]) if medians else None
    out["dominant_frequency_falls_with_distance"] = _check(
        "dominant_frequency_falls_with_distance", falls)

    ns = np.array([rms_nonstationarity(waves[i]) for i in no])
    out["noise_rms_max_over_median"] = _quantiles(ns)
    out["noise_rms_max_over_median_q90"] = _check(
        "noise_rms_max_over_median_q90", out["noise_rms_max_over_median"].get("q90"))

    gains = np.full(len(meta), np.nan) if gains is None else np.asarray(gains, dtype=np.float64)
    psd_rows = []
    for i in no:
        if not np.isfinite(gains[i]) or gains[i] <= 0:
            continue
        flags = artefact_flags(waves[i])
        if flags["gap"] or flags["dead_channel"] or not np.any(waves[i][:, 2]):
            continue
        f, db = acceleration_psd_db(waves[i], gains[i])
        psd_rows.append(np.interp(np.log10(PSD_FREQS), np.log10(f[1:]), db[1:]))
    if psd_rows:
        psd = np.array(psd_rows)
        f_mod, low, high = peterson_models()
        lo_db = np.interp(np.log10(PSD_FREQS), np.log10(f_mod), low)
        hi_db = np.interp(np.log10(PSD_FREQS), np.log10(f_mod), high)
        q = np.percentile(psd, [10, 50, 90], axis=0)
        out["noise_psd_db"] = {
            "freqs_hz": list(PSD_FREQS), "q10": q[0].round(1).tolist(), "q50": q[1].round(1).tolist(),
            "q90": q[2].round(1).tolist(), "nlnm": lo_db.round(1).tolist(),
            "nhnm": hi_db.round(1).tolist(), "count": len(psd_rows),
            # microseism: the median PSD at 0.2 Hz above its value at 0.5 and 1 Hz
            "microseism_peak": bool(q[1][1] > q[1][3] and q[1][1] > q[1][4])}
        within = (psd >= lo_db[None, :]) & (psd <= hi_db[None, :])
        out["noise_psd_frac_within_peterson"] = _check("noise_psd_frac_within_peterson",
                                                       float(within.mean()))
    else:
        out["noise_psd_db"] = {"count": 0, "note": "no station gain: PSD not in ground units"}

    flags = [artefact_flags(w) for w in waves]
    rates = {}
    for name, idx in (("earthquake", eq), ("noise", no)):
        rates[name] = {k: (float(np.mean([flags[i][k] for i in idx])) if idx.size else None)
                       for k in ("single_channel", "gap", "dead_channel", "clipped")}
    out["artefact_rates"] = rates

    if truth and eq.size:
        err_p = (p[eq] - pt[eq]) / FS
        err_s = (s[eq] - st[eq]) / FS
        status = meta["p_status"].astype(str).to_numpy()[eq]
        auto = status != "manual"
        out["pick_label_error_sec"] = {
            "p_mae": float(np.nanmean(np.abs(err_p))), "s_mae": float(np.nanmean(np.abs(err_s))),
            "p_frac_over_0.1s": float(np.nanmean(np.abs(err_p) > 0.1)),
            "s_frac_over_0.1s": float(np.nanmean(np.abs(err_s) > 0.1)),
            "p_automatic_share": float(auto.mean()),
            "p_automatic_mae": float(np.nanmean(np.abs(err_p[auto]))) if auto.any() else None}
    return out


def read_subset(out_dir: str | Path, meta: pd.DataFrame, max_traces: int = 2000,
                seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """Waveforms, rows, truth and gains of (a seeded sample of at most `max_traces` of) a
    subset's traces, read from `<out_dir>/subset.hdf5` (merged layout)."""
    idx = np.arange(len(meta))
    if len(idx) > max_traces:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_traces, replace=False))
    rows = meta.iloc[idx].reset_index(drop=True)
    waves = np.empty((len(rows), 6000, 3), dtype=np.float32)
    names = ("p_arrival_sample_true", "s_arrival_sample_true")
    truth = {k: np.full(len(rows), np.nan) for k in names}
    gains = np.full(len(rows), np.nan)
    with h5py.File(Path(out_dir) / "subset.hdf5", "r") as handle:
        group = handle["data"]
        for i, name in enumerate(rows["trace_name"]):
            dset = group[name]
            waves[i] = dset[()]
            for k in names:
                if k in dset.attrs:
                    truth[k][i] = float(np.asarray(dset.attrs[k]).ravel()[0])
            if "station_gain_counts_per_m_s" in dset.attrs:
                gains[i] = float(np.asarray(dset.attrs["station_gain_counts_per_m_s"]).ravel()[0])
    if not any(np.isfinite(v).any() for v in truth.values()):
        truth = {}
    return waves, rows, truth, gains
