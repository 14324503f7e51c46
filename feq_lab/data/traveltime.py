"""First P and S travel times (TauP, iasp91) from a precomputed distance x depth table.

Why: a live TauP query costs ~40 ms; the generator needs thousands per second. The table is built
once by `python -m feq_lab.data.traveltime` (about 15 minutes), committed as a small CSV, and
bilinearly interpolated; S-P agrees with live TauP to well under 0.05 s (tests/data check it).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
from pathlib import Path

import numpy as np

from feq_lab.paths import atomic_write_text

KM_PER_DEG = 111.19492664455873  # obspy.geodetics.kilometer2degrees: 2*pi*6371/360
TABLE_PATH = Path(__file__).with_name("iasp91_tt.csv")
CACHE_PATH = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "feq_lab" / "iasp91_tt.csv"

# Denser nodes where the travel-time surface bends most (near the source, shallow depths).
DISTANCE_NODES_KM = np.concatenate([np.arange(0.0, 150.0, 1.0), np.arange(150.0, 352.0, 2.0)])
# 1-km depth steps down to 40 km: sources near the Moho (35 km in iasp91) bend the surface most.
DEPTH_NODES_KM = np.concatenate([np.arange(0.0, 40.0, 1.0), np.arange(40.0, 60.0, 2.0),
                                 np.arange(60.0, 201.0, 10.0)])
MAX_DISTANCE_KM = float(DISTANCE_NODES_KM[-1])
MAX_DEPTH_KM = float(DEPTH_NODES_KM[-1])


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


def build_table(path: Path = TABLE_PATH) -> Path:
    """Query TauP on the node grid and write the table (one TauP depth correction per depth)."""
    from obspy.taup.taup_time import TauPTime

    model = _taup_model()
    rows = []
    for depth in DEPTH_NODES_KM:
        calc = TauPTime(model.model, ["p", "P", "s", "S"], float(depth), 0.0)
        calc.depth_correct(float(depth))
        calc.recalc_phases()
        for dist in DISTANCE_NODES_KM:
            calc.calc_time(float(dist) / KM_PER_DEG)
            p = min((a.time for a in calc.arrivals if a.name in ("p", "P")), default=np.nan)
            s = min((a.time for a in calc.arrivals if a.name in ("s", "S")), default=np.nan)
            rows.append(f"{dist:.1f},{depth:.1f},{p:.5f},{s:.5f}")
    text = "# first P/S travel times, TauP iasp91; built by python -m feq_lab.data.traveltime\n"
    text += "distance_km,depth_km,p_sec,s_sec\n" + "\n".join(rows) + "\n"
    return atomic_write_text(path, text)


@functools.lru_cache(maxsize=1)
def _load_grids() -> tuple[np.ndarray, np.ndarray]:
    """(P grid, S grid), each (n_depth, n_distance); built into the user cache if not shipped."""
    path = TABLE_PATH if TABLE_PATH.exists() else CACHE_PATH
    if not path.exists():
        build_table(CACHE_PATH)
    data = np.loadtxt(io.StringIO(path.read_text()), delimiter=",", skiprows=2)
    n_dist, n_depth = len(DISTANCE_NODES_KM), len(DEPTH_NODES_KM)
    if data.shape != (n_dist * n_depth, 4):
        raise ValueError(f"travel-time table {path} has shape {data.shape}; rebuild it")
    p = data[:, 2].reshape(n_depth, n_dist)
    s = data[:, 3].reshape(n_depth, n_dist)
    return p, s


def _bilinear(grid: np.ndarray, distance_km: np.ndarray, depth_km: np.ndarray) -> np.ndarray:
    x = np.clip(distance_km, DISTANCE_NODES_KM[0], MAX_DISTANCE_KM)
    z = np.clip(depth_km, DEPTH_NODES_KM[0], MAX_DEPTH_KM)
    i = np.clip(np.searchsorted(DISTANCE_NODES_KM, x, side="right") - 1, 0, len(DISTANCE_NODES_KM) - 2)
    j = np.clip(np.searchsorted(DEPTH_NODES_KM, z, side="right") - 1, 0, len(DEPTH_NODES_KM) - 2)
    tx = (x - DISTANCE_NODES_KM[i]) / (DISTANCE_NODES_KM[i + 1] - DISTANCE_NODES_KM[i])
    tz = (z - DEPTH_NODES_KM[j]) / (DEPTH_NODES_KM[j + 1] - DEPTH_NODES_KM[j])
    return ((1 - tz) * ((1 - tx) * grid[j, i] + tx * grid[j, i + 1])
            + tz * ((1 - tx) * grid[j + 1, i] + tx * grid[j + 1, i + 1]))


def first_arrivals(distance_km, depth_km) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised first P and S travel times (s) for arrays of epicentral distance and depth.

    Inputs outside the table (distance > 350 km, depth outside 0-200 km) are clipped to its edge.
    """
    p_grid, s_grid = _load_grids()
    d = np.asarray(distance_km, dtype=np.float64)
    z = np.asarray(depth_km, dtype=np.float64)
    return _bilinear(p_grid, d, z), _bilinear(s_grid, d, z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    args = parser.parse_args()
    print(f"wrote {build_table(args.out)}")


if __name__ == "__main__":
    main()
