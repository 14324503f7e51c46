"""The Hydra side of tracking, re-exported for the entry points: `MLflowSweepCallback` (one
parent run per multirun, see `sweep_callback.py`) and `parent_run_id_for_job`. Per-epoch training
metrics go through the Lightning logger in `logger.py`."""

from __future__ import annotations

from feq_lab.tracking.sweep_callback import (  # noqa: F401 - re-exported
    MLflowSweepCallback,
    parent_run_id_for_job,
)
