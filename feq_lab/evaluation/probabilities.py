"""Test-set probabilities stored once per run, so thresholds are re-evaluated without retraining.

On disk: one compressed ``.npz`` with ``det``, ``p``, ``s`` (N, T) (float16 by default, values
below ``floor`` = 0.01 set to exactly 0: the zeros make the file compress well, and no threshold
at or above the floor can tell the difference — a detection, or a peak that could become a pick,
needs a value >= the threshold), the truth arrays and the trace names. Written to a temp file
and renamed. Thresholds below the floor cannot be evaluated from a stored file.

Float16 rounds values near a threshold, so metrics computed from float32 outputs can differ in the
last count from metrics computed after a reload: evaluate `as_stored(probs)` (or the reloaded
file) when headline metrics and the stored grid must agree exactly.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feq_lab.errors import DataError
from feq_lab.evaluation.picks import as_traces
from feq_lab.evaluation.truth import Truth, to_numpy
from feq_lab.paths import atomic_path

FORMAT_VERSION = 1
_ARRAY_KEYS = (
    "det",
    "p",
    "s",
    "is_earthquake",
    "p_arrival_sample",
    "s_arrival_sample",
    "trace_name",
)


@dataclass(frozen=True)
class Probabilities:
    """The (N, T) det/P/S probability traces of a test split, its truth and trace names."""

    det: np.ndarray
    p: np.ndarray
    s: np.ndarray
    truth: Truth
    trace_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        det, p, s = as_traces(self.det, "detection"), as_traces(self.p, "p"), as_traces(self.s, "s")
        if not (det.shape == p.shape == s.shape):
            raise DataError(f"probability shapes differ: det {det.shape}, p {p.shape}, s {s.shape}")
        if len(self.truth) != det.shape[0]:
            raise DataError(f"{det.shape[0]} probability traces but {len(self.truth)} truth rows")
        names = [str(n) for n in self.trace_names] or [f"trace_{i}" for i in range(det.shape[0])]
        if len(names) != det.shape[0]:
            raise DataError(f"{det.shape[0]} probability traces but {len(names)} trace names")
        object.__setattr__(self, "det", det)
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "s", s)
        object.__setattr__(self, "trace_names", names)

    def __len__(self) -> int:
        return self.det.shape[0]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Probabilities:
        idx = np.asarray(indices)
        return Probabilities(
            self.det[idx],
            self.p[idx],
            self.s[idx],
            self.truth.subset(idx),
            [self.trace_names[i] for i in idx.reshape(-1)],
        )


class ProbabilityCollector:
    """Accumulates (batch, outputs) pairs of a test loop into one `Probabilities`.

    Usage in a test/predict loop: ``collector.add(batch, det, p, s)`` per batch, then
    ``collector.result()``. Outputs are copied to float16 CPU arrays to bound memory.
    """

    def __init__(self, dtype: Any = np.float16):
        self.dtype = dtype
        self._det: list[np.ndarray] = []
        self._p: list[np.ndarray] = []
        self._s: list[np.ndarray] = []
        self._truth: list[Truth] = []
        self._names: list[str] = []

    def add(self, batch: Mapping[str, Any], det: Any, p: Any, s: Any) -> None:
        truth = Truth.from_batch(batch)
        arrays = [
            as_traces(to_numpy(x), name).astype(self.dtype)
            for x, name in ((det, "detection"), (p, "p"), (s, "s"))
        ]
        if arrays[0].shape[0] != len(truth):
            raise DataError(f"batch of {len(truth)} traces but {arrays[0].shape[0]} outputs")
        names = list(batch.get("trace_name", []))
        if names and len(names) != len(truth):
            raise DataError(f"batch has {len(names)} trace names for {len(truth)} traces")
        start = len(self._names)
        if not names:
            names = [f"trace_{start + i}" for i in range(len(truth))]
        self._names.extend(str(n) for n in names)
        self._det.append(arrays[0])
        self._p.append(arrays[1])
        self._s.append(arrays[2])
        self._truth.append(truth)

    def result(self) -> Probabilities:
        if not self._det:
            raise DataError("no batches were collected: is the test split empty?")
        return Probabilities(
            np.concatenate(self._det),
            np.concatenate(self._p),
            np.concatenate(self._s),
            Truth.concat(self._truth),
            list(self._names),
        )


def _stored(x: np.ndarray, dtype: Any, floor: float, chunk: int = 1024) -> np.ndarray:
    """Floored copy in `dtype`, built chunk by chunk (no full float32 temp at paper scale)."""
    out = np.empty(x.shape, dtype=dtype)
    for a in range(0, x.shape[0], chunk):
        part = np.asarray(x[a : a + chunk], dtype=np.float32)
        out[a : a + chunk] = np.where(part < floor, np.float32(0.0), part)
    return out


def as_stored(probs: Probabilities, dtype: Any = np.float16, floor: float = 0.01) -> Probabilities:
    """Exactly what `load_probabilities` returns after `save_probabilities` with these settings."""
    return Probabilities(
        _stored(probs.det, dtype, floor),
        _stored(probs.p, dtype, floor),
        _stored(probs.s, dtype, floor),
        probs.truth,
        list(probs.trace_names),
    )


def save_probabilities(
    path: str | Path, probs: Probabilities, *, dtype: Any = np.float16, floor: float = 0.01
) -> Path:
    """Write `probs` to a compressed npz at `path` atomically; returns the path."""
    path = Path(path)
    stored = as_stored(probs, dtype, floor)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            det=stored.det,
            p=stored.p,
            s=stored.s,
            is_earthquake=probs.truth.is_earthquake,
            p_arrival_sample=probs.truth.p_sample,
            s_arrival_sample=probs.truth.s_sample,
            trace_name=np.asarray(probs.trace_names, dtype=np.str_),
            format_version=np.int64(FORMAT_VERSION),
        )
    return path


def load_probabilities(path: str | Path) -> Probabilities:
    """Read a file written by `save_probabilities`; a missing/corrupt file names itself."""
    path = Path(path)
    if not path.is_file():
        raise DataError("probabilities file not found", path=str(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _ARRAY_KEYS if k not in data.files]
            if missing:
                raise DataError(f"probabilities file lacks {', '.join(missing)}", path=str(path))
            arrays = {k: data[k] for k in _ARRAY_KEYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read probabilities ({exc})", path=str(path)) from exc
    try:
        truth = Truth(
            arrays["is_earthquake"], arrays["p_arrival_sample"], arrays["s_arrival_sample"]
        )
        return Probabilities(
            arrays["det"], arrays["p"], arrays["s"], truth, [str(n) for n in arrays["trace_name"]]
        )
    except DataError as exc:
        raise DataError(f"inconsistent probabilities file: {exc}", path=str(path)) from exc
