"""Read and write the STEAD format: HDF5 waveforms + the 35-column CSV index (REFERENCE section 1).

Reading is lazy: `open_dataset` parses only the CSV (or, without one, the HDF5 attributes) and
opens each HDF5 file on first access, once per process, so DataLoader workers each get their
own handle. Both layouts (merged `data/<name>`, 2019 `earthquake/local/...`) and several chunk
files are one `Dataset`. SeisBench-format directories are read by `feq_lab.data.seisbench`
behind the same interface.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from feq_lab.data import columns as cols
from feq_lab.errors import DataError

N_SAMPLES = 6000
N_CHANNELS = 3
SAMPLING_RATE = 100.0
LAYOUT_2019_GROUPS = {"earthquake_local": "earthquake/local", "noise": "non_earthquake/noise"}


def validate_waveform(data: Any, path: str, trace: str) -> np.ndarray:
    """Shape (6000, 3), a float dtype and finite samples, else a DataError naming file and trace."""
    arr = np.asarray(data)
    if arr.shape != (N_SAMPLES, N_CHANNELS):
        raise DataError(f"waveform has shape {arr.shape}, expected ({N_SAMPLES}, {N_CHANNELS})",
                        path=path, trace=trace)
    if arr.dtype.kind != "f":
        raise DataError(f"waveform has dtype {arr.dtype}, expected a float type", path=path,
                        trace=trace)
    # One reduction first (cheap: NaN/inf propagate); the element-wise check only when the sum
    # is not finite (it may also overflow on huge but finite values).
    if not np.isfinite(arr.sum()) and not np.isfinite(arr).all():
        raise DataError("waveform contains NaN or inf samples", path=path, trace=trace)
    return arr.astype(np.float32, copy=False)


def validate_picks(meta: pd.DataFrame, path: str) -> pd.Series:
    """Boolean mask of rows whose P/S indices lie inside the window (nulls are fine)."""
    ok = pd.Series(True, index=meta.index)
    for col in ("p_arrival_sample", "s_arrival_sample"):
        v = meta[col].to_numpy(dtype=np.float64)
        ok &= ~((v < 0) | (v >= N_SAMPLES))
    return ok


def _pick_error(meta: pd.DataFrame, bad: pd.Series, path: str) -> DataError:
    row = meta[~bad].iloc[0]
    return DataError(f"P/S index outside the {N_SAMPLES}-sample window (p_arrival_sample="
                     f"{row['p_arrival_sample']}, s_arrival_sample={row['s_arrival_sample']})",
                     path=path, trace=row["trace_name"])


class _FileHandles:
    """Opens each HDF5 file lazily, once per process (fork-safe for DataLoader workers)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        self.names = [str(p) for p in self.paths]
        self._pid: int | None = None
        self._files: dict[int, h5py.File] = {}
        self._groups: dict[tuple[int, str], h5py.Group] = {}

    def get(self, index: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker must not reuse the parent's handle
            self._files = {}
            self._groups = {}
            self._pid = os.getpid()
        handle = self._files.get(index)
        if handle is None:
            handle = open_hdf5(self.paths[index])
            self._files[index] = handle
        return handle

    def group(self, index: int, name: str) -> h5py.Group:
        """A cached group handle (lookups relative to it are cheaper than full paths)."""
        handle = self.get(index)
        key = (index, name)
        group = self._groups.get(key)
        if group is None:
            group = handle[name] if name else handle
            self._groups[key] = group
        return group

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._files.values():
                handle.close()
        self._files = {}
        self._groups = {}

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "names": self.names, "_pid": None, "_files": {},
                "_groups": {}}


def open_hdf5(path: Path) -> h5py.File:
    """h5py.File in read mode, turning a truncated/corrupt file into a DataError naming it."""
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot open HDF5 file ({exc})", path=str(path)) from exc


class Dataset:
    """A STEAD-format dataset: parsed `metadata` (one row per trace) + lazy waveform access.

    `metadata` carries the 35 STEAD columns (and `split` when present); two private columns
    locate each trace (`_file`, `_key`). Subclasses override `_read` for other layouts.
    """

    def __init__(self, metadata: pd.DataFrame, files: _FileHandles, description: str = ""):
        self._files = files
        self.description = description
        self._set_meta(metadata)

    def _set_meta(self, metadata: pd.DataFrame) -> None:
        self._meta = metadata.reset_index(drop=True)
        self._index: dict[str, int] | None = None
        # Plain lists: per-trace lookups through pandas would dominate random-access reads.
        self._names = self._meta["trace_name"].tolist()
        self._keys = self._meta["_key"].tolist()
        self._file_of = self._meta["_file"].astype(int).tolist()

    # ------------------------------------------------------------------ metadata
    @property
    def metadata(self) -> pd.DataFrame:
        return self._meta.drop(columns=["_file", "_key"])

    @property
    def paths(self) -> list[Path]:
        return list(self._files.paths)

    def __len__(self) -> int:
        return len(self._meta)

    def __repr__(self) -> str:
        return f"Dataset({len(self)} traces from {[str(p) for p in self.paths]})"

    def _row_of(self, trace_name: str) -> int:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self._names)}
        try:
            return self._index[trace_name]
        except KeyError:
            raise DataError("trace not in the dataset's index", path=str(self.paths[0]),
                            trace=trace_name) from None

    # ------------------------------------------------------------------ waveforms
    def get_waveform(self, trace_name: str) -> np.ndarray:
        """float32 (6000, 3), channels E, N, Z; validated (shape, dtype, finite)."""
        return self.get_waveform_at(self._row_of(trace_name))

    def get_waveform_at(self, position: int) -> np.ndarray:
        """Waveform of the row at `position` in `metadata` (no name lookup)."""
        return self._read(self._file_of[position], self._keys[position], self._names[position])

    def _read(self, file_index: int, key: str, trace: str) -> np.ndarray:
        group_name, _, name = key.rpartition("/")
        try:
            node = self._files.group(file_index, group_name)[name]
        except KeyError:
            path = str(self._files.paths[file_index])
            raise DataError(f"trace missing from the HDF5 file (no dataset {key!r})", path=path,
                            trace=trace) from None
        path = self._files.names[file_index]
        if not isinstance(node, h5py.Dataset):
            raise DataError(f"{key!r} is not a dataset", path=path, trace=trace)
        try:
            data = node[()]
        except (OSError, RuntimeError) as exc:
            raise DataError(f"cannot read waveform ({exc})", path=path, trace=trace) from exc
        return validate_waveform(data, path, trace)

    def __iter__(self) -> Iterator[tuple[pd.Series, np.ndarray]]:
        """(metadata row, waveform) pairs in metadata order, one trace in memory at a time."""
        meta = self.metadata
        for i in range(len(self)):
            yield meta.iloc[i], self.get_waveform_at(i)

    # ------------------------------------------------------------------ selection
    def select(self, mask: Any) -> Dataset:
        """A view on the rows where `mask` is true (or on integer positions); shares handles."""
        mask = np.asarray(mask)
        rows = self._meta[mask] if mask.dtype == bool else self._meta.iloc[mask]
        return self._view(rows)

    def _view(self, rows: pd.DataFrame) -> Dataset:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._set_meta(rows)
        return clone

    def filter(self, category: str | Iterable[str] | None = None,
               min_snr_db: float | None = None, max_snr_db: float | None = None,
               distance_km: tuple[float | None, float | None] | None = None,
               magnitude: tuple[float | None, float | None] | None = None,
               split: str | Iterable[str] | None = None) -> Dataset:
        """Rows matching every given criterion (metadata only; no waveform is read).

        SNR bounds apply to every channel (EQT's "all three SNRs >= 10 dB"); noise rows have no
        SNR, distance or magnitude, so those criteria keep only earthquakes.
        """
        meta = self._meta
        keep = np.ones(len(meta), dtype=bool)
        if category is not None:
            cats = [category] if isinstance(category, str) else list(category)
            keep &= meta["trace_category"].isin(cats).to_numpy()
        if split is not None:
            if "split" not in meta:
                raise DataError("no split column to filter on", path=str(self.paths[0]))
            splits = [split] if isinstance(split, str) else list(split)
            keep &= meta["split"].isin(splits).to_numpy()
        if min_snr_db is not None or max_snr_db is not None:
            snr = snr_matrix(meta)
            if min_snr_db is not None:
                keep &= np.all(snr >= min_snr_db, axis=1)
            if max_snr_db is not None:
                keep &= np.all(snr <= max_snr_db, axis=1)
        for col, bounds in (("source_distance_km", distance_km), ("source_magnitude", magnitude)):
            if bounds is None:
                continue
            lo, hi = bounds
            v = meta[col].to_numpy(dtype=np.float64)
            if lo is not None:
                keep &= v >= lo
            if hi is not None:
                keep &= v <= hi
        return self.select(keep)

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def snr_matrix(meta: pd.DataFrame) -> np.ndarray:
    """(n, 3) float array of snr_db (E, N, Z); NaN where missing."""
    values = meta["snr_db"].tolist()
    out = np.full((len(values), 3), np.nan)
    for i, v in enumerate(values):
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            out[i] = v
    return out


# ---------------------------------------------------------------------------- opening

# Parsed CSV indexes by content: a job opens the same subset many times (training, evaluation,
# then once per replay scenario) and parsing 2,000 rows cell by cell takes ~0.3 s; hashing the
# bytes takes a millisecond and, unlike a modification time, cannot miss a quick rewrite. Only
# small files are kept: the full STEAD's merged.csv (~1.2 M rows) is read once by `prepare` and
# would otherwise stay in memory for the rest of the job.
_PARSED: dict[tuple[str, bytes], pd.DataFrame] = {}
_PARSED_MAX = 4
_PARSED_MAX_BYTES = 16 * 2**20


def read_csv_index(path: str | os.PathLike) -> pd.DataFrame:
    """Parse a STEAD CSV (merged.csv, chunkN.csv, subset.csv) into typed columns.

    The same bytes at the same path are parsed once per process (files up to 16 MB); every
    caller gets its own copy of the frame.
    """
    path = Path(path)
    try:
        data = path.read_bytes() if path.stat().st_size <= _PARSED_MAX_BYTES else None
        key = None if data is None else (str(path.resolve()),
                                         hashlib.blake2b(data, digest_size=16).digest())
        if key in _PARSED:
            return _PARSED[key].copy()
        raw = pd.read_csv(path if data is None else io.BytesIO(data), dtype=str,
                          keep_default_na=False, na_filter=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read CSV ({exc})", path=str(path)) from exc
    parsed = cols.parse_frame(raw, source=str(path))
    if key is not None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = parsed.copy()
    return parsed


def _detect_layout(handle: h5py.File) -> str:
    if "data" in handle:
        return "merged"
    if "earthquake" in handle or "non_earthquake" in handle:
        return "2019"
    raise DataError("HDF5 file has neither a 'data' group (merged STEAD) nor "
                    "'earthquake'/'non_earthquake' groups (2019 STEAD)", path=handle.filename)


def _keys_for(meta: pd.DataFrame, layout: str, path: Path) -> list[str]:
    if layout == "merged":
        return ["data/" + n for n in meta["trace_name"]]
    keys = []
    for name, cat in zip(meta["trace_name"], meta["trace_category"]):
        group = LAYOUT_2019_GROUPS.get(cat)
        if group is None:
            raise DataError(f"unknown trace_category {cat!r} for the 2019 layout", path=str(path),
                            trace=name)
        keys.append(f"{group}/{name}")
    return keys


def metadata_from_attrs(handle: h5py.File) -> tuple[pd.DataFrame, list[str]]:
    """The fallback index: every trace's HDF5 attributes (no waveform is read)."""
    keys: list[str] = []
    records: list[dict[str, Any]] = []

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset) and not name.startswith("data_format"):
            attrs = dict(node.attrs)
            attrs.setdefault("trace_name", name.rsplit("/", 1)[-1])
            if "trace_category" not in attrs:
                attrs["trace_category"] = "noise" if "noise" in name else "earthquake_local"
            records.append(attrs)
            keys.append(name)

    handle.visititems(visit)
    raw = pd.DataFrame.from_records(records) if records else pd.DataFrame(
        columns=list(cols.REQUIRED_COLUMNS))
    for col in ("p_arrival_sample", "s_arrival_sample"):
        if col not in raw:
            raw[col] = None
    return cols.parse_frame(raw, source=handle.filename), keys


def _chunk_pairs(path: Path) -> list[tuple[Path, Path | None]]:
    """(hdf5, csv or None) pairs for a file or a directory of chunk files."""
    if path.is_dir():
        h5s = sorted(p for p in path.iterdir() if p.suffix in (".hdf5", ".h5"))
        if not h5s:
            raise DataError("no .hdf5 files in directory", path=str(path))
        pairs = []
        for h5 in h5s:
            csv_path = h5.with_suffix(".csv")
            if not csv_path.exists() and len(h5s) == 1:
                others = sorted(path.glob("*.csv"))
                csv_path = others[0] if len(others) == 1 else csv_path
            pairs.append((h5, csv_path if csv_path.exists() else None))
        return pairs
    if path.suffix == ".csv":
        h5 = path.with_suffix(".hdf5")
        return [(h5, path)]
    csv_path = path.with_suffix(".csv")
    return [(path, csv_path if csv_path.exists() else None)]


def _is_seisbench(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.csv").exists() or (
        path.is_dir() and any(path.glob("metadata*.csv")) and any(path.glob("waveforms*.hdf5")))


def open_dataset(path: str | os.PathLike | Sequence[str | os.PathLike],
                 on_bad_trace: str = "error") -> Dataset:
    """Open STEAD (merged/2019 layout, one or several chunk files) or SeisBench data.

    `path`: an HDF5 file (its CSV beside it, same stem), a CSV, a directory of chunk files, a
    SeisBench directory, or a list of any of these. Rows whose P/S index lies outside the window
    raise a DataError, or are dropped when `on_bad_trace == "skip"` (`Dataset.skipped` lists them).
    """
    if on_bad_trace not in ("error", "skip"):
        from feq_lab.errors import ConfigError

        raise ConfigError("data.on_bad_trace", f"must be 'error' or 'skip', got {on_bad_trace!r}")
    if isinstance(path, (list, tuple)):
        parts = [open_dataset(p, on_bad_trace) for p in path]
        return concat(parts)
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or directory", path=str(path))
    if _is_seisbench(path):
        from feq_lab.data.seisbench import open_seisbench

        return open_seisbench(path, on_bad_trace=on_bad_trace)
    frames = []
    h5_paths: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for file_index, (h5, csv_path) in enumerate(_chunk_pairs(path)):
        if not h5.exists():
            raise DataError("HDF5 file paired with the CSV does not exist", path=str(h5))
        with open_hdf5(h5) as handle:
            layout = _detect_layout(handle)
            if csv_path is not None:
                meta = read_csv_index(csv_path)
                keys = _keys_for(meta, layout, h5)
            else:
                meta, keys = metadata_from_attrs(handle)
        source = str(csv_path or h5)
        ok = validate_picks(meta, source)
        if not ok.all():
            if on_bad_trace == "error":
                raise _pick_error(meta, ok, source)
            skipped += [(n, "P/S index outside window") for n in meta.loc[~ok, "trace_name"]]
        meta = meta.assign(_file=file_index, _key=keys)[ok.to_numpy()]
        frames.append(meta)
        h5_paths.append(h5)
    metadata = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    ds = Dataset(metadata, _FileHandles(h5_paths), description=str(path))
    ds.skipped = skipped
    return ds


def concat(parts: Sequence[Dataset]) -> Dataset:
    """Several STEAD datasets as one (chunk files given separately)."""
    if any(type(p) is not Dataset for p in parts):
        raise DataError("only STEAD-format datasets can be concatenated",
                        path=", ".join(str(p.paths[0]) for p in parts))
    frames, paths = [], []
    for part in parts:
        offset = len(paths)
        frames.append(part._meta.assign(_file=part._meta["_file"] + offset))
        paths += part.paths
    ds = Dataset(pd.concat(frames, ignore_index=True), _FileHandles(paths))
    ds.skipped = [s for p in parts for s in getattr(p, "skipped", [])]
    return ds


# ---------------------------------------------------------------------------- writing

_SCALAR = None


def _write_attrs(dset: h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    """Attributes through h5py's low-level API: ~2x faster than `dset.attrs[k] = v`, which
    creates each attribute under a temporary name and renames it. Strings are stored as
    fixed-length bytes (read back by `columns.parse_*`)."""
    from h5py import h5a, h5s, h5t

    global _SCALAR
    if _SCALAR is None:
        _SCALAR = h5s.create(h5s.SCALAR)
    for name, value in attrs.items():
        arr = np.array(value.encode()) if isinstance(value, str) else np.asarray(value)
        space = _SCALAR if arr.ndim == 0 else h5s.create_simple(arr.shape)
        h5a.create(dset.id, name.encode(), h5t.py_create(arr.dtype), space).write(arr)


class SteadWriter:
    """Writes STEAD-format HDF5 + CSV atomically: files appear only when the block succeeds.

    layout "merged" puts traces at `data/<trace_name>`, "2019" under `earthquake/local` and
    `non_earthquake/noise`. Every metadata field is written both as a CSV column (raw STEAD text)
    and as a dataset attribute. `extra_columns` (e.g. "split") follow the 35 STEAD columns;
    `attr_columns` are written as dataset attributes only (e.g. the synthetic generator's true
    arrivals), so the CSV keeps its columns.
    """

    def __init__(self, hdf5_path: str | os.PathLike, csv_path: str | os.PathLike | None = None,
                 layout: str = "merged", extra_columns: Sequence[str] = (),
                 write_attrs: bool = True, defer_csv: bool = False,
                 attr_columns: Sequence[str] = ()):
        if layout not in ("merged", "2019"):
            raise ValueError(f"layout must be 'merged' or '2019', got {layout!r}")
        self.hdf5_path = Path(hdf5_path)
        self.csv_path = Path(csv_path) if csv_path else self.hdf5_path.with_suffix(".csv")
        self.layout = layout
        self.extra_columns = tuple(extra_columns)
        self.attr_columns = tuple(attr_columns)
        self.write_attrs = write_attrs
        self._tmp_h5 = self.hdf5_path.with_name(f".{self.hdf5_path.name}.{os.getpid()}.tmp")
        self._tmp_csv = self.csv_path.with_name(f".{self.csv_path.name}.{os.getpid()}.tmp")
        self._h5: h5py.File | None = None
        self._csv_file = None
        self._csv: Any = None
        self.count = 0
        # defer_csv: keep formatted rows and write them at exit in `csv_order` (indices in
        # add() order), so waveforms can stream to disk while the index gets its final order.
        self.defer_csv = defer_csv
        self.csv_order: Sequence[int] | None = None
        self._rows: list[list[str]] = []

    def __enter__(self) -> SteadWriter:
        self.hdf5_path.parent.mkdir(parents=True, exist_ok=True)
        self._h5 = h5py.File(self._tmp_h5, "w")
        self._h5.attrs["feq_lab_format"] = f"stead-{self.layout}"
        self._csv_file = open(self._tmp_csv, "w", newline="")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(list(cols.STEAD_COLUMNS) + list(self.extra_columns))
        return self

    def _group(self, category: str) -> h5py.Group:
        assert self._h5 is not None
        if self.layout == "merged":
            name = "data"
        else:
            name = LAYOUT_2019_GROUPS.get(category)
            if name is None:
                raise DataError(f"unknown trace_category {category!r}", path=str(self.hdf5_path))
        return self._h5.require_group(name)

    def add(self, waveform: np.ndarray, row: Mapping[str, Any]) -> None:
        """Append one trace (float32 (6000, 3) E,N,Z) and its parsed metadata row."""
        name = row.get("trace_name")
        if not name:
            raise DataError("row without trace_name", path=str(self.hdf5_path))
        wave = validate_waveform(waveform, str(self.hdf5_path), name)
        dset = self._group(row.get("trace_category") or "").create_dataset(name, data=wave)
        if self.write_attrs:
            attrs = cols.hdf5_attrs(row)
            for key in self.extra_columns:
                if not cols.is_missing(row.get(key)):
                    attrs[key] = str(row.get(key))
            for key in self.attr_columns:
                if not cols.is_missing(row.get(key)):
                    attrs[key] = row.get(key)
            _write_attrs(dset, attrs)
        raw = cols.format_row(row, self.extra_columns)
        line = [raw[c] for c in list(cols.STEAD_COLUMNS) + list(self.extra_columns)]
        if self.defer_csv:
            self._rows.append(line)
        else:
            self._csv.writerow(line)
        self.count += 1

    def __exit__(self, exc_type: Any, *rest: object) -> None:
        assert self._h5 is not None and self._csv_file is not None
        if exc_type is None and self.defer_csv:
            order = range(len(self._rows)) if self.csv_order is None else self.csv_order
            if sorted(order) != list(range(len(self._rows))):
                raise ValueError("csv_order must be a permutation of the added rows")
            self._csv.writerows(self._rows[i] for i in order)
        self._h5.close()
        self._csv_file.close()
        if exc_type is None:
            os.replace(self._tmp_h5, self.hdf5_path)
            os.replace(self._tmp_csv, self.csv_path)
        else:
            self._tmp_h5.unlink(missing_ok=True)
            self._tmp_csv.unlink(missing_ok=True)


def write_dataset(hdf5_path: str | os.PathLike, waveforms: Iterable[np.ndarray],
                  metadata: pd.DataFrame | Iterable[Mapping[str, Any]], layout: str = "merged",
                  extra_columns: Sequence[str] = ()) -> Path:
    """Convenience: write waveforms with their metadata rows in one call."""
    rows = metadata.to_dict("records") if isinstance(metadata, pd.DataFrame) else metadata
    with SteadWriter(hdf5_path, layout=layout, extra_columns=extra_columns) as writer:
        for wave, row in zip(waveforms, rows):
            writer.add(wave, row)
    return Path(hdf5_path)
