"""First P and S travel times (TauP, iasp91) from a precomputed distance x depth table.

Why: a live TauP query costs ~40 ms; the generator needs thousands per second. The table is built
once by `python -m feq_lab.data.traveltime` (two worker processes, 2.5-4 minutes), committed as a
small CSV (~1 MB), and interpolated bilinearly; within 0.005 s of live TauP on P and S-P.

Why per branch: the first arrival is the minimum over several branches (the direct wave, rays
refracted below the 20 km Conrad, rays refracted in the mantle below the 35 km Moho). That
minimum has a kink where two branches cross, and a refracted branch only exists beyond its onset
distance, so interpolating the minimum itself errs near a switch (up to 0.06 s for sources just
above the Moho at 60-90 km: the up-going and the mantle ray change travel time with depth in
opposite directions). The table therefore holds, for P and for S, one column per layer in which
the ray turns: 0-20 km, 20-35 km, mantle (NaN where no such ray reaches that node). The up-going
ray (TauP's p/s) counts with its source's layer: it joins the down-going rays that turn in that
layer continuously (same ray at horizontal take-off), whereas TauP's own p/P split does not stay
continuous between nodes (how far the up-going ray reaches jumps with depth). Each column is
interpolated on its own and the earliest is taken. A column whose cell touches a NaN node counts
as absent there: a refracted branch starts later than the direct wave (e.g. 31 km deep, 50 km:
direct 9.697 s, mantle 10.307 s); at a source just above the Moho the two touch, and the
difference one cell past the onset is a few ms. Where no column is complete in a cell (rare) the
minimum over each node's columns is interpolated instead. The branches jump where the source
crosses a discontinuity, so 20 and 35 km are double nodes: the depth itself (TauP puts such a
source in the layer above) and 1 m below it.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import time
from pathlib import Path

import numpy as np

from feq_lab.paths import atomic_write_text

KM_PER_DEG = 111.19492664455873  # obspy.geodetics.kilometer2degrees: 2*pi*6371/360
TABLE_PATH = Path(__file__).with_name("iasp91_tt.csv")
CACHE_PATH = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "feq_lab" / "iasp91_tt.csv"

# Denser nodes where the travel-time surfaces bend most (near the source, shallow depths).
DISTANCE_NODES_KM = np.concatenate([np.arange(0.0, 10.0, 0.5), np.arange(10.0, 150.0, 1.0),
                                    np.arange(150.0, 352.0, 2.0)])
# iasp91's crustal discontinuities; rays turning below the Moho share one column (rays turning
# below the 210 km discontinuity reach no node within 350 km of a source <= 200 km deep).
LAYER_TOPS_KM = (20.0, 35.0)
DEPTH_NODES_KM = np.concatenate([np.arange(0.0, 5.0, 0.5), np.arange(5.0, 20.5, 1.0), [20.001],
                                 np.arange(21.0, 35.5, 1.0), [35.001], np.arange(36.0, 40.0, 1.0),
                                 np.arange(40.0, 60.0, 2.0), np.arange(60.0, 150.0, 5.0),
                                 np.arange(150.0, 201.0, 10.0)])
MAX_DISTANCE_KM = float(DISTANCE_NODES_KM[-1])
MAX_DEPTH_KM = float(DEPTH_NODES_KM[-1])
_LAYERS = ("0_20km", "20_35km", "mantle")
_HEADER = "distance_km,depth_km," + ",".join(f"{w}_{lay}_sec" for w in "ps" for lay in _LAYERS)
_N = len(_LAYERS)


def taup_first_arrivals(distance_km: float, depth_km: float, model=None) -> tuple[float, float]:
    """Live TauP: first P (min over p, P) and first S (min over s, S) in seconds."""
    if model is None:
        model = _taup_model()
    arrivals = model.get_travel_times(source_depth_in_km=max(float(depth_km), 0.0),
                                      distance_in_degree=float(distance_km) / KM_PER_DEG,
                                      phase_list=["p", "P", "s", "S"])
    p = min((a.time for a in arrivals if a.name in ("p", "P")), default=np.nan)
    s = min((a.time for a in arrivals if a.name in ("s", "S")), default=np.nan)
    return float(p), float(s)


@functools.lru_cache(maxsize=1)
def _taup_model():
    from obspy.taup import TauPyModel

    return TauPyModel("iasp91")


def _layer_ray_params(wave: str) -> np.ndarray:
    """Ray parameter (s/rad) of the ray grazing the top of each layer below the first: a
    down-going ray with a smaller one passes that discontinuity (r/v falls with depth)."""
    v_mod = _taup_model().model.s_mod.v_mod
    return np.array([(v_mod.radius_of_planet - d) / v_mod.evaluate_above(d, wave)[0]
                     for d in LAYER_TOPS_KM])


def _branch_first_times(phases, degrees: float, source_layer: int, limits: np.ndarray, tol: float,
                        margin_s: float = 0.25) -> list[float]:
    """Earliest arrival per turning layer over TauP phases (up-going first), as `calc_time` gives.

    SeismicPhase.calc_time refines every arrival by ray shooting (nearly all of the cost); here
    each arrival is first estimated from the sampled rays (the theta estimate of TauP's own
    linear_interp_arrival, good to a few ms) and only those within `margin_s` of their layer's
    earliest estimate are refined: the same minima (equal in tests) about 2x faster.
    """
    from obspy.taup.c_wrappers import clibtau

    best = [math.nan] * _N
    for phase in phases:
        r_dist = np.empty(100, dtype=np.float64)
        r_ray = np.empty(100, dtype=np.int32)
        n = clibtau.seismic_phase_calc_time_inner_loop(
            float(degrees), phase.max_distance, phase.dist, phase.ray_param, r_dist, r_ray,
            len(phase.dist))
        if n == 0:
            continue
        idx, dist = r_ray[:n].astype(np.int64), r_dist[:n]
        t, rp, x = phase.time, phase.ray_param, phase.dist
        estimate = np.minimum(t[idx] + rp[idx] * (dist - x[idx]),
                              t[idx + 1] + rp[idx + 1] * (dist - x[idx + 1]))
        if phase.name.islower():  # up-going: with the source's layer
            layer = np.full(n, source_layer)
        else:  # down-going: the layer it turns in
            mid = 0.5 * (rp[idx] + rp[idx + 1])
            layer = (limits[None, :] > mid[:, None]).sum(axis=1)
        for lay in np.unique(layer):
            sel = np.flatnonzero(layer == lay)
            keep = sel[estimate[sel] <= estimate[sel].min() + margin_s]
            times = [phase.refine_arrival(degrees, int(idx[k]), float(dist[k]), tol,
                                          phase._settings["max_recursion"]).time for k in keep]
            best[lay] = float(np.fmin(best[lay], min(times)))
    return best


def _layer_times(depth: float, distances_km, per_layer: bool = True) -> np.ndarray:
    """(n, 2 * n_layers): first P per turning layer, then first S, for one source depth (one
    TauP depth correction) at each distance; NaN where a layer has no ray. With
    per_layer=False only the first arrivals, in the first P and first S columns (cheaper)."""
    from obspy.taup.taup_time import TauPTime

    depth = max(float(depth), 0.0)
    calc = TauPTime(_taup_model().model, ["p", "P", "s", "S"], depth, 0.0)
    calc.depth_correct(depth)
    calc.recalc_phases()
    by_name = {ph.name: ph for ph in calc.phases}
    if per_layer:
        source_layer = sum(top < depth for top in LAYER_TOPS_KM)  # at a top: the layer above
        limits = {w: _layer_ray_params(w) for w in "PS"}
    else:  # every ray in "layer" 0
        source_layer, limits = 0, {w: np.zeros(0) for w in "PS"}
    out = np.empty((len(distances_km), 2 * _N))
    for k, dist in enumerate(distances_km):
        deg = float(dist) / KM_PER_DEG
        for w_i, w in enumerate("PS"):
            out[k, w_i * _N:(w_i + 1) * _N] = _branch_first_times(
                [by_name[w.lower()], by_name[w]], deg, source_layer, limits[w], calc.ray_param_tol)
    return out


def live_first_arrivals(distance_km, depth_km) -> tuple[np.ndarray, np.ndarray]:
    """Live TauP first P and S (s) for arrays of points, same values as `taup_first_arrivals`
    (the same refinement; equal in tests) at a fraction of the cost: ~10 ms a point."""
    d, z = np.broadcast_arrays(np.asarray(distance_km, dtype=np.float64),
                               np.asarray(depth_km, dtype=np.float64))
    d, z = d.ravel(), z.ravel()
    tp, ts = np.full(d.shape, np.nan), np.full(d.shape, np.nan)
    for depth in np.unique(z):
        at = np.flatnonzero(z == depth)
        times = _layer_times(depth, d[at], per_layer=False)
        tp[at] = np.fmin.reduce(times[:, :_N], axis=1)
        ts[at] = np.fmin.reduce(times[:, _N:], axis=1)
    shape = np.broadcast(np.asarray(distance_km), np.asarray(depth_km)).shape
    return tp.reshape(shape), ts.reshape(shape)


def _depth_rows(depth: float) -> list[str]:
    """Table rows (one per distance node) for one source depth."""
    times = _layer_times(depth, DISTANCE_NODES_KM)
    return [f"{dist:.1f},{depth:.3f}," + ",".join("nan" if math.isnan(v) else f"{v:.4f}" for v in row)
            for dist, row in zip(DISTANCE_NODES_KM, times)]


def build_table(path: Path = TABLE_PATH, workers: int = 2) -> Path:
    """Query TauP on the node grid (one depth correction per depth; depths spread over
    `workers` processes) and write the table atomically."""
    depths = [float(z) for z in DEPTH_NODES_KM]
    if workers > 1:
        from multiprocessing import get_context

        order = sorted(range(len(depths)), key=lambda k: -depths[k])  # slowest (deep) first
        with get_context("fork").Pool(workers) as pool:
            done = pool.map(_depth_rows, [depths[k] for k in order], chunksize=1)
        by_depth = dict(zip(order, done))
        per_depth = [by_depth[k] for k in range(len(depths))]
    else:
        per_depth = [_depth_rows(z) for z in depths]
    text = ("# first P/S travel times (s), TauP iasp91, per layer the ray turns in (up-going rays"
            " with the source's layer), nan = none; built by python -m feq_lab.data.traveltime\n")
    text += _HEADER + "\n" + "\n".join(row for rows in per_depth for row in rows) + "\n"
    return atomic_write_text(path, text)


@functools.lru_cache(maxsize=1)
def _load_grids() -> np.ndarray:
    """(2 * (n_layers + 1), n_depth * n_distance): P per layer, S per layer, first P, first S."""
    path = TABLE_PATH if TABLE_PATH.exists() else CACHE_PATH
    if not path.exists():
        build_table(CACHE_PATH)
    text = path.read_text()
    lines = text.split("\n", 2)
    if len(lines) < 3 or lines[1].strip() != _HEADER:
        raise ValueError(f"travel-time table {path} has another layout; rebuild it "
                         "(python -m feq_lab.data.traveltime)")
    data = np.loadtxt(io.StringIO(lines[2]), delimiter=",")
    n_dist, n_depth = len(DISTANCE_NODES_KM), len(DEPTH_NODES_KM)
    if data.shape != (n_dist * n_depth, 2 + 2 * _N) or not (
            np.allclose(data[:, 0], np.tile(DISTANCE_NODES_KM, n_depth), atol=0.05)
            and np.allclose(data[:, 1], np.repeat(DEPTH_NODES_KM, n_dist), atol=5e-4)):
        raise ValueError(f"travel-time table {path} does not match the node grid; rebuild it")
    layers = data[:, 2:].T
    first = np.stack([np.fmin.reduce(layers[:_N], axis=0), np.fmin.reduce(layers[_N:], axis=0)])
    if np.isnan(first).any():
        raise ValueError(f"travel-time table {path} has nodes without a P or S arrival")
    return np.ascontiguousarray(np.concatenate([layers, first]))


def _cells(x: np.ndarray, z: np.ndarray):
    """Flat index of each point's lower-left node and the bilinear weights of its 4 corners."""
    x = np.clip(x, DISTANCE_NODES_KM[0], MAX_DISTANCE_KM)
    z = np.clip(z, DEPTH_NODES_KM[0], MAX_DEPTH_KM)
    nx = len(DISTANCE_NODES_KM)
    i = np.clip(np.searchsorted(DISTANCE_NODES_KM, x, side="right") - 1, 0, nx - 2)
    j = np.clip(np.searchsorted(DEPTH_NODES_KM, z, side="right") - 1, 0, len(DEPTH_NODES_KM) - 2)
    tx = (x - DISTANCE_NODES_KM[i]) / (DISTANCE_NODES_KM[i + 1] - DISTANCE_NODES_KM[i])
    tz = (z - DEPTH_NODES_KM[j]) / (DEPTH_NODES_KM[j + 1] - DEPTH_NODES_KM[j])
    k = j * nx + i
    corners = np.stack([k, k + 1, k + nx, k + nx + 1])
    weights = np.stack([(1 - tz) * (1 - tx), (1 - tz) * tx, tz * (1 - tx), tz * tx])
    return corners, weights


def first_arrivals(distance_km, depth_km) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised first P and S travel times (s) for arrays of epicentral distance and depth.

    Inputs outside the table (distance > 350 km, depth outside 0-200 km) are clipped to its edge.
    """
    grids = _load_grids()
    d, z = np.broadcast_arrays(np.asarray(distance_km, dtype=np.float64),
                               np.asarray(depth_km, dtype=np.float64))
    corners, weights = _cells(d.ravel(), z.ravel())
    # (columns, 4, n) corner values; a NaN corner makes that column NaN even at weight 0 (absent)
    values = (grids[:, corners] * weights).sum(axis=1)
    out = []
    for w in range(2):
        t = np.fmin.reduce(values[w * _N:(w + 1) * _N], axis=0)
        missing = np.isnan(t)
        if missing.any():  # no column complete in this cell: interpolate the per-node minimum
            t[missing] = values[2 * _N + w, missing]
        out.append(t.reshape(d.shape))
    return out[0], out[1]


def branch_arrivals(distance_km, depth_km) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) P and (n, 3) S travel times (s) per branch: rays turning in the upper crust
    (0-20 km), in the lower crust (20-35 km) and in the mantle (Pn/Sn); NaN where a branch does
    not reach the point. The crustal branches are Pg/Sg and the Conrad wave P*/S*, the mantle one
    Pn/Sn (IASPEI names, Storchak et al. 2003). Same interpolation as `first_arrivals`."""
    grids = _load_grids()
    d, z = np.asarray(distance_km, dtype=np.float64).ravel(), np.asarray(
        depth_km, dtype=np.float64).ravel()
    corners, weights = _cells(d, z)
    values = (grids[:, corners] * weights).sum(axis=1)
    return values[:_N].T.copy(), values[_N:2 * _N].T.copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    parser.add_argument("--workers", type=int, default=2, help="processes (one depth at a time)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    path = build_table(args.out, workers=args.workers)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
