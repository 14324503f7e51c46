"""Ground truth of a test split: one row per trace, in the same order as the probabilities."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from feq_lab.errors import DataError


def to_numpy(x: Any) -> np.ndarray:
    """Plain ndarray from a numpy array, list or torch tensor (without importing torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass(frozen=True)
class Truth:
    """Per-trace labels the EQT protocol scores against.

    `p_sample` / `s_sample` are arrival sample indices (float; NaN for noise). Every earthquake
    must have both arrivals: a trace without them cannot be scored, so it is rejected here.
    """

    is_earthquake: np.ndarray
    p_sample: np.ndarray
    s_sample: np.ndarray

    def __post_init__(self) -> None:
        is_eq = to_numpy(self.is_earthquake).astype(bool).reshape(-1)
        p = to_numpy(self.p_sample).astype(np.float64).reshape(-1)
        s = to_numpy(self.s_sample).astype(np.float64).reshape(-1)
        if not (len(is_eq) == len(p) == len(s)):
            raise DataError(
                f"truth arrays differ in length: is_earthquake {len(is_eq)}, "
                f"p_sample {len(p)}, s_sample {len(s)}"
            )
        for name, arr in (("p_sample", p), ("s_sample", s)):
            bad = np.flatnonzero(is_eq & ~np.isfinite(arr))
            if bad.size:
                raise DataError(f"earthquake trace at index {int(bad[0])} has no {name}")
        object.__setattr__(self, "is_earthquake", is_eq)
        object.__setattr__(self, "p_sample", p)
        object.__setattr__(self, "s_sample", s)

    def __len__(self) -> int:
        return len(self.is_earthquake)

    def subset(self, indices: Any) -> Truth:
        """Rows `indices` (for plots of a few traces, or splitting)."""
        idx = np.asarray(indices)
        return Truth(self.is_earthquake[idx], self.p_sample[idx], self.s_sample[idx])

    @classmethod
    def from_metadata(cls, metadata: pd.DataFrame) -> Truth:
        """From STEAD metadata rows (`trace_category`, `p_arrival_sample`, `s_arrival_sample`).

        Categories starting with "earthquake" are earthquakes, "noise" is noise; anything else is
        an error naming the trace, as is an earthquake missing an arrival.
        """
        for col in ("trace_category", "p_arrival_sample", "s_arrival_sample"):
            if col not in metadata.columns:
                raise DataError(f"metadata has no column {col!r}")
        names = (
            metadata["trace_name"].astype(str).tolist()
            if "trace_name" in metadata.columns
            else [f"row {i}" for i in range(len(metadata))]
        )
        category = metadata["trace_category"].astype(str).str.strip().str.lower()
        is_eq = category.str.startswith("earthquake").to_numpy()
        unknown = ~is_eq & (category != "noise").to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(
                f"unknown trace_category {metadata['trace_category'].iloc[i]!r}", trace=names[i]
            )
        p = pd.to_numeric(metadata["p_arrival_sample"], errors="coerce").to_numpy(
            np.float64, copy=True
        )
        s = pd.to_numeric(metadata["s_arrival_sample"], errors="coerce").to_numpy(
            np.float64, copy=True
        )
        for col, arr in (("p_arrival_sample", p), ("s_arrival_sample", s)):
            bad = np.flatnonzero(is_eq & ~np.isfinite(arr))
            if bad.size:
                raise DataError(f"earthquake without {col}", trace=names[int(bad[0])])
        p[~is_eq] = np.nan
        s[~is_eq] = np.nan
        return cls(is_eq, p, s)

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> Truth:
        """From one datamodule batch (`is_earthquake`, `p_arrival_sample`, `s_arrival_sample`)."""
        for key in ("is_earthquake", "p_arrival_sample", "s_arrival_sample"):
            if key not in batch:
                raise DataError(f"batch has no key {key!r}")
        return cls(batch["is_earthquake"], batch["p_arrival_sample"], batch["s_arrival_sample"])

    @classmethod
    def from_batches(cls, batches: Iterable[Mapping[str, Any]]) -> Truth:
        """Concatenate the truth of several batches, in iteration order (the test loader's)."""
        parts = [cls.from_batch(b) for b in batches]
        return cls.concat(parts)

    @classmethod
    def concat(cls, parts: Iterable[Truth]) -> Truth:
        parts = list(parts)
        if not parts:
            return cls(np.zeros(0, bool), np.zeros(0), np.zeros(0))
        return cls(
            np.concatenate([t.is_earthquake for t in parts]),
            np.concatenate([t.p_sample for t in parts]),
            np.concatenate([t.s_sample for t in parts]),
        )
