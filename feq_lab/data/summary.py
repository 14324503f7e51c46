"""The prepare summary: counts, distributions and waveform statistics of a STEAD-format subset
(what summary.json holds). Waveform statistics (`waveform_stats`) come with the band real data
fall in; they use the synthetic generator's true arrivals where its HDF5 attributes hold them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# STEAD earthquake-trace medians (REFERENCE 1.4), printed beside ours for comparison.
STEAD_MEDIANS = {"p_arrival_sample": 699.0, "s_arrival_sample": 1207.0, "coda_end_sample": 2273.0,
                 "source_magnitude": 1.3, "source_distance_km": 39.0, "source_depth_km": 8.5,
                 "snr_db_mean": 23.0}
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _describe(values: np.ndarray) -> dict[str, float | int | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": int(v.size), "mean": float(v.mean()), "min": float(v.min()),
                           "max": float(v.max())}
    for q, x in zip(_QUANTILES, np.quantile(v, _QUANTILES)):
        out[f"q{int(q * 100):02d}"] = float(x)
    return out


def describe_metadata(meta: pd.DataFrame,
                      truth: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Counts per category/split and distributions of the earthquake fields (`truth`: true
    arrivals aligned with `meta`, for the travel-time check)."""
    from feq_lab.data.stead import snr_matrix

    summary: dict[str, Any] = {"n_traces": len(meta),
                               "categories": {str(k): int(v) for k, v in
                                              meta["trace_category"].value_counts().items()}}
    if "split" in meta:
        summary["splits"] = {str(k): int(v) for k, v in meta["split"].value_counts().items()}
        summary["splits_by_category"] = {
            f"{s}/{c}": int(v) for (s, c), v in
            meta.groupby(["split", "trace_category"]).size().items()}
    eq = meta[meta["trace_category"] == "earthquake_local"]
    dist: dict[str, Any] = {}
    for col in ("p_arrival_sample", "s_arrival_sample", "coda_end_sample", "source_magnitude",
                "source_distance_km", "source_depth_km", "p_travel_sec"):
        dist[col] = _describe(eq[col].to_numpy(dtype=np.float64))
    dist["s_minus_p_sec"] = _describe(
        (eq["s_arrival_sample"] - eq["p_arrival_sample"]).to_numpy(dtype=np.float64) / 100.0)
    snr = snr_matrix(eq)
    snr_mean = np.nanmean(snr, axis=1) if len(eq) else np.zeros(0)
    dist["snr_db_mean"] = _describe(snr_mean)
    finite = snr_mean[np.isfinite(snr_mean)]
    dist["snr_db_mean"]["frac_below_10db"] = float((finite < 10).mean()) if finite.size else None
    dist["snr_db_per_channel_median"] = (
        [float(x) for x in np.nanmedian(snr, axis=0)] if len(eq) else None)
    summary["earthquake_distributions"] = dist
    summary["stead_medians"] = STEAD_MEDIANS
    summary["median_ratio_to_stead"] = {
        k: (dist[k]["q50"] / v if dist[k].get("count") and v else None)
        for k, v in STEAD_MEDIANS.items()}
    eq_truth = None
    if truth:
        mask = (meta["trace_category"] == "earthquake_local").to_numpy()
        eq_truth = {k: np.asarray(v)[mask] for k, v in truth.items()}
    summary["traveltime_check"] = traveltime_check(eq, truth=eq_truth)
    return summary


def traveltime_check(eq: pd.DataFrame, live_sample: int = 200, seed: int = 0,
                     truth: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Largest |S-P (metadata) - S-P (TauP)| over earthquake traces, in seconds.

    Against the interpolated table for every trace (`count`, `max_abs_error_sec`,
    `frac_within_0.05s`), and against live TauP (iasp91) for a seeded random sample of up to
    `live_sample` of them (`live_taup`: a few seconds), which also catches table errors.
    With `truth` (true P/S samples aligned with `eq`, NaN = unknown) the true arrivals are
    checked instead of the labels (which carry pick errors); `arrivals` says which.
    """
    from feq_lab.data import traveltime

    if len(eq) == 0:
        return {"count": 0}
    d = eq["source_distance_km"].to_numpy(dtype=np.float64)
    z = eq["source_depth_km"].to_numpy(dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(z) & (d <= traveltime.MAX_DISTANCE_KM) & (
        z >= 0) & (z <= traveltime.MAX_DEPTH_KM)
    p = eq["p_arrival_sample"].to_numpy(dtype=np.float64)
    s = eq["s_arrival_sample"].to_numpy(dtype=np.float64)
    arrivals = "labelled"
    if truth is not None:
        pt = np.asarray(truth.get("p_arrival_sample_true", np.full(len(eq), np.nan)), dtype=np.float64)
        st = np.asarray(truth.get("s_arrival_sample_true", np.full(len(eq), np.nan)), dtype=np.float64)
        if np.isfinite(pt).all() and np.isfinite(st).all() and len(pt) == len(eq):
            p, s, arrivals = pt, st, "true"
    sp_all = (s - p) / 100.0
    ok &= np.isfinite(sp_all)
    if not ok.any():
        return {"count": 0}
    tp, ts = traveltime.first_arrivals(d[ok], z[ok])
    err = np.abs(sp_all[ok] - (ts - tp))
    out: dict[str, Any] = {"count": int(ok.sum()), "arrivals": arrivals,
                           "max_abs_error_sec": float(err.max()),
                           "frac_within_0.05s": float((err <= 0.05).mean())}
    if live_sample > 0:
        idx = np.flatnonzero(ok)
        idx = np.sort(np.random.default_rng(seed).choice(idx, min(live_sample, idx.size),
                                                         replace=False))
        ltp, lts = traveltime.live_first_arrivals(d[idx], z[idx])
        live_err = np.abs(sp_all[idx] - (lts - ltp))
        out["live_taup"] = {"count": int(idx.size), "seed": seed,
                            "max_abs_error_sec": float(np.nanmax(live_err)),
                            "frac_within_0.05s": float((live_err <= 0.05).mean())}
    return out


def summarize(out_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
              extra: Mapping[str, Any] | None = None, max_waveforms: int = 2000) -> dict[str, Any]:
    """Summary of `<out_dir>/subset.csv` plus the config that produced it (for no-op reruns),
    with waveform statistics on (a seeded sample of at most `max_waveforms` of) its traces."""
    from feq_lab.data import waveform_stats
    from feq_lab.data.stead import read_csv_index

    out_dir = Path(out_dir)
    meta = read_csv_index(out_dir / "subset.csv")
    waves, rows, truth, gains = waveform_stats.read_subset(out_dir, meta, max_traces=max_waveforms)
    full_truth = None
    if truth and len(rows) == len(meta):
        full_truth = truth  # every trace was read: the travel-time check can use the truth
    summary = {"config": dict(config or {}), **describe_metadata(meta, truth=full_truth)}
    summary["waveform_statistics"] = waveform_stats.compute(waves, rows, truth, gains)
    if extra:
        summary.update(extra)
    return summary
