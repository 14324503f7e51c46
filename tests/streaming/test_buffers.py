"""SampleSeries: absolute indexing across growth and in-place trims."""

from __future__ import annotations

import numpy as np
import pytest

from feq_lab.streaming.buffers import SampleSeries


def test_trim_keeps_every_sample_from_the_mark_and_refills_the_tail():
    s = SampleSeries(2, np.float32, fill=-1.0, capacity=16)
    values = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)
    s.view(0, 16)[:] = values
    storage = s.data
    s.trim(5, min_drop=4)
    assert s.base == 5 and s.data is storage  # moved in place: the same memory
    assert np.array_equal(s.view(5, 16), values[:, 5:])
    assert np.all(s.data[:, 11:] == -1.0)  # the freed tail holds the fill value again
    s.trim(7, min_drop=4)  # fewer than min_drop samples to drop: nothing moves
    assert s.base == 5
    with pytest.raises(IndexError):
        s.view(4, 6)
    s.ensure(40)  # growth keeps the kept samples where they were
    assert np.array_equal(s.view(5, 16), values[:, 5:]) and s.end >= 40
