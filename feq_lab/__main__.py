"""`python -m feq_lab`: train, evaluate and log one variant; `-m` runs a grid (one MLflow parent
run, one child per job). See conf/config.yaml and the README's "main job" section."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from feq_lab.errors import FeqLabError


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    """Hydra task: returns the flat metrics (sweepers read objectives from it; NaN = failed)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from feq_lab.job.run import run_job
    from feq_lab.tracking.callbacks import parent_run_id_for_job

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return run_job(cfg, run_dir=Path(hc.runtime.output_dir),
                       parent_run_id=parent_run_id_for_job(), reraise=not multirun)
    except FeqLabError as err:  # single run: one clear line, exit code 2 (the run is FAILED)
        print(f"feq_lab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
