"""select + report entry points on a real MLflow SQLite store in tmp_path.

The sweep is logged through `feq_lab.tracking` (no training: metrics follow the study's numbers
so the answer is known); its children carry a real threshold-grid CSV artifact.
"""

from __future__ import annotations

import itertools
import json
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from test_selection_policy import STUDY

from feq_lab.errors import ConfigError, SelectionError
from feq_lab.paths import CONF_DIR
from feq_lab.report import run_report
from feq_lab.select import run_select
from feq_lab.selection.tables import preset_knobs
from feq_lab.tracking.mlflow import Tracker

EXPERIMENT = "feq-test"


def grid_table(quality: float) -> pd.DataFrame:
    """A product threshold grid in the evaluation module's column layout."""
    rows = []
    for d, p, s in itertools.product([0.1, 0.3, 0.5], [0.1, 0.3], [0.1, 0.3]):
        row = {"detection_threshold": d, "p_threshold": p, "s_threshold": s}
        for out, th in (("detection", d), ("p", p), ("s", s)):
            prec, rec = min(1.0, quality * (0.5 + th)), quality * (1.0 - th / 2)
            row.update({f"{out}_precision": prec, f"{out}_recall": rec,
                        f"{out}_f1": 2 * prec * rec / (prec + rec)})
        rows.append(row)
    return pd.DataFrame(rows)


def log_sweep(uri: str, tmp_path, name: str, models: dict, data_version: str = "md5abc") -> str:
    tracker = Tracker(uri, EXPERIMENT)
    parent = tracker.parent_run(name, tmp_path / f"sweep-{name}")
    for i, (label, (mb, lat, dfn, pfn, sfn, df1, pf1, sf1, n), extra) in enumerate(models):
        # knobs as logged: null for the baseline, the preset's own values unless overridden
        knobs = ({"rnn": "null", "cnn_blocks": "null"} if label == "stalta" else
                 {k: v for k, v in preset_knobs(label).items() if k in ("rnn", "cnn_blocks")})
        params = {"model": label, **knobs, "data_version": data_version,
                  "data.kind": "synthetic", "thresholds.detection": 0.3, "thresholds.p": 0.1,
                  "thresholds.s": 0.1, **extra}
        with tracker.child_run(params, name=f"{label}-{i}", parent_run_id=parent) as run_id:
            if label == "stalta":
                metrics = {"test/detection_fn": 400, "test/detection_f1": 0.7,
                           "test/p_f1": 0.5, "test/s_f1": 0.2, "test/p_fn": 900,
                           "test/s_fn": 2500}
            else:
                metrics = {"size/model_mb": mb, "latency/window_ms_p50": lat,
                           "test/detection_fn": dfn, "test/p_fn": pfn, "test/s_fn": sfn,
                           "test/detection_f1": df1, "test/p_f1": pf1, "test/s_f1": sf1,
                           "params/total_paper": n, "params/total_torch": n - 10,
                           "params/encoder_paper": 1289, "params/bottleneck_paper": 1888,
                           "params/rnn_transformer_paper": n - 7308,
                           "params/decoder_paper": 4131,
                           "test/p_residual_mae_s": 0.05, "test/s_residual_mae_s": 0.1}
                metrics["latency/onnx_window_ms_p50"] = lat
                for o in ("detection", "p", "s"):
                    metrics[f"test/{o}_precision"] = metrics[f"test/{o}_f1"]
                    metrics[f"test/{o}_recall"] = metrics[f"test/{o}_f1"]
            # decide on validation: the sweep logs the same numbers under val/ (as every run
            # logs val/* with the test/* keys)
            metrics.update({"val/" + k[5:]: v for k, v in metrics.items() if k.startswith("test/")})
            tracker.log_metrics(metrics, run_id=run_id)
            csv = tmp_path / f"grid-{run_id}" / "threshold_grid.csv"
            csv.parent.mkdir()
            grid_table(metrics["test/s_f1"]).to_csv(csv, index=False)
            tracker.log_artifact(csv, run_id=run_id)
    tracker.end_run(parent)
    return parent


def presets():
    return [(m, STUDY[m], {}) for m in STUDY] + [("stalta", STUDY["eqt"], {})]


def variants():
    return [("feq3", STUDY["feq2"], {"rnn": "gru", "cnn_blocks": "4"}),
            ("feq3", STUDY["leq"], {"rnn": "bilstm", "cnn_blocks": "4"})]


def config(uri, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("select", overrides=[
            f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}",
            f"select.output={tmp_path / 'reports' / 'selection.json'}",
            f"report.dir={tmp_path / 'reports'}", "++select.noise_guard.enabled=false", *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (tests only read it, or register/tag the same champion)."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = log_sweep(uri, tmp_path, "presets", presets())
    second = log_sweep(uri, tmp_path, "grid", variants())
    summary = tmp_path / "sweep.json"
    summary.write_text(json.dumps({"parent_run_ids": [first, second]}))
    return uri, first, second, summary


def test_select_and_report_on_two_sweeps(store, tmp_path):
    uri, first, second, summary = store
    payload = run_select(config(uri, tmp_path, f"select.sweep_summary={summary}"))
    assert payload["champion"]["run_name"] == "feq3-4"
    assert payload["champion"]["name"] == "FEQ3"
    assert payload["parent_run_ids"] == [first, second]
    assert payload["registered"] == "feq-picker@champion" and payload["model_version"] == "1"
    saved = json.loads((tmp_path / "reports" / "selection.json").read_text())
    assert saved["champion"]["run_id"] == payload["champion"]["run_id"]
    assert saved["data_versions"] == ["md5abc"]
    status = {c["run_name"]: c["status"] for c in saved["candidates"]}
    assert status["eqt-0"] == "rejected" and status["stalta-5"] == "baseline"

    tracker = Tracker(uri, EXPERIMENT)
    champ = tracker.get_record(payload["champion"]["run_id"])
    assert champ.tags["feq.champion"] == "feq-picker@champion"
    mv = tracker.client.get_model_version_by_alias("feq-picker", "champion")
    assert mv.run_id == champ.run_id

    written = run_report(config(uri, tmp_path))
    rep = tmp_path / "reports"
    names = {p.name for p in written}
    assert {"report.md", "champion_metrics.json", "threshold_curve.csv", "pareto.png",
            "thresholds.png", "f1.png", "latency.png", "size.png", "params.png"} <= names
    md = (rep / "report.md").read_text()
    assert "`md5abc`" in md and "synthetic" in md
    assert "| **Total** | 373,495 | 39,776 | 36,096 | 30,512 | 32,080 |" in md  # Table 1
    assert "FEQ3 rnn=gru cnn_blocks=4" in md and "| FEQ3 cnn_blocks=4 |" in md  # Table 2
    assert "| FEQ3 **(champion)** | 31 | 595 | 1,132 |" in md  # Table 5 (no intervals logged here)
    assert "| STA/LTA (obspy) | 400 | 900 | 2,500 |" in md                                         # baseline
    assert md.count("![") == 7
    metrics = json.loads((rep / "champion_metrics.json").read_text())
    assert metrics["test"]["detection_fn"] == 31 and metrics["size"]["model_mb"] == 0.767
    curve = pd.read_csv(rep / "threshold_curve.csv")
    assert list(curve.columns) == ["output", "threshold", "precision", "recall", "f1"]
    assert len(curve) == 3 + 2 + 2
    assert curve[curve.output == "p"].threshold.tolist() == [0.1, 0.3]
    for png in rep.glob("figures/*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    arts = {a.path for a in tracker.client.list_artifacts(first, "report")}
    assert "report/report.md" in arts
    assert not list(rep.glob(".report-*"))  # no staging left behind


def test_pareto_policy_and_latest_parent(store, tmp_path):
    uri, _first, second, _ = store
    payload = run_select(config(uri, tmp_path, "select=pareto", "select.register=false"))
    assert payload["parent_run_ids"] == [second]  # the latest sweep by default
    assert payload["policy"] == "pareto"
    assert "registered" not in payload


def test_infeasible_policy_writes_nothing(store, tmp_path):
    uri, _, _, summary = store
    cfg = config(uri, tmp_path, f"select.sweep_summary={summary}",
                 "select.constraints=[{key: size/model_mb, max: 0.1}]")
    with pytest.raises(SelectionError, match="no run satisfies.*FEQ2.*size/model_mb=0.748"):
        run_select(cfg)
    assert not (tmp_path / "reports" / "selection.json").exists()
    with pytest.raises(ConfigError, match="select.output"):
        run_report(cfg)  # no selection to report on
    assert not (tmp_path / "reports" / "report.md").exists()


def test_cli_exit_code_and_message_on_empty_store(tmp_path, monkeypatch, capsys):
    """The Hydra entry point itself (in-process: same code path as `python -m`, no spawn)."""
    from feq_lab.select import main

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setattr(sys, "argv", [
        "feq_lab.select", f"tracking.uri={uri}", f"select.output={tmp_path / 'selection.json'}",
        f"hydra.run.dir={tmp_path / 'h'}", "hydra/job_logging=disabled"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no runs found under the latest parent run of experiment 'feq-lab'" in err
    assert not (tmp_path / "selection.json").exists()
