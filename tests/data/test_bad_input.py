"""Bad input: clear errors naming file and trace, or counted skips when configured."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from feq_lab.data.stead import open_dataset, write_dataset
from feq_lab.data.subset import prepare
from feq_lab.data.synthetic import generate
from feq_lab.errors import DataError


@pytest.fixture()
def source(tmp_path):
    """A small STEAD-format 'real' dataset (5 earthquakes, 2 noise) to damage."""
    batches = list(generate(5, 2, seed=21))
    waves = np.concatenate([b[0] for b in batches])
    meta = pd.concat([b[1] for b in batches], ignore_index=True)
    path = write_dataset(tmp_path / "src" / "chunk.hdf5", waves, meta)
    return path, meta


def _stead_cfg(src, out, **kw):
    return {"kind": "stead", "source": str(src), "out_dir": str(out), "n_earthquakes": 5,
            "n_noise": 2, "seed": 1, "split": {"train": 0.6, "val": 0.2, "test": 0.2},
            "on_bad_trace": "error", **kw}


def test_truncated_hdf5(source):
    path, _ = source
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="cannot open HDF5") as err:
        open_dataset(path)
    assert str(path) in str(err.value)


def test_corrupt_hdf5(source):
    path, _ = source
    path.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(DataError) as err:
        open_dataset(path)
    assert str(path) in str(err.value)


def test_csv_row_without_trace(source, tmp_path):
    path, meta = source
    victim = meta["trace_name"][1]
    with h5py.File(path, "a") as handle:
        del handle["data/" + victim]
    ds = open_dataset(path)
    with pytest.raises(DataError, match="missing from the HDF5") as err:
        ds.get_waveform(victim)
    assert victim in str(err.value) and str(path) in str(err.value)
    # Extraction: error by default, counted skip on request.
    with pytest.raises(DataError, match=victim):
        prepare(_stead_cfg(path.parent, tmp_path / "out1"))
    assert not (tmp_path / "out1" / "subset.csv").exists()  # nothing half-written
    out = prepare(_stead_cfg(path.parent, tmp_path / "out2", on_bad_trace="skip"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"]["count"] == 1 and summary["skipped"]["traces"][0]["trace"] == victim
    assert summary["shortfall"] == {"earthquake_local": 1}
    assert summary["n_traces"] == 6


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_samples(source, bad):
    path, meta = source
    victim = meta["trace_name"][0]
    with h5py.File(path, "a") as handle:
        handle["data/" + victim][100, 2] = float(bad)
    with pytest.raises(DataError, match="NaN or inf") as err:
        open_dataset(path).get_waveform(victim)
    assert victim in str(err.value)


@pytest.mark.parametrize("shape,dtype", [((3, 6000), "float32"), ((6000, 3), "int32"),
                                         ((5000, 3), "float32")])
def test_wrong_shape_or_dtype(source, shape, dtype):
    path, meta = source
    victim = meta["trace_name"][2]
    with h5py.File(path, "a") as handle:
        del handle["data/" + victim]
        handle.create_dataset("data/" + victim, data=np.zeros(shape, dtype=dtype))
    with pytest.raises(DataError, match="shape|dtype") as err:
        open_dataset(path).get_waveform(victim)
    assert victim in str(err.value) and str(path) in str(err.value)


def test_pick_outside_window(source):
    path, meta = source
    csv = path.with_suffix(".csv")
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    victim = raw.loc[0, "trace_name"]
    raw.loc[0, "s_arrival_sample"] = "6500.0"
    raw.to_csv(csv, index=False)
    with pytest.raises(DataError, match="outside") as err:
        open_dataset(path)
    assert victim in str(err.value) and str(csv) in str(err.value)
    ds = open_dataset(path, on_bad_trace="skip")
    assert len(ds) == len(meta) - 1 and ds.skipped[0][0] == victim


@pytest.mark.parametrize("column", ["trace_name", "p_arrival_sample"])
def test_missing_required_column(source, column):
    path, _ = source
    csv = path.with_suffix(".csv")
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    raw.drop(columns=[column]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=column) as err:
        open_dataset(path)
    assert str(csv) in str(err.value)


def test_unparseable_value_names_trace(source):
    path, _ = source
    csv = path.with_suffix(".csv")
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    raw.loc[3, "source_magnitude"] = "big"
    raw.to_csv(csv, index=False)
    with pytest.raises(DataError, match="source_magnitude") as err:
        open_dataset(path)
    assert raw.loc[3, "trace_name"] in str(err.value)
