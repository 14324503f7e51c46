"""Study report files in the sweep dir (trials, best trial(s), Pareto front) and their logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from omegaconf import DictConfig
from optuna.trial import TrialState

from feq_lab.paths import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

TRIALS_CSV = "optuna_trials.csv"
BEST_JSON = "optuna_best.json"
PARETO_CSV = "pareto_front.csv"
PARETO_PNG = "pareto_front.png"
ARTIFACT_PATH = "optuna"


def trials_frame(study: optuna.Study, objectives: Sequence[Any]) -> pd.DataFrame:
    """One row per trial: number, state, objectives by metric name, params, job dir, metrics."""
    metric_names = [o.metric for o in objectives]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        complete = trial.state == TrialState.COMPLETE  # a pruned trial's value is its last report
        values = trial.values if complete and trial.values else [None] * len(metric_names)
        row.update(dict(zip(metric_names, values)))
        row.update({f"param:{k}": v for k, v in trial.params.items()})
        default = "interrupted" if trial.state == TrialState.FAIL else trial.state.name.lower()
        row["outcome"] = trial.user_attrs.get("feq:outcome", default)
        row["job_dir"] = trial.user_attrs.get("feq:job_dir", "")
        metrics = trial.user_attrs.get("feq:metrics") or {}
        row.update({f"metric:{k}": v for k, v in metrics.items() if k not in metric_names})
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    return path


def plot_pareto_front(
    frame: pd.DataFrame, front: pd.DataFrame, objectives: Sequence[Any], path: Path
) -> Path:
    """Scatter of all complete trials on the first two objectives, the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = objectives[0].metric, objectives[1].metric
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(frame[x_name], frame[y_name], c="0.6", label="trials", zorder=2)
    ordered = front.sort_values(x_name)
    ax.plot(ordered[x_name], ordered[y_name], "o-", c="tab:red", label="Pareto front", zorder=3)
    for _, row in frame.iterrows():
        ax.annotate(str(int(row["trial"])), (row[x_name], row[y_name]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x_name} ({objectives[0].direction})")
    ax.set_ylabel(f"{y_name} ({objectives[1].direction})")
    title = "Pareto front" + (f" (first 2 of {len(objectives)} objectives)" if len(objectives) > 2 else "")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_study_report(study: optuna.Study, objectives: Sequence[Any], out_dir: Path) -> list[Path]:
    """Write the trials table, the best trial(s), and for several objectives the Pareto front."""
    out_dir = Path(out_dir)
    frame = trials_frame(study, objectives)
    paths = [_write_csv(frame, out_dir / TRIALS_CSV)]
    complete = frame[frame["state"] == TrialState.COMPLETE.name] if len(frame) else frame
    if complete.empty:
        log.warning("Study %r has no complete trial: no best trial, no Pareto front", study.study_name)
        return paths
    best_numbers = [t.number for t in study.best_trials]
    best = complete[complete["trial"].isin(best_numbers)].sort_values("trial")
    summary = {
        "study_name": study.study_name,
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
        "n_trials": len(frame),
        "n_complete": len(complete),
        "best_trials": [
            {"trial": int(t.number), "values": dict(zip([o.metric for o in objectives], t.values)),
             "params": t.params, "job_dir": t.user_attrs.get("feq:job_dir", "")}
            for t in study.best_trials
        ],
    }
    paths.append(atomic_write_text(out_dir / BEST_JSON, json.dumps(summary, indent=2, default=str)))
    if len(objectives) > 1:
        paths.append(_write_csv(best, out_dir / PARETO_CSV))
        paths.append(plot_pareto_front(complete, best, objectives, out_dir / PARETO_PNG))
    return paths


def log_to_parent_run(config: DictConfig, sweep_dir: Path, paths: Sequence[Path]) -> str | None:
    """Log the report files as artifacts of the multirun's MLflow parent run, if there is one.

    The parent run is opened by feq_lab.tracking's Hydra callback, which writes its id to
    `<sweep_dir>/mlflow_parent_run_id`; apps without tracking (or without that callback) skip this.
    Returns the parent run id the files went to.
    """
    marker = Path(sweep_dir) / "mlflow_parent_run_id"
    tracking = config.get("tracking") if "tracking" in config else None
    if tracking is None or not marker.is_file():
        log.info("No MLflow parent run for %s: report files stay in the sweep dir", sweep_dir)
        return None
    from feq_lab.tracking.mlflow import Tracker

    parent_run_id = marker.read_text().strip()
    tracker = Tracker(str(tracking.uri), str(tracking.experiment))
    for path in paths:
        tracker.log_artifact(path, artifact_path=ARTIFACT_PATH, run_id=parent_run_id)
    log.info("Study report logged to MLflow parent run %s (%s/)", parent_run_id, ARTIFACT_PATH)
    return parent_run_id
