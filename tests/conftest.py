"""Shared fixtures: tiny real data made by the synthetic generator (real HDF5 + CSV files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

# the 100 real rows, kept in the repository (tests/fixtures/README.md says where from)
STEAD_SAMPLE_CSV = Path(__file__).resolve().parent / "fixtures" / "stead_100samples.csv"


@pytest.fixture(scope="session")
def tiny_subset(tmp_path_factory) -> Path:
    """A 60-trace STEAD-format subset (48 earthquakes, 12 noise) with train/val/test splits."""
    from feq_lab.data.synthetic import make_synthetic_subset

    out = tmp_path_factory.mktemp("tiny_subset")
    return make_synthetic_subset(out, n_earthquakes=48, n_noise=12, seed=3)


@pytest.fixture(scope="session")
def stead_sample_csv() -> Path:
    """The 100 real STEAD metadata rows (tests/fixtures copy of ../shared's sample)."""
    assert STEAD_SAMPLE_CSV.exists(), f"{STEAD_SAMPLE_CSV} missing from the checkout"
    return STEAD_SAMPLE_CSV


@pytest.fixture(autouse=True)
def _feq_lab_loggers_enabled():
    """In-process Hydra apps reconfigure logging (dictConfig disables existing loggers);
    re-enable the project's loggers so caplog-based tests don't depend on test order."""
    import logging

    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("feq_lab") and isinstance(logger, logging.Logger):
            logger.disabled = False
            logger.propagate = True
    yield


@pytest.fixture
def torch_one_thread():
    """Pin torch to one thread for the test (model/latency tests), then restore the count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
