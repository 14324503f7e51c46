"""Data benchmarks: synthetic generation speed and random-access reads vs raw h5py.

    python bench/data.py [--n 4000] [--reads 3000]

Prints traces/s for the generator (arrays only, and with the HDF5+CSV write; v3 aimed at
2,000 traces/s, v4 synthesises every trace's noise and source afresh: a few hundred traces/s),
and Dataset.get_waveform throughput as a ratio to raw h5py reads of the same traces from the
same file, in the same process (target >= 0.8). One core: BLAS/OpenMP threads are pinned to 1 before numpy loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py
import numpy as np


def bench_generation(n: int, seed: int = 0) -> tuple[float, float]:
    """(wall, CPU) traces/s; CPU time is the fairer figure on a shared machine."""
    from feq_lab.data import synthetic

    list(synthetic.generate(64, 16, seed + 1))  # warm-up
    n_eq, n_noise = int(0.8 * n), n - int(0.8 * n)
    t0, c0 = time.perf_counter(), time.process_time()
    count = sum(len(w) for w, _ in synthetic.generate(n_eq, n_noise, seed))
    return count / (time.perf_counter() - t0), count / (time.process_time() - c0)


def bench_subset(n: int, out: Path) -> float:
    from feq_lab.data.synthetic import make_synthetic_subset

    t0 = time.perf_counter()
    make_synthetic_subset(out, int(0.8 * n), n - int(0.8 * n), seed=1)
    return n / (time.perf_counter() - t0)


def bench_reads(path: Path, reads: int, seed: int = 0) -> tuple[float, float]:
    from feq_lab.data.stead import open_dataset

    ds = open_dataset(path)
    names = ds.metadata["trace_name"].to_numpy()
    order = names[np.random.default_rng(seed).integers(0, len(names), reads)]

    def raw() -> None:
        with h5py.File(path / "subset.hdf5", "r") as handle:
            group = handle["data"]
            for name in order:
                group[name][()]

    def lab() -> None:
        for name in order:
            ds.get_waveform(name)

    def rate(fn) -> float:  # CPU time: robust on a shared machine; both are single-threaded
        c0 = time.process_time()
        fn()
        return reads / (time.process_time() - c0)

    raw(), lab()  # warm the page cache for both
    raw_rates, lab_rates = [], []
    for _ in range(5):  # interleaved, best of 5
        raw_rates.append(rate(raw))
        lab_rates.append(rate(lab))
    return max(raw_rates), max(lab_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000, help="traces to generate")
    parser.add_argument("--reads", type=int, default=3000, help="random reads")
    args = parser.parse_args()
    wall, cpu = bench_generation(args.n)
    print(f"synthetic generation (arrays, 80% earthquakes): {wall:8.0f} traces/s wall, "
          f"{cpu:8.0f} traces/s CPU   (v4: a few hundred expected)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "subset"
        full = bench_subset(min(args.n, 2000), out)
        print(f"synthetic subset incl. HDF5+CSV+summary: {full:8.0f} traces/s")
        raw_rate, lab_rate = bench_reads(out, args.reads)
        print(f"random reads (CPU time): raw h5py {raw_rate:8.0f} traces/s, Dataset.get_waveform "
              f"{lab_rate:8.0f} traces/s   ratio {lab_rate / raw_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
