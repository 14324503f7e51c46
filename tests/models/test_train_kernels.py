"""Differentiable training kernels (feq_lab.models.kernels.autograd): outputs and gradients equal
autograd through the torch references (float64), both GRU flavours and directions, encoder and
decoder separable stages, the dense head conv, additive attention scores; fallbacks compute the
same."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from feq_lab.models import kernels
from feq_lab.models.kernels import autograd as ka

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")


def _compare(fn, ref_fn, params: list[torch.Tensor], rtol: float = 1e-4) -> None:
    """fn on float32 copies vs ref_fn in float64: outputs and every gradient, to rtol of each
    tensor's largest magnitude (the values here are O(1..10))."""
    params64 = [p.detach().double().requires_grad_() for p in params]
    params32 = [p.detach().float().requires_grad_() for p in params]
    ref = ref_fn(*params64)
    got = fn(*params32)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    weight = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref_grads = torch.autograd.grad((ref * weight).sum(), params64)
    got_grads = torch.autograd.grad((got * weight.float()).sum(), params32)
    for name, a, b in [("output", got, ref)] + [
        (f"grad {i}", g, r) for i, (g, r) in enumerate(zip(got_grads, ref_grads))
    ]:
        scale = float(b.abs().max())
        if scale == 0:  # e.g. W_hh's gradient over a single step from h0 = 0
            assert float(a.abs().max()) == 0, name
            continue
        err = float((a.double() - b).abs().max()) / scale
        assert err < rtol, f"{name}: relative error {err:.2e}"


def _gru_params(batch, steps, inputs, hidden, flavour, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(batch, steps, inputs, generator=g)  # saturating gates too
    w_ih = 0.5 * torch.randn(3 * hidden, inputs, generator=g)
    w_hh = 0.5 * torch.randn(3 * hidden, hidden, generator=g)
    b_ih = torch.randn(3 * hidden, generator=g)
    b_hh = torch.randn(3 * hidden, generator=g) if flavour == "torch" else None
    return [p for p in (x, w_ih, w_hh, b_ih, b_hh) if p is not None]


def _gru_call(function, flavour, reverse, **kw):
    def call(*params):
        x, w_ih, w_hh, b_ih = params[:4]
        b_hh = params[4] if flavour == "torch" else None
        return function(x, w_ih, w_hh, b_ih, b_hh, reverse=reverse, flavour=flavour, **kw)

    return call


@needs_cc
def test_kernels_build_here():
    """Guards the comparisons below: with a compiler they must really run the C kernels."""
    assert ka.available()


@pytest.mark.parametrize("flavour", ["torch", "keras"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    ("batch", "steps", "inputs", "hidden"), [(3, 7, 5, 4), (2, 19, 16, 16), (1, 1, 3, 2)]
)
def test_gru_sequence_matches_reference(flavour, reverse, batch, steps, inputs, hidden):
    params = _gru_params(batch, steps, inputs, hidden, flavour)
    _compare(
        _gru_call(ka.gru_sequence, flavour, reverse),
        _gru_call(ka.gru_sequence_reference, flavour, reverse),
        params,
    )


def test_gru_torch_flavour_is_nn_gru():
    torch.manual_seed(1)
    rnn = nn.GRU(5, 4, batch_first=True, bidirectional=True)
    x = torch.randn(2, 9, 5)
    expected = rnn(x)[0]
    got = torch.cat(
        [
            ka.gru_sequence(
                x,
                *(
                    getattr(rnn, f"{n}{s}")
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ),
                reverse=rev,
                flavour="torch",
            )
            for rev, s in ((False, "_l0"), (True, "_l0_reverse"))
        ],
        dim=-1,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_gru_keras_flavour_is_the_keras_cell():
    """Two steps of Keras 2.3.1's GRU (reset_after=False, rows z, r, n, one bias), written out."""
    g = torch.Generator().manual_seed(2)
    u, x = 3, torch.randn(1, 2, 4, generator=g, dtype=torch.float64)
    w_ih, w_hh = (
        torch.randn(3 * u, 4, generator=g).double(),
        torch.randn(3 * u, u, generator=g).double(),
    )
    b = torch.randn(3 * u, generator=g).double()
    h = torch.zeros(u, dtype=torch.float64)
    expected = []
    for t in range(2):
        xt = x[0, t]
        z = torch.sigmoid(w_ih[:u] @ xt + b[:u] + w_hh[:u] @ h)
        r = torch.sigmoid(w_ih[u : 2 * u] @ xt + b[u : 2 * u] + w_hh[u : 2 * u] @ h)
        n = torch.tanh(w_ih[2 * u :] @ xt + b[2 * u :] + w_hh[2 * u :] @ (r * h))
        h = z * h + (1 - z) * n
        expected.append(h)
    ref = ka.gru_sequence_reference(x, w_ih, w_hh, b, None, reverse=False, flavour="keras")
    torch.testing.assert_close(ref[0], torch.stack(expected))
    got = ka.gru_sequence(
        x.float(), w_ih.float(), w_hh.float(), b.float(), None, reverse=False, flavour="keras"
    )
    torch.testing.assert_close(got[0].double(), torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_bad_shapes_raise_before_any_kernel_runs():
    x = torch.zeros(2, 6, 10)
    with pytest.raises(ValueError, match="depthwise"):
        ka.separable_stage(x, torch.zeros(5, 1, 3), torch.zeros(6, 2, 1), None, groups=3)
    with pytest.raises(ValueError, match="pointwise"):
        ka.separable_stage(x, torch.zeros(6, 1, 3), torch.zeros(5, 2, 1), None, groups=3)
    with pytest.raises(ValueError, match="weight"):
        ka.same_conv(x, torch.zeros(3, 3, 5), None, groups=2)
    with pytest.raises(ValueError, match="weight_hh"):
        ka.gru_sequence(torch.zeros(1, 2, 3), torch.zeros(6, 3), torch.zeros(6, 3), None, None,
                        reverse=False, flavour="torch")  # fmt: skip


def test_gru_rejects_bad_options():
    x, w_ih, w_hh, b = torch.zeros(1, 2, 3), torch.zeros(6, 3), torch.zeros(6, 2), torch.zeros(6)
    with pytest.raises(ValueError, match="flavour"):
        ka.gru_sequence(x, w_ih, w_hh, b, b, reverse=False, flavour="tf")
    with pytest.raises(ValueError, match="one bias"):
        ka.gru_sequence(x, w_ih, w_hh, b, b, reverse=False, flavour="keras")


# (batch, groups, channels, outputs, length_in, kernel, upsample, crop, pool)
STAGES = [
    (2, 1, 3, 8, 300, 11, 1, (0, 0), 3),  # encoder stage 1 (3 components)
    (2, 1, 16, 16, 223, 7, 1, (0, 0), 3),  # TF pool padding on both sides (223 -> 75)
    (3, 1, 16, 32, 112, 5, 1, (0, 0), 2),
    (2, 1, 5, 4, 31, 4, 1, (0, 0), 1),  # even kernel: the extra zero goes right
    (2, 3, 16, 16, 60, 5, 3, (1, 1), 1),  # decoder stage, three decoders side by side
    (2, 3, 16, 8, 50, 7, 3, (0, 0), 1),
    (1, 2, 5, 3, 17, 4, 2, (2, 1), 3),  # odd everything
    # 8 + 4 + 1 outputs (every pointwise block width), two tiles with a ragged tail
    (2, 2, 8, 13, 130, 9, 3, (1, 2), 1),
    (1, 1, 4, 12, 300, 13, 1, (0, 0), 2),  # a kernel wider than the register-blocked ones
    # upsampling stages in polyphase form (sep_train.c): the samples near both ends of the
    # cropped row at the full rate, the rest per phase, across tile boundaries
    (2, 3, 4, 4, 56, 5, 3, (1, 1), 1),  # L_in 56 (FEQ3's first decoder input), crop (1, 1)
    (2, 1, 4, 3, 223, 5, 3, (1, 0), 1),  # 668 samples: three tiles, crop (1, 0)
    (1, 1, 3, 4, 700, 7, 3, (0, 0), 1),  # 2100 samples, k 7 (dec5's form)
    (2, 2, 4, 5, 56, 6, 2, (1, 0), 1),  # even k, up 2 (4 combined taps: the run-time loops)
    (2, 1, 4, 4, 150, 5, 2, (0, 1), 2),  # up 2, k 5, then pooled
    (1, 1, 3, 2, 40, 9, 4, (3, 2), 1),  # up 4, k 9
    (1, 1, 2, 2, 5, 7, 3, (1, 1), 1),  # 13 samples: every output reaches the padding
]


@pytest.mark.parametrize(
    ("batch", "groups", "channels", "outputs", "length", "kernel", "up", "crop", "pool"), STAGES
)
def test_separable_stage_matches_reference(
    batch, groups, channels, outputs, length, kernel, up, crop, pool
):
    check_separable_stage(batch, groups, channels, outputs, length, kernel, up, crop, pool)


def check_separable_stage(batch, groups, channels, outputs, length, kernel, up, crop, pool):
    """`separable_stage` against its reference, outputs and gradients, with whichever library
    `ka._lib` gives (test_kernels_narrow.py runs it on the narrow forms)."""
    g = torch.Generator().manual_seed(3)
    params = [
        torch.randn(batch, groups * channels, length, generator=g),
        torch.randn(groups * channels, 1, kernel, generator=g),
        torch.randn(groups * outputs, channels, 1, generator=g),
        torch.randn(groups * outputs, generator=g),
    ]
    opts = {"groups": groups, "upsample": up, "crop": crop, "pool": pool}
    _compare(
        lambda *p: ka.separable_stage(*p, **opts),
        lambda *p: ka.separable_stage_reference(*p, **opts),
        params,
    )


def test_separable_stage_without_bias_or_relu():
    g = torch.Generator().manual_seed(4)
    x, dw, pw = (
        torch.randn(2, 4, 40, generator=g),
        torch.randn(4, 1, 3, generator=g),
        torch.randn(6, 4, 1, generator=g),
    )
    opts = {"relu": False, "pool": 2, "upsample": 2, "crop": (1, 0)}
    _compare(
        lambda x, dw, pw: ka.separable_stage(x, dw, pw, None, **opts),
        lambda x, dw, pw: ka.separable_stage_reference(x, dw, pw, None, **opts),
        [x, dw, pw],
    )


@pytest.mark.parametrize(
    ("batch", "groups", "channels", "outputs", "length", "kernel", "padding"),
    [
        (2, 3, 8, 1, 200, 11, None),
        (2, 1, 5, 3, 37, 4, None),
        (3, 2, 4, 6, 50, 3, (0, 0)),
        (1, 1, 3, 2, 20, 5, (4, 1)),
        (2, 1, 9, 13, 300, 13, None),  # 8 + 4 + 1 output blocks both ways, a wide kernel
    ],
)
def test_same_conv_matches_reference(batch, groups, channels, outputs, length, kernel, padding):
    check_same_conv(batch, groups, channels, outputs, length, kernel, padding)


def check_same_conv(batch, groups, channels, outputs, length, kernel, padding=None):
    """`same_conv` against its reference, outputs and gradients, with whichever library
    `ka._lib` gives."""
    g = torch.Generator().manual_seed(5)
    params = [
        torch.randn(batch, groups * channels, length, generator=g),
        torch.randn(groups * outputs, channels, kernel, generator=g),
        torch.randn(groups * outputs, generator=g),
    ]
    _compare(
        lambda *p: ka.same_conv(*p, groups=groups, padding=padding),
        lambda *p: ka.same_conv_reference(*p, groups=groups, padding=padding),
        params,
    )


# (batch, groups, channels, outputs, length_in, kernel, upsample, crop, head kernel)
HEADS = [
    (2, 3, 16, 8, 700, 7, 3, (0, 0), 11),  # the decoders' tail (dec5 + heads), shorter
    (2, 1, 4, 3, 50, 5, 2, (1, 0), 4),  # even head kernel: its extra zero goes right
    (1, 2, 5, 13, 130, 9, 1, (1, 2), 13),  # every pointwise block width, a wide head
    (3, 3, 4, 4, 5, 7, 3, (1, 1), 3),  # 13 samples: every output reaches the padding
]


@pytest.mark.parametrize(
    ("batch", "groups", "channels", "outputs", "length", "kernel", "up", "crop", "hkernel"), HEADS
)
def test_separable_head_matches_reference(
    batch, groups, channels, outputs, length, kernel, up, crop, hkernel
):
    check_separable_head(batch, groups, channels, outputs, length, kernel, up, crop, hkernel)


def _head_params(batch, groups, channels, outputs, length, kernel, hkernel, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, groups * channels, length, generator=g),
        torch.randn(groups * channels, 1, kernel, generator=g),
        torch.randn(groups * outputs, channels, 1, generator=g),
        torch.randn(groups * outputs, generator=g),
        torch.randn(groups, outputs, hkernel, generator=g),
        torch.randn(groups, generator=g),
    ]


def check_separable_head(batch, groups, channels, outputs, length, kernel, up, crop, hkernel):
    """`separable_head` against its reference (the separable stage, then the grouped head conv),
    outputs and gradients, with whichever library `ka._lib` gives."""
    params = _head_params(batch, groups, channels, outputs, length, kernel, hkernel)
    opts = {"groups": groups, "upsample": up, "crop": crop}
    _compare(
        lambda *p: ka.separable_head(*p, **opts),
        lambda *p: ka.separable_head_reference(*p, **opts),
        params,
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_separable_head_is_its_two_fused_calls_bit_for_bit(threads):
    """The fused tail runs `separable_stage`'s and `same_conv`'s own loops (conv_rows.h), in the
    same order and the same batch chunks: the same floats as those two calls, so a model that
    takes it trains the weights it trained before (options.ModelOptions.separable_head_fn)."""
    params = [p.requires_grad_() for p in _head_params(5, 3, 16, 8, 300, 7, 11, seed=12)]
    opts = {"groups": 3, "upsample": 3, "crop": (1, 0)}
    gz = torch.randn(5, 3, 899, generator=torch.Generator().manual_seed(13))
    previous = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(threads)
        for fused in (True, False):
            if fused:
                z = ka.separable_head(*params, **opts)
            else:
                y = ka.separable_stage(*params[:4], **opts)
                z = ka.same_conv(y, params[4], params[5], groups=3)
            results.append([z, *torch.autograd.grad(z, params, gz)])
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_separable_head_checks_the_head_shape():
    x, dw, pw, b, hw, hb = _head_params(1, 3, 4, 2, 20, 3, 5)
    with pytest.raises(ValueError, match="one output per group"):
        ka.separable_head(x, dw, pw, b, hw.reshape(6, 1, 5), hb, groups=3)
    with pytest.raises(ValueError, match="head bias"):
        ka.separable_head(x, dw, pw, b, hw, torch.zeros(2), groups=3)


@pytest.mark.parametrize(
    ("batch", "steps", "keys", "units"), [(2, 7, 7, 5), (3, 56, 56, 32), (1, 13, 20, 17)]
)
def test_additive_scores_match_reference(batch, steps, keys, units):
    g = torch.Generator().manual_seed(10)
    params = [
        2.0 * torch.randn(batch, steps, units, generator=g),  # saturating tanh too
        2.0 * torch.randn(batch, keys, units, generator=g),
        torch.randn(units, generator=g),
    ]
    _compare(ka.additive_scores, ka.additive_scores_reference, params)


@pytest.mark.parametrize(
    ("length", "opts"),
    [(2000, {"pool": 2}), (700, {"upsample": 3, "crop": (1, 0)})],  # encoder; polyphase decoder
)
def test_thread_split_gives_the_same_result(length, opts):
    """Large enough to be split over threads: same outputs and gradients as one thread, and
    bit for bit the same on a rerun with the same split."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 16, length, generator=g, requires_grad=True)
    dw = torch.randn(16, 1, 7, generator=g, requires_grad=True)
    pw = torch.randn(16, 16, 1, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            y = ka.separable_stage(x, dw, pw, b, **opts)
            results.append([y, *torch.autograd.grad(y.square().sum(), [x, dw, pw, b])])
    finally:
        torch.set_num_threads(threads)
    for a, c, d in zip(*results):  # to 1e-5 of each tensor's largest magnitude
        assert float((a - c).abs().max()) <= 1e-5 * float(c.abs().max())
        assert torch.equal(c, d)


@needs_cc
def test_chunks_run_on_torchs_openmp_team():
    """Where torch's ops run on OpenMP the kernel library is built with it and shares torch's
    runtime: one libgomp in the process, so no second pool competes with torch's for the cores
    (parallel.c says why)."""
    lib = ka._lib()
    assert lib is not None
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch does not run its ops on OpenMP here")
    assert lib.feq_openmp() == 1
    maps = Path("/proc/self/maps")
    if maps.exists():
        gomp = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line}
        assert len(gomp) == 1, gomp


@needs_cc
def test_dropout_masks_do_not_depend_on_the_thread_count():
    """The fused dropout's mask is a function of (seed, element): 1 and 2 threads draw the same."""
    x = torch.randn(4, 100_000)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            results.append(ka.dropout(x, 0.25, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])
    with pytest.raises(ValueError, match="dropout probability"):
        ka.dropout(x, 1.5, True)


def _reload_kernels() -> None:
    kernels.library.cache_clear()
    ka._lib.cache_clear()


def _all_kernel_outputs(**kw) -> list[torch.Tensor]:
    """Outputs and gradients of each public function on fixed inputs."""
    g = torch.Generator().manual_seed(7)
    out = []
    for flavour in ("torch", "keras"):
        params = [p.requires_grad_() for p in _gru_params(2, 6, 3, 4, flavour, seed=7)]
        y = _gru_call(ka.gru_sequence, flavour, True, **kw)(*params)
        out += [y, *torch.autograd.grad(y.sum(), params)]
    params = [torch.randn(2, 4, 30, generator=g).requires_grad_(), torch.randn(4, 1, 5, generator=g).requires_grad_(),
              torch.randn(6, 2, 1, generator=g).requires_grad_(), torch.randn(6, generator=g).requires_grad_()]  # fmt: skip
    y = ka.separable_stage(*params, groups=2, upsample=2, crop=(1, 1), pool=2, **kw)
    out += [y, *torch.autograd.grad(y.sum(), params)]
    y = ka.same_conv(
        *params[:1], torch.randn(4, 2, 5, generator=g).requires_grad_(), None, groups=2, **kw
    )
    out += [y, *torch.autograd.grad(y.sum(), params[:1])]
    params += [torch.randn(2, 3, 7, generator=g).requires_grad_(),
               torch.randn(2, generator=g).requires_grad_()]  # fmt: skip
    y = ka.separable_head(*params, groups=2, upsample=2, crop=(1, 1), **kw)
    out += [y, *torch.autograd.grad(y.sum(), params)]
    params = [torch.randn(2, 5, 3, generator=g).requires_grad_() for _ in range(2)]
    params.append(torch.randn(3, generator=g).requires_grad_())
    y = ka.additive_scores(*params, **kw)
    out += [y, *torch.autograd.grad(y.sum(), params)]
    return out


def test_native_off_gives_the_same():
    for a, b in zip(_all_kernel_outputs(), _all_kernel_outputs(native=False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_disabled_kernels_fall_back_to_the_same_function(monkeypatch):
    native = _all_kernel_outputs()
    monkeypatch.setenv("FEQ_LAB_NO_KERNELS", "1")
    _reload_kernels()
    try:
        assert not ka.available()
        fallback = _all_kernel_outputs()
    finally:
        monkeypatch.delenv("FEQ_LAB_NO_KERNELS")
        _reload_kernels()
    for a, b in zip(native, fallback):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_other_dtypes_take_the_reference_path():
    """float64 goes through the torch ops, so autograd's own gradcheck applies."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 2, 9, generator=g, dtype=torch.float64, requires_grad=True)
    dw = torch.randn(2, 1, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(3, 2, 1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *p: ka.separable_stage(*p, None, upsample=2, pool=2), (x, dw, pw)
    )
