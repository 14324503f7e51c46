"""Training speed of the five presets against SeisBench's EQTransformer(lstm_blocks=2), all in one
process, with the fused training kernels (feq_lab.models.kernels.autograd) on and off.

    python bench/training.py [--passes 4] [--block 2] [--kernels both|on|off] [--epoch]
    python bench/training.py --kernels-only [--threads 1]   # each kernel vs torch autograd

A train step is what the lab's training loop does per batch: batch 32 of (3, 6000) windows,
forward (logits), weighted BCE against random targets, backward, Adam step, with
`torch.set_num_threads(2)`. Candidates are timed round-robin (per pass each runs `block` timed
steps after one untimed one), so a shared machine slows them alike; the figure is the median.
Wall time and process CPU time (all threads of this process: torch's and the kernels') are both
reported; on a shared machine the CPU figures are the steadier ones. Goals (issue 15): FEQ3 ≤
0.25 × our EQT, every lightweight preset ≤ 0.3 × our EQT, our EQT ≤ 0.7 × the peer.

`--epoch` also runs one whole epoch of the quick experiment's data (conf/experiment/quick.yaml:
a synthetic subset of 1,600 earthquakes + 400 noise traces, generated into a temp dir, loaded and
augmented by `SteadDataModule` as in training) through FEQ3's train step and compares its
samples/s with what the pure step time predicts (goal: within 20 %).

Kernels "on" (until the model selects implementations at construction): a bench-only adapter
runs the model's own parameters through the kernels: GRU modules are wrapped to call
`gru_sequence`, global attentions to score through `additive_scores`, and the separable encoder
and decoders run as `separable_stage` / `same_conv` calls in `kernel_logits`, which mirrors
`PickerModel.forward_logits`' training path.
The adapter's outputs and gradients are checked against the model's own before timing.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feq_lab.models import PRESETS, build_model
from feq_lab.models.kernels import autograd as ka
from feq_lab.models.layers import AdditiveSelfAttention, KerasGRU
from feq_lab.profiling.latency import device_name

PEER = "peer"
LOSS_WEIGHTS = (0.05, 0.40, 0.55)  # detection, P, S (conf/config.yaml train.loss_weights)


# --- bench-only adapter: the model's parameters through the training kernels -----------------


class KernelGRU(nn.Module):
    """An nn.GRU (batch-first, one layer) or KerasGRU run through `gru_sequence`, same
    parameters (the wrapped module is kept as a submodule)."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.inner = rnn
        self.keras = isinstance(rnn, KerasGRU)
        if not self.keras and (rnn.num_layers != 1 or not rnn.batch_first or not rnn.bias):
            raise ValueError("KernelGRU covers single-layer, biased, batch-first GRUs")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        outs = []
        for reverse, sfx in ((False, "_l0"), (True, "_l0_reverse"))[: self._directions()]:
            w_ih = getattr(self.inner, f"weight_ih{sfx}")
            w_hh = getattr(self.inner, f"weight_hh{sfx}")
            if self.keras:
                b_ih, b_hh, flavour = getattr(self.inner, f"bias{sfx}"), None, "keras"
            else:
                b_ih, b_hh = (
                    getattr(self.inner, f"bias_ih{sfx}"),
                    getattr(self.inner, f"bias_hh{sfx}"),
                )
                flavour = "torch"
            outs.append(
                ka.gru_sequence(x, w_ih, w_hh, b_ih, b_hh, reverse=reverse, flavour=flavour)
            )
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)), None

    def _directions(self) -> int:
        return 2 if self.inner.bidirectional else 1


class KernelAttention(nn.Module):
    """A global AdditiveSelfAttention (training path) with its scores through
    `additive_scores`, same parameters."""

    def __init__(self, attention: AdditiveSelfAttention):
        super().__init__()
        self.inner = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.inner
        q, k = att.query(x) + att.hidden_bias, att.key(x)
        e = ka.additive_scores(q, k, att.score.weight) + att.score.bias
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        return (e / (e.sum(dim=-1, keepdim=True) + att.eps)) @ x


def wrap_modules(model: nn.Module) -> nn.Module:
    """Replace (in place) every GRU by a KernelGRU and every global additive attention by a
    KernelAttention around it."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.GRU, KerasGRU)):
                setattr(module, name, KernelGRU(child))
            elif isinstance(child, AdditiveSelfAttention) and child.width is None:
                setattr(module, name, KernelAttention(child))
    return model


def kernel_encoder(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for j, pool in zip(encoder.layer_of_stage, encoder.pools):
        conv = encoder.layers[j]
        if conv.depthwise is None:
            x = pool(F.relu(conv(x)))
        else:
            x = ka.separable_stage(
                x, conv.depthwise.weight, conv.conv.weight, conv.conv.bias, pool=pool.pool
            )
    return x


def kernel_decoders(decoders: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The three decoders side by side (groups = 3) on x (B, 3·C, T), like the model's stacked
    training path, each stage one kernel call."""
    first = decoders[0]

    def cat(tensors) -> torch.Tensor:
        return torch.cat(list(tensors), dim=0)

    for i, j in enumerate(first.layer_of_stage):
        convs = [d.layers[j] for d in decoders]
        up, crop = first.upsample[i], tuple(first.crops[i])
        bias = cat(c.conv.bias for c in convs)
        if convs[0].depthwise is not None:
            x = ka.separable_stage(
                x, cat(c.depthwise.weight for c in convs), cat(c.conv.weight for c in convs),
                bias, groups=3, upsample=up, crop=crop,
            )  # fmt: skip
        else:
            if up > 1:
                x = torch.repeat_interleave(x, up, dim=2)
            if crop[0] or crop[1]:
                x = x[:, :, crop[0] : int(x.shape[2]) - crop[1]]
            x = F.relu(ka.same_conv(x, cat(c.conv.weight for c in convs), bias, groups=3))
    heads = [d.head.conv for d in decoders]
    y = ka.same_conv(x, cat(h.weight for h in heads), cat(h.bias for h in heads), groups=3)
    return y[:, 0], y[:, 1], y[:, 2]


def kernel_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`PickerModel.forward_logits` (training path) with the encoder and separable decoders
    through the kernels; GRUs and attention must already be wrapped (`wrap_modules`). Dense
    decoders (EQT) keep the model's stacked polyphase path: measured faster than `same_conv`
    per stage (482 vs 634 ms CPU for EQT's three decoders, forward + backward, batch 32)."""
    h = model.bottleneck(kernel_encoder(model.encoder, x)).transpose(1, 2)
    for block in model.rnn_blocks:
        h = block(h)
    for block in model.transformers:
        h = block(h)
    p, s = (branch(h) for branch in model.pickers)
    features = torch.cat([h, p, s], dim=2).transpose(1, 2)
    if model.decoders[0].layers[0].depthwise is None:
        from feq_lab.models.fastdecode import build_stacked  # the model's own training path

        return build_stacked(list(model.decoders), differentiable=True)(features)
    return kernel_decoders(model.decoders, features)


# --- train steps ---------------------------------------------------------------------------


def make_step(
    model: nn.Module, logits: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], probs: bool
) -> Callable[[torch.Tensor, Sequence[torch.Tensor]], float]:
    """One optimiser step on (x, targets); BCE on logits (ours) or on probabilities (peer)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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
        torch.manual_seed(0)
        base = build_model(name).train()
        for mode in modes:
            if mode == "off":
                out[f"{name} off"] = make_step(base, base.forward_logits, probs=False)
            else:
                model = wrap_modules(copy.deepcopy(base))
                out[f"{name} on"] = make_step(model, lambda x, m=model: kernel_logits(m, x), False)
    return out


def check_adapter(presets: Sequence[str]) -> None:
    """The adapter computes the model's function: logits and gradients vs the model's own."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6000)
    for name in presets:
        torch.manual_seed(0)
        model = build_model(name).train()
        # deterministic comparison: no dropout
        for m in model.modules():
            if isinstance(m, nn.Dropout | nn.Dropout1d):
                m.p = 0.0
        wrapped = wrap_modules(copy.deepcopy(model))
        ref, got = model.forward_logits(x), kernel_logits(wrapped, x)
        sum(o.square().sum() for o in ref).backward()
        sum(o.square().sum() for o in got).backward()
        err_out = max(
            float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())
            for a, b in zip(got, ref)
        )
        # scale: a parameter's largest gradient, floored at 1e-2 of the model's largest (a bias
        # right before a BatchNorm has an exactly-zero gradient: only rounding noise remains)
        grads = [(a.grad, b.grad) for a, b in zip(wrapped.parameters(), model.parameters())]
        top = max(float(b.abs().max()) for _, b in grads if b is not None)
        err_grad = max(
            float((a - b).abs().max()) / max(float(b.abs().max()), 1e-2 * top)
            for a, b in grads
            if b is not None
        )
        print(
            f"adapter check {name}: max rel. error logits {err_out:.1e}, gradients {err_grad:.1e}"
        )


def time_steps(fns: dict[str, Callable], passes: int, block: int, batch: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 6000, generator=gen)
    targets = [torch.rand(batch, 6000, generator=gen) for _ in range(3)]
    for fn in fns.values():
        fn(x, targets)  # warm-up: kernel build, allocator, oneDNN primitives
    times = {c: {k: [] for k in fns} for c in ("wall", "cpu")}
    for i in range(passes):
        print(f"pass {i + 1}/{passes}", flush=True)
        for key, fn in fns.items():
            fn(x, targets)  # untimed: re-warm caches after the previous candidate
            for _ in range(block):
                wall, cpu = time.perf_counter(), time.process_time()
                fn(x, targets)
                times["cpu"][key].append((time.process_time() - cpu) * 1e3)
                times["wall"][key].append((time.perf_counter() - wall) * 1e3)
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


def epoch_rate(mode: str, batch: int, limit: int | None) -> tuple[float, float, int]:
    """(samples/s over a whole epoch incl. loading + augmentation, samples/s the pure step time
    of the same model on a fixed batch predicts, batches) for FEQ3 on the quick experiment."""
    from omegaconf import OmegaConf

    from feq_lab.data.datamodule import SteadDataModule
    from feq_lab.data.synthetic import make_synthetic_subset
    from feq_lab.paths import CONF_DIR

    data_cfg = OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml")
    quick = OmegaConf.load(CONF_DIR / "experiment" / "quick.yaml")
    n_eq, n_noise = int(quick.data.n_earthquakes), int(quick.data.n_noise)
    step = candidates(["feq3"], [mode])[f"feq3 {mode}"]
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_subset(
            tmp, n_eq, n_noise, seed=int(data_cfg.seed), split=dict(data_cfg.split)
        )
        dm = SteadDataModule(
            tmp, batch_size=batch, augment=OmegaConf.to_container(data_cfg.augment), seed=0
        )
        loader = dm.train_dataloader()
        pure = time_steps({"feq3": step}, 1, 5, batch)["wall"]["feq3"]
        n, samples = 0, 0
        start = time.perf_counter()
        for b in loader:
            step(b["x"], [b["y_det"], b["y_p"], b["y_s"]])
            n, samples = n + 1, samples + int(b["x"].shape[0])
            if limit and n >= limit:
                break
        elapsed = time.perf_counter() - start
    return samples / elapsed, batch / (float(np.median(pure)) / 1e3), n


def kernel_cases(batch: int) -> dict[str, tuple[Callable, Callable]]:
    """(kernel, torch) forward + backward of each kernel on FEQ3's training shapes."""
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).requires_grad_()

    def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return lambda: fn().square().sum().backward()

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
    stages = [(3, 8, 11, 3), (8, 16, 9, 3), (16, 16, 7, 3), (16, 16, 7, 2), (16, 32, 5, 2)]
    xe = leaf(batch, 3, 6000)
    weights = [(leaf(c, 1, k), leaf(o, c, 1), leaf(o), p) for c, o, k, p in stages]

    def encoder(native: bool) -> torch.Tensor:
        y = xe
        for dw, pw, b, p in weights:
            y = ka.separable_stage(y, dw, pw, b, pool=p, native=native)
        return y

    cases["FEQ3 encoder (5 stages)"] = (
        fwd_bwd(lambda: encoder(True)),
        fwd_bwd(lambda: encoder(False)),
    )
    xd, dw, pw, b = leaf(batch, 48, 2000), leaf(48, 1, 7), leaf(24, 16, 1), leaf(24)
    opts = {"groups": 3, "upsample": 3}
    cases["decoder stage 2000->6000 x3"] = (
        fwd_bwd(lambda: ka.separable_stage(xd, dw, pw, b, **opts)),
        fwd_bwd(lambda: ka.separable_stage(xd, dw, pw, b, native=False, **opts)),
    )
    xh, wh, bh = leaf(batch, 24, 6000), leaf(3, 8, 11), leaf(3)
    cases["decoder heads 8->1 k11 x3"] = (
        fwd_bwd(lambda: ka.same_conv(xh, wh, bh, groups=3)),
        fwd_bwd(lambda: ka.same_conv(xh, wh, bh, groups=3, native=False)),
    )
    qa, kq, wa = leaf(batch, 56, 32), leaf(batch, 56, 32), leaf(32)
    cases["attention scores (B,56,56,32)"] = (
        fwd_bwd(lambda: ka.additive_scores(qa, kq, wa)),
        fwd_bwd(lambda: ka.additive_scores(qa, kq, wa, native=False)),
    )
    return cases


def bench_kernels(batch: int, repeats: int) -> None:
    cases = kernel_cases(batch)
    fns = {
        f"{name}|{side}": fn
        for name, pair in cases.items()
        for side, fn in zip(("kernel", "torch"), pair)
    }
    for fn in fns.values():
        fn()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.process_time()
            fn()
            cpu[key].append((time.process_time() - start) * 1e3)
    print(f"\nkernels, forward + backward, batch {batch}, process CPU ms (median of {repeats})")
    print(f"{'case':30s} {'kernel':>8s} {'torch':>8s} {'speedup':>8s}")
    for name in cases:
        k, t = (float(np.median(cpu[f"{name}|{side}"])) for side in ("kernel", "torch"))
        print(f"{name:30s} {k:8.2f} {t:8.2f} {t / k:8.2f}")


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
    parser.add_argument("--kernels-only", action="store_true", help="only the per-kernel table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernels_only:
        bench_kernels(args.batch, max(args.passes, 3))
        return
    modes = ("off", "on") if args.kernels == "both" else (args.kernels,)
    if "on" in modes and not ka.available():
        print("the C kernels are unavailable here (no compiler or FEQ_LAB_NO_KERNELS): "
              "'on' runs the torch references")  # fmt: skip
    if "on" in modes:
        check_adapter(args.presets)
    fns = candidates(args.presets, modes)
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
            rate, predicted, n = epoch_rate(mode, args.batch, args.epoch_batches)
            print(
                f"\nFEQ3 kernels {mode}: quick-experiment epoch ({n} batches, loading and "
                f"augmentation included) {rate:.1f} samples/s; pure train step predicts "
                f"{predicted:.1f} samples/s; ratio {rate / predicted:.2f}"
            )


if __name__ == "__main__":
    main()
