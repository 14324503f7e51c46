"""`python -m feq_lab.profile`: one variant as JSON, the five presets as a table, bad values.

Configs are composed with Hydra's compose API (as the app composes them); one subprocess checks
the command line itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from feq_lab.errors import ConfigError
from feq_lab.paths import CONF_DIR, PROJECT_ROOT
from feq_lab.profile import run

FAST = ["warmup=0", "repeats=1", "batches=[1]", "threads=1"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def profile_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("profile", overrides=list(overrides))


def test_one_variant_as_json():
    out = json.loads(run(profile_cfg("model=feq3", "rnn=gru", "cnn_blocks=4", "format=json",
                                     *FAST)))
    (variant,) = out["variants"]
    assert variant["model"] == "feq3"
    assert variant["overrides"] == {"rnn": "gru", "cnn_blocks": 4}
    assert variant["params"]["paper"]["bottleneck"] == 3_712
    assert variant["params"]["torch"]["total"] > 0
    assert variant["size_mb"] > 0 and variant["onnx_mb"] > 0
    assert {(lat["backend"], lat["batch"]) for lat in variant["latency"]} == {
        ("torch", 1),
        ("onnxruntime", 1),
    }


def test_all_presets_side_by_side():
    table = run(profile_cfg("presets=all", "backends=[torch]", *FAST))
    header, *rows = table.splitlines()
    assert header.split() == ["eqt", "leq", "feq1", "feq2", "feq3"]
    totals = next(r for r in rows if r.startswith("Total (paper)"))
    assert totals.split()[-5:] == ["373,495", "39,776", "36,096", "30,512", "32,080"]
    assert any(r.startswith("Latency torch b=1") for r in rows)


def test_sections_say_where_the_eager_time_goes():
    cfg = profile_cfg("model=feq3", "sections=true", "backends=[torch]", "format=json", *FAST)
    sections = json.loads(run(cfg))["variants"][0]["eager_sections_ms"]
    assert {"encoder", "transformers", "picker rnn", "decoders", "whole model"} <= set(sections)
    assert all(ms > 0 for ms in sections.values())
    assert sections["decoders"] < sections["whole model"]
    table = run(profile_cfg("model=feq3", "sections=true", "backends=[torch]", *FAST))
    assert "Eager decoders, b=1 (ms)" in table


@pytest.mark.parametrize("override, key", [
    ("cnn_blocks=0", "cnn_blocks"),
    ("rnn=foo", "rnn"),
    ("presets=[feq9]", "model"),
    ("backends=[tensorrt]", "backends"),
    ("format=csv", "format"),
    ("repeats=0", "repeats"),
    ("batches=[0]", "batches"),
])
def test_bad_values_name_the_key_before_any_measurement(override, key):
    with pytest.raises(ConfigError) as err:
        run(profile_cfg(*FAST, override))
    assert err.value.key == key


def test_command_line_bad_value_is_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "feq_lab.profile", "cnn_blocks=0", *FAST],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "feq_lab.profile: error: cnn_blocks: must be an integer >= 1, got 0"]
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []  # no output dir, no log file
