"""The training kernels' narrow forms (simd.h, FEQ_WIDE: CPUs without AVX-512 run them) compute
the same as the references: the kernels built here with -D'FEQ_WIDE()=0', run through the same
autograd functions training uses. Without this, an AVX-512 machine would never execute them."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from feq_lab.models import kernels
from feq_lab.models.kernels import autograd as ka
from tests.models.test_train_kernels import (
    HEADS,
    STAGES,
    check_same_conv,
    check_separable_head,
    check_separable_stage,
)

COMPILER = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler on this machine")


@pytest.fixture(scope="module")
def narrow_lib(tmp_path_factory) -> ctypes.CDLL:
    """The kernel library with the narrow forms forced, its entry points declared as
    autograd declares them."""
    target = tmp_path_factory.mktemp("narrow") / "feq_kernels_narrow.so"
    # One instruction set instead of the three target_clones builds (this file 35 s instead of ~3
    # min on a 2-core AMD EPYC): AVX2 where the CPU has it (the narrow forms' target), else the
    # baseline.
    avx2 = platform.machine() == "x86_64" and torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    one_target = ("-DFEQ_NO_CLONES", *(("-march=x86-64-v3",) if avx2 else ()))
    command = kernels.compile_command(
        COMPILER, target, extra=(*kernels.openmp_flags(), "-DFEQ_WIDE()=0", *one_target)
    )
    subprocess.run(command, check=True, capture_output=True, timeout=kernels.BUILD_TIMEOUT_S)
    lib = ctypes.CDLL(str(target))
    patch = pytest.MonkeyPatch()
    patch.setattr(kernels, "library", lambda: lib)
    declared = ka._lib.__wrapped__()  # the declarations, on this library
    patch.undo()
    return declared


@pytest.fixture
def narrow(narrow_lib, monkeypatch):
    monkeypatch.setattr(ka, "_lib", lambda: narrow_lib)


def test_narrow_build_runs_the_narrow_forms(narrow_lib):
    assert narrow_lib.feq_kernels_wide() == 0
    default = kernels.library()
    assert default is not None
    # the default build picks the wide forms exactly where the CPU has AVX-512
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and os.uname().machine == "x86_64":
        assert default.feq_kernels_wide() == int(" avx512f" in cpuinfo.read_text())


@pytest.mark.parametrize(
    ("batch", "groups", "channels", "outputs", "length", "kernel", "up", "crop", "pool"), STAGES
)
def test_separable_stage_narrow(narrow, batch, groups, channels, outputs, length, kernel, up, crop,
                                pool):  # fmt: skip
    check_separable_stage(batch, groups, channels, outputs, length, kernel, up, crop, pool)


@pytest.mark.parametrize(
    ("batch", "groups", "channels", "outputs", "length", "kernel"),
    [(2, 3, 8, 1, 200, 11), (2, 1, 9, 13, 300, 13), (3, 2, 4, 6, 50, 3)],
)
def test_same_conv_narrow(narrow, batch, groups, channels, outputs, length, kernel):
    check_same_conv(batch, groups, channels, outputs, length, kernel)


@pytest.mark.parametrize(
    ("batch", "groups", "channels", "outputs", "length", "kernel", "up", "crop", "hkernel"), HEADS
)
def test_separable_head_narrow(narrow, batch, groups, channels, outputs, length, kernel, up, crop,
                               hkernel):  # fmt: skip
    check_separable_head(batch, groups, channels, outputs, length, kernel, up, crop, hkernel)
