"""Window-edge artefacts: how high the P/S probabilities get near the edges of the windows that a
continuous record is cut into (issue 16: on replayed noise the monitor's P spiked to ~0.27 at
every 30-s window edge, above the 0.1 P threshold).

Two views, both plain functions of probabilities (the bench `bench/edges.py` feeds them):
- `edge_maxima`: a stacked record (the engine's combined det/P/S) and the sample indices where
  some window starts or ends: the maximum within +-`half_width` samples of an edge, and away
  from every edge.
- `window_end_maxima`: the raw outputs of single windows (what the monitor's right-aligned
  newest window reports): the maximum over their first and last `half_width` samples, and over
  the rest.
- `right_edge_excess`: how much higher a right-aligned window's last `half_width` samples are
  than the same record samples in the stacked regular windows, where they sit inside a window.
  Why: on noise that itself triggers the model (spikes, bursts), a high value at the edge is no
  artefact; the edge's own contribution is the excess over the interior view.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OUTPUTS = ("det", "p", "s")


def regular_edges(n: int, stride: int, window: int) -> np.ndarray:
    """Sample indices (0 < i < n) where a regular window [a, a + window), a = 0, stride, ...,
    starts or ends; the record's own ends are not edges (no window meets another there)."""
    starts = np.arange(0, max(n - window, 0) + 1, stride)
    edges = np.unique(np.concatenate([starts, starts + window]))
    return edges[(edges > 0) & (edges < n)]


def edge_mask(n: int, edges: Sequence[int] | np.ndarray, half_width: int) -> np.ndarray:
    """(n,) True within +-half_width samples of any edge."""
    mask = np.zeros(n, bool)
    for e in np.asarray(edges, int):
        mask[max(e - half_width, 0):min(e + half_width + 1, n)] = True
    return mask


def edge_maxima(prob: np.ndarray, edges: Sequence[int] | np.ndarray,
                half_width: int) -> dict[str, float]:
    """`<output>_edge_max` (within +-half_width of an edge) and `<output>_inner_max` (elsewhere)
    of a (3, n) det/P/S record; 0.0 where a region is empty."""
    prob = np.asarray(prob, np.float32)
    near = edge_mask(prob.shape[-1], edges, half_width)
    out = {}
    for row, name in enumerate(OUTPUTS):
        out[f"{name}_edge_max"] = float(prob[row][near].max(initial=0.0))
        out[f"{name}_inner_max"] = float(prob[row][~near].max(initial=0.0))
    return out


def window_end_maxima(outputs: Sequence[np.ndarray], half_width: int) -> dict[str, float]:
    """Over windows (det, P, S arrays of (B, T)): `<output>_left_max`, `<output>_right_max`
    (first / last `half_width` samples) and `<output>_inner_max` (the rest)."""
    out = {}
    for name, arr in zip(OUTPUTS, outputs):
        a = np.asarray(arr, np.float32)
        out[f"{name}_left_max"] = float(a[:, :half_width].max(initial=0.0))
        out[f"{name}_right_max"] = float(a[:, a.shape[-1] - half_width:].max(initial=0.0))
        out[f"{name}_inner_max"] = float(a[:, half_width:a.shape[-1] - half_width].max(initial=0.0))
    return out


def right_edge_excess(outputs: Sequence[np.ndarray], ends: Sequence[int] | np.ndarray,
                      stacked: np.ndarray, half_width: int, skip: int = 0) -> dict[str, float]:
    """`<output>_right_excess`: the largest (window value - stacked value) over `half_width`
    samples of every window that end `skip` samples before its last one (skip = 0: its newest
    samples; skip = 50: what a reader that waits 0.5 s after a peak sees), each window (B, T)
    ending at record sample `ends[b]` (exclusive); `stacked` is the (3, n) record of the
    regular windows."""
    out = {}
    for row, (name, arr) in enumerate(zip(OUTPUTS, outputs)):
        a = np.asarray(arr, np.float32)
        t = a.shape[-1]
        worst = -np.inf
        for b, end in enumerate(np.asarray(ends, int)):
            hi = end - skip
            lo = max(hi - half_width, 0)
            if end > stacked.shape[-1] or hi - lo <= 0:
                continue
            edge = a[b, t - skip - (hi - lo):t - skip]
            worst = max(worst, float(np.max(edge - stacked[row, lo:hi])))
        out[f"{name}_right_excess"] = worst if np.isfinite(worst) else 0.0
    return out
