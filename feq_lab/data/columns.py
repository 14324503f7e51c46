"""The 35 STEAD CSV columns: parsing their raw quirks and writing them back the way STEAD does.

Why a module of its own: the reader, the writer, the generator and the SeisBench bridge must agree
on one parsed representation (floats with NaN, snr_db as a float array (E, N, Z), times as
datetime64, strings with None for missing), and on one raw string form (REFERENCE section 1.3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

STEAD_COLUMNS: tuple[str, ...] = (
    "network_code", "receiver_code", "receiver_type", "receiver_latitude", "receiver_longitude",
    "receiver_elevation_m", "p_arrival_sample", "p_status", "p_weight", "p_travel_sec",
    "s_arrival_sample", "s_status", "s_weight", "source_id", "source_origin_time",
    "source_origin_uncertainty_sec", "source_latitude", "source_longitude", "source_error_sec",
    "source_gap_deg", "source_horizontal_uncertainty_km", "source_depth_km",
    "source_depth_uncertainty_km", "source_magnitude", "source_magnitude_type",
    "source_magnitude_author", "source_mechanism_strike_dip_rake", "source_distance_deg",
    "source_distance_km", "back_azimuth_deg", "snr_db", "coda_end_sample", "trace_start_time",
    "trace_category", "trace_name",
)
FLOAT_COLUMNS: tuple[str, ...] = (
    "receiver_latitude", "receiver_longitude", "receiver_elevation_m", "p_arrival_sample",
    "p_weight", "p_travel_sec", "s_arrival_sample", "s_weight", "source_origin_uncertainty_sec",
    "source_latitude", "source_longitude", "source_error_sec", "source_gap_deg",
    "source_horizontal_uncertainty_km", "source_depth_km", "source_depth_uncertainty_km",
    "source_magnitude", "source_distance_deg", "source_distance_km", "back_azimuth_deg",
    "coda_end_sample",
)
TIME_COLUMNS: tuple[str, ...] = ("source_origin_time", "trace_start_time")
VECTOR_COLUMNS: tuple[str, ...] = ("snr_db",)
STRING_COLUMNS: tuple[str, ...] = tuple(
    c for c in STEAD_COLUMNS if c not in FLOAT_COLUMNS + TIME_COLUMNS + VECTOR_COLUMNS)
# Columns without which no trace can be located or labelled.
REQUIRED_COLUMNS: tuple[str, ...] = ("trace_name", "trace_category", "p_arrival_sample",
                                     "s_arrival_sample")
# Station and trace fields: the only ones filled for noise traces.
TRACE_COLUMNS: tuple[str, ...] = ("network_code", "receiver_code", "receiver_type",
                                  "receiver_latitude", "receiver_longitude",
                                  "receiver_elevation_m", "trace_start_time", "trace_category",
                                  "trace_name")
EVENT_COLUMNS: tuple[str, ...] = tuple(c for c in STEAD_COLUMNS if c not in TRACE_COLUMNS)
MISSING_TOKENS = frozenset({"", "none", "nan", "null", "na", "[]", "[[]]"})

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf", re.IGNORECASE)


def is_missing(value: Any) -> bool:
    """True for None, NaN and the textual nulls STEAD uses (None, nan, empty)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        return text.strip().lower() in MISSING_TOKENS
    return False


def parse_float(value: Any) -> float:
    """A STEAD number: '700.0', '[[ 2896.]]', a (1,1) array, None/nan/'' -> NaN.

    Raises ValueError on text that is not a number (the caller names file and trace).
    """
    if is_missing(value):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        if flat.size != 1:
            raise ValueError(f"expected one number, got array of shape {value.shape}")
        return parse_float(flat[0])
    text = value.decode() if isinstance(value, bytes) else str(value)
    text = text.strip().strip("[]").strip()
    if is_missing(text):
        return math.nan
    return float(text)


def parse_vector(value: Any, size: int = 3) -> np.ndarray:
    """snr_db: '[ 56.79 55.40 47.40]' or '[56.8, 55.4, 47.4]' or an array -> float64 (size,)."""
    if is_missing(value):
        return np.full(size, np.nan)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        out = value.astype(np.float64).reshape(-1)
    elif isinstance(value, (list, tuple)):
        out = np.asarray(value, dtype=np.float64).reshape(-1)
    else:
        text = value.decode() if isinstance(value, bytes) else str(value)
        numbers = _NUMBER.findall(text)
        leftover = _NUMBER.sub("", text).replace("[", "").replace("]", "").replace(",", "").strip()
        if leftover:
            raise ValueError(f"not a numeric vector: {text!r}")
        out = np.array([float(x) for x in numbers], dtype=np.float64)
    if out.size != size:
        raise ValueError(f"expected {size} values, got {out.size}: {value!r}")
    return out


def parse_string(value: Any) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return parse_string(value.reshape(-1)[0]) if value.size == 1 else str(value)
    return str(value)


def parse_time(values: pd.Series) -> pd.Series:
    """'2006-11-03 16:12:24.700000' (UTC, no zone) -> datetime64[ns]; nulls -> NaT."""
    cleaned = values.map(lambda v: None if is_missing(v) else (
        v.decode() if isinstance(v, bytes) else str(v)).strip())
    return pd.to_datetime(cleaned, format="ISO8601")


def parse_frame(raw: pd.DataFrame, source: str = "<csv>") -> pd.DataFrame:
    """Raw string columns (as read with dtype=str) -> parsed columns, in STEAD order.

    Missing optional columns are added as nulls; a missing required column or an unparseable
    value raises `feq_lab.errors.DataError` naming the file, the column and the trace.
    """
    from feq_lab.errors import DataError

    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}", path=source)
    names = raw["trace_name"].astype(str).tolist()
    out: dict[str, Any] = {}
    for col in STEAD_COLUMNS:
        if col not in raw.columns:
            out[col] = (np.full(len(raw), np.nan) if col in FLOAT_COLUMNS
                        else np.full(len(raw), np.datetime64("NaT"), dtype="datetime64[ns]")
                        if col in TIME_COLUMNS else [None] * len(raw))
            continue
        values = raw[col].tolist()
        parser = (parse_float if col in FLOAT_COLUMNS else parse_vector if col in VECTOR_COLUMNS
                  else parse_string if col in STRING_COLUMNS else None)
        if parser is None:
            try:
                out[col] = parse_time(raw[col]).to_numpy()
            except (ValueError, TypeError) as exc:
                raise DataError(f"column {col}: unparseable time ({exc})", path=source) from exc
            continue
        parsed = []
        for name, value in zip(names, values):
            try:
                parsed.append(parser(value))
            except (ValueError, TypeError) as exc:
                raise DataError(f"column {col}: cannot parse {value!r} ({exc})",
                                path=source, trace=name) from exc
        out[col] = (np.array(parsed, dtype=np.float64) if col in FLOAT_COLUMNS
                    else pd.Series(parsed, dtype=object))
    # Object columns keep None for missing strings (pandas would otherwise turn them into NaN).
    frame = pd.DataFrame({c: (pd.Series(out[c], dtype=object) if c in STRING_COLUMNS + VECTOR_COLUMNS
                              else out[c]) for c in STEAD_COLUMNS})
    for extra in raw.columns:
        if extra not in STEAD_COLUMNS:
            frame[extra] = pd.Series([parse_string(v) for v in raw[extra].tolist()], dtype=object)
    return frame


# ----------------------------------------------------------------------------- writing

def _strip_zeros(number: float, decimals: int = 8) -> str:
    text = f"{number:.{decimals}f}".rstrip("0")
    return text


def format_vector(values: Any) -> str:
    """Old-NumPy print form STEAD's merged.csv holds: '[ 65.          65.5         61.40000153]'.

    Values are printed as float32 widened to float64 (8 decimals, trailing zeros blanked), the
    integer parts right-aligned and the fractions left-aligned to a common width.
    """
    arr = np.asarray(values, dtype=np.float32).astype(np.float64).reshape(-1)
    if np.all(np.isnan(arr)):
        return "None"
    parts = [_strip_zeros(float(v)) if np.isfinite(v) else "nan" for v in arr]
    split = [p.split(".", 1) if "." in p else (p, "") for p in parts]
    int_width = max(len(a) for a, _ in split)
    frac_width = max(len(b) for _, b in split)
    cells = [f"{a:>{int_width}}.{b:<{frac_width}}" if b or "." in p else f"{a:>{int_width}}"
             for (a, b), p in zip(split, parts)]
    return "[" + " ".join(" " + c if not c.startswith("-") else c for c in cells) + "]"


def format_coda(value: Any) -> str:
    """(1,1) array print form: '[[ 2896.]]'."""
    v = parse_float(value)
    if math.isnan(v):
        return "None"
    return "[[ " + _strip_zeros(v, 8) + "]]"


def format_float(value: Any, column: str = "") -> str:
    """Python's repr of the value ('700.0'); p_travel_sec like STEAD's float32 '17.0799999237'."""
    v = parse_float(value)
    if math.isnan(v):
        return "None"
    if column == "p_travel_sec":
        return f"{float(np.float32(v)):.12g}" if v != int(v) else repr(float(v))
    return repr(float(v))


def format_time(value: Any, column: str) -> str:
    """source_origin_time with 2 decimals, trace_start_time with 6 (as in merged.csv)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "None"
    ts = pd.Timestamp(value)
    text = ts.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-4] if column == "source_origin_time" else text


def format_value(column: str, value: Any) -> str:
    """One parsed value -> STEAD raw text for the CSV."""
    if column == "snr_db":
        return "None" if is_missing(value) else format_vector(value)
    if column == "coda_end_sample":
        return format_coda(value)
    if column in FLOAT_COLUMNS:
        return format_float(value, column)
    if column in TIME_COLUMNS:
        return format_time(value, column)
    text = parse_string(value)
    return "None" if text is None else text


def format_row(row: Mapping[str, Any], extra: tuple[str, ...] = ()) -> dict[str, str]:
    """A parsed row -> {column: raw text} for the 35 STEAD columns plus `extra` (e.g. split)."""
    out = {c: format_value(c, row.get(c)) for c in STEAD_COLUMNS}
    for c in extra:
        out[c] = "None" if is_missing(row.get(c)) else str(row.get(c))
    return out


def hdf5_attrs(row: Mapping[str, Any]) -> dict[str, Any]:
    """STEAD keeps every metadata field as a dataset attribute too (the fallback index)."""
    attrs: dict[str, Any] = {}
    for c in STEAD_COLUMNS:
        v = row.get(c)
        if c == "snr_db":
            attrs[c] = (np.asarray(v, dtype=np.float64) if not is_missing(v)
                        else "None")
        elif c == "coda_end_sample":
            f = parse_float(v)
            attrs[c] = np.array([[f]]) if not math.isnan(f) else "None"
        elif c in FLOAT_COLUMNS:
            f = parse_float(v)
            attrs[c] = f if not math.isnan(f) else "None"
        elif c in TIME_COLUMNS:
            attrs[c] = format_time(v, c)
        else:
            attrs[c] = format_value(c, v)
    return attrs
