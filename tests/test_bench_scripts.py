"""Every benchmark script still starts: its imports resolve against the package as it is now.

Why: benches live outside the package and outside the suite's imports, so a refactor can break
one silently (bench/edges.py imported a helper that had moved into the tests). `--help` runs the
imports and the argument parser without timing anything; speed itself is never asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from feq_lab.paths import PROJECT_ROOT

BENCHES = sorted((PROJECT_ROOT / "bench").glob("*.py"))


def test_the_bench_folder_is_found():
    assert len(BENCHES) >= 5, BENCHES


@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.name)
def test_a_bench_script_starts(script):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          env=env, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
