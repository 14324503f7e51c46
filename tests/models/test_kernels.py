"""The fused C GRU kernel (feq_lab/models/kernels): same function as nn.GRU, safe fallbacks."""

from __future__ import annotations

import shutil
from functools import partial

import pytest
import torch
from torch import nn

from feq_lab.models import build_model, compile_for_inference, kernels
from feq_lab.models.kernels import autograd as ka

# The shared cache (the suite's one full build, as every run on this machine uses it), read before
# any test points FEQ_LAB_KERNEL_CACHE elsewhere.
SHARED_CACHE = kernels.cache_dir()
# The sources library() needs to declare its entry points: a private cache builds these only. The
# full library takes minutes per build on a 2-core machine (three instruction-set clones of
# sep_train.c); the suite builds it once, into SHARED_CACHE, and loads it everywhere else.
SMALL_SOURCES = tuple(p for p in kernels.SOURCES if p.name in ("gru.c", "sepconv.c"))
FULL_BUILD = kernels.compile_command


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """A private kernel cache, where library() builds the small library (SMALL_SOURCES: the
    same build line, cache key and atomic write, seconds instead of minutes); the loaders' memos
    (the library's and the training kernels' declarations, `ka._lib`) are reset before and
    after, so a library that failed to build here is not what later tests see."""
    monkeypatch.setattr(kernels, "compile_command", partial(FULL_BUILD, sources=SMALL_SOURCES))
    monkeypatch.setenv("FEQ_LAB_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.library.cache_clear()
    ka._lib.cache_clear()
    yield tmp_path / "kernels"
    kernels.library.cache_clear()
    ka._lib.cache_clear()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_kernel_builds_where_a_compiler_exists(kernel_cache):
    """With a compiler, library() builds into an empty cache: one library, nothing temporary
    left beside it (the tests below load the suite's shared full build)."""
    assert kernels.library() is not None
    built = list(kernel_cache.glob("feq_kernels-*.so"))
    assert len(built) == 1
    assert not list(kernel_cache.glob(".*"))  # no temporary file left beside it


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(("batch", "steps", "inputs", "hidden"), [(1, 56, 16, 32), (3, 47, 7, 5)])
def test_gru_kernel_equals_torch_gru(bidirectional, batch, steps, inputs, hidden):
    torch.manual_seed(3)
    rnn = nn.GRU(inputs, hidden, batch_first=True, bidirectional=bidirectional).eval()
    x = 3.0 * torch.randn(batch, steps, inputs)  # saturating gates too
    with torch.no_grad():
        expected = rnn(x)[0]
        got = kernels.gru_forward(rnn, x)
    if kernels.library() is None:
        pytest.skip("kernel unavailable here (no compiler)")
    assert got is not None and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_gru_kernel_leaves_gradients_and_training_to_torch():
    rnn = nn.GRU(4, 3, batch_first=True).eval()
    x = torch.randn(1, 5, 4, requires_grad=True)
    assert kernels.gru_forward(rnn, x) is None  # autograd needs the torch graph
    with torch.no_grad():
        assert not kernels.gru_applies(rnn.train(), x)  # a training-mode module
        assert not kernels.gru_applies(nn.LSTM(4, 3, batch_first=True).eval(), x)
        assert not kernels.gru_applies(nn.GRU(4, 3).eval(), x)  # sequence-first layout


def test_disabled_or_unbuildable_kernel_falls_back(kernel_cache, monkeypatch, caplog):
    torch.manual_seed(4)
    monkeypatch.setenv("CC", "/bin/false")  # a compiler that always fails, from the start
    with caplog.at_level("WARNING"):
        model = build_model("feq3").eval()  # ModelOptions "auto" asks whether kernels exist
    x = torch.randn(1, 3, 6000)
    with caplog.at_level("WARNING"), torch.no_grad():
        fallback = compile_for_inference(model)(x)
    assert kernels.library() is None
    assert "failed" in caplog.text
    assert not list(kernel_cache.glob("*"))  # nothing half-written in the cache
    monkeypatch.delenv("CC")
    monkeypatch.setenv("FEQ_LAB_NO_KERNELS", "1")
    kernels.library.cache_clear()
    assert kernels.library() is None
    monkeypatch.delenv("FEQ_LAB_NO_KERNELS")
    monkeypatch.setattr(kernels, "compile_command", FULL_BUILD)
    monkeypatch.setenv("FEQ_LAB_KERNEL_CACHE", str(SHARED_CACHE))  # the full library
    kernels.library.cache_clear()
    with torch.no_grad():
        fast = compile_for_inference(model)(x)
    assert kernels.library() is not None  # the comparison below ran the kernels
    for a, b in zip(fast, fallback):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_model_rnn_calls_use_the_kernel(monkeypatch):
    """FEQ3 compiled for eager inference runs its fused P/S GRU through the kernel."""
    calls = []
    real = kernels.gru_forward
    monkeypatch.setattr(
        kernels, "gru_forward", lambda rnn, x: calls.append(x.shape) or real(rnn, x)
    )
    with torch.no_grad():
        compile_for_inference(build_model("feq3"))(torch.randn(1, 3, 6000))
    assert calls == [(1, 56, 16)]


def _reference_separable(x, dw, pw, bias, groups, upsample, crop, pool, pool_left):
    """The same stage from torch ops: upsample, crop, "same" depthwise + pointwise, ReLU, pool."""
    import torch.nn.functional as F

    y = torch.repeat_interleave(x, upsample, dim=2)
    y = y[:, :, crop[0] : y.shape[2] - crop[1]]
    k = dw.shape[-1]
    y = F.pad(y, ((k - 1) // 2, k - 1 - (k - 1) // 2))
    y = F.conv1d(y, dw, None, groups=dw.shape[0])
    y = F.relu(F.conv1d(y, pw, bias, groups=groups))
    if pool > 1:
        length = y.shape[2]
        right = -(-length // pool) * pool - length - pool_left
        y = F.max_pool1d(F.pad(y, (pool_left, max(right, 0)), value=-float("inf")), pool)
    return y


@pytest.mark.parametrize(
    (
        "batch",
        "groups",
        "channels",
        "outputs",
        "length",
        "kernel",
        "upsample",
        "crop",
        "pool",
        "pool_left",
    ),
    [
        (1, 1, 3, 8, 600, 11, 1, (0, 0), 3, 0),  # an FEQ encoder stage
        (2, 1, 16, 32, 223, 7, 1, (0, 0), 2, 0),  # odd length: a partial last window
        (1, 1, 8, 16, 100, 4, 1, (0, 0), 3, 1),  # even kernel, pool padding on the left
        (2, 3, 16, 16, 67, 5, 3, (1, 0), 1, 0),  # a stacked decoder stage: upsample + crop
        (1, 3, 32, 16, 112, 5, 2, (1, 1), 1, 0),
    ],
)
def test_separable_kernel_equals_torch(
    batch, groups, channels, outputs, length, kernel, upsample, crop, pool, pool_left
):
    if kernels.library() is None:
        pytest.skip("kernel unavailable here (no compiler)")
    torch.manual_seed(5)
    x = torch.randn(batch, groups * channels, length)
    dw = torch.randn(groups * channels, 1, kernel)
    pw = torch.randn(groups * outputs, channels, 1)
    bias = torch.randn(groups * outputs)
    with torch.no_grad():
        got = kernels.separable_conv(
            x, dw, pw, bias, groups=groups, upsample=upsample, crop=crop, pool=pool,
            pool_left=pool_left,
        )  # fmt: skip
        expected = _reference_separable(x, dw, pw, bias, groups, upsample, crop, pool, pool_left)
    assert got is not None and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
