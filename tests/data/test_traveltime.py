"""The precomputed TauP table agrees with live TauP (iasp91) within 0.05 s on S-P."""

from __future__ import annotations

import numpy as np

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
