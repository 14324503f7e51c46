"""Early picking's lifecycle, the replay clock, network batching and bad input (issue #16)."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from conftest import (
    EVENT_P_S,
    EVENT_S_S,
    T0,
    blocks_of,
    final_content,
    make_record,
    standin_predict,
)
from stream_helpers import run_blocks

from feq_lab.errors import ConfigError
from feq_lab.streaming.engine import Block, StreamEngine, finals, iso_utc
from feq_lab.streaming.outputs import EventSink

GLITCH_S = 100.0  # a dropout that looks like an onset while it is the newest data, not later


def glitch_predict(x):
    """The stand-in picker, plus an onset-like detection and P peak wherever a dropout (Z
    flat: equal consecutive samples) begins in the last 3 s of a window: partial evidence that
    a window with more data after it no longer supports (like a glitch). The stand-in part
    never sees the dropout (it lowers the energy)."""
    det, p, s = (np.array(o, copy=True) for o in standin_predict(x))
    idx = np.arange(x.shape[-1])
    for b in range(x.shape[0]):
        hits = np.flatnonzero(np.diff(x[b, 2]) == 0)
        hits = hits[hits >= x.shape[-1] - 300]
        if hits.size:
            i = int(hits[0])
            det[b, i:] = 1.0
            p[b] = np.maximum(p[b], np.exp(-0.5 * ((idx - i) / 10.0) ** 2))
    return det, p, s


def glitch_record() -> np.ndarray:
    rec = make_record()
    rec[2, int(GLITCH_S * 100) : int(GLITCH_S * 100) + 50] = 120.0
    return rec


def kinds_of(objects, event_id):
    return [o.kind for o in objects if o.event_id == event_id]


def test_a_true_onset_is_picked_within_two_seconds_then_made_final_under_its_id():
    objects = run_blocks(StreamEngine(standin_predict, "standin"), blocks_of(make_record(), 1.0))
    first = objects[0]
    assert first.kind == "pick" and abs(first.p_time - (T0 + EVENT_P_S)) <= 0.05
    # emitted_at: the stream time of the newest sample fed (a 1-s record's last sample)
    assert 0 < first.emitted_at - (T0 + EVENT_P_S) <= 1.0
    assert first.to_dict()["emitted_at"] == iso_utc(first.emitted_at)
    s_seen = next(o for o in objects if o.s_time is not None)
    assert s_seen.kind == "update" and 0 < s_seen.emitted_at - (T0 + EVENT_S_S) <= 1.0
    (final,) = finals(objects)
    assert final.event_id == first.event_id and final.emitted_at > s_seen.emitted_at
    assert kinds_of(objects, first.event_id) == ["pick", "update", "final"]


def test_a_provisional_pick_later_retracted_is_never_final():
    objects = run_blocks(StreamEngine(glitch_predict, "m"), blocks_of(glitch_record(), 1.0))
    glitch = [o for o in objects if o.p_time is not None and abs(o.p_time - (T0 + GLITCH_S)) < 0.1]
    assert glitch, "the spike must give a provisional pick while it is the newest data"
    event_id = glitch[0].event_id
    kinds = kinds_of(objects, event_id)
    assert kinds.count("pick") == 1 and kinds.count("retract") == 1 and "final" not in kinds
    assert kinds[0] == "pick" and kinds[-1] == "retract"
    # the real event is unaffected: the offline windows' final, once
    assert final_content(objects) == final_content(
        run_blocks(StreamEngine(standin_predict, "m", {"early": False}),
                   blocks_of(glitch_record(), 60.0))
    )  # fmt: skip
    # in the sink: the retracted event never reaches the files, the JSON lines have it all
    out = io.StringIO()
    sink = EventSink(None, stream=out)
    sink.emit(objects)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["kind"] for x in lines if x["event_id"] == event_id] == kinds
    assert [r["event_id"] for r in sink.lifecycle.final_records()] == [
        o.event_id for o in finals(objects)
    ]


@pytest.mark.parametrize("predict", [standin_predict, glitch_predict])
def test_record_sizes_and_early_picking_give_the_same_final_events(predict):
    rec = glitch_record()
    reference = final_content(
        run_blocks(StreamEngine(predict, "m", {"early": False}), blocks_of(rec, 60.0))
    )
    assert reference
    for block_s in (1.0, 7.0, 60.0):
        objects = run_blocks(StreamEngine(predict, "m"), blocks_of(rec, block_s))
        assert final_content(objects) == reference, f"{block_s}-s records"
        ids = [o.event_id for o in finals(objects)]
        assert len(ids) == len(set(ids))  # a consumer never sees a duplicate final


def test_early_picking_off_emits_finals_only_and_the_cadence_is_configurable():
    rec = make_record()
    off = StreamEngine(standin_predict, "m", {"early": False})
    objects = run_blocks(off, blocks_of(rec, 1.0))
    assert [o.kind for o in objects] == ["final"] and off.edge_windows_run == 0
    every5 = StreamEngine(standin_predict, "m", {"early_every_s": 5.0})
    objects = run_blocks(every5, blocks_of(rec, 1.0))
    first = objects[0]
    assert first.kind == "pick" and first.emitted_at - (T0 + EVENT_P_S) <= 5.0
    every1 = StreamEngine(standin_predict, "m")
    run_blocks(every1, blocks_of(rec, 1.0))
    assert every5.edge_windows_run < every1.edge_windows_run / 4


def hesitant_predict(x):
    """The stand-in picker, but while the P onset lies in a window's last 3 s (partial
    evidence) its P peak is 0.08 and its detection 0.3: under the final thresholds (0.1, 0.5),
    above the default provisional ones (x 0.5, x 0.4) -- like the trained champion's
    right-edge windows."""
    det, p, s = (np.array(o, copy=True) for o in standin_predict(x))
    for b in range(x.shape[0]):
        on = int(np.argmax(p[b]))
        if p[b, on] > 0.5 and on >= x.shape[-1] - 300:
            p[b] *= 0.08
            det[b] = np.minimum(det[b], 0.3)
    return det, p, s


def test_provisional_thresholds_pick_partial_evidence_early_and_leave_finals_alone():
    rec = make_record()
    first_pick = {}
    content = {}
    for name, scale in (("final", {"detection": 1.0, "p": 1.0, "s": 1.0}), ("default", None)):
        engine = StreamEngine(
            hesitant_predict, "m", {} if scale is None else {"early_scale": scale}
        )
        objects = run_blocks(engine, blocks_of(rec, 1.0))
        picks = [o for o in objects if o.kind != "retract" and o.p_time is not None]
        assert abs(picks[0].p_time - (T0 + EVENT_P_S)) <= 0.05
        first_pick[name] = picks[0].emitted_at - (T0 + EVENT_P_S)
        content[name] = final_content(objects)
    assert first_pick["default"] <= 1.0 and first_pick["final"] >= 3.0
    assert content["default"] == content["final"] and content["final"]


def test_early_scale_is_validated_by_key():
    with pytest.raises(ConfigError, match=r"engine\.early_scale\.p"):
        StreamEngine(standin_predict, "m", {"early_scale": {"p": 0}})
    with pytest.raises(ConfigError, match=r"engine\.early_scale\.q"):
        StreamEngine(standin_predict, "m", {"early_scale": {"q": 1.0}})


def network(n: int, seconds: float = 300.0) -> dict[str, np.ndarray]:
    """`n` stations: each its own seeded record (P at a station-dependent time)."""
    out = {}
    for k in range(n):
        rec = make_record(minutes=seconds / 60.0, seed=10 + k)
        out[f"XX.S{k:02d}"] = np.roll(rec, 150 * k, axis=1)  # onsets 1.5 s apart
    return out


def per_second(records: dict[str, np.ndarray], skip: dict[str, float] | None = None):
    """The network's 1-s records, second by second (station order kept); `skip` ends a
    station's data at that many seconds."""
    blocks = {name: blocks_of(rec, 1.0, station=name) for name, rec in records.items()}
    n = max(len(b) for b in blocks.values())
    for k in range(n):
        yield [
            b[k] for name, b in blocks.items()
            if k < len(b) and not (skip and name in skip and k >= skip[name])
        ]  # fmt: skip


def test_stations_batched_in_one_call_give_the_same_events_as_each_alone():
    records = network(3)
    together = StreamEngine(standin_predict, "m", {"batch_size": 64})
    objects = [o for second in per_second(records) for o in together.feed_all(second)]
    objects += together.flush()
    for name, rec in records.items():
        alone = run_blocks(StreamEngine(standin_predict, "m"), blocks_of(rec, 1.0, station=name))
        mine = [o.to_dict() for o in objects if o.station == name]
        assert mine == [o.to_dict() for o in alone], name  # kinds, ids, emitted_at included
        assert any(o.kind == "pick" for o in alone)
    # one predictor call per second of the network, not one per station
    windows = together.windows_run + together.edge_windows_run
    assert together.predict_calls < windows / 2


def test_a_silent_station_is_reported_once_and_holds_no_one_back(caplog):
    records = network(3)
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        engine = StreamEngine(standin_predict, "m")
        objects = [
            o
            for second in per_second(records, skip={"XX.S02": 120})
            for o in engine.feed_all(second)
        ]
    silent = [r.getMessage() for r in caplog.records if "no data since" in r.getMessage()]
    assert len(silent) == 1 and "XX.S02" in silent[0]
    for name in ("XX.S00", "XX.S01"):  # their events are emitted when they would be alone
        alone = StreamEngine(standin_predict, "m")
        expected = [o.to_dict() for b in blocks_of(records[name], 1.0, station=name)
                    for o in alone.feed(b)]  # fmt: skip
        assert [o.to_dict() for o in objects if o.station == name] == expected
        assert any(o.kind == "final" for o in objects if o.station == name)


def test_a_record_from_the_future_is_flagged_and_not_used_as_the_clock(caplog):
    records = network(3)
    skewed = blocks_of(records["XX.S01"], 1.0, station="XX.S01", t0=T0 + 3600.0)  # +1 h
    normal = {k: blocks_of(v, 1.0, station=k) for k, v in records.items() if k != "XX.S01"}
    engine = StreamEngine(standin_predict, "m")
    objects = []
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        for k in range(len(skewed)):
            second = [normal["XX.S00"][k], skewed[k], normal["XX.S02"][k]]
            objects += engine.feed_all(second)
            assert engine.clock == pytest.approx(T0 + k + 0.99)  # the trusted stations' time
    flagged = [r.getMessage() for r in caplog.records if "clock skew" in r.getMessage()]
    assert len(flagged) == 1 and "XX.S01" in flagged[0]
    assert not any("no data since" in r.getMessage() for r in caplog.records)
    alone = StreamEngine(standin_predict, "m")
    expected = [o.to_dict() for b in normal["XX.S00"] for o in alone.feed(b)]
    assert [o.to_dict() for o in objects if o.station == "XX.S00"] == expected
    # the skewed station's own data are still picked (its emitted_at is the trusted clock)
    picks = [o for o in objects if o.station == "XX.S01" and o.kind == "pick"]
    assert picks and all(o.emitted_at < o.p_time for o in picks)


def test_single_station_gap_is_no_clock_skew(caplog):
    rec = make_record()
    blocks = [b for b in blocks_of(rec, 1.0) if not (100.0 <= b.starttime - T0 < 130.0)]
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        run_blocks(StreamEngine(standin_predict, "m"), blocks)
    assert "clock skew" not in caplog.text and "gap of 30.00 s" in caplog.text


def test_a_subscriber_receives_exactly_the_engines_lifecycle_as_json_lines():
    """The engine's own pick / update / final / retract objects, through the sink and the
    ZeroMQ publisher on 127.0.0.1: the subscriber gets the JSON lines, byte for byte."""
    import zmq
    from test_outputs import WAIT_S, receive, subscriber

    from feq_lab.streaming.publish import PublishConfig, Publisher

    objects = run_blocks(StreamEngine(glitch_predict, "m"), blocks_of(glitch_record(), 1.0))
    assert {o.kind for o in objects} == {"pick", "update", "final", "retract"}
    out = io.StringIO()
    ctx = zmq.Context()
    with Publisher(PublishConfig(enabled=True, port=0)) as pub:
        assert pub.endpoint.startswith("tcp://127.0.0.1:")
        sub = subscriber(ctx, pub.endpoint)
        assert pub.wait_for_subscriber(WAIT_S)
        EventSink(None, stream=out, publisher=pub).emit(objects)
        got = receive(sub)
    sub.close()
    ctx.term()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(objects)
    assert [m[1].decode() for m in got] == lines
    assert [m[0].decode() for m in got] == [o.kind for o in objects]


def test_the_contiguous_three_channel_fast_path_equals_the_per_channel_path():
    """`_append` (E, N, Z at 100 Hz, appended) against the general per-channel path."""
    rec = glitch_record()
    together = blocks_of(rec, 1.0)
    apart = [
        Block(b.station, b.starttime, b.sampling_rate, {k: v})
        for b in together
        for k, v in b.channels.items()
    ]
    fast = run_blocks(StreamEngine(glitch_predict, "m"), together)
    slow = run_blocks(StreamEngine(glitch_predict, "m"), apart)
    assert [o.to_dict() for o in fast] == [o.to_dict() for o in slow]
    assert {o.kind for o in fast} == {"pick", "update", "final", "retract"}


def test_records_off_the_fast_path_give_the_same_final_events_as_on_it():
    """Every 5th 1-s record as Python lists (the per-channel path) and two records swapped
    (out of order, placed in their slot): the final events equal the all-array in-order
    feed's, and the fast path's marks catch up with the newest sample afterwards."""
    rec = make_record(minutes=4.0)
    plain = blocks_of(rec, 1.0)
    mixed = [
        Block(b.station, b.starttime, b.sampling_rate,
              {k: v.tolist() for k, v in b.channels.items()})
        if i % 5 == 0 else b
        for i, b in enumerate(plain)
    ]  # fmt: skip
    mixed[40], mixed[41] = mixed[41], mixed[40]  # one record out of order
    expected = run_blocks(StreamEngine(standin_predict, "m"), plain)
    engine = StreamEngine(standin_predict, "m")
    got = run_blocks(engine, mixed)
    assert finals(expected)
    assert final_content(got) == final_content(expected)
    st = engine.stations["XX.STA"]
    assert st.present_through == st.committed == st.hwm == rec.shape[1]


def test_nan_and_huge_finite_records_leave_the_fast_path_with_the_per_channel_results():
    """The fast path's finiteness test is one float32 sum: a NaN, and finite samples whose
    sum overflows, both take the per-channel path, whose objects the whole feed must equal."""
    rec = glitch_record()
    rec[0, 3000:3010] = np.nan  # a NaN in second 30 (replaced by the block mean)
    rec[1, 5000:5100] = 3e38  # finite, but their float32 sum is inf (second 50)
    together = blocks_of(rec, 1.0)
    apart = [
        Block(b.station, b.starttime, b.sampling_rate, {k: v})
        for b in together
        for k, v in b.channels.items()
    ]
    fast_engine = StreamEngine(glitch_predict, "m")
    fast = run_blocks(fast_engine, together)
    slow = run_blocks(StreamEngine(glitch_predict, "m"), apart)
    assert [o.to_dict() for o in fast] == [o.to_dict() for o in slow]
    assert {o.kind for o in fast} == {"pick", "update", "final", "retract"}
    st = fast_engine.stations["XX.STA"]
    assert st.present_through == st.committed == st.hwm == rec.shape[1]


def test_quiet_stations_skip_provisional_decoding_without_changing_any_object():
    """The quiet-station exit (a per-batch threshold test and the stack's newest hot sample)
    against decoding every right-edge window: a network of event, glitch and noise-only
    stations fed 1-s records together gives the same objects, and most edge windows exit."""
    records = network(2)
    records["XX.GL"] = glitch_record()
    records["XX.NO"] = make_record(seed=5, event=False)

    def run(track: bool) -> tuple[list[dict], StreamEngine]:
        engine = StreamEngine(glitch_predict, "m", {"batch_size": 3})
        engine._track_hot = track  # off: every edge window decoded (the reference)
        objects = [o for second in per_second(records) for o in engine.feed_all(second)]
        return [o.to_dict() for o in objects + engine.flush()], engine

    fast, engine = run(True)
    slow, reference = run(False)
    assert fast == slow
    assert {o["kind"] for o in fast} == {"pick", "update", "final", "retract"}
    assert reference.edge_windows_quiet == 0
    assert engine.edge_windows_run / 2 < engine.edge_windows_quiet < engine.edge_windows_run


def test_a_trigger_only_the_partial_stack_shows_is_still_decoded_provisionally():
    """A glitch in the last 3 s of a regular window ([30, 90) s) that no right-edge window
    shows (every 7 s: they end at 88 s and 95 s): only the regular windows' partial stack
    holds it, so the quiet exit must not skip it (its provisional pick is emitted at 95 s)."""
    rec = make_record()
    rec[2, 8850:8900] = 120.0  # the glitch at 88.5 s

    def run(track: bool) -> list[dict]:
        engine = StreamEngine(glitch_predict, "m", {"early_every_s": 7.0})
        engine._track_hot = track
        return [o.to_dict() for o in run_blocks(engine, blocks_of(rec, 1.0))]

    fast = run(True)
    assert fast == run(False)
    glitch_pick = [o for o in fast if o["kind"] == "pick" and o["p_time"] == iso_utc(T0 + 88.5)]
    assert glitch_pick and glitch_pick[0]["emitted_at"] == iso_utc(T0 + 94.99)


def test_a_right_edge_window_equal_to_a_regular_one_runs_the_model_once():
    """Every 30 s the newest regular window ends at the newest sample: it is that second's
    right-edge window too, so the model sees each distinct window once."""
    seen = []

    def counting(x):
        seen.append(x.shape[0])
        return standin_predict(x)

    engine = StreamEngine(counting, "m")
    objects = run_blocks(engine, blocks_of(make_record(), 1.0))
    assert engine.edge_windows_shared == 9  # the regular windows ending at 60, 90, ..., 300 s
    assert sum(seen) == engine.windows_run + engine.edge_windows_run - 9
    assert {o.kind for o in objects} >= {"pick", "final"}
