"""The synthetic STEAD: format, physics consistency, seeding (on the shared tiny_subset)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feq_lab.data import columns as cols
from feq_lab.data import synthetic, traveltime
from feq_lab.data.snr import waveform_snr_db
from feq_lab.data.stead import open_dataset
from feq_lab.data.subset import data_version


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


def test_s_minus_p_matches_live_taup(tiny):
    eq = tiny.metadata[tiny.metadata["trace_category"] == "earthquake_local"]
    rows = eq.sample(3, random_state=0)
    for _, r in rows.iterrows():
        tp, ts = traveltime.taup_first_arrivals(r["source_distance_km"], r["source_depth_km"])
        sp = (r["s_arrival_sample"] - r["p_arrival_sample"]) / 100.0
        assert abs(sp - (ts - tp)) <= 0.05, r["trace_name"]
        assert abs(r["p_travel_sec"] - tp) <= 0.05


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
    waves, single = synthetic._noise_batch(rng, 200)
    assert waves.shape == (200, 6000, 3) and waves.dtype == np.float32
    assert 0 < single.sum() < 20  # ~3% single-channel stations
    dup = np.all(waves[:, :, 0] == waves[:, :, 2], axis=1) & np.all(
        waves[:, :, 1] == waves[:, :, 2], axis=1)
    assert np.array_equal(dup, single)
    gaps = np.any(np.all(waves[:, 100:-100] == 0, axis=2).reshape(200, -1), axis=1)
    assert gaps.sum() >= 1  # some dropouts
    # Coloured, not white: more power below 5 Hz than in 20-45 Hz (velocity noise models).
    spec = np.abs(np.fft.rfft(waves[~single, :, 2].astype(np.float64), axis=1)) ** 2
    f = np.fft.rfftfreq(6000, 0.01)
    assert np.mean(spec[:, (f > 1) & (f < 5)]) > np.mean(spec[:, (f > 20) & (f < 45)])


def test_corner_frequency_falls_with_magnitude():
    rng = np.random.default_rng(1)
    ev = synthetic._draw_events(rng, 500)
    m0 = 10 ** (1.5 * ev.magnitude + 9.1)
    fc = 0.37 * 3500.0 * (16 * 3e6 / (7 * m0)) ** (1 / 3)
    order = np.argsort(ev.magnitude)
    assert np.all(np.diff(fc[order]) <= 1e-9)
    big = 10 ** (1.5 * 4 + 9.1)
    assert 0.5 < 0.37 * 3500.0 * (16 * 1e6 / (7 * big)) ** (1 / 3) < 2.5  # M4 ~ 1 Hz
