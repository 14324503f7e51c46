"""`python -m feq_lab.profile`: one variant as JSON, the five presets as a table, bad keys."""

from __future__ import annotations

import json

import pytest

from feq_lab.errors import ConfigError
from feq_lab.profile import main, run

FAST = ["warmup=0", "repeats=1", "batches=[1]", "threads=1"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_one_variant_as_json():
    out = json.loads(run(["model=feq3", "rnn=gru", "cnn_blocks=4", "format=json", *FAST]))
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
    table = run(["model=all", "backends=[torch]", *FAST])
    header, *rows = table.splitlines()
    assert header.split() == ["eqt", "leq", "feq1", "feq2", "feq3"]
    totals = next(r for r in rows if r.startswith("Total (paper)"))
    assert totals.split()[-5:] == ["373,495", "39,776", "36,096", "30,512", "32,080"]
    assert any(r.startswith("Latency torch b=1") for r in rows)


def test_sections_say_where_the_eager_time_goes():
    out = json.loads(run(["model=feq3", "sections=true", "backends=[torch]", "format=json", *FAST]))
    sections = out["variants"][0]["eager_sections_ms"]
    assert {"encoder", "transformers", "picker rnn", "decoders", "whole model"} <= set(sections)
    assert all(ms > 0 for ms in sections.values())
    assert sections["decoders"] < sections["whole model"]
    table = run(["model=feq3", "sections=true", "backends=[torch]", *FAST])
    assert "Eager decoders, b=1 (ms)" in table


def test_bad_options_name_the_key(capsys):
    with pytest.raises(ConfigError, match="^rnnn:"):
        run(["rnnn=gru"])
    assert main(["cnn_blocks=0", *FAST]) == 2
    assert "cnn_blocks" in capsys.readouterr().err
    assert main(["model=feq9"]) == 2
    assert "feq9" in capsys.readouterr().err
