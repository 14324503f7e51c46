"""`python -m feq_lab.select`: choose the champion of a sweep by a stated policy.

Reads the sweep's runs from MLflow (through `feq_lab.tracking`), applies the policy of
`conf/select/<policy>.yaml`, registers the winner as `feq-picker@champion` (an alias, not a
deprecated stage), tags its run, and writes the decision with its reasons to
`reports/selection.json` (atomically; also logged to the sweep's parent run(s)).

    python -m feq_lab.select                         # the study's policy on the latest sweep
    python -m feq_lab.select select=pareto select.parent_run_id=<id>
Bad input (no finished run, a missing metric, a policy no run satisfies) exits with code 2 and a
message naming the runs and keys; nothing is written then.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from feq_lab.errors import ConfigError, FeqLabError, SelectionError, one_line_errors
from feq_lab.paths import CONF_DIR, atomic_write_text
from feq_lab.selection import policy
from feq_lab.selection.tables import param, unique_runs
from feq_lab.tracking.records import RunRecord

log = logging.getLogger("feq_lab.select")
PARENT_TAG = "mlflow.parentRunId"
CHAMPION_TAG = "feq.champion"


def parent_ids_from(sel: Mapping[str, Any]) -> list[str | None]:
    """The sweep(s) to read: explicit ids, else the sweep summary file, else [None] = latest."""
    pid = sel.get("parent_run_id")
    if pid:
        ids = [pid] if isinstance(pid, str) else list(pid)
        return [str(i) for i in ids]
    summary = sel.get("sweep_summary")
    if summary:
        path = Path(summary)
        if not path.exists():
            raise ConfigError("select.sweep_summary", f"file {path} does not exist (run the "
                              "sweep stage first: `dvc repro sweep`)")
        try:
            ids = json.loads(path.read_text())["parent_run_ids"]
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError("select.sweep_summary",
                              f"{path} holds no parent_run_ids list ({err})") from None
        if not ids:
            raise SelectionError(f"{path} lists no parent run: the sweep launched nothing")
        return [str(i) for i in ids]
    return [None]


def gather_runs(uri: str, experiment: str, parent_ids: Sequence[str | None]) -> list[RunRecord]:
    """Child runs of every parent (deduplicated, in order); error naming an empty sweep."""
    from feq_lab.tracking.mlflow import load_runs

    runs: dict[str, RunRecord] = {}
    for pid in parent_ids:
        found = load_runs(uri, experiment, parent_run_id=pid)
        if not found:
            which = f"parent run {pid}" if pid else "the latest parent run"
            hint = (" (a sweep recorded by DVC whose store was since deleted or moved? rerun "
                    "it: `dvc repro -f sweep`)" if pid else "")
            raise SelectionError(f"no runs found under {which} of experiment {experiment!r} "
                                 f"in {uri}{hint}")
        for r in found:
            runs.setdefault(r.run_id, r)
    return list(runs.values())


def sweep_parents(runs: Sequence[RunRecord], parent_ids: Sequence[str | None]) -> list[str]:
    """The parent run ids actually read (from the children's tags when `latest` was asked)."""
    ids = [p for p in parent_ids if p]
    ids += [r.tags[PARENT_TAG] for r in runs if r.tags.get(PARENT_TAG)]
    return list(dict.fromkeys(ids))


def needs_outcomes(sel: Mapping[str, Any]) -> bool:
    guard = sel.get("noise_guard") or {}
    return str(sel.get("policy", "constraints")) == "constraints" and bool(
        guard and guard.get("enabled", True))


def load_outcomes_of(uri: str, runs: Sequence[RunRecord], split: str = "val") -> dict[str, Any]:
    """run id -> per-trace outcomes of `split` (`<split>_outcomes.npz` artifacts); runs without
    the file are left out (the policy names them)."""
    from feq_lab.evaluation.significance import load_outcomes
    from feq_lab.tracking.mlflow import download_artifact

    out = {}
    with tempfile.TemporaryDirectory(prefix="feq-outcomes-") as tmp:
        for r in runs:
            try:
                path = download_artifact(uri, r.run_id, f"{split}_outcomes.npz",
                                         Path(tmp) / r.run_id)
            except (FileNotFoundError, OSError, FeqLabError) as err:
                log.warning("run %s has no %s outcomes (%s)", r.run_id, split, err)
                continue
            except Exception as err:  # noqa: BLE001 - the store's error type varies
                log.warning("run %s: %s outcomes unreadable (%s)", r.run_id, split, err)
                continue
            out[r.run_id] = load_outcomes(path)
    return out


def decide(runs: Sequence[RunRecord], sel: Mapping[str, Any],
           outcomes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The selection.json payload: the policy's decision plus the sweep's provenance."""
    decision = policy.select(runs, sel, outcomes)
    out = decision.to_dict()
    out["data_versions"] = sorted({param(r, "data_version") or "unknown"
                                   for r in runs if r.status == "FINISHED"})
    return out


def run_select(cfg: DictConfig) -> dict[str, Any]:
    """Read runs, decide, register, write selection.json; returns the payload."""
    sel = OmegaConf.to_container(cfg.select, resolve=True)
    policy.refuse_test_keys(sel)  # before any store is read: a bad policy fails at once
    uri, experiment = str(cfg.tracking.uri), str(cfg.tracking.experiment)
    parent_ids = parent_ids_from(sel)
    from feq_lab.tracking.mlflow import quiet_logs

    quiet_logs()
    policy.refuse_test_keys(sel)  # before any MLflow read: a bad policy fails at once
    policy.check_known_keys(sel)
    runs = unique_runs(gather_runs(uri, experiment, parent_ids))
    outcomes = (load_outcomes_of(uri, [r for r in runs if r.status == "FINISHED"])
                if needs_outcomes(sel) else None)
    payload = decide(runs, sel, outcomes)
    payload["basis"] = ("validation split (val/*); test/* is reported, never used to decide")
    payload["tracking"] = {"uri": uri, "experiment": experiment}
    payload["parent_run_ids"] = sweep_parents(runs, parent_ids)
    champ = payload["champion"]
    log.info("champion: %s (run %s) by policy %s", champ["name"], champ["run_id"],
             payload["policy"])
    for reason in payload["reasons"]:
        log.info("  %s", reason)

    from feq_lab.tracking.mlflow import Tracker
    from feq_lab.tracking.registry import Registry

    tracker = Tracker(uri, experiment)
    if sel.get("register", True):
        name, alias = str(sel["registry_name"]), str(sel["alias"])
        version = Registry(uri).register(champ["run_id"], name, alias)
        payload["registered"] = f"{name}@{alias}"
        payload["model_version"] = str(version)
        tracker.set_tags({CHAMPION_TAG: f"{name}@{alias}",
                          "feq.selection_policy": payload["policy"]}, run_id=champ["run_id"])
        log.info("registered %s@%s -> version %s", name, alias, payload["model_version"])
    output = Path(sel["output"])
    atomic_write_text(output, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    log.info("wrote %s", output)
    for pid in payload["parent_run_ids"]:
        tracker.log_artifact(output, artifact_path="selection", run_id=pid)
    return payload


@hydra.main(config_path=str(CONF_DIR), config_name="select", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("feq_lab.select"):
        run_select(cfg)


if __name__ == "__main__":
    main()
