"""Write -> read round trips: merged and 2019 STEAD layouts, chunk files, attrs fallback, SeisBench."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest

from feq_lab.data import columns as cols
from feq_lab.data.seisbench import write_seisbench
from feq_lab.data.stead import SteadWriter, open_dataset, read_csv_index, write_dataset
from feq_lab.data.synthetic import generate


@pytest.fixture(scope="module")
def traces():
    """6 earthquakes + 3 noise traces from the generator: (waveforms, metadata rows)."""
    batches = list(generate(6, 3, seed=11))
    waves = np.concatenate([b[0] for b in batches])
    meta = pd.concat([b[1] for b in batches], ignore_index=True)
    meta["split"] = ["train", "train", "val", "test", "train", "test", "train", "val", "test"]
    return waves, meta


def _assert_same(ds, waves, meta):
    got = ds.metadata
    assert got["trace_name"].tolist() == meta["trace_name"].tolist()
    for i, name in enumerate(meta["trace_name"]):
        np.testing.assert_array_equal(ds.get_waveform(name), waves[i])
    eq = meta["trace_category"] == "earthquake_local"
    np.testing.assert_array_equal(got["p_arrival_sample"][eq], meta["p_arrival_sample"][eq])
    np.testing.assert_allclose(got["source_magnitude"][eq], meta["source_magnitude"][eq])
    assert got["p_arrival_sample"][~eq].isna().all()
    assert all(v is None for v in got["source_magnitude_type"][~eq])


@pytest.mark.parametrize("layout", ["merged", "2019"])
def test_round_trip_layouts(tmp_path, traces, layout):
    waves, meta = traces
    path = write_dataset(tmp_path / "chunk.hdf5", waves, meta, layout=layout,
                         extra_columns=("split",))
    with h5py.File(path) as handle:
        group = "data" if layout == "merged" else "earthquake/local"
        assert meta["trace_name"][0] in handle[group]
    ds = open_dataset(path)
    _assert_same(ds, waves, meta)
    assert ds.metadata["split"].tolist() == meta["split"].tolist()
    snr = np.stack(ds.metadata["snr_db"][meta["trace_category"] == "earthquake_local"].tolist())
    np.testing.assert_allclose(snr, np.stack(meta["snr_db"][:6].tolist()), atol=1e-6)


def test_several_chunk_files_are_one_dataset(tmp_path, traces):
    waves, meta = traces
    write_dataset(tmp_path / "chunk1.hdf5", waves[6:], meta.iloc[6:], layout="2019")
    write_dataset(tmp_path / "chunk2.hdf5", waves[:6], meta.iloc[:6], layout="2019")
    ds = open_dataset(tmp_path)
    assert len(ds) == 9 and len(ds.paths) == 2
    np.testing.assert_array_equal(ds.get_waveform(meta["trace_name"][0]), waves[0])
    np.testing.assert_array_equal(ds.get_waveform(meta["trace_name"][8]), waves[8])
    listed = open_dataset([tmp_path / "chunk1.hdf5", tmp_path / "chunk2.csv"])
    assert sorted(listed.metadata["trace_name"]) == sorted(meta["trace_name"])


def test_hdf5_attributes_are_the_fallback_index(tmp_path, traces):
    waves, meta = traces
    path = write_dataset(tmp_path / "x.hdf5", waves, meta)
    path.with_suffix(".csv").unlink()
    ds = open_dataset(path)
    assert sorted(ds.metadata["trace_name"]) == sorted(meta["trace_name"])
    row = ds.metadata.set_index("trace_name").loc[meta["trace_name"][0]]
    assert row["p_arrival_sample"] == meta["p_arrival_sample"][0]
    assert row["coda_end_sample"] == meta["coda_end_sample"][0]
    np.testing.assert_allclose(row["snr_db"], meta["snr_db"][0])
    assert row["trace_start_time"] == meta["trace_start_time"][0]


def test_filters_use_metadata_only(tmp_path, traces):
    waves, meta = traces
    ds = open_dataset(write_dataset(tmp_path / "x.hdf5", waves, meta, extra_columns=("split",)))
    assert len(ds.filter(category="noise")) == 3
    snr_min = np.array([min(v) for v in meta["snr_db"][:6]])
    cut = float(np.median(snr_min))
    assert len(ds.filter(min_snr_db=cut)) == int((snr_min >= cut).sum())
    mags = meta["source_magnitude"][:6]
    sub = ds.filter(magnitude=(mags.min(), mags.median()))
    assert set(sub.metadata["source_magnitude"]) <= set(mags[mags <= mags.median()])
    d = ds.filter(distance_km=(None, 50.0)).metadata["source_distance_km"]
    assert (d <= 50.0).all()
    test = ds.filter(split="test")
    assert test.metadata["trace_name"].tolist() == meta["trace_name"][meta["split"] == "test"].tolist()
    _row, wave = next(iter(test))
    np.testing.assert_array_equal(wave, waves[3])


def test_dataset_pickles_without_handles(tmp_path, traces):
    waves, meta = traces
    ds = open_dataset(write_dataset(tmp_path / "x.hdf5", waves, meta))
    ds.get_waveform(meta["trace_name"][0])  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.get_waveform(meta["trace_name"][1]), waves[1])


def test_seisbench_round_trip(tmp_path, traces):
    waves, meta = traces
    write_seisbench(tmp_path / "sb", waves, meta, bucket_size=4)
    raw = pd.read_csv(tmp_path / "sb" / "metadata.csv")
    assert raw["trace_name"][5] == "bucket1$1,:3,:6000"
    assert "trace_p_arrival_sample" in raw and set(raw["split"]) == {"train", "dev", "test"}
    with h5py.File(tmp_path / "sb" / "waveforms.hdf5") as handle:
        assert handle["data/bucket0"].shape == (4, 3, 6000)  # channel-first ZNE
        np.testing.assert_array_equal(handle["data/bucket0"][0][0], waves[0][:, 2])
    ds = open_dataset(tmp_path / "sb")
    _assert_same(ds, waves, meta)
    assert ds.metadata["split"].tolist() == meta["split"].tolist()  # dev -> val


def test_writer_leaves_nothing_on_failure(tmp_path, traces):
    waves, meta = traces
    with pytest.raises(RuntimeError), SteadWriter(tmp_path / "out.hdf5") as writer:
        writer.add(waves[0], meta.iloc[0].to_dict())
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_csv_header_is_stead_order(tmp_path, traces):
    waves, meta = traces
    path = write_dataset(tmp_path / "x.hdf5", waves, meta, extra_columns=("split",))
    header = path.with_suffix(".csv").read_text().splitlines()[0].split(",")
    assert header == list(cols.STEAD_COLUMNS) + ["split"]


@pytest.fixture
def parse_calls(monkeypatch):
    """One entry per CSV index actually parsed (cols.parse_frame called) from here on."""
    calls = []
    parse = cols.parse_frame
    monkeypatch.setattr(cols, "parse_frame", lambda *a, **k: calls.append(1) or parse(*a, **k))
    return calls


def test_csv_index_is_parsed_once_per_content_and_each_caller_gets_a_copy(tmp_path, traces,
                                                                           parse_calls):
    """A job opens its subset once per replay scenario: an unchanged CSV is not parsed again,
    a rewrite of the same size is, and a caller changing its frame changes nobody else's."""
    waves, meta = traces
    path = write_dataset(tmp_path / "x.hdf5", waves, meta, extra_columns=("split",))
    csv_path = path.with_suffix(".csv")
    first = read_csv_index(csv_path)
    assert parse_calls == [1]
    second = read_csv_index(csv_path)
    assert parse_calls == [1]
    pd.testing.assert_frame_equal(first, second)
    second.loc[0, "source_magnitude"] = -9.0
    assert read_csv_index(csv_path).loc[0, "source_magnitude"] == first.loc[0, "source_magnitude"]
    text = csv_path.read_text()
    old = meta["trace_name"].iloc[0]
    csv_path.write_text(text.replace(old, old[:-1] + ("X" if old[-1] != "X" else "Y")))
    assert len(csv_path.read_text()) == len(text)  # same size, maybe the same mtime too
    renamed = read_csv_index(csv_path)
    assert parse_calls == [1, 1] and renamed["trace_name"].iloc[0] != old


def test_large_csv_indexes_are_not_kept(tmp_path, traces, monkeypatch, parse_calls):
    """Above the size limit (the full STEAD's merged.csv) every read parses and nothing stays."""
    from feq_lab.data import stead

    waves, meta = traces
    csv_path = write_dataset(tmp_path / "x.hdf5", waves, meta).with_suffix(".csv")
    monkeypatch.setattr(stead, "_PARSED_MAX_BYTES", csv_path.stat().st_size - 1)
    monkeypatch.setattr(stead, "_PARSED", {})
    pd.testing.assert_frame_equal(read_csv_index(csv_path), read_csv_index(csv_path))
    assert parse_calls == [1, 1] and stead._PARSED == {}
