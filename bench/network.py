"""Benchmark a whole network in one process: N stations fed as 1-s records at simulated real time.

    python bench/network.py [--n 10 100 1000] [--max-n 100] [--start 0] [--seconds 240]
                            [--checkpoint PATH] [--thresholds DET P S] [--subset data/subset]
                            [--distinct 100]
                            [--batch 8] [--early both|on|off] [--early-every 1.0]
                            [--seisbench-stations N ...] [--skip-seisbench] [--work DIR]

Each station replays the study's scenario generator (`streaming.sources.build_scenario`: noise
minutes then an earthquake trace, seeded): station k plays scenario seed k mod `--distinct`
(distinct waveforms bound the benchmark's own memory; every station still has its own state and
windows). All stations' records of one second are fed together as one (N, 3, 100) array
(`StreamEngine.feed_array`, what a network multiplexer hands over; `feed_all` of per-station
`Block`s gives the same objects), so the windows due anywhere in the network go through one
onnxruntime call per `--batch` windows, on 1 thread. For each N and early picking off / on, a
fresh child process (numpy + onnxruntime, no torch: what a monitor needs) prints:
- sustained throughput: station-seconds processed per wall-second (>= N = real time),
- CPU time per station-second,
- P latency p50/p95 over stations: emitted_at of the first object whose P lies within 0.5 s of
  the true P, minus the true P (stations never picked are counted apart); 100 distinct
  scenarios by default, so the p95 is not one scenario's latency (with 20, each scenario is 5%
  of the stations and the p95 is whichever scenario sits there),
- a sha256 of every emitted object (JSON line, emission order): an engine optimisation must
  leave it unchanged for the same N, seconds, model and thresholds,
- peak RSS of the process (VmHWM), the RSS before the engine started (data + runtime), their
  difference per station (it includes onnxruntime's buffers for a batch of `--batch` windows),
  and the engine's own per-station buffers (KB).
Baseline: SeisBench's `annotate` (1 thread) of `seisbench.models.EQTransformer(lstm_blocks=2)`
with random weights (the report's EQT, 372k parameters; SeisBench has no FEQ-sized model) on the
same stations' data (by default at every N measured; `--seisbench-stations` picks others), as
whole records (offline: its best case), in station-seconds per wall-second. Its cost per
station-second grows with the station count (measured on this 2-core VM: ~0.21-0.27 ms CPU at 4
stations, ~0.39 at 64, ~0.45 at 256), so a baseline on a few stations flatters it against a
network: each N is compared with annotate on those N stations. The machine is shared: compare
figures of one run only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: every station's record starts here


def rss_mb(key: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# ------------------------------------------------------------------------------ the child
def child(args: argparse.Namespace) -> None:
    """One configuration in a fresh process: feed, time, score, measure memory."""
    import onnxruntime  # noqa: F401  (loaded before the baseline RSS is read)

    from feq_lab.streaming.engine import StreamEngine
    from feq_lab.streaming.predictors import onnx_predictor

    # (K, 3, n) float32 in memory (K distinct records, a few MB): slicing a memmap costs more
    # per 1-s record than the engine's own bookkeeping, and a live feed hands over plain arrays
    pool = np.load(args.pool)
    truth = json.loads(Path(args.pool).with_suffix(".json").read_text())
    k_pool, _, n = pool.shape
    first = int(args.start)
    seconds = min(int(args.seconds), n // 100 - first)
    names = [f"XX.S{k:04d}" for k in range(args.n)]
    onnx_predict = onnx_predictor(args.onnx, threads=1)
    model_cpu = [0.0]

    def predict(x: np.ndarray):
        """The onnxruntime call, its CPU time summed (the model's share of the engine's)."""
        c = time.process_time()
        out = onnx_predict(x)
        model_cpu[0] += time.process_time() - c
        return out

    engine = StreamEngine(
        predict,
        "feq3",
        {
            "early": bool(args.early),
            "batch_size": int(args.batch),
            "history_s": 0.0,
            "early_every_s": float(args.early_every),
            "thresholds": dict(zip(("detection", "p", "s"), args.thresholds)),
        },
    )
    # touch the data the stations will read, so that the baseline RSS includes it
    float(np.asarray(pool[: min(k_pool, args.n)]).sum())
    rss_before = rss_mb("VmRSS")
    latency: dict[str, float] = {}
    counts: dict[str, int] = {}
    wall_per_second = []
    emitted = []  # every object, in emission order (hashed after the timed loop)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = np.arange(args.n) % k_pool  # station k plays scenario k mod K
    for sec in range(first, first + seconds):
        a = sec * 100
        records = pool[rows, :, a : a + 100]  # (N, 3, 100): the network's second, E, N, Z
        t = time.perf_counter()
        objects = engine.feed_array(names, T0 + sec, records)
        wall_per_second.append(time.perf_counter() - t)
        emitted += objects
        for o in objects:
            counts[o.kind] = counts.get(o.kind, 0) + 1
            if o.kind == "retract" or o.p_time is None or o.station in latency:
                continue
            p_true = T0 + truth["p_offset_s"][int(o.station[4:]) % k_pool]
            if abs(o.p_time - p_true) <= 0.5:
                latency[o.station] = o.emitted_at - p_true
    state = sum(
        series.data.nbytes
        for st in engine.stations.values()
        for series in (st.raw, st.present, st.filled, *st.probability_series())
    )
    for o in engine.flush():
        counts[o.kind] = counts.get(o.kind, 0) + 1
        emitted.append(o)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    digest = hashlib.sha256()
    for o in emitted:
        digest.update(json.dumps(o.to_dict(), sort_keys=True).encode() + b"\n")
    lat = np.array(sorted(latency.values()))
    station_seconds = args.n * seconds
    out = {
        "n": args.n,
        "early": bool(args.early),
        "early_every_s": float(args.early_every),
        "seconds": seconds,
        "wall_s": round(wall, 2),
        "throughput": round(station_seconds / wall, 1),
        "x_real_time": round(seconds / wall, 2),
        "cpu_ms_per_station_s": round(1e3 * cpu / station_seconds, 3),
        # of which onnxruntime (the model) and the engine's feed_array calls (the rest: this
        # bench building the records)
        "model_cpu_ms_per_station_s": round(1e3 * model_cpu[0] / station_seconds, 3),
        "feed_wall_s": round(float(np.sum(wall_per_second)), 2),
        "feed_wall_s_p95": round(float(np.percentile(wall_per_second, 95)), 3),
        "feed_wall_s_max": round(float(np.max(wall_per_second)), 3),
        "windows": engine.windows_run,
        "edge_windows": engine.edge_windows_run,
        # right-edge windows whose station needed no provisional decoding (no trigger)
        "edge_windows_quiet": engine.edge_windows_quiet,
        # right-edge windows that were a regular window too (one model run for both)
        "edge_windows_shared": engine.edge_windows_shared,
        "predict_calls": engine.predict_calls,
        "p_picked": int(lat.size),
        "p_latency_s_p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p_latency_s_p95": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
        "kinds": counts,
        # sha256 of every emitted object's JSON line, in emission order: an engine change
        # that must not change the output keeps it (compare runs of the same N, seconds, model)
        "emitted_sha256": digest.hexdigest()[:16],
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(rss_mb("VmHWM"), 1),
    }
    out["engine_mb_per_station"] = round((out["peak_rss_mb"] - rss_before) / args.n, 3)
    out["state_kb_per_station"] = round(state / 1024 / args.n, 1)  # the engine's buffers
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ the parent
def build_pool(subset: Path, k: int, path: Path) -> None:
    """`k` seeded scenarios of the generator as one (k, 3, n) array + their P/S offsets."""
    from feq_lab.streaming.sources import build_scenario

    data, p_off, s_off = [], [], []
    for seed in range(k):
        sc = build_scenario(subset, seed=seed)
        data.append(sc.data)
        p_off.append(sc.p_time - sc.starttime)
        s_off.append(sc.s_time - sc.starttime)
    n = min(d.shape[1] for d in data)
    np.save(path, np.stack([d[:, :n] for d in data]).astype(np.float32))
    path.with_suffix(".json").write_text(json.dumps({"p_offset_s": p_off, "s_offset_s": s_off}))


def export_model(checkpoint: str | None, path: Path) -> str:
    import torch

    from feq_lab.export.onnx import export_onnx
    from feq_lab.models import build_model, load_checkpoint

    if checkpoint:
        model = load_checkpoint(checkpoint)
        label = f"{getattr(model, 'name', 'model')} from {checkpoint}"
    else:
        torch.manual_seed(0)
        model, label = build_model("feq3"), "FEQ3 untrained (seed 0): latency meaningless"
    export_onnx(model.eval(), path)
    return label


def seisbench_baseline(pool_path: Path, stations: int, start: int, seconds: int) -> dict:
    """SeisBench EQTransformer.annotate on `stations` stations' records (seconds [start,
    start + seconds) of each, as the engine plays them), 1 thread."""
    try:
        import seisbench
        import seisbench.models as sbm
    except ImportError as exc:
        return {"note": f"seisbench not installed ({exc})"}
    import obspy
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = sbm.EQTransformer(lstm_blocks=2).eval()
    pool = np.load(pool_path)
    a = int(start) * 100
    n = max(min(int(seconds) * 100, pool.shape[2] - a), 0)
    traces = []
    for k in range(stations):
        for i, c in enumerate("ENZ"):
            traces.append(
                obspy.Trace(
                    pool[k % pool.shape[0], i, a : a + n].copy(),
                    header={
                        "network": "XX",
                        "station": f"S{k:04d}",
                        "channel": f"HH{c}",
                        "sampling_rate": 100.0,
                        "starttime": obspy.UTCDateTime(T0 + a / 100.0),
                    },
                )
            )
    stream = obspy.Stream(traces)
    model.annotate(stream.select(station="S0000"))  # warm-up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model.annotate(stream)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    station_seconds = stations * n / 100.0
    return {
        "model": f"seisbench {seisbench.__version__} EQTransformer(lstm_blocks=2), random weights,"
        f" {sum(p.numel() for p in model.parameters()):,} params",
        "stations": stations,
        "seconds": n / 100.0,
        "wall_s": round(wall, 2),
        "throughput": round(station_seconds / wall, 1),
        "cpu_ms_per_station_s": round(1e3 * cpu / station_seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--max-n", type=int, default=None, help="skip N above this (quick runs)")
    parser.add_argument("--start", type=int, default=0, help="first second of the records played")
    parser.add_argument("--seconds", type=int, default=240, help="seconds of each record played")
    parser.add_argument("--early-every", dest="early_every", type=float, default=1.0,
                        help="engine.early_every_s: right-edge window cadence")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained model, e.g. the champion (else an untrained FEQ3)")
    parser.add_argument("--thresholds", type=float, nargs=3, default=[0.5, 0.1, 0.1],
                        metavar=("DET", "P", "S"),
                        help="the model's thresholds (a champion's: its run's thresholds/*"
                        " metrics); default 0.5 0.1 0.1")
    parser.add_argument("--subset", default=str(ROOT / "data" / "subset"))
    parser.add_argument("--distinct", type=int, default=100, help="distinct scenario seeds")
    parser.add_argument("--batch", type=int, default=8, help="windows per predictor call")
    parser.add_argument("--early", choices=["both", "on", "off"], default="both")
    parser.add_argument("--seisbench-stations", type=int, nargs="+", default=None,
                        help="station counts for the annotate baseline (default: each N run)")
    parser.add_argument("--skip-seisbench", action="store_true")
    parser.add_argument("--work", default=None,
                        help="keep the scenario pool here and reuse it (same --subset)")
    # internal: one configuration in a child process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", dest="child_n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-early", dest="child_early", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.n, args.early = args.child_n, args.child_early
        child(args)
        return
    sizes = [n for n in args.n if args.max_n is None or n <= args.max_n]
    subset = Path(args.subset)
    if not (subset / "subset.csv").exists():
        sys.exit(f"no prepared subset at {subset}: run `python -m feq_lab.prepare` first")
    work = Path(args.work or tempfile.mkdtemp(prefix="feq-network-"))
    work.mkdir(parents=True, exist_ok=True)
    pool_path = work / "pool.npy"
    k = min(max(sizes), args.distinct)
    t = time.perf_counter()
    if not (pool_path.exists() and np.load(pool_path, mmap_mode="r").shape[0] == k):
        build_pool(subset, k, pool_path)
    label = export_model(args.checkpoint, work / "feq3.onnx")  # seconds: always this checkpoint
    print(f"# {k} distinct scenarios ({time.perf_counter() - t:.1f} s to build); model {label};"
          f" onnxruntime 1 thread, batch {args.batch}; seconds {args.start}+{args.seconds} of"
          f" each station's record; right-edge window every {args.early_every} s;"
          f" thresholds det/P/S {args.thresholds};"
          f" machine: {os.cpu_count()} CPUs, shared")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    modes = {"both": [0, 1], "off": [0], "on": [1]}[args.early]
    results = []
    for n in sizes:
        for early in modes:
            cmd = [sys.executable, __file__, "--child", "--pool", str(pool_path), "--onnx",
                   str(work / "feq3.onnx"), "--child-n", str(n), "--child-early", str(early),
                   "--seconds", str(args.seconds), "--batch", str(args.batch),
                   "--start", str(args.start), "--early-every", str(args.early_every),
                   "--thresholds", *map(str, args.thresholds)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                sys.exit(proc.returncode)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(json.dumps(res), flush=True)
    if not args.skip_seisbench:
        bases = {}
        for stations in args.seisbench_stations or sizes:
            base = seisbench_baseline(pool_path, stations, args.start, args.seconds)
            print("# baseline " + json.dumps(base), flush=True)
            if "throughput" in base:
                bases[stations] = base
        for res in results:
            if not res["early"] and res["n"] in bases:
                ratio = res["throughput"] / bases[res["n"]]["throughput"]
                print(f"# N={res['n']} early off: {ratio:.1f} x SeisBench annotate's throughput"
                      f" on the same {res['n']} stations")  # fmt: skip
    print("\n| N | early | station-s per wall-s | x real time | CPU ms per station-s | P latency"
          " p50 / p95 s (picked) | peak RSS MB (before engine) | (peak - before) / N MB |"
          " buffers KB per station |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']} | {'on' if r['early'] else 'off'} | {r['throughput']} |"
              f" {r['x_real_time']} | {r['cpu_ms_per_station_s']} | {r['p_latency_s_p50']} /"
              f" {r['p_latency_s_p95']} ({r['p_picked']}/{r['n']}) | {r['peak_rss_mb']}"
              f" ({r['rss_before_mb']}) | {r['engine_mb_per_station']} |"
              f" {r['state_kb_per_station']} |")  # fmt: skip


if __name__ == "__main__":
    main()
