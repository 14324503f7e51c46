"""`python -m feq_lab.stream` end to end: registry champion + replay, and a local checkpoint + files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import obspy
import pytest
import torch
from conftest import T0, make_record

from feq_lab.paths import CONF_DIR, PROJECT_ROOT


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from feq_lab.models import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model("feq3"), tmp_path_factory.mktemp("ckpt") / "feq3.pt")


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("stream", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def test_cli_replay_on_the_registered_champion(tiny_subset, checkpoint, tmp_path):
    from feq_lab.tracking.mlflow import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "feq-lab")
    run_id = tracker.start_run("trained-feq3")
    tracker.log_pyfunc_model(checkpoint)
    tracker.end_run(run_id)
    tracker.register(run_id, "feq-picker", "champion")

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MPLBACKEND": "Agg"}
    env.pop("DISPLAY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "feq_lab.stream", "source=replay", "display=png",
         f"source.subset_dir={tiny_subset}", f"tracking.uri={uri}", f"out_dir={out}",
         "engine.thresholds.detection=0.3", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout = JSON lines only
    assert all(e["type"] == "event" and e["model"].endswith("feq-picker@champion") for e in events)
    assert "replay:" in proc.stderr  # logs go to stderr
    truth = json.loads((out / "scenario.json").read_text())
    assert truth["p_time"] < truth["s_time"] and len(truth["noise_intervals"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["blocks"] == 4 and summary["windows"] >= 7
    assert summary["scenario"]["n_events"] == len(events)
    assert (out / "picks.csv").exists() and (out / "picks.xml").exists()
    assert len(obspy.read_events(str(out / "picks.xml"))) == len(events)
    pngs = list(out.glob("monitor_*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000
    assert (out / "model.onnx").exists()  # the onnxruntime backend exported the champion


def test_local_checkpoint_on_files_and_scenarios(checkpoint, tiny_subset, tmp_path, capsys):
    from feq_lab.stream import run

    path = tmp_path / "rec.mseed"
    st = obspy.Stream([obspy.Trace(make_record(minutes=2)[i], header={
        "network": "XX", "station": "STA", "channel": f"HH{c}", "sampling_rate": 100.0,
        "starttime": obspy.UTCDateTime(T0)}) for i, c in enumerate("ENZ")])
    st.write(str(path), format="MSEED", encoding="FLOAT32")
    cfg = compose(["source=files", f"source.paths=[{path}]", "model=feq3",
                   f"checkpoint={checkpoint}", "backend=torch", "display=none",
                   f"out_dir={tmp_path / 'files'}", "tracking.uri=sqlite:///unused.db"])
    result = run(cfg)
    assert result["model"] == "feq3:feq3.pt" and result["windows"] == 4
    assert (tmp_path / "files" / "picks.csv").exists()

    cfg = compose([f"source.subset_dir={tiny_subset}", f"checkpoint={checkpoint}",
                   "backend=torch", "display=none", "scenarios=2",
                   f"out_dir={tmp_path / 'many'}", "tracking.uri=sqlite:///unused.db"])
    summary = run(cfg)
    assert summary["scenarios"] == 2 and len(summary["per_scenario"]) == 2
    assert summary["detections"] + summary["misses"] == 2
    assert json.loads((tmp_path / "many" / "scenarios_summary.json").read_text())["scenarios"] == 2
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["type"] == "scenarios_summary"


def test_bad_config_is_a_clear_error(tmp_path):
    from feq_lab.errors import ConfigError
    from feq_lab.stream import run

    cfg = compose(["source=files", "display=none", f"out_dir={tmp_path}", "engine.stride=0",
                   "tracking.uri=sqlite:///unused.db"])
    with pytest.raises(ConfigError, match="engine.stride"):
        run(cfg)
    cfg = compose(["source=seedlink", "display=none", f"out_dir={tmp_path}", "scenarios=3",
                   "tracking.uri=sqlite:///unused.db"])
    with pytest.raises(ConfigError, match="scenarios"):
        run(cfg)
