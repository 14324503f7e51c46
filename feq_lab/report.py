"""`python -m feq_lab.report`: the study's report rebuilt from the selected sweep's runs.

Reads `reports/selection.json` (written by `python -m feq_lab.select`) for the champion and the
sweep's parent run(s), reads the runs and the champion's threshold grid from MLflow (through
`feq_lab.tracking`), and writes `reports/report.md`, `reports/figures/*.png`,
`reports/champion_metrics.json` (`dvc metrics`) and `reports/threshold_curve.csv`
(`dvc plots`) — all or nothing — then logs them to the parent run(s).
Shares `conf/select.yaml` with the select app (`report.*` keys).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from feq_lab.errors import ConfigError, DataError, FeqLabError, SelectionError, one_line_errors
from feq_lab.paths import CONF_DIR
from feq_lab.select import gather_runs, load_outcomes_of
from feq_lab.selection.report import ReportInputs, build_report
from feq_lab.selection.tables import unique_runs
from feq_lab.tracking.keys import check_metric_key
from feq_lab.tracking.records import RunRecord

log = logging.getLogger("feq_lab.report")
THRESHOLD_GRID_ARTIFACT = "threshold_grid.csv"


def read_selection(path: Path) -> dict[str, Any]:
    """The decision written by the select app; a clear error when absent or malformed."""
    if not path.exists():
        raise ConfigError("select.output", f"{path} does not exist: run `python -m "
                          "feq_lab.select` (or `dvc repro select`) first")
    try:
        sel = json.loads(path.read_text())
        sel["champion"]["run_id"], sel["parent_run_ids"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"not a selection file (missing {err})", path=str(path)) from None
    return sel


def champion_threshold_grid(uri: str, champion: RunRecord) -> pd.DataFrame:
    """The champion run's threshold-grid table, fetched through `feq_lab.tracking`.

    Falls back to reading a local (`file://`) artifact store directly when the tracking module
    offers no `download_artifact` (plain file access; no MLflow call).
    """
    try:
        from feq_lab.tracking.mlflow import download_artifact
    except ImportError:
        download_artifact = None
    with tempfile.TemporaryDirectory(prefix="feq-report-") as tmp:
        try:
            if download_artifact is not None:
                path = Path(download_artifact(uri, champion.run_id, THRESHOLD_GRID_ARTIFACT, tmp))
            else:
                path = _local_artifact(champion, THRESHOLD_GRID_ARTIFACT)
            return pd.read_csv(path)
        except FeqLabError:
            raise
        except Exception as err:  # noqa: BLE001 - the store's error type varies (file, S3, server)
            raise DataError(f"cannot read artifact {THRESHOLD_GRID_ARTIFACT} of the champion run "
                            f"{champion.run_id} ({type(err).__name__}: {err})") from None


def _local_artifact(run: RunRecord, name: str) -> Path:
    """`name` inside a run's local artifact folder (at its root or in a sub-folder)."""
    uri = run.artifact_uri
    if not uri.startswith(("file:", "/")):
        raise DataError(f"artifact store {uri!r} is not local; feq_lab.tracking.mlflow needs "
                        f"download_artifact(uri, run_id, path, dst)")
    root = Path(url2pathname(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    direct = root / name
    if direct.exists():
        return direct
    found = sorted(root.rglob(name))
    if not found:
        raise DataError(f"run {run.run_id} has no artifact {name}", path=str(root))
    return found[0]


def run_report(cfg: DictConfig) -> list[Path]:
    """Read the decision and the runs, write the report; returns the written files."""
    rep = OmegaConf.to_container(cfg.report, resolve=True)
    if rep.get("f1_key"):
        check_metric_key(rep["f1_key"], "report.f1_key")
    uri, experiment = str(cfg.tracking.uri), str(cfg.tracking.experiment)
    selection = read_selection(Path(cfg.select.output))
    from feq_lab.tracking.mlflow import quiet_logs

    quiet_logs()
    runs = unique_runs(gather_runs(uri, experiment, selection["parent_run_ids"] or [None]))
    champ = next((r for r in runs if r.run_id == selection["champion"]["run_id"]), None)
    if champ is None:
        raise SelectionError(f"the selected champion run {selection['champion']['run_id']} is "
                             f"not among the runs of parent(s) {selection['parent_run_ids']}")
    grid = champion_threshold_grid(uri, champ)
    source = (f"Source: MLflow `{uri}`, experiment `{experiment}`, parent run(s) "
              + ", ".join(f"`{p}`" for p in selection["parent_run_ids"]) + ".")
    outcomes = load_outcomes_of(uri, [r for r in runs if r.status == "FINISHED"], "test")
    written = build_report(ReportInputs(runs, selection, grid, source, str(rep["f1_key"]),
                                        outcomes), rep["dir"])
    log.info("wrote %d report files under %s", len(written), rep["dir"])
    if rep.get("log_to_parent", True):
        from feq_lab.tracking.mlflow import Tracker

        tracker = Tracker(uri, experiment)
        out_dir = Path(rep["dir"])
        for pid in selection["parent_run_ids"]:
            for path in written:
                sub = path.parent.relative_to(out_dir).as_posix()
                tracker.log_artifact(path, run_id=pid,
                                     artifact_path="report" + ("" if sub == "." else f"/{sub}"))
    return written


@hydra.main(config_path=str(CONF_DIR), config_name="select", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("feq_lab.report"):
        run_report(cfg)


if __name__ == "__main__":
    main()
