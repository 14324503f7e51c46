"""Training speed of the five presets against SeisBench's EQTransformer(lstm_blocks=2), all in one
process, with the fused training kernels (feq_lab.models.kernels.autograd) on and off.

    python bench/training.py [--passes 4] [--block 2] [--kernels both|on|off] [--epoch]
    python bench/training.py --kernels-only [--threads 1] [--batch 16]  # kernels vs torch autograd
    python bench/training.py ... --against REV  # also the kernels built from git revision REV

A train step is what the lab's training loop does per batch: batch 32 of (3, 6000) windows,
forward (logits), weighted BCE against random targets, backward, Adam step (fused, as in
training), with `torch.set_num_threads(2)`. Candidates are timed round-robin (per pass each runs
`block` timed steps after one untimed one), so a shared machine slows them alike; the figure is
the median.
Wall time and process CPU time (all threads of this process: torch's and the kernels') are both
reported; on a shared machine the CPU figures are the steadier ones. Goals (issue 15): FEQ3 ≤
0.25 × our EQT, every lightweight preset ≤ 0.3 × our EQT, our EQT ≤ 0.7 × the peer.

`--epoch` also runs two whole epochs of the quick experiment's data (conf/experiment/quick.yaml:
a synthetic subset of 1,600 earthquakes + 400 noise traces, generated into a temp dir, loaded and
augmented by `SteadDataModule` as in training, at the quick experiment's batch size and with the
default loader's workers; `--epoch-batch`, `--epoch-workers` change them) through FEQ3's train
step and compares its samples/s with what the pure step time predicts (goal: within 20 %). The
pure step is probed inside the epoch (a fixed batch after every 4th epoch batch), so a drifting
machine slows both sides alike. The first epoch reads each trace from HDF5 once (the loader's
waveform cache), the second, like a training's later epochs, none.

Kernels "on" is the model as training builds it, `ModelOptions()` (the fused kernels through the
model's seams, the "fused" decoder form for separable decoders); "off" is the same model built
with PyTorch's ops (`OPTIONS["off"]`). Both compute the same function (the parity harness,
tests/models/test_parity.py, checks every option against the reference).

`--against REV` times a kernel change before/after in one process: the C kernels are also built
from git revision REV's sources (a source file REV lacks, such as the batch-parallel drivers
parallel.c, is taken from this tree), and every "on" candidate (and kernel case) runs a second
time on that build, round-robin with the others (suffix "@REV").
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feq_lab.models import PRESETS, ModelOptions, build_model, kernels
from feq_lab.models.kernels import autograd as ka
from feq_lab.profiling.latency import device_name

PEER = "peer"
# kernels on: what training builds (fused GRU, separable stages, attention scores, convs and the
# "fused" decoder form where it is the faster one); off: PyTorch's own ops throughout
OPTIONS = {
    "on": ModelOptions(),
    "off": ModelOptions(
        gru_backend="aten",
        separable_backend="reference",
        attention_backend="reference",
        conv_backend="reference",
        dropout_backend="reference",
    ),
}
LOSS_WEIGHTS = (0.05, 0.40, 0.55)  # detection, P, S (conf/config.yaml train.loss_weights)


# --- kernels from another revision (before/after in one process) ----------------------------


def revision_library(rev: str) -> ctypes.CDLL:
    """The training kernels built from git revision `rev`'s sources, entry points declared as
    autograd declares them."""
    root = Path(__file__).resolve().parents[1]
    folder = Path(kernels.__file__).parent.relative_to(root).as_posix()
    git = ["git", "-C", str(root)]
    names = subprocess.run([*git, "ls-tree", "--name-only", rev, f"{folder}/"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="feq-kernels-"))
    for name in (n for n in names if n.endswith((".c", ".h"))):
        path = tmp / Path(name).name
        path.write_bytes(subprocess.run([*git, "show", f"{rev}:{name}"], capture_output=True,
                                        check=True).stdout)  # fmt: skip
    # sources REV lacks (e.g. the batch-parallel drivers, the dropout kernel) come from this tree,
    # so the entry points autograd declares exist; only the files both have are compared
    for path in (*kernels.SOURCES, *kernels.HEADERS):
        if not (tmp / path.name).exists():
            shutil.copy(path, tmp / path.name)
    # the compiler and flags `kernels.library` uses, so both builds differ in their sources only
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"
    target = tmp / "kernels.so"
    command = kernels.compile_command(
        compiler, target, sorted(tmp.glob("*.c")), extra=kernels.openmp_flags()
    )
    subprocess.run(command, check=True, capture_output=True)
    lib = ctypes.CDLL(str(target))
    own = kernels.library
    kernels.library = lambda: lib  # only while autograd declares the entry points on it
    try:
        return ka._lib.__wrapped__()
    finally:
        kernels.library = own


@contextlib.contextmanager
def _kernels_of(lib: ctypes.CDLL) -> Iterator[None]:
    own = ka._lib
    ka._lib = lambda: lib
    try:
        yield
    finally:
        ka._lib = own


def on_library(fn: Callable, lib: ctypes.CDLL) -> Callable:
    """fn, run (forward and backward) on the kernels of `lib` instead of this tree's."""

    def call(*args):
        with _kernels_of(lib):
            return fn(*args)

    return call


# --- train steps ---------------------------------------------------------------------------


def make_step(
    model: nn.Module, logits: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], probs: bool
) -> Callable[[torch.Tensor, Sequence[torch.Tensor]], float]:
    """One optimiser step on (x, targets); BCE on logits (ours) or on probabilities (peer)."""
    # fused: as the training loop builds it (feq_lab/training/module.py), for every candidate
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = F.binary_cross_entropy if probs else F.binary_cross_entropy_with_logits

    def step(x: torch.Tensor, targets: Sequence[torch.Tensor]) -> float:
        opt.zero_grad(set_to_none=True)
        outs = logits(x)
        loss = sum(w * loss_fn(o, t) for w, o, t in zip(LOSS_WEIGHTS, outs, targets))
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def candidates(presets: Sequence[str], modes: Sequence[str]) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    try:
        import seisbench.models as sbm

        torch.manual_seed(0)
        peer = sbm.EQTransformer(lstm_blocks=2).train()
        out[PEER] = make_step(peer, peer, probs=True)
    except ImportError:
        print("seisbench not installed: no peer (pip install -e '.[dev]')")
    for name in presets:
        for mode in modes:
            torch.manual_seed(0)  # the same initial weights in both modes
            model = build_model(name, options=OPTIONS[mode]).train()
            out[f"{name} {mode}"] = make_step(model, model.forward_logits, probs=False)
    return out


def fixed_batch(batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The seeded random (x, targets) every pure-step timing steps on."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 6000, generator=gen)
    return x, [torch.rand(batch, 6000, generator=gen) for _ in range(3)]


def timed(fn: Callable, *args: object) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_steps(fns: dict[str, Callable], passes: int, block: int, batch: int) -> dict:
    x, targets = fixed_batch(batch)
    for fn in fns.values():
        fn(x, targets)  # warm-up: kernel build, allocator, oneDNN primitives
    times = {c: {k: [] for k in fns} for c in ("wall", "cpu")}
    for i in range(passes):
        print(f"pass {i + 1}/{passes}", flush=True)
        for key, fn in fns.items():
            fn(x, targets)  # untimed: re-warm caches after the previous candidate
            for _ in range(block):
                wall, cpu = timed(fn, x, targets)
                times["wall"][key].append(wall * 1e3)
                times["cpu"][key].append(cpu * 1e3)
    return times


def report(label: str, times: dict[str, list[float]]) -> dict[str, float]:
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    peer = p50.get(PEER)
    print(
        f"\n{label}\n{'candidate':14s} {'ms':>9s} {'× our EQT':>10s} {'× peer':>8s} {'on/off':>7s}"
    )
    # × our EQT: against our EQT in the same kernel mode; on/off: against the same preset "off"
    for key, value in p50.items():
        name, _, mode = key.partition(" ")
        eqt = p50.get(f"eqt {mode}") or p50.get("eqt off") or p50.get("eqt on")
        rel_eqt = f"{value / eqt:10.3f}" if eqt and key != PEER else " " * 10
        rel_peer = f"{value / peer:8.3f}" if peer else "     n/a"
        off = p50.get(f"{name} off")
        on_off = f"{value / off:7.3f}" if mode == "on" and off else " " * 7
        print(f"{key:14s} {value:9.1f} {rel_eqt} {rel_peer} {on_off}")
    return p50


def epoch_rate(
    mode: str,
    batch: int | None,
    limit: int | None,
    workers: int | None = None,
    probe_every: int = 4,
) -> list[dict[str, float]]:
    """FEQ3 over two whole epochs of the quick experiment (loading + augmentation included, with
    the loader's workers as conf/data/loader/default.yaml sets them, at the quick experiment's
    batch size unless `batch` is given), one result per epoch: samples/s by wall clock and per
    CPU second of this process (a worker's CPU is not in it), what the pure step time on a fixed
    batch predicts for each, and the share of the epoch spent waiting for batches (the data side)
    rather than stepping. The first epoch reads each trace from HDF5 once (the loader's waveform
    cache, data.cache_mb); the second, like a training's later epochs, reads none.

    Why the pure step is probed inside the epoch (one timed step on a fixed random batch after
    every `probe_every` epoch batches, its time taken out of the epoch's): a shared VM's pace
    drifts by 30-50 % within minutes, so a pure-step time measured before the epoch compared
    two different machines. Interleaved, both sides see the same pace. The loader's worker keeps
    preparing batches during a probe (at most its prefetch queue), so the data side can only
    look slightly smaller than without probes."""
    from omegaconf import OmegaConf

    from feq_lab.data.datamodule import SteadDataModule
    from feq_lab.data.synthetic import make_synthetic_subset
    from feq_lab.paths import CONF_DIR

    data_cfg = OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml")
    augment = OmegaConf.load(CONF_DIR / "data" / "augment" / "eqt.yaml")
    quick = OmegaConf.load(CONF_DIR / "experiment" / "quick.yaml")
    loader_cfg = OmegaConf.load(CONF_DIR / "data" / "loader" / "default.yaml")
    n_eq, n_noise = int(quick.data.n_earthquakes), int(quick.data.n_noise)
    batch = int(batch or quick.data.batch_size)
    augment = OmegaConf.merge(augment, quick.data.get("augment") or {})
    step = candidates(["feq3"], [mode])[f"feq3 {mode}"]
    x, targets = fixed_batch(batch)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_subset(
            tmp, n_eq, n_noise, seed=int(data_cfg.seed), split=dict(data_cfg.split)
        )
        dm = SteadDataModule(
            tmp,
            batch_size=batch,
            augment=OmegaConf.to_container(augment),
            seed=0,
            cache_mb=loader_cfg.cache_mb,
            num_workers=int(loader_cfg.num_workers if workers is None else workers),
        )
        loader = dm.train_dataloader()
        for _ in range(3):
            step(x, targets)  # warm-up: kernel build, allocator, oneDNN primitives
        for _ in range(2):
            n, samples, data_wall, data_cpu = 0, 0, 0.0, 0.0
            probes: list[tuple[float, float]] = []
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            batches = iter(loader)
            while limit is None or n < limit:
                wall, cpu = time.perf_counter(), time.process_time()
                b = next(batches, None)
                data_wall += time.perf_counter() - wall
                data_cpu += time.process_time() - cpu
                if b is None:
                    break
                step(b["x"], [b["y_det"], b["y_p"], b["y_s"]])
                n, samples = n + 1, samples + int(b["x"].shape[0])
                if n % probe_every == 0:
                    probes.append(timed(step, x, targets))
            if not probes:  # fewer batches than `probe_every` (--epoch-batches): probe once
                probes.append(timed(step, x, targets))
            elapsed_wall = time.perf_counter() - start_wall - sum(w for w, _ in probes)
            elapsed_cpu = time.process_time() - start_cpu - sum(c for _, c in probes)
            step_wall, step_cpu = (float(np.median(v)) for v in zip(*probes))
            results.append({
                "batches": n,
                "batch": batch,
                "probes": len(probes),
                "wall": samples / elapsed_wall,
                "wall_predicted": batch / step_wall,
                "cpu": samples / elapsed_cpu,
                "cpu_predicted": batch / step_cpu,
                "data_share_wall": data_wall / elapsed_wall,
                "data_share_cpu": data_cpu / elapsed_cpu,
            })  # fmt: skip
    return results


# FEQ3's separable stages: (input channels, input length, kernel, output channels, groups,
# upsample, crop, pool), the decoders' three side by side as groups (what training runs)
FEQ3_STAGES = {
    "sep enc1 3->8 k11 /3": (3, 6000, 11, 8, 1, 1, (0, 0), 3),
    "sep enc2 8->16 k9 /3": (8, 2000, 9, 16, 1, 1, (0, 0), 3),
    "sep enc3 16->16 k7 /3": (16, 667, 7, 16, 1, 1, (0, 0), 3),
    "sep enc4 16->16 k7 /2": (16, 223, 7, 16, 1, 1, (0, 0), 2),
    "sep enc5 16->32 k5 /2": (16, 112, 5, 32, 1, 1, (0, 0), 2),
    "sep dec1 3x 16->32 x2": (48, 56, 3, 96, 3, 2, (0, 0), 1),
    "sep dec2 3x 32->16 x2": (96, 112, 5, 48, 3, 2, (1, 0), 1),
    "sep dec3 3x 16->16 x3": (48, 223, 5, 48, 3, 3, (1, 1), 1),
    "sep dec4 3x 16->16 x3": (48, 667, 5, 48, 3, 3, (1, 0), 1),
    "sep dec5 3x 16->8 x3": (48, 2000, 7, 24, 3, 3, (0, 0), 1),
}


def _stage_leaves(leaf: Callable, batch: int, spec: tuple) -> tuple:
    """Input, weights and options of one FEQ3_STAGES entry (weights scaled like a trained
    model's, so ReLUs and pools see both signs)."""
    channels, length, kernel, outputs, groups, up, crop, pool = spec
    x = leaf(batch, channels, length)
    dw = leaf(channels, 1, kernel, scale=0.3)
    pw = leaf(outputs, channels // groups, 1, scale=0.3)
    opts = {"groups": groups, "upsample": up, "crop": crop, "pool": pool}
    return x, dw, pw, leaf(outputs, scale=0.1), opts


def _chain(x: torch.Tensor, stages: list, native: bool) -> torch.Tensor:
    for dw, pw, b, opts in stages:
        x = ka.separable_stage(x, dw, pw, b, native=native, **opts)
    return x


def kernel_cases(batch: int) -> dict[str, tuple[Callable, Callable]]:
    """(kernel, torch) forward + backward of each kernel on FEQ3's training shapes."""
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).requires_grad_()

    def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        """fn's forward, then its backward from a fixed output gradient (no loss ops on the
        output, whose passes over (B, 24, 6000)-sized tensors would outweigh the kernels)"""
        grads: dict[torch.Size, torch.Tensor] = {}

        def run() -> None:
            y = fn()
            if y.shape not in grads:
                grads[y.shape] = torch.randn(y.shape, generator=g)
            y.backward(grads[y.shape])

        return run

    cases: dict[str, tuple[Callable, Callable]] = {}
    x, u = leaf(batch, 56, 16), 16
    w_ih, w_hh, b_ih, b_hh = (
        leaf(3 * u, 16, scale=0.3),
        leaf(3 * u, u, scale=0.3),
        leaf(3 * u),
        leaf(3 * u),
    )
    gru = nn.GRU(16, u, batch_first=True)
    for flavour, b2 in (("torch", b_hh), ("keras", None)):
        cases[f"GRU {flavour} (B,56,16)->16"] = (
            fwd_bwd(lambda f=flavour, b=b2: ka.gru_sequence(x, w_ih, w_hh, b_ih, b, reverse=False, flavour=f)),
            fwd_bwd(lambda f=flavour, b=b2: ka.gru_sequence_reference(x, w_ih, w_hh, b_ih, b, reverse=False, flavour=f)),
        )  # fmt: skip
    cases["  (nn.GRU, same shapes)"] = (
        cases["GRU torch (B,56,16)->16"][0],
        fwd_bwd(lambda: gru(x)[0]),
    )
    xe = leaf(batch, 3, 6000)
    enc = [_stage_leaves(leaf, batch, s)[1:] for n, s in FEQ3_STAGES.items() if "enc" in n]
    cases["FEQ3 encoder (5 stages)"] = (
        fwd_bwd(lambda: _chain(xe, enc, True)),
        fwd_bwd(lambda: _chain(xe, enc, False)),
    )
    for name, spec in FEQ3_STAGES.items():
        xs, dw, pw, b, opts = _stage_leaves(leaf, batch, spec)
        cases[f"  {name}"] = (
            fwd_bwd(lambda xs=xs, w=(dw, pw, b), o=opts: ka.separable_stage(xs, *w, **o)),
            fwd_bwd(lambda xs=xs, w=(dw, pw, b), o=opts: ka.separable_stage(xs, *w, native=False, **o)),
        )  # fmt: skip
    xh, wh, bh = leaf(batch, 24, 6000), leaf(3, 8, 11), leaf(3)
    cases["decoder heads 8->1 k11 x3"] = (
        fwd_bwd(lambda: ka.same_conv(xh, wh, bh, groups=3)),
        fwd_bwd(lambda: ka.same_conv(xh, wh, bh, groups=3, native=False)),
    )
    xs, dw, pw, b, opts = _stage_leaves(leaf, batch, FEQ3_STAGES["sep dec5 3x 16->8 x3"])
    opts = {k: opts[k] for k in ("groups", "upsample", "crop")}
    cases["dec5 + heads, one call"] = (
        fwd_bwd(lambda: ka.separable_head(xs, dw, pw, b, wh, bh, **opts)),
        fwd_bwd(lambda: ka.separable_head(xs, dw, pw, b, wh, bh, native=False, **opts)),
    )  # fmt: skip
    qa, kq, wa = leaf(batch, 56, 32), leaf(batch, 56, 32), leaf(32)
    cases["attention scores (B,56,56,32)"] = (
        fwd_bwd(lambda: ka.additive_scores(qa, kq, wa)),
        fwd_bwd(lambda: ka.additive_scores(qa, kq, wa, native=False)),
    )
    return cases


def bench_kernels(batch: int, repeats: int, against: str | None = None) -> None:
    cases = kernel_cases(batch)
    lib = revision_library(against) if against else None
    fns: dict[str, Callable] = {}
    for name, (kernel, reference) in cases.items():  # a build's run next to the other's
        fns[f"{name}|kernel"] = kernel
        if lib is not None:
            fns[f"{name}|rev"] = on_library(kernel, lib)
        fns[f"{name}|torch"] = reference
    for fn in fns.values():
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        for key, fn in list(fns.items())[:: 1 if i % 2 == 0 else -1]:  # order effects cancel
            start = time.process_time()
            fn()
            cpu[key].append((time.process_time() - start) * 1e3)
    print(f"\nkernels, forward + backward, batch {batch}, process CPU ms (median of {repeats})")
    rev = f"@{against}" if against else ""
    extra = f" {rev:>10s} {'× ' + rev:>10s}" if against else ""
    print(f"{'case':30s} {'kernel':>8s} {'torch':>8s} {'speedup':>8s}{extra}")
    for name in cases:
        k, t = (float(np.median(cpu[f"{name}|{side}"])) for side in ("kernel", "torch"))
        line = f"{name:30s} {k:8.2f} {t:8.2f} {t / k:8.2f}"
        if against:
            r = float(np.median(cpu[f"{name}|rev"]))
            line += f" {r:10.2f} {k / r:10.3f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=4, help="round-robin passes")
    parser.add_argument("--block", type=int, default=2, help="timed steps per candidate per pass")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", choices=("both", "on", "off"), default="both")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--epoch", action="store_true", help="also time a quick-experiment epoch")
    parser.add_argument("--epoch-batches", type=int, default=None, help="cap the epoch's batches")
    parser.add_argument(
        "--epoch-batch",
        type=int,
        default=None,
        help="the epoch's batch size (default: the quick experiment's)",
    )
    parser.add_argument(
        "--epoch-workers",
        type=int,
        default=None,
        help="the epoch's loader workers (default: conf/data/loader/default.yaml)",
    )
    parser.add_argument("--kernels-only", action="store_true", help="only the per-kernel table")
    parser.add_argument("--against", metavar="REV", help="also time the kernels of git REV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernels_only:
        bench_kernels(args.batch, max(args.passes, 3), args.against)
        return
    modes = ("off", "on") if args.kernels == "both" else (args.kernels,)
    if "on" in modes and not ka.available():
        print("the C kernels are unavailable here (no compiler or FEQ_LAB_NO_KERNELS): "
              "'on' runs the torch references")  # fmt: skip
    fns = candidates(args.presets, modes)
    if args.against:
        lib = revision_library(args.against)
        for key in [k for k in fns if k.endswith(" on")]:
            fns[f"{key}@{args.against}"] = on_library(fns[key], lib)
    times = time_steps(fns, args.passes, args.block, args.batch)
    print(
        f"\ndevice: {device_name()}; torch {torch.__version__}; {args.threads} threads; "
        f"batch {args.batch}; train step = forward + backward + Adam; {args.passes} passes × "
        f"{args.block} timed steps (median)"
    )
    report("wall-clock ms per train step", times["wall"])
    report("process CPU ms per train step (all threads)", times["cpu"])
    if args.epoch:
        for mode in modes:
            rates = epoch_rate(mode, args.epoch_batch, args.epoch_batches, args.epoch_workers)
            for epoch, r in enumerate(rates):
                print(
                    f"\nFEQ3 kernels {mode}: quick-experiment epoch {epoch + 1} of 2 "
                    f"({r['batches']} batches of {r['batch']}, loading and augmentation included; "
                    f"pure step = median of {r['probes']} probes taken inside the epoch"
                    f"{'; each trace read from HDF5 on first use' if epoch == 0 else '; the traces epoch 1 read come from memory'})\n"
                    f"  wall: {r['wall']:.1f} samples/s, pure step predicts "
                    f"{r['wall_predicted']:.1f}, ratio {r['wall'] / r['wall_predicted']:.2f}; "
                    f"data side {r['data_share_wall']:.0%}\n"
                    f"  CPU:  {r['cpu']:.1f} samples/CPU-s, pure step predicts "
                    f"{r['cpu_predicted']:.1f}, ratio {r['cpu'] / r['cpu_predicted']:.2f}; "
                    f"data side {r['data_share_cpu']:.0%}"
                )


if __name__ == "__main__":
    main()
