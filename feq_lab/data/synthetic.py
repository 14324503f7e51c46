"""A physics-based synthetic STEAD, written in the real format (the lab's embedded default).

Why synthetic: the real STEAD (85 GB) cannot be fetched everywhere; tests and the default
pipeline need data that behaves like it. Generator v4 (issue #14) draws every trace's noise and
source/path realisation afresh, so no waveform material is shared between traces, hence none
between splits (the split is drawn before synthesis in `make_synthetic_subset`):
- magnitude, distance and depth to STEAD's quantiles (REFERENCE 1.4; Mousavi et al. 2019);
  first P and S from TauP iasp91 (`traveltime`), regional branches Pg/P*/Pn, Sg/S*/Sn;
- ground velocity by the stochastic method (`synthetic_source`: Brune source, radiation
  pattern, spreading, causal t*, scattering-broadened onsets, coda from a path Q_c);
- ambient noise in m/s between Peterson's NLNM and NHNM with slow level changes, transients
  and tones (`synthetic_noise`), at a station noise level; SNR follows from magnitude, distance
  and the station: the station that "recorded" an event is drawn among stations where the event
  would have been seen (catalogue selection: STEAD holds picked, hence visible, arrivals);
- station gain (raw counts), artefacts on both classes (`synthetic_artefacts`);
- pick labels: ~70% "manual" picks within a few samples of the truth, the rest automatic
  picks with SNR- and onset-dependent errors (late on emergent onsets), `p_weight`/`s_weight`
  from the pick uncertainty; the true arrivals are kept as HDF5 attributes only
  (`TRUTH_COLUMNS`, not in the 35-column CSV) for the generator's own checks;
- `snr_db` is *measured* on the final waveform (`feq_lab.data.snr`), never copied from a target.
Everything is vectorised over a batch of traces and seeded (numpy Generator).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import gamma as _gamma
from scipy.stats import norm as _norm

from feq_lab.data import traveltime
from feq_lab.data.snr import waveform_snr_db
from feq_lab.data.synthetic_artefacts import apply_artefacts
from feq_lab.data.synthetic_noise import (
    FS,
    N_SAMPLES,
    add_tones,
    add_transients,
    ambient_noise,
    noise_power,
)
from feq_lab.data.synthetic_source import earthquake_wavefield

GENERATOR_VERSION = "4"  # bump when the output for a given seed changes
DEFAULT_SPLIT = {"train": 0.85, "val": 0.05, "test": 0.10}
# The generator's ground truth: HDF5 attributes of each earthquake trace, not CSV columns.
TRUTH_COLUMNS = ("p_arrival_sample_true", "s_arrival_sample_true", "station_gain_counts_per_m_s")

_NETWORKS = ["CI", "NC", "TA", "US", "AK", "UW", "HV", "NN", "UU", "IU", "BK", "PB", "OK", "GS",
             "NM", "AV", "MB", "WY", "ET", "SC", "BC", "AZ", "CN", "N4"]
_RECEIVER_TYPES = np.array(["HH", "BH", "EH", "HN", "SH"])
_RECEIVER_P = np.array([0.46, 0.20, 0.29, 0.03, 0.02])
# log10 gain ranges, counts per m/s: broadband (STS-2/Trillium + 24-bit), short period, strong
# motion (whose self-noise keeps the record in a few counts).
_LOG_GAIN = {"HH": (8.5, 9.3), "BH": (8.5, 9.3), "EH": (7.5, 8.7), "HN": (6.0, 7.0),
             "SH": (7.5, 8.5)}
_MAG_TYPES = np.array(["ml", "md", "mb", "mw", "mc", "mh"])
_MAG_TYPE_P = np.array([0.58, 0.30, 0.05, 0.04, 0.02, 0.01])
_STATUSES = np.array(["manual", "automatic", "autopicker"])
_STATUS_P = np.array([0.70, 0.20, 0.10])  # STEAD: ~70% manual (stead_stats.json)

# Station selection: an event is kept at a station where it would have been picked. Detection
# threshold (expected mean-channel SNR, dB) ~ N(mu, sigma) over K candidate stations.
_DETECT_DB = (17.0, 3.5)
_CANDIDATES = 32
_MAG_DIST_CORR = 0.75


@dataclass
class _Events:
    """Per-trace event parameters (arrays of length n); samples are true arrivals."""

    magnitude: np.ndarray
    distance_km: np.ndarray
    depth_km: np.ndarray
    p_sample: np.ndarray
    s_sample: np.ndarray
    p_travel: np.ndarray
    back_azimuth: np.ndarray
    p_branches: np.ndarray
    s_branches: np.ndarray


def _draw_events(rng: np.random.Generator, n: int) -> _Events:
    # Magnitude and distance are correlated in any catalogue-based set (small events are only
    # recorded near their source: detection thresholds, e.g. Mousavi et al. 2019's STEAD
    # magnitude-distance plot): a Gaussian copula with correlation _MAG_DIST_CORR keeps both
    # marginals. Magnitude: shifted log-normal fitted to q25 0.8 / q50 1.3 / q75 2.0 (mean 1.53).
    z_mag = rng.standard_normal(n)
    z_dist = _MAG_DIST_CORR * z_mag + np.sqrt(1 - _MAG_DIST_CORR**2) * rng.standard_normal(n)
    mag = -0.5 + 1.8 * np.exp(0.485 * z_mag)
    mag = np.round(np.clip(mag, -0.5, 7.9), 2)
    # Distance: gamma(1.1, 46) matches mean 50.8 / median 39 / q75 71 km; capped at 346 km.
    dist = _gamma.ppf(np.clip(_norm.cdf(z_dist), 1e-12, 1 - 1e-12), 1.1, scale=46.0)
    dist = np.round(np.clip(dist, 0.1, 346.0), 2)
    # Depth: log-normal (median 8.5, q25 4.1, q75 14.2) plus 4% deeper events; 0-200 km.
    depth = 8.5 * np.exp(0.92 * rng.standard_normal(n))
    deep = rng.random(n) < 0.04
    depth[deep] = rng.uniform(30.0, 200.0, deep.sum())
    depth = np.round(np.clip(depth, 0.0, traveltime.MAX_DEPTH_KM), 2)
    tp, ts = traveltime.first_arrivals(dist, depth)
    pb, sb = traveltime.branch_arrivals(dist, depth)
    # Where the interpolated branches miss the first arrival (a cell touching a branch's edge),
    # the first arrival itself stands in for the direct branch.
    for branches, first in ((pb, tp), (sb, ts)):
        with np.errstate(invalid="ignore"):
            lost = ~(np.fmin.reduce(branches, axis=1) <= first + 0.01)
        branches[lost, 0] = first[lost]
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
    return _Events(mag, dist, depth, p, s, tp, baz, pb, sb)


@dataclass
class _Stations:
    """The station pool: metadata table plus the properties the waveforms need (arrays)."""

    table: pd.DataFrame
    level: np.ndarray  # ambient noise level, 0 = NLNM .. 1 = NHNM (dB interpolation)
    site: np.ndarray  # site amplification of the signal
    gain: np.ndarray  # counts per m/s
    full_scale: np.ndarray  # digitiser full scale, counts
    single: np.ndarray  # single-component station (Z copied to E, N)
    tone_hz: np.ndarray  # station tone frequency or NaN
    chan: np.ndarray  # (n, 3) per-component noise multipliers


def _stations(rng: np.random.Generator, n: int) -> _Stations:
    """A pool of stations (code, network, type, coordinates, noise level, gain, quirks)."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    codes = set()
    while len(codes) < n:
        length = rng.integers(3, 6)
        codes.add("".join(rng.choice(letters[:26], 1)) + "".join(rng.choice(letters, length - 1)))
    codes = sorted(codes)
    rng.shuffle(codes)
    rtype = rng.choice(_RECEIVER_TYPES, n, p=_RECEIVER_P)
    table = pd.DataFrame({
        "receiver_code": codes,
        "network_code": rng.choice(_NETWORKS, n),
        "receiver_type": rtype,
        "receiver_latitude": np.round(rng.uniform(19.0, 62.0, n), 4),
        "receiver_longitude": np.round(rng.uniform(-155.0, -66.0, n), 4),
        "receiver_elevation_m": np.round(np.clip(rng.gamma(2.2, 450.0, n) - 40.0, -50, 4000), 1),
    })
    lo = np.array([_LOG_GAIN[t][0] for t in rtype])
    hi = np.array([_LOG_GAIN[t][1] for t in rtype])
    gain = 10 ** rng.uniform(lo, hi)
    # 16-bit loggers on ~6% of stations clip at +-32768 counts, the rest 24-bit.
    full_scale = np.where(rng.random(n) < 0.06, 32767.0, 8388607.0)
    tone = np.where(rng.random(n) < 0.12, rng.uniform(2.0, 40.0, n), np.nan)
    return _Stations(
        table=table,
        level=rng.beta(2.3, 2.7, n),
        site=10 ** rng.normal(0.0, 0.2, n),  # generic site terms scatter ~0.2 log units
        gain=gain, full_scale=full_scale,
        single=rng.random(n) < 0.035,
        tone_hz=tone,
        chan=(1.0 + 0.15 * rng.standard_normal((n, 3))).clip(0.5, 1.5),
    )


def _rotation(back_azimuth: np.ndarray, inc_p: np.ndarray, inc_s: np.ndarray) -> np.ndarray:
    """(n, 3, 5): [E, N, Z] x [P, SV, SH, Rayleigh radial, Rayleigh vertical]."""
    n = back_azimuth.size
    az = np.deg2rad((back_azimuth + 180.0) % 360.0)  # propagation direction at the station
    sa, ca = np.sin(az), np.cos(az)
    mix = np.zeros((n, 3, 5))
    mix[:, 0, 0], mix[:, 1, 0], mix[:, 2, 0] = np.sin(inc_p) * sa, np.sin(inc_p) * ca, np.cos(inc_p)
    mix[:, 0, 1], mix[:, 1, 1], mix[:, 2, 1] = (np.cos(inc_s) * sa, np.cos(inc_s) * ca,
                                                -np.sin(inc_s))
    mix[:, 0, 2], mix[:, 1, 2] = ca, -sa
    mix[:, 0, 3], mix[:, 1, 3] = sa, ca
    mix[:, 2, 4] = 1.0
    return mix


def _window_power(x: np.ndarray, start: np.ndarray, length: int) -> np.ndarray:
    """(n, c) mean power of x[i, :, start_i:start_i+length] for (n, c, T)."""
    out = np.zeros(x.shape[:2])
    for i in range(x.shape[0]):
        a = int(max(start[i], 0))
        seg = x[i, :, a:a + length].astype(np.float64)
        if seg.shape[1]:
            out[i] = np.einsum("ct,ct->c", seg, seg) / seg.shape[1]
    return out


def _choose_stations(rng: np.random.Generator, ps: np.ndarray, stations: _Stations) -> np.ndarray:
    """Station index per event: the first of K random candidates where the expected SNR beats a
    detection threshold, else the candidate with the best SNR."""
    n = ps.shape[0]
    cand = rng.integers(0, len(stations.level), (n, _CANDIDATES))
    pn = noise_power(stations.level[cand])[:, :, None] * stations.chan[cand] ** 2
    gain = stations.site[cand][:, :, None] ** 2
    snr = np.mean(10 * np.log10(1 + gain * ps[:, None, :] / np.maximum(pn, 1e-40)), axis=2)
    threshold = rng.normal(*_DETECT_DB, n)
    ok = snr >= threshold[:, None]
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), snr.argmax(axis=1))
    return cand[np.arange(n), first]


def _station_noise(rng: np.random.Generator, st: np.ndarray, stations: _Stations) -> np.ndarray:
    """(n, 3, T) noise in m/s at the stations `st`: ambient + transients + tones."""
    level = stations.level[st]
    noise = ambient_noise(rng, level)
    noise *= stations.chan[st][:, :, None].astype(np.float32)
    rms = np.sqrt(noise_power(level))
    add_transients(rng, noise, rms)
    add_tones(rng, noise, stations.tone_hz[st], rms)
    return noise


def _to_counts(rng: np.random.Generator, ground: np.ndarray, st: np.ndarray,
               stations: _Stations) -> np.ndarray:
    """(n, 3, T) m/s -> (n, T, 3) float32 counts with the station's artefacts."""
    waves = np.ascontiguousarray(
        (ground * stations.gain[st][:, None, None].astype(np.float32)).transpose(0, 2, 1))
    apply_artefacts(rng, waves, stations.single[st], stations.full_scale[st])
    return waves


def _pick_labels(rng: np.random.Generator, ev: _Events, snr_db: np.ndarray, rise_s: np.ndarray):
    """Labelled P/S samples with STEAD-like error, status and weight per pick.

    Manual picks: analyst precision of a few samples. Automatic picks (~30%): Laplace errors
    whose width grows as the SNR falls, late by a fraction of the rise time on emergent onsets
    (pickers trigger on the energy, not the first motion: Baer & Kradolfer 1987; Diehl et al.
    2009 on pick uncertainty classes), S about twice as uncertain as P, 2% gross mis-picks."""
    n = ev.magnitude.size
    snr = np.nan_to_num(snr_db, nan=0.0)
    out = {}
    for wave, true, scale in (("p", ev.p_sample, 1.0), ("s", ev.s_sample, 2.2)):
        status = rng.choice(_STATUSES, n, p=_STATUS_P)
        auto = status != "manual"
        sigma_manual = scale * (0.01 + 0.08 * np.exp(-(snr - 5.0) / 8.0))
        sigma_auto = scale * (0.03 + 0.25 * np.exp(-(snr - 5.0) / 8.0))
        sigma = np.where(auto, sigma_auto, sigma_manual)
        bias = np.where(auto & (wave == "p"), 0.4 * np.nan_to_num(rise_s), 0.0)
        err = bias + sigma / np.sqrt(2.0) * rng.laplace(0.0, 1.0, n)
        gross = auto & (rng.random(n) < 0.02)
        err[gross] = rng.uniform(-1.0, 1.0, gross.sum())
        err = np.clip(err, -1.5, 1.5)
        out[wave] = np.round(true + err * FS)
        # quality weight from the uncertainty (STEAD: p_weight median 0.67, s_weight 0.62)
        weight = 1.0 / (1.0 + sigma / (0.06 * scale**0.7)) + rng.normal(0.0, 0.05, n)
        out[f"{wave}_status"] = status
        out[f"{wave}_weight"] = np.round(np.clip(weight, 0.2, 1.0), 2)
    # Labels stay where STEAD's are: P before S, S at least 5 s before the window's end.
    p = np.clip(out["p"], 1, N_SAMPLES - 600)
    out["p"], out["s"] = p, np.clip(out["s"], p + 10, N_SAMPLES - 500)
    return out


def _earthquake_batch(rng: np.random.Generator, n: int, stations: _Stations):
    """n earthquake traces: waveforms (n, 6000, 3) float32 counts and per-trace parameters."""
    ev = _draw_events(rng, n)
    wf = earthquake_wavefield(rng, ev.magnitude, ev.distance_km, ev.depth_km, ev.p_sample,
                              ev.p_travel, ev.p_branches, ev.s_branches, N_SAMPLES)
    mix = _rotation(ev.back_azimuth, wf.incidence_p, wf.incidence_s).astype(np.float32)
    comps = np.concatenate([wf.body, wf.rayleigh], axis=1)  # (n, 5, T)
    ground = np.matmul(mix, comps)  # (n, 3, T) m/s
    ps = _window_power(ground, ev.p_sample, 500)
    st = _choose_stations(rng, ps, stations)
    ground *= stations.site[st][:, None, None].astype(np.float32)
    ground += _station_noise(rng, st, stations)
    waves = _to_counts(rng, ground, st, stations)
    # The pick error model sees the SNR at the true onset; `snr_db` is measured, as STEAD's,
    # around the labelled P.
    snr_true = waveform_snr_db(waves, ev.p_sample)
    # Coda end: where the expected S RMS envelope sinks below the station's noise RMS.
    noise_rms = np.sqrt(noise_power(stations.level[st]))
    above = wf.s_env * stations.site[st][:, None] >= noise_rms[:, None]
    t = np.arange(N_SAMPLES)
    last = np.where(above.any(axis=1), (above * t[None, :]).max(axis=1), ev.s_sample)
    labels = _pick_labels(rng, ev, np.nanmean(snr_true, axis=1), wf.rise_p_s)
    snr = waveform_snr_db(waves, labels["p"])
    latest_s = np.maximum(ev.s_sample, labels["s"])
    coda_end = np.clip(np.round(last), latest_s + 50, N_SAMPLES).astype(np.float64)
    gain = stations.gain[st]
    return waves, ev, snr, coda_end, labels, st, gain


def _noise_batch(rng: np.random.Generator, n: int, stations: _Stations | None = None):
    """n noise traces (n, 6000, 3) float32 counts; returns (waves, single-channel mask, stations
    index, gain)."""
    if stations is None:
        stations = _stations(rng, max(20, n // 5))
    st = rng.integers(0, len(stations.level), n)
    waves = _to_counts(rng, _station_noise(rng, st, stations), st, stations)
    return waves, stations.single[st], st, stations.gain[st]


# ---------------------------------------------------------------------------- metadata

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
                     coda_end: np.ndarray, labels: Mapping[str, Any], st: np.ndarray,
                     gain: np.ndarray, stations: _Stations) -> pd.DataFrame:
    n = len(ev.magnitude)
    sta = stations.table.iloc[st].reset_index(drop=True)
    start = _start_times(rng, n)
    # Origin time rounded to 10 ms like merged.csv; p_travel_sec = start + P pick - origin
    # (STEAD's identity holds on the *labelled* pick, which carries the pick error).
    origin = (start + pd.to_timedelta(ev.p_sample / FS - ev.p_travel, unit="s")).round("10ms")
    p_travel = (start - origin).total_seconds().to_numpy() + labels["p"] / FS
    # Event position from station, back-azimuth and distance (local flat-earth approximation).
    baz = np.deg2rad(ev.back_azimuth)
    dlat = ev.distance_km * np.cos(baz) / traveltime.KM_PER_DEG
    dlon = ev.distance_km * np.sin(baz) / (traveltime.KM_PER_DEG
                                             * np.cos(np.deg2rad(sta["receiver_latitude"])))
    maybe = lambda values, p_null: [None if rng.random() < p_null else v for v in values]
    name_time = start - pd.to_timedelta(rng.uniform(1.0, 2.0, n), unit="s")
    snr32 = np.round(snr, 1).astype(np.float32).astype(np.float64)
    rows = pd.DataFrame({
        **{c: sta[c] for c in ("network_code", "receiver_code", "receiver_type",
                               "receiver_latitude", "receiver_longitude", "receiver_elevation_m")},
        "p_arrival_sample": labels["p"],
        "p_status": labels["p_status"],
        "p_weight": labels["p_weight"],
        "p_travel_sec": np.round(p_travel, 2),
        "s_arrival_sample": labels["s"],
        "s_status": labels["s_status"],
        "s_weight": labels["s_weight"],
        "source_id": [str(v) for v in rng.integers(10**6, 10**8, n)],
        "source_origin_time": origin,
        "source_origin_uncertainty_sec": np.round(rng.uniform(0.05, 1.2, n), 2),
        "source_latitude": np.round(sta["receiver_latitude"] + dlat, 4),
        "source_longitude": np.round(sta["receiver_longitude"] + dlon, 4),
        "source_error_sec": np.array(maybe(np.round(rng.uniform(0.05, 1.5, n), 4), 0.3), dtype=float),
        "source_gap_deg": np.array(maybe(np.round(rng.uniform(20, 300, n), 3), 0.3), dtype=float),
        "source_horizontal_uncertainty_km": np.array(
            maybe(np.round(rng.gamma(2.0, 1.2, n), 4), 0.3), dtype=float),
        "source_depth_km": ev.depth_km,
        "source_depth_uncertainty_km": np.array(
            maybe(np.round(rng.gamma(2.0, 0.8, n), 2), 0.35), dtype=float),
        "source_magnitude": ev.magnitude,
        "source_magnitude_type": rng.choice(_MAG_TYPES, n, p=_MAG_TYPE_P),
        "source_magnitude_author": maybe(sta["network_code"].tolist(), 0.6),
        "source_mechanism_strike_dip_rake": [None] * n,
        "source_distance_deg": np.round(ev.distance_km / traveltime.KM_PER_DEG, 2),
        "source_distance_km": ev.distance_km,
        "back_azimuth_deg": ev.back_azimuth,
        "snr_db": list(snr32),
        "coda_end_sample": coda_end,
        "trace_start_time": start,
        "trace_category": "earthquake_local",
        # ground truth (TRUTH_COLUMNS): HDF5 attributes only, never CSV columns
        "p_arrival_sample_true": ev.p_sample,
        "s_arrival_sample_true": ev.s_sample,
        "station_gain_counts_per_m_s": np.round(gain, 1),
    })
    rows["trace_name"] = _unique_names(rows, name_time, "%Y%m%d%H%M%S", "EV")
    return rows


def _noise_rows(rng: np.random.Generator, st: np.ndarray, gain: np.ndarray,
                stations: _Stations) -> pd.DataFrame:
    rows = stations.table.iloc[st].reset_index(drop=True)
    start = _start_times(rng, len(st))
    rows["trace_start_time"] = start
    rows["trace_category"] = "noise"
    rows["station_gain_counts_per_m_s"] = np.round(gain, 1)
    rows["trace_name"] = _unique_names(rows, start, "%Y%m%d%H%M", "NO")
    return rows


# ---------------------------------------------------------------------------- public API

def generate(n_earthquakes: int, n_noise: int, seed: int, batch_size: int = 256):
    """Yield (waveforms (b, 6000, 3) float32, metadata rows DataFrame) batches, seeded.

    Earthquakes come first, then noise; `make_synthetic_subset` shuffles the order on disk.
    The rows carry the 35 STEAD columns plus `TRUTH_COLUMNS` (the writers ignore those).
    Every trace draws its own noise and source/path realisation from the seeded stream.
    """
    if n_earthquakes < 0 or n_noise < 0:
        raise ValueError("n_earthquakes and n_noise must be >= 0")
    rng = np.random.default_rng(seed)
    stations = _stations(rng, max(20, (n_earthquakes + n_noise) // 25))
    done = 0
    while done < n_earthquakes:
        b = min(batch_size, n_earthquakes - done)
        waves, ev, snr, coda_end, labels, st, gain = _earthquake_batch(rng, b, stations)
        yield waves, _earthquake_rows(rng, ev, snr, coda_end, labels, st, gain, stations)
        done += b
    done = 0
    while done < n_noise:
        b = min(batch_size, n_noise - done)
        waves, _, st, gain = _noise_batch(rng, b, stations)
        yield waves, _noise_rows(rng, st, gain, stations)
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
                     attr_columns=TRUTH_COLUMNS, defer_csv=True) as writer:
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
