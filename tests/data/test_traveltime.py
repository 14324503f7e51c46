"""The precomputed TauP table agrees with live TauP (iasp91) within 0.05 s on S-P (and P)."""

from __future__ import annotations

import numpy as np
import pytest

from feq_lab.data import traveltime


def test_table_matches_live_taup_at_random_points():
    rng = np.random.default_rng(2024)
    dist = np.concatenate([rng.uniform(0.5, 30.0, 2), rng.uniform(30.0, 340.0, 3), [87.05, 67.43]])
    # incl. sources just above the Moho at 60-90 km, where a coarse depth grid erred by 0.06 s
    depth = np.concatenate([rng.uniform(0.0, 20.0, 3), rng.uniform(20.0, 150.0, 2), [31.44, 33.34]])
    tp, ts = traveltime.first_arrivals(dist, depth)
    for d, z, p, s in zip(dist, depth, tp, ts):
        live_p, live_s = traveltime.taup_first_arrivals(d, z)
        assert abs((s - p) - (live_s - live_p)) <= 0.05, (d, z)
        assert abs(p - live_p) <= 0.05, (d, z)


def test_stead_median_event():
    tp, ts = traveltime.first_arrivals(40.0, 8.5)
    assert abs((ts - tp) - 5.1) < 0.15  # REFERENCE: S-P ~ 5.1 s at 40 km / 8.5 km


def test_vectorised_and_clipped():
    tp, ts = traveltime.first_arrivals(np.array([10.0, 500.0]), np.array([5.0, -2.0]))
    assert tp.shape == (2,) and np.all(ts > tp)


def _assert_matches_live(dist, depth, tol=0.01):  # the table is within ~0.005 s
    tp, ts = traveltime.first_arrivals(np.asarray(dist, float), np.asarray(depth, float))
    for d, z, p, s in zip(dist, depth, tp, ts):
        live_p, live_s = traveltime.taup_first_arrivals(d, z)
        assert abs((s - p) - (live_s - live_p)) <= tol, (d, z, s - p, live_s - live_p)
        assert abs(p - live_p) <= tol, (d, z, p, live_p)


def test_moho_corner_where_the_first_arrival_switches_branch():
    # sources just above the Moho at 50-110 km: the first P/S switches from the direct wave to
    # the mantle refraction (where interpolating the minimum erred by up to 0.064 s)
    depth = [30.2, 31.44, 32.5, 33.34, 34.1, 34.8, 35.0]
    dist = [52.0, 61.3, 67.43, 74.6, 87.05, 96.2, 108.9]
    dd, zz = np.meshgrid(dist, depth)
    # plus the worst points of the old min-interpolating table (0.058, 0.049, 0.037 s off)
    _assert_matches_live(np.r_[dd.ravel(), 60.03, 68.26, 83.29], np.r_[zz.ravel(), 34.41, 33.61, 31.36])


def test_around_mantle_p_onset():
    # TauP's P exists from ~45-50 km on but arrives after the direct wave at first (31 km, 50 km:
    # p 9.697 s, P 10.307 s); just above the Moho onset and crossover nearly coincide
    dist = [44.0, 45.5, 47.2, 49.0, 50.0, 51.3, 55.8, 58.4]
    for depth in (31.0, 33.9, 34.95):
        _assert_matches_live(dist, [depth] * len(dist))


def test_sources_at_and_just_below_discontinuities():
    # how far the up-going ray reaches jumps where the source crosses the Conrad (20 km) or the
    # Moho (35 km); those depths are double nodes. Incl. points that a per-TauP-phase (p vs P)
    # split got wrong by > 1 s.
    depth = [0.0, 0.85, 19.99, 20.0, 20.01, 20.86, 34.99, 35.0, 35.01, 35.6]
    dist = [0.1, 41.0, 62.06, 93.36, 180.0]
    dd, zz = np.meshgrid(dist, depth)
    _assert_matches_live(dd.ravel(), zz.ravel())


def test_live_helper_equals_taup():
    dist, depth = np.array([3.2, 67.43, 150.0, 320.5]), np.array([8.5, 33.34, 35.01, 120.0])
    tp, ts = traveltime.live_first_arrivals(dist, depth)
    for d, z, p, s in zip(dist, depth, tp, ts):
        assert (p, s) == pytest.approx(traveltime.taup_first_arrivals(d, z), abs=1e-9)


def test_summary_checks_a_sample_against_live_taup(tiny_subset):
    import json

    check = json.loads((tiny_subset / "summary.json").read_text())["traveltime_check"]
    assert check["count"] == 48 and check["max_abs_error_sec"] <= 0.01
    live = check["live_taup"]
    assert live["count"] == 48 and live["max_abs_error_sec"] <= 0.02  # 0.005 s sample rounding
