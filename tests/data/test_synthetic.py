"""The synthetic STEAD: format, physics consistency, seeding (on the shared tiny_subset)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.fft as sfft

from feq_lab.data import columns as cols
from feq_lab.data import synthetic, traveltime, waveform_stats
from feq_lab.data.snr import waveform_snr_db
from feq_lab.data.stead import open_dataset
from feq_lab.data.subset import data_version
from feq_lab.data.synthetic_source import brune_corner, moment_magnitude


@pytest.fixture(scope="module")
def tiny(tiny_subset):
    return open_dataset(tiny_subset / "subset.hdf5")


def test_three_files_and_counts(tiny_subset, tiny):
    assert sorted(p.name for p in tiny_subset.iterdir()) == ["subset.csv", "subset.hdf5",
                                                             "summary.json"]
    meta = tiny.metadata
    assert list(meta.columns) == list(cols.STEAD_COLUMNS) + ["split"]
    assert (meta["trace_category"] == "earthquake_local").sum() == 48
    assert (meta["trace_category"] == "noise").sum() == 12
    assert meta["trace_name"].is_unique
    counts = meta["split"].value_counts()
    assert counts["train"] == 51 and counts["val"] == 3 and counts["test"] == 6
    assert set(meta.loc[meta["split"] == "test", "trace_category"]) == {"earthquake_local", "noise"}
    summary = json.loads((tiny_subset / "summary.json").read_text())
    assert summary["categories"] == {"earthquake_local": 48, "noise": 12}


def test_raw_csv_text_is_stead_like(tiny_subset):
    raw = pd.read_csv(tiny_subset / "subset.csv", dtype=str, keep_default_na=False)
    eq = raw[raw["trace_category"] == "earthquake_local"].iloc[0]
    assert eq["snr_db"].startswith("[") and eq["snr_db"].endswith("]") and "," not in eq["snr_db"]
    assert eq["coda_end_sample"].startswith("[[ ") and eq["coda_end_sample"].endswith(".]]")
    assert eq["trace_name"].endswith("_EV") and len(eq["trace_start_time"]) == 26
    noise = raw[raw["trace_category"] == "noise"].iloc[0]
    for col in cols.EVENT_COLUMNS:
        assert noise[col] == "None", col
    assert noise["trace_name"].endswith("_NO") and noise["network_code"] != "None"


def test_event_fields_consistent(tiny):
    eq = tiny.metadata[tiny.metadata["trace_category"] == "earthquake_local"]
    # trace_start_time + p_arrival_sample/100 - source_origin_time == p_travel_sec (STEAD's identity)
    derived = ((eq["trace_start_time"] - eq["source_origin_time"]).dt.total_seconds()
               + eq["p_arrival_sample"] / 100.0)
    np.testing.assert_allclose(derived, eq["p_travel_sec"], atol=0.006)
    assert (eq["p_arrival_sample"] < eq["s_arrival_sample"]).all()
    assert (eq["s_arrival_sample"] < eq["coda_end_sample"]).all()
    assert (eq["s_arrival_sample"] <= 5500).all() and (eq["coda_end_sample"] <= 6000).all()
    np.testing.assert_allclose(eq["source_distance_deg"],
                               eq["source_distance_km"] / traveltime.KM_PER_DEG, atol=0.006)


def _truth(subset_dir, names):
    """True P/S samples (the generator's HDF5-only attributes) for `names`."""
    with h5py.File(subset_dir / "subset.hdf5", "r") as handle:
        return np.array([[float(handle["data"][n].attrs[k]) for k in synthetic.TRUTH_COLUMNS[:2]]
                         for n in names])


def test_s_minus_p_matches_live_taup_on_true_arrivals(tiny_subset, tiny):
    eq = tiny.metadata[tiny.metadata["trace_category"] == "earthquake_local"]
    rows = eq.sample(3, random_state=0)
    truth = _truth(tiny_subset, rows["trace_name"])
    for (p_true, s_true), (_, r) in zip(truth, rows.iterrows()):
        tp, ts = traveltime.taup_first_arrivals(r["source_distance_km"], r["source_depth_km"])
        assert abs((s_true - p_true) / 100.0 - (ts - tp)) <= 0.05, r["trace_name"]


def test_truth_is_kept_out_of_the_csv_and_labels_carry_pick_error(tiny_subset, tiny):
    raw = pd.read_csv(tiny_subset / "subset.csv", dtype=str, keep_default_na=False)
    assert not set(synthetic.TRUTH_COLUMNS) & set(raw.columns)
    eq = tiny.metadata[tiny.metadata["trace_category"] == "earthquake_local"]
    truth = _truth(tiny_subset, eq["trace_name"])
    err = eq["p_arrival_sample"].to_numpy() - truth[:, 0]
    auto = (eq["p_status"] != "manual").to_numpy()
    assert auto.any() and (~auto).any()
    # automatic picks err more than the analysts' (a few samples); some are off by > 0.1 s
    assert np.mean(np.abs(err[auto])) > np.mean(np.abs(err[~auto]))
    assert np.abs(err).max() > 10
    assert set(eq["p_status"]) <= {"manual", "automatic", "autopicker"}
    assert eq["p_weight"].between(0, 1).all() and eq["s_weight"].between(0, 1).all()


def test_snr_column_is_measured_on_the_waveform(tiny):
    eq = tiny.metadata[tiny.metadata["trace_category"] == "earthquake_local"].head(10)
    waves = np.stack([tiny.get_waveform(n) for n in eq["trace_name"]])
    measured = waveform_snr_db(waves, eq["p_arrival_sample"].to_numpy())
    np.testing.assert_allclose(np.stack(eq["snr_db"].tolist()), measured, atol=0.06)


def test_p_on_z_and_s_on_horizontals(tiny):
    eq = tiny.metadata[(tiny.metadata["trace_category"] == "earthquake_local")]
    ratios_p, ratios_s = [], []
    for _, r in eq.iterrows():
        w = tiny.get_waveform(r["trace_name"]).astype(np.float64)
        p, s = int(r["p_arrival_sample"]), int(r["s_arrival_sample"])
        if s - p < 150 or min(r["snr_db"]) < 15:
            continue
        pw = np.mean(w[p:p + 100] ** 2, axis=0)
        sw = np.mean(w[s:s + 100] ** 2, axis=0)
        ratios_p.append(pw[2] / pw[:2].mean())
        ratios_s.append(sw[:2].mean() / sw[2])
    assert len(ratios_p) >= 5
    assert np.median(ratios_p) > 2.0 and np.median(ratios_s) > 2.0


def test_seeded_and_deterministic(tmp_path):
    a = synthetic.make_synthetic_subset(tmp_path / "a", 4, 2, seed=5)
    b = synthetic.make_synthetic_subset(tmp_path / "b", 4, 2, seed=5)
    c = synthetic.make_synthetic_subset(tmp_path / "c", 4, 2, seed=6)
    assert (a / "subset.csv").read_text() == (b / "subset.csv").read_text()
    assert (a / "subset.csv").read_text() != (c / "subset.csv").read_text()
    assert data_version(a) == data_version(b) != data_version(c)  # byte-identical files
    da, db = open_dataset(a), open_dataset(b)
    for name in da.metadata["trace_name"]:
        np.testing.assert_array_equal(da.get_waveform(name), db.get_waveform(name))


def test_noise_peculiarities():
    rng = np.random.default_rng(0)
    waves, single, _, gain = synthetic._noise_batch(rng, 200)
    assert waves.shape == (200, 6000, 3) and waves.dtype == np.float32
    assert 0 < single.sum() < 30  # a few single-channel stations
    dup = np.all(waves[:, :, 0] == waves[:, :, 2], axis=1) & np.all(
        waves[:, :, 1] == waves[:, :, 2], axis=1)
    assert np.array_equal(dup, single)
    # Coloured, not white: more power at 1-5 Hz than in 20-45 Hz (velocity noise models).
    spec = np.abs(np.fft.rfft(waves[~single, :, 2].astype(np.float64), axis=1)) ** 2
    f = np.fft.rfftfreq(6000, 0.01)
    assert np.mean(spec[:, (f > 1) & (f < 5)]) > np.mean(spec[:, (f > 20) & (f < 45)])
    # Not stationary: bursts make some 5-s windows several times the median RMS.
    ratio = np.array([waveform_stats.rms_nonstationarity(w) for w in waves])
    assert np.nanquantile(ratio, 0.9) >= 3.0
    # Between Peterson's NLNM and NHNM once the gain and recording filter are removed.
    ok = [i for i in range(200) if not single[i] and not any(
        waveform_stats.artefact_flags(waves[i])[k] for k in ("gap", "dead_channel"))]
    stats = waveform_stats.compute(waves[ok], pd.DataFrame({
        "trace_category": ["noise"] * len(ok), "p_arrival_sample": np.nan,
        "s_arrival_sample": np.nan, "source_distance_km": np.nan}), gains=gain[ok])
    assert stats["noise_psd_frac_within_peterson"]["value"] >= 0.9
    assert stats["noise_psd_db"]["microseism_peak"]


def test_artefacts_on_both_classes():
    batches = list(synthetic.generate(300, 300, seed=2))
    waves = np.concatenate([b[0] for b in batches])
    cats = pd.concat([b[1] for b in batches])["trace_category"].to_numpy()
    flags = pd.DataFrame([waveform_stats.artefact_flags(w) for w in waves])
    for cat in ("earthquake_local", "noise"):
        rates = flags[cats == cat].mean()
        for kind in ("single_channel", "gap", "dead_channel"):
            assert rates[kind] > 0, (cat, kind)


def test_no_waveform_material_shared_between_splits(tmp_path):
    """Leakage (#14): test noise vs training noise, vertical channel, all lags: max normalised
    cross-correlation < 0.3 (v3: 1.00, test noise was shifted training noise)."""
    out = synthetic.make_synthetic_subset(tmp_path / "s", 10, 190, seed=11)
    ds = open_dataset(out)
    meta = ds.metadata[ds.metadata["trace_category"] == "noise"]

    def vertical(split):
        z = np.stack([ds.get_waveform(n)[:, 2] for n in meta.loc[meta["split"] == split,
                                                                   "trace_name"]]).astype(np.float64)
        z -= z.mean(axis=1, keepdims=True)
        norm = np.sqrt((z**2).sum(axis=1))
        keep = norm > 0
        return sfft.rfft(z[keep], n=12000, axis=1), norm[keep]

    train, n_train = vertical("train")
    test, n_test = vertical("test")
    assert len(n_test) >= 10 and len(n_train) >= 100
    cc = sfft.irfft(test[:, None, :] * np.conj(train[None, :, :]), n=12000, axis=2)
    peak = np.abs(cc).max(axis=2) / (n_test[:, None] * n_train[None, :])
    assert peak.max() < 0.3, peak.max()


def test_onsets_emergent_and_impulsive_and_s_over_p():
    batches = list(synthetic.generate(300, 0, seed=4))
    waves = np.concatenate([b[0] for b in batches])
    meta = pd.concat([b[1] for b in batches], ignore_index=True)
    truth = {k: meta[k].to_numpy(dtype=float) for k in synthetic.TRUTH_COLUMNS[:2]}
    stats = waveform_stats.compute(waves, meta, truth)
    rise = stats["rise_time_frac_over_0.1s"]["value"]
    assert 0.2 <= rise <= 0.8  # emergent onsets exist, impulsive ones dominate near sources
    assert 2.5 <= stats["s_to_p_peak_ratio"]["median"] <= 10
    by = stats["dominant_frequency_by_distance"]
    assert by["0-20km"]["median_hz"] > by["100-350km"]["median_hz"]


def test_rise_time_measure():
    """onset_rise_time on hand-built envelopes: a step is impulsive, a 0.4-s ramp is not."""
    t = np.arange(6000)
    carrier = np.sin(2 * np.pi * 8.0 * t / 100.0)
    step = np.where(t >= 1000, carrier, 0.0)
    ramp = np.clip((t - 1000) / 40.0, 0, 1) * carrier
    as3 = lambda x: np.repeat(x[:, None], 3, axis=1)
    assert waveform_stats.onset_rise_time(as3(step), 1000) <= 0.05
    assert 0.12 <= waveform_stats.onset_rise_time(as3(ramp), 1000) <= 0.2


def test_corner_frequency_falls_with_magnitude():
    rng = np.random.default_rng(1)
    ev = synthetic._draw_events(rng, 500)
    m0 = 10 ** (1.5 * moment_magnitude(ev.magnitude) + 9.1)
    fc = brune_corner(m0, np.full(500, 3e6))
    order = np.argsort(ev.magnitude)
    assert np.all(np.diff(fc[order]) <= 1e-9)
    big = 10 ** (1.5 * 4 + 9.1)
    assert 0.5 < brune_corner(big, 1e6) < 2.5  # M4 ~ 1 Hz


def test_summary_has_waveform_statistics_with_bands(tiny_subset):
    summary = json.loads((tiny_subset / "summary.json").read_text())
    ws = summary["waveform_statistics"]
    for key in ("s_to_p_peak_ratio_median", "rise_time_frac_over_0.1s",
                "noise_rms_max_over_median_q90", "dominant_frequency_falls_with_distance"):
        assert set(ws[key]) >= {"value", "band", "ok", "source"}, key
    assert ws["arrivals"] == "true"
    assert summary["traveltime_check"]["arrivals"] == "true"
    assert summary["traveltime_check"]["max_abs_error_sec"] <= 0.05
