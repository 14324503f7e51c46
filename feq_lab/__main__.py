"""`python -m feq_lab`: train, evaluate and log one variant; `-m` runs a grid (one MLflow parent
run, one child per job). See conf/config.yaml and the README's "main job" section."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from feq_lab.errors import FeqLabError, one_line_errors
from feq_lab.paths import CONF_DIR

CONFIG = CONF_DIR / "config.yaml"


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, float]:
    """Hydra task: returns the flat metrics (sweepers read objectives from it; NaN = failed)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from feq_lab.job.run import run_job
    from feq_lab.tracking.callbacks import parent_run_id_for_job

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    with one_line_errors("feq_lab"):  # a single run's bad input: one line, exit code 2
        return run_job(cfg, run_dir=Path(hc.runtime.output_dir),
                       parent_run_id=parent_run_id_for_job(), reraise=not multirun)


def expand_seeds(argv: list[str]) -> list[str]:
    """`seeds=N` (N > 1) -> a multirun over `seed=s, s+1, ..., s+N-1` (s = `seed=` or the
    config's seed): N replicates of every variant, which the report summarises as mean ± sd per
    variant. Written as argv sugar so each replicate stays an ordinary job with its own run."""
    found = [a for a in argv[1:] if a.startswith("seeds=")]
    if not found:
        return argv
    value = found[-1].split("=", 1)[1]
    try:
        n = int(value)
    except ValueError:
        raise FeqLabError(f"seeds: must be an integer >= 1, got {value!r}") from None
    if n < 1:
        raise FeqLabError(f"seeds: must be an integer >= 1, got {n}")
    rest = [a for a in argv[1:] if not a.startswith("seeds=")]
    if n == 1:
        return [argv[0], *rest]
    given = [a for a in rest if a.startswith("seed=")]
    if given and not given[-1].split("=", 1)[1].lstrip("-").isdigit():
        raise FeqLabError(f"seeds: cannot replicate a seed sweep ({given[-1]}); give one seed")
    base = int(given[-1].split("=", 1)[1]) if given else int(OmegaConf.load(CONFIG).seed)
    rest = [a for a in rest if not a.startswith("seed=")]
    if not {"-m", "--multirun"} & set(rest):
        rest.insert(0, "-m")
    return [argv[0], *rest, "seed=" + ",".join(str(base + i) for i in range(n))]


def cli() -> None:
    """Console entry point: `seeds=N` expanded, then the Hydra app."""
    with one_line_errors("feq_lab"):
        sys.argv = expand_seeds(sys.argv)
    main()


if __name__ == "__main__":
    cli()
