"""The metadata parser on 100 real STEAD rows (tests/fixtures/stead_100samples.csv, a copy of
../shared/data/stead_sample/100samples.csv)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feq_lab.data import columns as cols
from feq_lab.data.stead import read_csv_index


@pytest.fixture(scope="module")
def parsed(stead_sample_csv):
    return read_csv_index(stead_sample_csv)


@pytest.fixture(scope="module")
def raw_rows(stead_sample_csv):
    with open(stead_sample_csv, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fixture_is_the_shared_sample(stead_sample_csv):
    shared = Path(__file__).resolve().parents[3] / "shared/data/stead_sample/100samples.csv"
    if not shared.exists():
        pytest.skip(f"{shared} not present: nothing to compare the copy with")
    assert stead_sample_csv.read_bytes() == shared.read_bytes()


def test_all_rows_and_columns(parsed, raw_rows):
    assert len(parsed) == 100 == len(raw_rows)
    assert list(parsed.columns) == list(cols.STEAD_COLUMNS)
    assert (parsed["trace_category"] == "earthquake_local").all()
    assert parsed["trace_name"].is_unique


def test_spot_check_first_row(parsed):
    # Raw text: TA,109C,BH,32.8889,-117.1051,150.0,700.0,manual,0.5,17.0799999237,1894.0,...
    r = parsed.iloc[0]
    assert r["network_code"] == "TA" and r["receiver_code"] == "109C" and r["receiver_type"] == "BH"
    assert r["receiver_latitude"] == 32.8889 and r["receiver_longitude"] == -117.1051
    assert r["p_arrival_sample"] == 700.0 and r["s_arrival_sample"] == 1894.0
    assert r["p_travel_sec"] == 17.0799999237
    assert r["source_id"] == "8556349"
    assert r["source_origin_time"] == pd.Timestamp("2006-07-23 15:58:50.88")
    assert math.isnan(r["source_depth_uncertainty_km"])  # literal None
    assert r["source_magnitude_author"] is None and r["source_mechanism_strike_dip_rake"] is None
    np.testing.assert_array_equal(r["snr_db"], [56.79999924, 55.40000153, 47.40000153])
    assert r["coda_end_sample"] == 2896.0  # "[[ 2896.]]"
    assert r["trace_start_time"] == pd.Timestamp("2006-07-23 15:59:00.960000")
    assert r["trace_name"] == "109C.TA_20060723155859_EV"


def test_spot_check_quirky_rows(parsed):
    # Row 2: snr "[ 65.          65.5         61.40000153]", coda "[[ 5508.]]", magnitude 4.3 mb.
    r = parsed.iloc[1]
    np.testing.assert_array_equal(r["snr_db"], [65.0, 65.5, 61.40000153])
    assert r["coda_end_sample"] == 5508.0 and r["source_magnitude"] == 4.3
    assert r["source_magnitude_type"] == "mb"
    # Row 25 (1-based data row 24): 'nan' uncertainty, 6-decimal origin time, ci-prefixed id.
    r = parsed.iloc[23]
    assert r["source_id"] == "ci14296868"
    assert math.isnan(r["source_origin_uncertainty_sec"])
    assert r["source_origin_time"] == pd.Timestamp("2007-06-08 06:13:05.9")
    assert r["source_latitude"] == 33.4551667 and r["source_distance_deg"] == 0.7087
    assert r["source_magnitude_author"] == "CI"
    np.testing.assert_array_equal(r["snr_db"], [20.20000076, 21.39999962, 18.60000038])
    # Row 4: padded last element "[ 54.09999847  54.90000153  45.5       ]".
    np.testing.assert_array_equal(parsed.iloc[3]["snr_db"], [54.09999847, 54.90000153, 45.5])


def test_every_float_matches_raw_text(parsed, raw_rows):
    for i, raw in enumerate(raw_rows):
        for col in cols.FLOAT_COLUMNS:
            text = raw[col].strip("[] ")
            value = parsed.iloc[i][col]
            if text in ("None", "nan", ""):
                assert math.isnan(value), (i, col)
            else:
                assert value == float(text), (i, col, text)


def test_p_travel_consistency_holds_on_real_rows(parsed):
    # trace_start_time + p_arrival_sample / 100 - source_origin_time == p_travel_sec
    derived = ((parsed["trace_start_time"] - parsed["source_origin_time"]).dt.total_seconds()
               + parsed["p_arrival_sample"] / 100.0)
    assert np.allclose(derived, parsed["p_travel_sec"], atol=0.011)


def test_format_then_parse_is_identity(parsed):
    text = pd.DataFrame([cols.format_row(r) for r in parsed.to_dict("records")])
    again = cols.parse_frame(text)
    for col in cols.STEAD_COLUMNS:
        a, b = parsed[col].tolist(), again[col].tolist()
        if col == "snr_db":
            np.testing.assert_array_equal(np.stack(a), np.stack(b))
        elif col in cols.FLOAT_COLUMNS:
            np.testing.assert_array_equal(np.array(a, float), np.array(b, float))
        else:
            assert a == b, col


def test_raw_string_forms_like_stead():
    assert cols.format_vector([56.8, 55.4, 47.4]) == "[ 56.79999924  55.40000153  47.40000153]"
    assert cols.format_vector([65, 65.5, 61.4]) == "[ 65.          65.5         61.40000153]"
    assert cols.format_coda(2896.0) == "[[ 2896.]]"
    assert cols.format_float(17.08, "p_travel_sec") == "17.0799999237"
    assert cols.parse_vector("[56.8, 55.4, 47.4]").tolist() == [56.8, 55.4, 47.4]  # 2019 form
    assert cols.parse_float(np.array([[2896.0]])) == 2896.0  # HDF5 attribute form
    assert math.isnan(cols.parse_float("")) and math.isnan(cols.parse_float("nan"))
