"""Window-edge artefact measures (issue 16): maxima near window edges vs elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from feq_lab.evaluation.edges import (
    edge_maxima,
    regular_edges,
    right_edge_excess,
    window_end_maxima,
)


def test_regular_edges_of_half_overlapping_windows():
    # 3 minutes, 60-s windows every 30 s: starts 0, 30, 60, 90, 120 s; ends 60 ... 180 s
    edges = regular_edges(18000, 3000, 6000)
    np.testing.assert_array_equal(edges, [3000, 6000, 9000, 12000, 15000])


def test_edge_maxima_separates_spikes_at_edges_from_the_rest():
    prob = np.zeros((3, 18000), np.float32)
    prob[1, 6000 + 49] = 0.27  # a P spike 0.49 s after an edge: counted as at the edge
    prob[1, 7000] = 0.05  # 10 s from any edge
    prob[2, 9000 - 51] = 0.3  # an S value 0.51 s before an edge: not at the edge
    m = edge_maxima(prob, regular_edges(18000, 3000, 6000), half_width=50)
    assert m["p_edge_max"] == np.float32(0.27) and m["p_inner_max"] == np.float32(0.05)
    assert m["s_edge_max"] == 0.0 and m["s_inner_max"] == np.float32(0.3)
    assert m["det_edge_max"] == 0.0


def test_window_end_maxima_reads_both_ends_of_every_window():
    p = np.zeros((2, 6000), np.float32)
    p[0, -1] = 0.4  # the newest sample of a right-aligned window
    p[1, 10] = 0.2
    p[1, 3000] = 0.1
    zeros = np.zeros_like(p)
    m = window_end_maxima([zeros, p, zeros], half_width=50)
    assert m["p_right_max"] == np.float32(0.4) and m["p_left_max"] == np.float32(0.2)
    assert m["p_inner_max"] == np.float32(0.1) and m["s_right_max"] == 0.0


def test_right_edge_excess_is_the_edge_over_the_interior_view():
    stacked = np.zeros((3, 9000), np.float32)
    stacked[1, 7950:8000] = 0.3  # noise the model fires on anyway, seen inside a window
    p = np.zeros((2, 6000), np.float32)
    p[0, -10] = 0.35  # window ending at 8000: 0.05 above what the interior view says there
    p[1, -1] = 0.2  # window ending at 9000: 0.2 above a quiet interior view -> an artefact
    zeros = np.zeros_like(p)
    m = right_edge_excess([zeros, p, zeros], [8000, 9000], stacked, half_width=50)
    assert m["p_right_excess"] == pytest.approx(0.2)
    m = right_edge_excess([zeros, p[:1], zeros], [8000], stacked, half_width=50)
    assert m["p_right_excess"] == pytest.approx(0.05, abs=1e-6) and m["s_right_excess"] == 0.0


def test_right_edge_excess_can_skip_the_newest_samples():
    stacked = np.zeros((3, 8000), np.float32)
    p = np.zeros((1, 6000), np.float32)
    p[0, -1] = 0.4  # the newest sample: skipped
    p[0, -60] = 0.15  # 0.6 s before the end: read
    zeros = np.zeros_like(p)
    m = right_edge_excess([zeros, p, zeros], [8000], stacked, half_width=50, skip=50)
    assert m["p_right_excess"] == pytest.approx(0.15)
