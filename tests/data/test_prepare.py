"""subset.prepare / python -m feq_lab.prepare: outputs, no-op reruns, extraction, data_version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feq_lab.data.seisbench import write_seisbench
from feq_lab.data.stead import open_dataset, write_dataset
from feq_lab.data.subset import data_version, prepare
from feq_lab.data.synthetic import generate
from feq_lab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _synthetic_cfg(out, **kw):
    return {"kind": "synthetic", "source": None, "out_dir": str(out), "n_earthquakes": 6,
            "n_noise": 2, "seed": 3, "split": {"train": 0.85, "val": 0.05, "test": 0.10},
            "on_bad_trace": "error", "batch_size": 4, **kw}


def test_rerun_same_config_is_noop_and_change_rebuilds(tmp_path):
    out = prepare(_synthetic_cfg(tmp_path / "s"))
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(files) == {"subset.hdf5", "subset.csv", "summary.json"}
    version = data_version(out)
    prepare(_synthetic_cfg(tmp_path / "s", batch_size=64))  # training-only key: still a no-op
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files
    prepare(_synthetic_cfg(tmp_path / "s", seed=4))
    assert data_version(out) != version
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 4 and summary["n_traces"] == 8


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.n_noise"):
        prepare(_synthetic_cfg(tmp_path, n_noise=-1))
    with pytest.raises(ConfigError, match="data.kind"):
        prepare(_synthetic_cfg(tmp_path, kind="mystery"))
    with pytest.raises(ConfigError, match="data.source"):
        prepare(_synthetic_cfg(tmp_path, kind="stead"))


def test_data_version_is_dvc_md5(tmp_path):
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha\n")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    tree = Tree()
    for rel in ("a.txt", "sub/b.bin"):
        md5 = hashlib.md5((tmp_path / "d" / rel).read_bytes()).hexdigest()
        tree.add(tuple(rel.split("/")), Meta(), HashInfo("md5", md5))
    tree.digest()
    assert data_version(tmp_path / "d") == tree.hash_info.value


@pytest.fixture(scope="module")
def real_like(tmp_path_factory):
    """A 'real' STEAD in two 2019-layout chunks (noise chunk + earthquake chunk)."""
    root = tmp_path_factory.mktemp("stead")
    batches = list(generate(14, 6, seed=31))
    waves = np.concatenate([b[0] for b in batches])
    meta = pd.concat([b[1] for b in batches], ignore_index=True)
    write_dataset(root / "chunk1.hdf5", waves[14:], meta.iloc[14:], layout="2019")
    write_dataset(root / "chunk2.hdf5", waves[:14], meta.iloc[:14], layout="2019")
    return root, waves, meta


def test_stead_extraction_stratified_filtered_seeded(tmp_path, real_like):
    root, waves, meta = real_like
    cfg = {"kind": "stead", "source": str(root), "out_dir": str(tmp_path / "a"),
           "n_earthquakes": 5, "n_noise": 3, "seed": 9, "on_bad_trace": "error",
           "split": {"train": 0.6, "val": 0.2, "test": 0.2},
           "filters": {"min_snr_db": None, "distance_km": [0, 80], "magnitude": None}}
    out = prepare(cfg)
    sub = open_dataset(out)
    m = sub.metadata
    assert (m["trace_category"] == "earthquake_local").sum() == 5 and (m["trace_category"] == "noise").sum() == 3
    assert (m.loc[m["trace_category"] != "noise", "source_distance_km"] <= 80).all()
    assert set(m["split"]) <= {"train", "val", "test"}
    index = {n: i for i, n in enumerate(meta["trace_name"])}
    for name in m["trace_name"]:
        np.testing.assert_array_equal(sub.get_waveform(name), waves[index[name]])
    again = prepare({**cfg, "out_dir": str(tmp_path / "b")})
    assert (again / "subset.csv").read_text() == (out / "subset.csv").read_text()


def test_seisbench_extraction(tmp_path, real_like):
    _, waves, meta = real_like
    write_seisbench(tmp_path / "sb", waves, meta, bucket_size=8)
    out = prepare({"kind": "seisbench", "source": str(tmp_path / "sb"),
                   "out_dir": str(tmp_path / "o"), "n_earthquakes": 4, "n_noise": 2, "seed": 1})
    m = open_dataset(out).metadata
    assert len(m) == 6 and set(m["trace_name"]) <= set(meta["trace_name"])


def _without_hydra_callbacks() -> list[str]:
    """Overrides dropping hydra.callbacks (MLflow sweep hooks: irrelevant to prepare, slow import)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    return [f"~hydra.callbacks.{k}" for k in (cfg.hydra.callbacks or {})]


def test_cli_prints_summary_and_writes_outputs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "feq_lab.prepare", "data.n_earthquakes=4", "data.n_noise=2",
           f"data.out_dir={tmp_path / 'cli'}", f"hydra.run.dir={tmp_path / 'hydra'}",
           *_without_hydra_callbacks()]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "subset:" in res.stdout and "S-P vs TauP" in res.stdout
    assert "S-P vs live TauP" in res.stdout
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["categories"] == {"earthquake_local": 4, "noise": 2}
    assert summary["traveltime_check"]["live_taup"]["count"] == 4
    # the realism summary: waveform statistics with bands, and the figure beside summary.json
    assert "s_to_p_peak_ratio_median" in res.stdout
    assert summary["waveform_statistics"]["s_to_p_peak_ratio_median"]["band"] == [2.5, 10.0]
    png = tmp_path / "cli" / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
