"""`StreamEngine.feed_array` (a network's records as one array) against `feed_all` on the
equivalent blocks: the same objects, in the same order, with the same clock, whatever the
records hold (issue #16: a network in one process)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import T0, make_record, standin_predict

from feq_lab.errors import DataError
from feq_lab.streaming.engine import Block, StreamEngine

CODES = ("HHZ", "HHN", "HHE")  # not E, N, Z order: the array path must place the rows


def network_seconds(seconds: int = 200):
    """Per second: (names, start times, (n, 3, 100) array) of a 4-station network in which
    S01 has a NaN in one record, S02's clock runs an hour ahead, S03 is silent for 40 s and
    misses a second later (a gap), and S04 joins after 30 s."""
    recs = {f"XX.S0{k}": np.roll(make_record(minutes=4, seed=20 + k), 170 * k, axis=1)
            for k in range(5)}  # fmt: skip
    recs["XX.S01"][1, 50 * 100 + 7] = np.nan
    for sec in range(seconds):
        names, starts, rows = [], [], []
        for name, rec in recs.items():
            if name == "XX.S03" and (60 <= sec < 100 or sec == 150):
                continue
            if name == "XX.S04" and sec < 30:
                continue
            names.append(name)
            starts.append(T0 + sec + (3600.0 if name == "XX.S02" else 0.0))
            # rows in CODES order (Z, N, E) from the record's E, N, Z
            rows.append(rec[::-1, sec * 100 : (sec + 1) * 100])
        yield names, np.array(starts), np.stack(rows).astype(np.float64)


def as_blocks(names, starts, data):
    return [Block(n, float(t), 100.0, dict(zip(CODES, x))) for n, t, x in zip(names, starts, data)]


@pytest.mark.parametrize("early", [True, False])
def test_feed_array_emits_what_feed_all_emits(early):
    cfg = {"early": early, "batch_size": 4, "silence_s": 20.0}
    by_array = StreamEngine(standin_predict, "m", cfg)
    by_blocks = StreamEngine(standin_predict, "m", cfg)
    got, expected = [], []
    for names, starts, data in network_seconds():
        got += by_array.feed_array(names, starts, data, channels=CODES)
        expected += by_blocks.feed_all(as_blocks(names, starts, data))
        assert by_array.clock == by_blocks.clock
    got += by_array.flush()
    expected += by_blocks.flush()
    assert [o.to_dict() for o in got] == [o.to_dict() for o in expected]
    assert any(o.kind == "final" for o in got)
    for name, st in by_blocks.stations.items():  # the stored samples, gaps filled alike
        other = by_array.stations[name]
        assert other.raw.base == st.raw.base
        assert np.array_equal(other.raw.data, st.raw.data, equal_nan=True), name
        assert np.array_equal(other.filled.data, st.filled.data), name


def test_one_start_time_for_all_stations_and_a_station_fed_in_any_order():
    rec = [make_record(minutes=2, seed=s) for s in (1, 2)]
    one, two = StreamEngine(standin_predict, "m"), StreamEngine(standin_predict, "m")
    a, b = [], []
    for sec in range(120):
        order = ["XX.A", "XX.B"] if sec % 2 else ["XX.B", "XX.A"]
        data = np.stack([rec[0 if n == "XX.A" else 1][:, sec * 100 : (sec + 1) * 100]
                         for n in order]).astype(np.float32)  # fmt: skip
        a += one.feed_array(order, T0 + sec, data, channels=("E", "N", "Z"))
        b += two.feed_all([Block(n, T0 + sec, 100.0, dict(zip("ENZ", x)))
                           for n, x in zip(order, data)])  # fmt: skip
    assert [o.to_dict() for o in a + one.flush()] == [o.to_dict() for o in b + two.flush()]


def test_records_at_another_rate_take_the_resampling_path():
    rec = make_record(minutes=1, seed=3)[:, ::2]  # 50 Hz
    one, two = StreamEngine(standin_predict, "m"), StreamEngine(standin_predict, "m")
    for sec in range(60):
        x = rec[None, :, sec * 50 : (sec + 1) * 50]
        one.feed_array(["XX.R"], T0 + sec, x, channels="ENZ", sampling_rate=50.0)
        two.feed_all([Block("XX.R", T0 + sec, 50.0, dict(zip("ENZ", x[0])))])
    assert np.array_equal(one.stations["XX.R"].raw.data, two.stations["XX.R"].raw.data)


@pytest.mark.parametrize(
    "names, starts, shape, message",
    [
        (["XX.A", "XX.B"], T0, (3, 3, 100), r"shape \(3, 3, 100\), expected \(2 stations"),
        (["XX.A"], T0, (1, 100), r"shape \(1, 100\)"),
        (["XX.A", "XX.B"], [T0, T0 + 1, T0 + 2], (2, 3, 100), r"\(3,\) start times for 2"),
    ],
)
def test_a_wrong_array_is_one_clear_error_and_stores_nothing(names, starts, shape, message):
    engine = StreamEngine(standin_predict, "m")
    with pytest.raises(DataError, match=message):
        engine.feed_array(names, starts, np.zeros(shape, np.float32))
    assert engine.stations == {}
