"""`python -m feq_lab.stream` end to end: champion + replay, local checkpoint + files."""

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


def write_record(path: Path, minutes: float = 2.0) -> Path:
    st = obspy.Stream(
        [
            obspy.Trace(
                make_record(minutes=minutes)[i],
                header={
                    "network": "XX",
                    "station": "STA",
                    "channel": f"HH{c}",
                    "sampling_rate": 100.0,
                    "starttime": obspy.UTCDateTime(T0),
                },
            )
            for i, c in enumerate("ENZ")
        ]
    )
    st.write(str(path), format="MSEED", encoding="FLOAT32")
    return path


@pytest.mark.slow
def test_cli_files_with_a_local_checkpoint(checkpoint, tmp_path):
    """The command line exactly as documented; stdout carries only JSON lines."""
    path = write_record(tmp_path / "rec.mseed")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MPLBACKEND": "Agg"}
    env.pop("DISPLAY", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "feq_lab.stream",
            "source=files",
            f"source.paths=[{path}]",
            "model=feq3",
            f"checkpoint={checkpoint}",
            "backend=torch",
            "display=png",
            "engine.thresholds.detection=0.0",
            f"out_dir={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout = JSON lines only
    assert events, "detection threshold 0 must give at least one event"
    assert all(e["type"] == "event" and e["model"] == "feq3:feq3.pt" for e in events)
    assert "end of stream" in proc.stderr  # logs go to stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows"] == 3 and summary["events"] == len(events)
    finals = [e for e in events if e["kind"] == "final"]
    assert finals and all(e["emitted_at"].endswith("Z") for e in events)
    assert len({e["event_id"] for e in finals}) == len(finals)  # never a duplicate final
    assert len(obspy.read_events(str(out / "picks.xml"))) == len(finals)
    assert (out / "monitor_XX.STA.png").stat().st_size > 10_000


@pytest.mark.slow
def test_replay_on_the_registered_champion(tiny_subset, checkpoint, tmp_path):
    from feq_lab.stream import run
    from feq_lab.tracking.mlflow import Tracker
    from feq_lab.tracking.registry import Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "feq-lab")
    run_id = tracker.start_run("trained-feq3")
    tracker.log_pyfunc_model(checkpoint)
    # what every run logs: the thresholds its headline metrics used (here as if tuned on val)
    tracker.log_metrics({"thresholds/detection": 0.4, "thresholds/p": 0.2, "thresholds/s": 0.15})
    tracker.end_run(run_id)
    Registry(uri).register(run_id, "feq-picker", "champion")

    out = tmp_path / "run"
    result = run(
        compose(
            [
                f"source.subset_dir={tiny_subset}",
                f"tracking.uri={uri}",
                "display=png",
                f"out_dir={out}",
            ]
        )
    )
    assert result["model"] == "feq3:feq-picker@champion"
    # engine.thresholds=model (the default): the champion's own thresholds, not 0.5/0.1/0.1
    assert result["thresholds"] == {"detection": 0.4, "p": 0.2, "s": 0.15}
    assert (out / "model.onnx").exists()  # the onnxruntime backend exported the champion
    truth = json.loads((out / "scenario.json").read_text())
    assert truth["p_time"] < truth["s_time"] and len(truth["noise_intervals"]) == 1
    # 1-s records (source.record_s) at simulated real time; regular windows 0, 30, ..., 180 s
    assert result["blocks"] == 240 and result["windows"] == 7
    assert set(result["kinds"]) <= {"pick", "update", "final", "retract"}
    for key in ("p_latency_s", "s_latency_s", "provisional_picks", "retractions"):
        assert key in result["scenario"]
    assert result["scenario"]["n_events"] == result["kinds"].get("final", 0)
    assert (out / "picks.csv").exists() and (out / "picks.xml").exists()
    assert len(list(out.glob("monitor_*.png"))) == 1

    # seeded scenarios: their latency summary goes to the champion's own run (stream/*)
    summary = run(
        compose(
            [
                f"source.subset_dir={tiny_subset}",
                f"tracking.uri={uri}",
                "display=none",
                "scenarios=2",
                "source.record_s=7",  # fewer right-edge windows: a faster test
                f"out_dir={tmp_path / 'many'}",
            ]
        )
    )
    metrics = tracker.get_record(run_id).metrics
    assert metrics["stream/p_within_0.5s"] == summary["p_within_0.5s"]
    assert metrics["stream/false_events"] == summary["false_events"]
    for key in ("p_latency_s_p50", "p_latency_s_p95", "s_latency_s_p50", "s_latency_s_p95"):
        assert key in summary
        if summary[key] is not None:  # an untrained model may pick nothing within 0.5 s
            assert metrics[f"stream/{key}"] == pytest.approx(summary[key])


def test_seeded_scenarios_are_summarised(checkpoint, tiny_subset, tmp_path, capsys):
    from feq_lab.stream import run

    cfg = compose(
        [
            f"source.subset_dir={tiny_subset}",
            f"checkpoint={checkpoint}",
            "backend=torch",
            "display=none",
            "scenarios=2",
            f"out_dir={tmp_path / 'many'}",
            "tracking.uri=sqlite:///unused.db",
        ]
    )
    summary = run(cfg)
    assert summary["scenarios"] == 2 and len(summary["per_scenario"]) == 2
    assert summary["detections"] + summary["misses"] == 2
    assert [s["seed"] for s in summary["per_scenario"]] == [0, 1]
    assert json.loads((tmp_path / "many" / "scenarios_summary.json").read_text())["scenarios"] == 2
    assert (tmp_path / "many" / "scenario_001" / "scenario.json").exists()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["type"] == "scenarios_summary"
    # a local checkpoint brings no thresholds: the study's 0.5 / 0.1 / 0.1
    assert printed["thresholds"] == {"detection": 0.5, "p": 0.1, "s": 0.1}


def test_bad_config_is_a_clear_error(tmp_path):
    from feq_lab.errors import ConfigError
    from feq_lab.stream import run

    cfg = compose(
        [
            "source=files",
            "display=none",
            f"out_dir={tmp_path}",
            "engine.stride=0",
            "tracking.uri=sqlite:///unused.db",
        ]
    )
    with pytest.raises(ConfigError, match="engine.stride"):
        run(cfg)
    cfg = compose(
        [
            "source=seedlink",
            "display=none",
            f"out_dir={tmp_path}",
            "scenarios=3",
            "tracking.uri=sqlite:///unused.db",
        ]
    )
    with pytest.raises(ConfigError, match="scenarios"):
        run(cfg)
    plain = ["source=files", "display=none", f"out_dir={tmp_path}", "tracking.uri=sqlite:///u.db"]
    cfg = compose(plain)
    cfg["engine"]["thresholds"] = 0.3  # not a mapping
    with pytest.raises(ConfigError, match="engine.thresholds"):
        run(cfg)
    with pytest.raises(ConfigError, match="p"):
        run(compose([*plain, "engine.thresholds.p=1.5"]))
