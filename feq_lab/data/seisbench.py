"""SeisBench-format datasets (metadata.csv + waveforms.hdf5) behind the STEAD `Dataset` interface.

Facts used (REFERENCE 1.5): traces packed in `data/bucketN` arrays, addressed by trace names like
`bucket3$17,:3,:6000`; a `data_format` group gives `dimension_order` (e.g. "CW"),
`component_order` (SeisBench's STEAD: "ZNE") and `sampling_rate`; columns carry SeisBench names
(`trace_p_arrival_sample`, `station_network_code`, ...) and `split` is train/dev/test. Rows are
renamed to the STEAD columns, `dev` becomes `val`, waveforms are returned (6000, 3) E, N, Z.
Chunked datasets (`metadata<chunk>.csv` + `waveforms<chunk>.hdf5`) are read as one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from feq_lab.data import columns as cols
from feq_lab.data.stead import (
    N_CHANNELS,
    N_SAMPLES,
    SAMPLING_RATE,
    Dataset,
    _FileHandles,
    _pick_error,
    open_hdf5,
    validate_picks,
    validate_waveform,
)
from feq_lab.errors import DataError

# SeisBench column -> STEAD column.
SEISBENCH_TO_STEAD: dict[str, str] = {
    "station_network_code": "network_code", "station_code": "receiver_code",
    "trace_channel": "receiver_type", "station_latitude_deg": "receiver_latitude",
    "station_longitude_deg": "receiver_longitude", "station_elevation_m": "receiver_elevation_m",
    "trace_p_arrival_sample": "p_arrival_sample", "trace_p_status": "p_status",
    "trace_p_weight": "p_weight", "path_p_travel_sec": "p_travel_sec",
    "trace_s_arrival_sample": "s_arrival_sample", "trace_s_status": "s_status",
    "trace_s_weight": "s_weight", "source_latitude_deg": "source_latitude",
    "source_longitude_deg": "source_longitude", "path_ep_distance_deg": "source_distance_deg",
    "path_ep_distance_km": "source_distance_km", "path_back_azimuth_deg": "back_azimuth_deg",
    "trace_snr_db": "snr_db", "trace_coda_end_sample": "coda_end_sample",
}
STEAD_TO_SEISBENCH = {v: k for k, v in SEISBENCH_TO_STEAD.items()}
SPLIT_NAMES = {"dev": "val", "train": "train", "test": "test", "val": "val"}
_SLICE = re.compile(r"^(?P<bucket>[^$]+)\$(?P<index>\d+)(?P<rest>(,[^,]*)*)$")


def _read_string(node: Any) -> str:
    value = node[()] if isinstance(node, h5py.Dataset) else node
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _read_string(value.reshape(-1)[0]) if value.size == 1 else str(value)
    return str(value)


def read_data_format(handle: h5py.File) -> dict[str, Any]:
    """dimension_order, component_order, sampling_rate from `data_format` (group or attrs)."""
    fmt: dict[str, Any] = {}
    group = handle.get("data_format")
    if group is not None:
        for key in ("dimension_order", "component_order", "sampling_rate"):
            if key in group:
                fmt[key] = _read_string(group[key])
            elif key in group.attrs:
                fmt[key] = _read_string(group.attrs[key])
    fmt.setdefault("dimension_order", "CW")
    fmt.setdefault("component_order", "ZNE")
    return fmt


def _pairs(path: Path) -> list[tuple[Path, Path]]:
    metas = sorted(path.glob("metadata*.csv"))
    pairs = []
    for meta in metas:
        chunk = meta.stem[len("metadata"):]
        wave = path / f"waveforms{chunk}.hdf5"
        if not wave.exists():
            raise DataError(f"no waveforms{chunk}.hdf5 beside {meta.name}", path=str(path))
        pairs.append((meta, wave))
    if not pairs:
        raise DataError("no metadata*.csv in SeisBench directory", path=str(path))
    return pairs


class SeisbenchDataset(Dataset):
    """Reads bucketed SeisBench waveforms, converted to (6000, 3) E, N, Z float32."""

    formats: list[dict[str, Any]]

    def _read(self, file_index: int, key: str, trace: str) -> np.ndarray:
        handle = self._files.get(file_index)
        path = str(self._files.paths[file_index])
        fmt = self.formats[file_index]
        match = _SLICE.match(key)
        try:
            if match:
                bucket = handle["data/" + match["bucket"]]
                data = bucket[int(match["index"])]
            else:
                data = handle["data/" + key][()]
        except KeyError:
            raise DataError(f"trace missing from the HDF5 file (no {key!r})", path=path,
                            trace=trace) from None
        except (OSError, ValueError, IndexError) as exc:
            raise DataError(f"cannot read waveform {key!r} ({exc})", path=path,
                            trace=trace) from exc
        data = np.asarray(data)
        dims = fmt["dimension_order"].upper()
        if data.ndim != 2 or sorted(dims) != ["C", "W"]:
            raise DataError(f"waveform has shape {data.shape} for dimension_order {dims!r}",
                            path=path, trace=trace)
        if dims == "CW":
            data = data.T
        data = data[:N_SAMPLES]  # bucket rows can be padded past the trace's own length
        order = fmt["component_order"].upper()
        if sorted(order) != ["E", "N", "Z"]:
            raise DataError(f"component_order {order!r} is not a permutation of ENZ", path=path,
                            trace=trace)
        if data.shape[1] != N_CHANNELS:
            raise DataError(f"waveform has {data.shape[1]} channels, expected 3", path=path,
                            trace=trace)
        data = data[:, [order.index("E"), order.index("N"), order.index("Z")]]
        return validate_waveform(data, path, trace)


def open_seisbench(path: str | os.PathLike, on_bad_trace: str = "error") -> SeisbenchDataset:
    """Open a SeisBench dataset directory as a STEAD-interface Dataset."""
    path = Path(path)
    frames, h5s, formats, skipped = [], [], [], []
    for file_index, (meta_path, wave_path) in enumerate(_pairs(path)):
        try:
            raw = pd.read_csv(meta_path, dtype=str, keep_default_na=False, na_filter=False)
        except (OSError, pd.errors.ParserError) as exc:
            raise DataError(f"cannot read CSV ({exc})", path=str(meta_path)) from exc
        if "trace_name" not in raw:
            raise DataError("missing required column(s) ['trace_name']", path=str(meta_path))
        keys = raw["trace_name"].tolist()
        renamed = raw.rename(columns=SEISBENCH_TO_STEAD)
        if "trace_name_original" in renamed:
            renamed["trace_name"] = renamed["trace_name_original"]
            renamed = renamed.drop(columns=["trace_name_original"])
        if "trace_category" not in renamed:
            p = renamed.get("p_arrival_sample")
            renamed["trace_category"] = ["noise" if cols.is_missing(v) else "earthquake_local"
                                         for v in (p if p is not None else [None] * len(raw))]
        for col in ("p_arrival_sample", "s_arrival_sample"):
            if col not in renamed:
                renamed[col] = "None"
        meta = cols.parse_frame(renamed, source=str(meta_path))
        if "split" in meta:
            meta["split"] = pd.Series([SPLIT_NAMES.get(s, s) if s else s for s in meta["split"]],
                                      dtype=object)
        with open_hdf5(wave_path) as handle:
            fmt = read_data_format(handle)
        rate = fmt.get("sampling_rate")
        if rate is not None and abs(float(rate) - SAMPLING_RATE) > 1e-6:
            raise DataError(f"sampling_rate {rate} Hz; the lab needs {SAMPLING_RATE:g} Hz",
                            path=str(wave_path))
        ok = validate_picks(meta, str(meta_path))
        if not ok.all():
            if on_bad_trace == "error":
                raise _pick_error(meta, ok, str(meta_path))
            skipped += [(n, "P/S index outside window") for n in meta.loc[~ok, "trace_name"]]
        frames.append(meta.assign(_file=file_index, _key=keys)[ok.to_numpy()])
        h5s.append(wave_path)
        formats.append(fmt)
    ds = SeisbenchDataset(pd.concat(frames, ignore_index=True), _FileHandles(h5s),
                          description=str(path))
    ds.formats = formats
    ds.skipped = skipped
    return ds


def write_seisbench(out_dir: str | os.PathLike, waveforms: Sequence[np.ndarray],
                    metadata: pd.DataFrame | Sequence[Mapping[str, Any]], bucket_size: int = 64,
                    component_order: str = "ZNE") -> Path:
    """Write SeisBench format (for interoperability and tests): buckets of channel-first traces.

    `waveforms` are (6000, 3) E, N, Z; `metadata` rows use STEAD column names (+ split).
    """
    from feq_lab.paths import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = metadata.to_dict("records") if isinstance(metadata, pd.DataFrame) else list(metadata)
    perm = ["ENZ".index(c) for c in component_order]
    records = []
    with atomic_path(out / "waveforms.hdf5") as tmp, h5py.File(tmp, "w") as handle:
        fmt = handle.create_group("data_format")
        fmt.create_dataset("dimension_order", data="CW")
        fmt.create_dataset("component_order", data=component_order)
        fmt.create_dataset("sampling_rate", data=SAMPLING_RATE)
        for b, start in enumerate(range(0, len(rows), bucket_size)):
            chunk = [np.asarray(w, dtype=np.float32)[:, perm].T
                     for w in waveforms[start:start + bucket_size]]
            handle.create_dataset(f"data/bucket{b}", data=np.stack(chunk))
            for i, row in enumerate(rows[start:start + bucket_size]):
                rec = {STEAD_TO_SEISBENCH.get(k, k): cols.format_value(k, row.get(k))
                       for k in cols.STEAD_COLUMNS}
                rec["trace_name_original"] = rec.pop("trace_name")
                rec["trace_name"] = f"bucket{b}${i},:{N_CHANNELS},:{N_SAMPLES}"
                if "split" in row:
                    rec["split"] = {"val": "dev"}.get(row["split"], row["split"])
                records.append(rec)
    with atomic_path(out / "metadata.csv") as tmp:
        pd.DataFrame(records).to_csv(tmp, index=False)
    return out
