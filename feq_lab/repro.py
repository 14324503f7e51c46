"""`python -m feq_lab.repro`: `dvc repro` with the training stages run `jobs` at a time.

Why: DVC runs a pipeline's stages one after the other, and a lightweight model's training is
many small ops that a second thread speeds up less than a second training does (FEQ3's train
step, batch 32, session 11: 106.9 ms on 1 thread, 59.5 on 2, so two 1-thread trainings do ~10%
more steps than one 2-thread training), and EQT's long stage overlaps the light ones. DVC itself allows it: a stage's
command runs with the repository lock released, and `--wait-for-lock` lets concurrent
`dvc repro` processes queue for the short locked parts (hashing outputs, writing `dvc.lock`).
So this driver only schedules DVC's own stages — the cache, `dvc.lock` and a later plain
`dvc repro` (which then finds nothing to do) are DVC's:

1. `dvc repro <before>` (the data), alone, all cores;
2. every stage whose name starts with `parallel` (the `train@<variant>` stages, in dvc.yaml's
   order: list the longest first), `jobs` at a time, each a `dvc repro --single-item` with its
   torch/OpenMP thread count fixed to `threads` (default: cores // jobs);
3. `dvc repro` for the rest (evaluate, select, report: latency is timed there, alone).

A stage that fails stops new launches; the running ones finish, the failed stage's log tail is
printed and the exit code is 1. Per-stage logs and wall times: `log_dir`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from feq_lab.errors import ConfigError, one_line_errors
from feq_lab.paths import CONF_DIR, atomic_write_text
from feq_lab.tracking.mlflow import Tracker

# glibc malloc, for every stage: keep freed blocks in the process instead of handing them back to
# the kernel, so a training step stops re-mapping (and page-faulting on) the same large buffers
# every step. Measured (1 thread, batch 16, CPU time per train step, separate processes, 3
# rounds): EQT 0.210-0.228 -> 0.185-0.199 s, FEQ3 0.085 -> 0.071 s (2 rounds). Set through the
# environment because the same thresholds set at run time with mallopt() measured no gain; the
# price is a resident set that stays at its peak until a stage ends. A value already in the
# environment wins; other C libraries ignore both.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
UP_TO_DATE = ("didn't change, skipping", "is cached - skipping", "Data and pipelines are up to date")


@dataclass
class StageRun:
    """One `dvc repro` process: its stage, log and timing."""

    stage: str
    log: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    single_item: bool = False  # `--single-item`: upstream already reproduced by this driver

    def skipped(self) -> bool:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return any(marker in text for marker in UP_TO_DATE) and "Running stage" not in text


def stage_names(cwd: Path) -> list[str]:
    """The pipeline's stages in dvc.yaml's order (foreach items expanded)."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=cwd, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise ConfigError("dvc.yaml", f"`dvc stage list` failed: {out.stderr.strip()[-300:]}")
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def launch(run: StageRun, cwd: Path, threads: int | None) -> None:
    env = {**ALLOCATOR_ENV, **os.environ}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = ["dvc", "--wait-for-lock", "repro"]
    if run.single_item:
        args.append("--single-item")
    if run.stage != "*":
        args.append(run.stage)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    with run.log.open("w") as sink:
        run.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT)
    run.started = time.monotonic()
    print(f"[{_clock()}] start {run.stage if run.stage != '*' else 'the rest'}"
          f"{f' ({threads} thread(s))' if threads else ''}", flush=True)


def finished(run: StageRun) -> bool:
    if run.proc is None or run.returncode is not None:
        return run.returncode is not None
    code = run.proc.poll()
    if code is None:
        return False
    run.returncode, run.seconds = code, time.monotonic() - run.started
    state = "FAILED" if code else ("up to date" if run.skipped() else "done")
    print(f"[{_clock()}] {state:>10} {run.stage if run.stage != '*' else 'the rest'} "
          f"in {_minutes(run.seconds)}", flush=True)
    return True


def run_serial(run: StageRun, cwd: Path) -> None:
    launch(run, cwd, None)
    while not finished(run):
        time.sleep(0.5)


def run_pool(runs: list[StageRun], cwd: Path, jobs: int, threads: int) -> None:
    """Keep `jobs` stages running until all ran or one failed (then let the others finish)."""
    queue, active = list(runs), []
    try:
        while queue or active:
            failed = any(r.returncode for r in runs)
            while queue and len(active) < jobs and not failed:
                run = queue.pop(0)
                launch(run, cwd, threads)
                active.append(run)
            active = [r for r in active if not finished(r)]
            if failed and not active:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        for r in active:
            if r.proc is not None:
                r.proc.terminate()
        raise


def reproduce(cfg: DictConfig) -> list[StageRun]:
    jobs = int(cfg.jobs)
    if jobs < 1:
        raise ConfigError("jobs", f"must be >= 1, got {jobs}")
    threads = int(cfg.threads) if cfg.get("threads") else max((os.cpu_count() or 1) // jobs, 1)
    if threads < 1:
        raise ConfigError("threads", f"must be >= 1, got {threads}")
    cwd, logs = Path.cwd(), Path(str(cfg.log_dir))
    if not (cwd / "dvc.yaml").is_file():
        raise ConfigError("dvc.yaml", f"no dvc.yaml in {cwd} (run from the project root)")
    names = stage_names(cwd)
    prefix = str(cfg.parallel)
    before = [s for s in list(cfg.before or []) if s in names]
    parallel = [StageRun(s, logs / f"{s.replace('@', '_')}.log", single_item=True)
                for s in names if s.startswith(prefix)]
    if not parallel:
        raise ConfigError("parallel", f"no stage of dvc.yaml starts with {prefix!r}")
    print(f"dvc repro: {len(parallel)} {prefix}* stages, {jobs} at a time, {threads} thread(s) "
          f"each; logs in {logs}/", flush=True)
    t0, runs = time.monotonic(), []
    for stage in before:
        runs.append(StageRun(stage, logs / f"{stage}.log"))
        run_serial(runs[-1], cwd)
        if runs[-1].returncode:
            return _fail(runs, t0, logs)
    # A new SQLite store's first schema migration must not run twice at once: create the store
    # and the experiment here, before the stages that log to it start side by side.
    Tracker(str(cfg.tracking.uri), str(cfg.tracking.experiment))
    runs += parallel
    run_pool(parallel, cwd, jobs, threads)
    if any(r.returncode for r in parallel):
        return _fail(runs, t0, logs)
    runs.append(StageRun("*", logs / "rest.log"))
    run_serial(runs[-1], cwd)
    if runs[-1].returncode:
        return _fail(runs, t0, logs)
    _summary(runs, t0, logs)
    return runs


def _summary(runs: list[StageRun], t0: float, logs: Path) -> None:
    total = time.monotonic() - t0
    table = [{"stage": r.stage if r.stage != "*" else "evaluate/select/report",
              "start_s": round(r.started - t0, 1), "seconds": round(r.seconds, 1),
              "ran": not r.skipped(), "returncode": r.returncode} for r in runs]
    atomic_write_text(logs / "timings.json",
                      json.dumps({"total_seconds": round(total, 1), "stages": table}, indent=2)
                      + "\n")
    print(f"total {_minutes(total)} (stage wall times: {logs / 'timings.json'})", flush=True)


def _fail(runs: list[StageRun], t0: float, logs: Path) -> list[StageRun]:
    _summary(runs, t0, logs)
    for r in runs:
        if r.returncode:
            tail = r.log.read_text(errors="replace").splitlines()[-25:]
            print(f"--- {r.stage} failed (exit {r.returncode}); last lines of {r.log}:",
                  *tail, sep="\n", file=sys.stderr)
    raise SystemExit(1)


@hydra.main(config_path=str(CONF_DIR), config_name="repro", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("feq_lab.repro"):
        reproduce(cfg)


if __name__ == "__main__":
    main()
