"""Stored probabilities: compressed, atomic, faithful round trip."""

import numpy as np
import pytest
from helpers_eval import random_set

import feq_lab.evaluation.probabilities as probabilities_mod
from feq_lab.errors import DataError
from feq_lab.evaluation.metrics import evaluate
from feq_lab.evaluation.probabilities import (
    ProbabilityCollector,
    as_stored,
    load_probabilities,
    save_probabilities,
)

TH = {"detection": 0.3, "p": 0.1, "s": 0.1}


@pytest.fixture(scope="module")
def probs():
    return random_set(n=20, seed=2)


def test_round_trip(tmp_path, probs):
    path = save_probabilities(tmp_path / "run" / "test_probabilities.npz", probs)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "test_probabilities.npz"
    ]  # no temp left
    loaded = load_probabilities(path)
    stored = as_stored(probs)
    for key in ("det", "p", "s"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(stored, key))
        np.testing.assert_allclose(
            getattr(loaded, key), getattr(probs, key), atol=0.0101
        )  # floor 0.01
    np.testing.assert_array_equal(loaded.truth.is_earthquake, probs.truth.is_earthquake)
    np.testing.assert_array_equal(loaded.truth.p_sample, probs.truth.p_sample)  # NaN == NaN here
    np.testing.assert_array_equal(loaded.truth.s_sample, probs.truth.s_sample)
    assert loaded.trace_names == probs.trace_names
    assert evaluate(loaded, TH) == pytest.approx(evaluate(stored, TH), nan_ok=True)
    raw_bytes = probs.det.nbytes * 3
    assert path.stat().st_size < raw_bytes / 4  # float16 + flooring + compression


def test_failed_write_leaves_nothing(tmp_path, probs, monkeypatch):
    def broken(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(probabilities_mod.np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_probabilities(tmp_path / "p.npz", probs)
    assert list(tmp_path.iterdir()) == []


def test_bad_files_name_themselves(tmp_path, probs):
    with pytest.raises(DataError, match="missing.npz"):
        load_probabilities(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_probabilities(junk)
    partial = tmp_path / "partial.npz"
    np.savez_compressed(partial, det=probs.det)
    with pytest.raises(DataError, match="lacks p, s"):
        load_probabilities(partial)


def test_collector_concatenates_batches_in_order(probs):
    collector = ProbabilityCollector()
    for a, b in ((0, 8), (8, 20)):
        batch = {
            "is_earthquake": probs.truth.is_earthquake[a:b],
            "p_arrival_sample": probs.truth.p_sample[a:b],
            "s_arrival_sample": probs.truth.s_sample[a:b],
            "trace_name": probs.trace_names[a:b],
        }
        collector.add(batch, probs.det[a:b], probs.p[a:b], probs.s[a:b])
    got = collector.result()
    assert got.trace_names == probs.trace_names and got.det.dtype == np.float16
    np.testing.assert_allclose(got.p, probs.p, atol=1e-3)
    with pytest.raises(DataError, match="no batches"):
        ProbabilityCollector().result()
