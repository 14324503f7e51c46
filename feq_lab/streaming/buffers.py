"""Growable arrays indexed by absolute sample number, trimmed from the front as the stream moves on.

Why: a monitor runs for days; it must keep only the samples still needed (the next window, an
open detection, the display's history) while callers keep addressing samples by their index
since the stream's origin.
"""

from __future__ import annotations

import numpy as np


class SampleSeries:
    """`rows` parallel series over absolute sample indices [base, base + capacity)."""

    def __init__(
        self,
        rows: int,
        dtype: np.dtype | type = np.float32,
        fill: float | bool = 0,
        capacity: int = 65536,
    ):
        self.rows = rows
        self.dtype = np.dtype(dtype)
        self.fill = fill
        self.base = 0
        self.data = np.full((rows, capacity), fill, dtype=self.dtype)

    @property
    def end(self) -> int:
        """First absolute index beyond the allocated storage."""
        return self.base + self.data.shape[1]

    def ensure(self, end: int) -> None:
        """Grow (doubling) so that absolute indices below `end` are addressable."""
        if end <= self.end:
            return
        need = end - self.base
        cap = max(need, 2 * self.data.shape[1])
        grown = np.full((self.rows, cap), self.fill, dtype=self.dtype)
        grown[:, : self.data.shape[1]] = self.data
        self.data = grown

    def view(self, start: int, stop: int) -> np.ndarray:
        """(rows, stop - start) view of absolute [start, stop); both must lie in storage."""
        base = self.base  # (called for every record of every station: no property lookups)
        if start < base or stop - base > self.data.shape[1] or start > stop:
            raise IndexError(f"[{start}, {stop}) outside stored [{base}, {self.end})")
        return self.data[:, start - base : stop - base]

    def trim(self, keep_from: int, min_drop: int = 30000) -> None:
        """Forget samples before `keep_from` once at least `min_drop` of them can go (amortised)."""
        drop = keep_from - self.base
        if drop < min_drop:
            return
        # moved down in place: a fresh array per trim costs its pages' first-touch faults
        # (thousands of stations trim every ~40 s); the overlapping copy is safe in numpy
        kept = self.data.shape[1] - drop
        self.data[:, :kept] = self.data[:, drop:]
        self.data[:, kept:] = self.fill
        self.base = keep_from
