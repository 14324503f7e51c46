"""The streaming engine: block-size invariance, gaps, disorder, tail, bad samples, stacking."""

from __future__ import annotations

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
from feq_lab.streaming.engine import (
    Block,
    EngineConfig,
    StreamEngine,
    finals,
    iso_utc,
)


def run(blocks, **cfg):
    """Final events only (early picking's provisional objects have tests of their own)."""
    engine = StreamEngine(standin_predict, "standin", cfg or None)
    return finals(run_blocks(engine, blocks)), engine


def dicts(events):
    return final_content(events)


@pytest.fixture(scope="module")
def reference():
    events, _ = run(blocks_of(make_record(), 60.0))
    return events


def test_reference_event_is_right(reference):
    assert len(reference) == 1
    ev = reference[0]
    assert abs(ev.p_time - (T0 + EVENT_P_S)) <= 0.05
    assert abs(ev.s_time - (T0 + EVENT_S_S)) <= 0.05
    assert ev.detection_start <= ev.p_time < ev.s_time <= ev.detection_end
    d = ev.to_dict()
    assert d["type"] == "event" and d["station"] == "XX.STA" and d["model"] == "standin"
    assert d["p_time"] == iso_utc(ev.p_time) and d["p_time"].endswith("Z")


@pytest.mark.parametrize("block_s", [1.0, 7.0, 60.0, 0.37])
def test_block_sizes_give_identical_events(reference, block_s):
    events, _ = run(blocks_of(make_record(), block_s))
    assert dicts(events) == dicts(reference)


def test_events_are_emitted_once_when_complete_not_at_the_end():
    engine = StreamEngine(standin_predict, "standin")
    emitted_at = []
    for k, block in enumerate(blocks_of(make_record(), 1.0)):
        for ev in finals(engine.feed(block)):
            emitted_at.append(k)
    emitted_at += ["flush"] * len(finals(engine.flush()))
    assert len(emitted_at) == 1
    assert emitted_at[0] != "flush"
    # evidence completes when every window covering the event ran: before the stream ends
    assert EVENT_S_S < emitted_at[0] < 290


def test_out_of_order_block_is_placed_in_its_slot(reference, caplog):
    blocks = blocks_of(make_record(), 60.0)
    blocks[1], blocks[2] = blocks[2], blocks[1]
    with caplog.at_level(logging.INFO, logger="feq_lab.streaming"):
        events, _ = run(blocks)
    assert dicts(events) == dicts(reference)
    assert "out of order" in caplog.text


def test_too_late_block_is_dropped_with_a_log_line(caplog):
    blocks = blocks_of(make_record(), 30.0)
    late = blocks.pop(2)  # 60-90 s, delivered after everything else
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        events, _ = run(blocks + [late], max_delay_s=60.0)
    assert "gap of 30.00 s" in caplog.text
    assert "arrived after that time was processed; dropped" in caplog.text
    real = [e for e in events if abs(e.p_time - (T0 + EVENT_P_S)) <= 0.05]
    assert len(real) == 1 and "gap_filled" not in real[0].flags
    # the stand-in (unlike a model trained with gap augmentation) triggers where data resume
    # after the flat fill: such an event is flagged
    assert all("gap_filled" in e.flags for e in events if e is not real[0])


def test_gap_is_filled_flagged_and_logged(reference, caplog):
    rec = make_record()
    blocks = [b for b in blocks_of(rec, 5.0) if not (100.0 <= b.starttime - T0 < 110.0)]
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        events, _ = run(blocks)
    assert "gap of 10.00 s" in caplog.text
    real = [e for e in events if abs(e.p_time - reference[0].p_time) <= 0.05]
    assert dicts(real) == dicts(reference)  # the gap is far from the event: same event
    assert all("gap_filled" in e.flags for e in events if e is not real[0])
    # a gap inside the event is flagged on it
    blocks = [
        b for b in blocks_of(rec, 1.0) if not (EVENT_S_S + 1 <= b.starttime - T0 < EVENT_S_S + 2)
    ]
    events, _ = run(blocks)
    assert any(
        "gap_filled" in e.flags
        and e.p_time is not None
        and abs(e.p_time - reference[0].p_time) <= 0.05
        for e in events
    )


def test_overlapping_and_resent_blocks_keep_the_first_copy(reference, caplog):
    rec = make_record()
    by_start = {b.starttime - T0: b for b in blocks_of(rec, 30.0)}
    resent = blocks_of(rec[:, 15000:21000], 60.0, t0=T0 + 150.0)[0]  # 150-210 s again
    order = [0, 30, 120, 150, 180, "resent", 60, 90, 210, 240, 270]
    blocks = [resent if k == "resent" else by_start[float(k)] for k in order]
    blocks.append(by_start[60.0])  # a late duplicate of already-processed data
    with caplog.at_level(logging.INFO, logger="feq_lab.streaming"):
        events, _ = run(blocks, max_delay_s=200.0)
    assert "overlap data already received; kept the first copy" in caplog.text
    assert "arrived after that time was processed; dropped" in caplog.text
    assert dicts(events) == dicts(reference)


def test_tail_is_processed():
    rec = make_record(minutes=4.75, event=False)
    rng = np.random.default_rng(5)
    n = rec.shape[1]
    t = np.arange(n) / 100.0
    p, s = t - 275.0, t - 278.0
    rec[2] += np.where(p >= 0, 25.0, 0.0) * rng.normal(0, 1, n)
    rec[:2] += np.where(s >= 0, 40.0, 0.0) * rng.normal(0, 1, (2, n))
    engine = StreamEngine(standin_predict, "standin")
    during = [ev for b in blocks_of(rec, 60.0) for ev in finals(engine.feed(b))]
    assert during == []  # the last regular window ends at 270 s: only the tail sees the event
    tail = finals(engine.flush())
    assert len(tail) == 1
    assert abs(tail[0].p_time - (T0 + 275.0)) <= 0.05
    assert abs(tail[0].s_time - (T0 + 278.0)) <= 0.05
    assert engine.flush() == []  # flushing twice emits nothing twice


def spike_predict(x):
    """Window-independent picker: P (and detection) where |Z| exceeds 8 normalised units."""
    hit = (np.abs(x[:, 2]) > 8.0).astype(np.float32)
    return hit, hit, np.zeros_like(hit)


def test_stream_shorter_than_a_window_is_processed():
    rng = np.random.default_rng(2)
    rec = rng.normal(0, 1, (3, 4500)).astype(np.float32)  # 45 s
    rec[2, 3000:3060] += 60.0  # a 0.6-s spike at 30 s
    engine = StreamEngine(spike_predict, "spike")
    events = run_blocks(engine, blocks_of(rec, 10.0))
    assert len(events) == 1
    assert abs(events[0].p_time - (T0 + 30.0)) <= 0.02
    assert engine.windows_run == 1


def test_missing_component_and_nan_samples_are_survived(caplog):
    rec = make_record()
    blocks = []
    for b in blocks_of(rec, 60.0):
        ch = {k: v.copy() for k, v in b.channels.items() if k != "HHN"}
        if b.starttime - T0 == 60.0:
            ch["HHE"][100:130] = np.nan
        blocks.append(Block(b.station, b.starttime, b.sampling_rate, ch))
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        events, _ = run(blocks)
    assert "component N missing" in caplog.text
    assert "30 NaN/inf samples" in caplog.text
    assert len(events) == 1 and "missing_component" in events[0].flags
    assert abs(events[0].p_time - (T0 + EVENT_P_S)) <= 0.05


def test_other_sampling_rate_is_resampled(caplog):
    from scipy.signal import resample_poly

    rec = make_record()
    rec200 = resample_poly(rec.astype(np.float64), 2, 1, axis=1).astype(np.float32)
    blocks = blocks_of(rec200, 7.0, rate=200.0)
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        events, _ = run(blocks)
    assert "resampled to 100 Hz" in caplog.text
    assert len(events) == 1 and "resampled" in events[0].flags
    assert abs(events[0].p_time - (T0 + EVENT_P_S)) <= 0.1
    # the causal resampler is block-length independent too
    again, _ = run(blocks_of(rec200, 60.0, rate=200.0))
    assert dicts(again) == dicts(events)


def test_per_channel_blocks_and_two_stations():
    rec = make_record()
    blocks = []
    for station, shift in (("XX.AAA", 0.0), ("XX.BBB", 3.0)):
        for b in blocks_of(rec, 1.3, station=station, t0=T0 + shift):
            blocks += [Block(station, b.starttime, 100.0, {k: v}) for k, v in b.channels.items()]
    blocks.sort(key=lambda b: b.starttime)
    events, engine = run(blocks)
    by_station = {e.station: e for e in events}
    assert sorted(by_station) == ["XX.AAA", "XX.BBB"] and len(events) == 2
    assert abs(by_station["XX.BBB"].p_time - by_station["XX.AAA"].p_time - 3.0) <= 0.011


def edge_artefact_predict(x):
    """The stand-in picker plus a spurious detection/P/S spike at both edges of every window."""
    det, p, s = (np.array(o, copy=True) for o in standin_predict(x))
    for out in (det, p, s):
        out[:, :100] = 1.0
        out[:, -100:] = 1.0
    return det, p, s


@pytest.mark.parametrize("block_s", [1.0, 7.0, 60.0])
def test_blinding_drops_window_edge_artefacts_but_keeps_the_event(reference, block_s):
    rec = make_record()
    end = T0 + rec.shape[1] / 100.0

    def interior(events):  # away from the stream's own edges, where no neighbour window exists
        return final_content(
            e for e in events if T0 + 2.0 < e.detection_start and e.detection_end < end - 2.0
        )

    plain = finals(
        run_blocks(StreamEngine(edge_artefact_predict, "standin"), blocks_of(rec, block_s))
    )
    blind = finals(
        run_blocks(
            StreamEngine(edge_artefact_predict, "standin", {"blinding": 500}),
            blocks_of(rec, block_s),
        )
    )
    assert len(interior(plain)) > len(interior(reference))  # the artefacts make false events
    assert interior(blind) == interior(reference)
    # the stream's last edge remains; its first edge (a plateau from the record's first sample)
    # has no P/S local maximum, so EQT's rules (the default protocol) make it no detection
    assert len(blind) == len(interior(reference)) + 1
    lab = finals(
        run_blocks(
            StreamEngine(edge_artefact_predict, "standin", {"blinding": 500, "protocol": "lab"}),
            blocks_of(rec, block_s),
        )
    )
    assert len(lab) == len(interior(reference)) + 2


def detection_only_predict(x):
    """The stand-in's detection, but P and S never cross any threshold."""
    det, p, s = standin_predict(x)
    return det, np.zeros_like(p), np.zeros_like(s)


def test_require_pick_drops_detections_without_p_or_s(reference, caplog):
    rec = make_record()
    # EQT's rules (the default): a trigger without a P or S candidate is no detection at all
    assert run_blocks(StreamEngine(detection_only_predict, "standin"), blocks_of(rec, 60.0)) == []
    lab = {"protocol": "lab"}
    plain = run_blocks(StreamEngine(detection_only_predict, "standin", lab), blocks_of(rec, 60.0))
    assert len(plain) == 1 and plain[0].p_time is None and plain[0].s_time is None
    with caplog.at_level("INFO", logger="feq_lab.streaming"):
        strict = run_blocks(
            StreamEngine(detection_only_predict, "standin", {**lab, "require_pick": True}),
            blocks_of(rec, 60.0),
        )
    assert strict == [] and "without a P or S pick" in caplog.text
    picked = run_blocks(
        StreamEngine(standin_predict, "standin", {"require_pick": True}), blocks_of(rec, 60.0)
    )
    assert dicts(picked) == dicts(reference)  # events with picks are untouched


def test_mean_combination_and_stride(reference):
    events, _ = run(blocks_of(make_record(), 60.0), combine="mean", stride=1500)
    assert len(events) == 1 and abs(events[0].p_time - reference[0].p_time) <= 0.05


def test_mc_spread_is_reported():
    def predict_mc(x):
        det, p, s = standin_predict(x)
        return det, p, s, det * 0.1, p * 0.2, s * 0.3

    engine = StreamEngine(predict_mc, "mc", mc=True)
    events = run_blocks(engine, blocks_of(make_record(), 60.0))
    assert len(events) == 1
    assert events[0].spread["p"] == pytest.approx(0.2, abs=1e-3)
    assert events[0].to_dict()["spread"]["s"] == pytest.approx(0.3, abs=1e-3)


def test_memory_is_bounded_over_a_long_stream():
    rng = np.random.default_rng(1)
    engine = StreamEngine(standin_predict, "standin", {"history_s": 60.0})
    for k in range(40):  # 40 minutes
        seg = rng.normal(0, 1, (3, 6000)).astype(np.float32)
        engine.feed(Block("XX.STA", T0 + 60.0 * k, 100.0, dict(zip(("E", "N", "Z"), seg))))
    st = engine.stations["XX.STA"]
    assert st.raw.data.shape[1] <= 65536 * 2
    assert st.raw.base > 30 * 6000


@pytest.mark.parametrize(
    "key,value",
    [
        ("stride", 0),
        ("stride", 7000),
        ("combine", "median"),
        ("batch_size", 0),
        ("max_delay_s", -1.0),
        ("blinding", -1),
        ("blinding", 1501),  # more than (6000 - 3000) / 2: some samples would be covered by none
        ("protocol", "seisbench"),
        ("merge_gap_s", 1.0),  # the engine's own rules are gone: it decodes like evaluation
        ("bogus", 1),
    ],
)
def test_bad_engine_config_names_the_key(key, value):
    with pytest.raises(ConfigError, match=f"engine.{key}"):
        EngineConfig.from_mapping({key: value})


def test_bad_thresholds_name_the_key():
    with pytest.raises(ConfigError, match="engine.thresholds.p"):
        EngineConfig.from_mapping({"thresholds": {"detection": 0.5, "p": 2.0, "s": 0.3}})


def ten_minute_record(seed: int = 3) -> np.ndarray:
    """10 minutes of noise with five events of different S - P (and strengths)."""
    rng = np.random.default_rng(seed)
    n = 60_000
    t = np.arange(n) / 100.0
    x = rng.normal(0.0, 1.0, (3, n)) + np.array([[500.0], [-300.0], [120.0]])
    for p_s, sp, amp in ((70.0, 4.0, 25.0), (200.0, 9.5, 12.0), (333.3, 2.2, 40.0),
                         (470.0, 6.0, 8.0), (556.0, 3.0, 30.0)):
        p, s = t - p_s, t - p_s - sp
        x[2] += np.where(p >= 0, amp * np.exp(-np.clip(p, 0, None) / 3.0), 0.0) * rng.normal(
            0, 1, n)
        hs = np.where(s >= 0, 1.6 * amp * np.exp(-np.clip(s, 0, None) / 4.0), 0.0)
        x[:2] += hs * rng.normal(0, 1, (2, n))
    return x.astype(np.float32)


def offline_probabilities(rec: np.ndarray, predict, stride: int = 3000) -> np.ndarray:
    """Offline evaluation of a whole record: every 60-s window (start a multiple of `stride`),
    normalised as in training, predicted, stacked by the maximum — no streaming code."""
    from feq_lab.data.labels import normalize

    n = rec.shape[1]
    out = np.zeros((3, n), np.float32)
    for a in range(0, n - 6000 + 1, stride):
        det, p, s = predict(normalize(rec[None, :, a : a + 6000]))
        for row, o in enumerate((det, p, s)):
            np.maximum(out[row, a : a + 6000], np.asarray(o)[0], out=out[row, a : a + 6000])
    return out


def envelope_predict(x):
    """A rougher deterministic picker: STA/LTA ratios as probabilities, so the traces have many
    local maxima, several S peaks per trigger, P peaks before the trigger and short blips."""
    from conftest import _trailing_mean

    x = np.asarray(x, np.float64)
    ez, eh = x[:, 2] ** 2, x[:, 0] ** 2 + x[:, 1] ** 2
    rz = _trailing_mean(ez, 30) / (_trailing_mean(ez, 800) + 1e-3)
    rh = _trailing_mean(eh, 30) / (_trailing_mean(eh, 800) + 1e-3)
    det = np.clip((_trailing_mean(rz + rh, 100) - 2.0) / 6.0, 0, 1)
    p = np.clip((rz - 2.5) / 10.0, 0, 1)
    s = np.clip((rh - 2.5) / 10.0, 0, 1)
    return det.astype(np.float32), p.astype(np.float32), s.astype(np.float32)


@pytest.mark.parametrize("predict", [standin_predict, envelope_predict])
@pytest.mark.parametrize("protocol", ["eqt", "lab"])
def test_engine_and_offline_decoding_agree_on_a_10_minute_record(protocol, predict):
    from feq_lab.evaluation.decode import DecodeSettings, decode_record

    rec = ten_minute_record()
    th = {"detection": 0.5, "p": 0.1, "s": 0.1}
    prob = offline_probabilities(rec, predict)

    def t(i):
        return None if i is None else T0 + i / 100.0

    offline = [
        (t(d.on), t(d.off), t(d.p_sample), t(d.s_sample), d.det_prob, d.p_prob, d.s_prob)
        for d in decode_record(prob[0], prob[1], prob[2], th, DecodeSettings(protocol))
    ]
    assert len(offline) >= 5  # the record's five events (the rough picker splits some)
    for block_s in (0.37, 7.0, 60.0):
        engine = StreamEngine(predict, "standin", {"thresholds": th, "protocol": protocol})
        events = finals(run_blocks(engine, blocks_of(rec, block_s)))
        streamed = [(e.detection_start, e.detection_end, e.p_time, e.s_time, e.det_prob,
                     e.p_prob, e.s_prob) for e in events]
        assert streamed == pytest.approx(offline, abs=1e-6), f"block {block_s} s"
        if protocol == "eqt":  # S is never before P under EQT's rules
            assert all(e.p_time < e.s_time for e in events if e.p_time and e.s_time)
