"""Sources and outputs: files, a SeedLink server on 127.0.0.1, the replay scenario, picks files."""

from __future__ import annotations

import io
import json
import logging
import warnings

import numpy as np
import obspy
import pytest
from conftest import EVENT_P_S, EVENT_S_S, T0, final_content, make_record, standin_predict
from seedlink_server import SeedLinkTestServer, stream_to_records
from stream_helpers import run_blocks

from feq_lab.errors import ConfigError, DataError
from feq_lab.streaming.engine import StreamEngine
from feq_lab.streaming.outputs import EventSink
from feq_lab.streaming.sources import (
    build_scenario,
    file_blocks,
    parse_stream,
    record_blocks,
    seedlink_blocks,
)


def as_stream(record: np.ndarray, t0: float = T0, rate: float = 100.0, station: str = "STA"):
    return obspy.Stream(
        [
            obspy.Trace(
                record[i].astype(np.float32),
                header={
                    "network": "XX",
                    "station": station,
                    "channel": f"HH{c}",
                    "sampling_rate": rate,
                    "starttime": obspy.UTCDateTime(t0),
                },
            )
            for i, c in enumerate("ENZ")
        ]
    )


def events_of(blocks):
    """The final events (early picking's provisional objects depend on the records' sizes)."""
    return final_content(run_blocks(StreamEngine(standin_predict, "standin"), blocks))


@pytest.fixture(scope="module")
def record_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "record.mseed"
    as_stream(make_record()).write(str(path), format="MSEED", encoding="FLOAT32", reclen=512)
    return path


def test_file_source_finds_the_event(record_file):
    events = events_of(file_blocks([record_file], block_s=60.0))
    assert len(events) == 1
    assert events[0]["station"] == "XX.STA"
    assert events[0]["p_time"] == "2026-01-01T00:03:20.000000Z"
    assert events[0]["s_time"] == "2026-01-01T00:03:25.000000Z"


def test_seedlink_server_gives_the_same_events_as_the_files(record_file, caplog):
    records = stream_to_records(obspy.read(str(record_file)))
    assert all(len(r) == 512 for r in records)
    with (
        caplog.at_level(logging.INFO, logger="feq_lab.streaming"),
        SeedLinkTestServer(records, drop_after=len(records) // 2) as server,
    ):
        blocks = list(
            seedlink_blocks(
                server.address, ["XX.STA.HH?"], idle_timeout_s=1.5, reconnect_delay_s=0.2
            )
        )
    assert "reconnecting" in caplog.text  # the server dropped the first connection mid-stream
    assert server.connections == 2
    assert any(c.startswith("DATA ") for c in server.commands)  # resumed by sequence number
    assert sum(len(v) for b in blocks for v in b.channels.values()) == 3 * 30000
    assert events_of(blocks) == events_of(file_blocks([record_file], block_s=60.0))


def test_seedlink_unreachable_server_is_a_clear_error():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(DataError, match="unreachable"):
        list(
            seedlink_blocks(
                f"127.0.0.1:{port}",
                ["XX.STA.HH?"],
                idle_timeout_s=1.0,
                reconnect_delay_s=0.1,
                max_reconnects=1,
            )
        )


def test_files_with_gap_other_rate_and_sac(tmp_path, caplog):
    from scipy.signal import resample_poly

    rec = make_record()
    a, b = as_stream(rec[:, :9000]), as_stream(rec[:, 9500:], t0=T0 + 95.0)
    (a + b).write(str(tmp_path / "gappy.mseed"), format="MSEED", encoding="FLOAT32")
    rec200 = resample_poly(rec.astype(np.float64), 2, 1, axis=1)
    for tr in as_stream(rec200, rate=200.0, station="FAST"):
        tr.write(str(tmp_path / f"fast.{tr.stats.channel}.sac"), format="SAC")
    paths = [tmp_path / "gappy.mseed"] + sorted(tmp_path.glob("fast.*.sac"))
    with caplog.at_level(logging.WARNING, logger="feq_lab.streaming"):
        events = events_of(file_blocks(paths, block_s=60.0))
    assert "gap of 5.00 s" in caplog.text
    assert "resampled to 100 Hz" in caplog.text
    by_station = {e["station"]: e for e in events}
    assert set(by_station) >= {"XX.STA", "XX.FAST"}
    for ev in by_station.values():
        p = obspy.UTCDateTime(ev["p_time"]).timestamp
        assert abs(p - (T0 + EVENT_P_S)) <= 0.1


def test_bad_file_and_bad_stream_names():
    with pytest.raises(DataError, match="no such file"):
        list(file_blocks(["/nonexistent/x.mseed"]))
    with pytest.raises(ConfigError, match="source.paths"):
        list(file_blocks([]))
    assert parse_stream("IU.ANMO.BH?") == ("IU", "ANMO", "BH?")
    assert parse_stream("GE.APE.00.BH?") == ("GE", "APE", "00BH?")
    with pytest.raises(ConfigError, match="source.streams"):
        parse_stream("ANMO")


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "garbage.mseed"
    bad.write_bytes(b"not seismic data at all" * 10)
    with pytest.raises(DataError, match="garbage.mseed"):
        list(file_blocks([bad]))


def test_event_sink_writes_json_lines_csv_and_quakeml(tmp_path):
    out = io.StringIO()
    sink = EventSink(tmp_path, stream=out)
    assert (tmp_path / "picks.csv").exists() and (tmp_path / "picks.xml").exists()
    events = run_blocks(
        StreamEngine(standin_predict, "standin"),
        record_blocks("XX.STA", T0, make_record(), block_s=60.0),
    )
    sink.emit(events)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 1 and lines[0]["type"] == "event"
    for key in (
        "station",
        "detection_start",
        "detection_end",
        "p_time",
        "s_time",
        "p_prob",
        "s_prob",
        "model",
    ):
        assert key in lines[0]
    csv_rows = (tmp_path / "picks.csv").read_text().splitlines()
    assert csv_rows[0].startswith("station,phase,time") and len(csv_rows) == 3
    cat = obspy.read_events(str(tmp_path / "picks.xml"))
    assert len(cat) == 1
    picks = {p.phase_hint: p for p in cat[0].picks}
    assert abs(picks["P"].time.timestamp - (T0 + EVENT_P_S)) <= 0.05
    assert abs(picks["S"].time.timestamp - (T0 + EVENT_S_S)) <= 0.05
    assert picks["P"].waveform_id.station_code == "STA"


def test_quakeml_is_valid_for_a_registry_model_name(tmp_path):
    """A champion's label ('feq3:feq-picker@champion') must not make the QuakeML invalid."""
    from obspy.io.quakeml.core import _validate

    events = run_blocks(
        StreamEngine(standin_predict, "feq3:feq-picker@champion"),
        record_blocks("XX.STA", T0, make_record(), block_s=60.0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # obspy warns when it writes an invalid resource URI
        sink = EventSink(tmp_path, stream=io.StringIO())
        sink.emit(events)
    assert _validate(str(tmp_path / "picks.xml"))
    pick = obspy.read_events(str(tmp_path / "picks.xml"))[0].picks[0]
    assert "feq3:feq-picker@champion" in pick.comments[0].text


def test_replay_scenario_from_a_prepared_subset(tiny_subset, tmp_path):
    sc = build_scenario(tiny_subset, seed=4)
    assert sc.data.shape == (3, 4 * 6000)
    assert sc.noise_intervals == [(sc.starttime, sc.starttime + 180.0)]
    assert sc.starttime + 180.0 < sc.p_time < sc.s_time < sc.starttime + 240.0
    assert np.isfinite(sc.data).all()
    truth = json.loads(sc.write_truth(tmp_path / "scenario.json").read_text())
    assert truth["p_time"].endswith("Z") and truth["noise_intervals"][0][1] is not None
    blocks = list(record_blocks(sc.station, sc.starttime, sc.data, 60.0))
    assert len(blocks) == 4 and all(len(b.channels) == 3 for b in blocks)
    again = build_scenario(tiny_subset, seed=4)
    assert again.earthquake_trace == sc.earthquake_trace and np.array_equal(again.data, sc.data)
    assert (
        build_scenario(tiny_subset, seed=5).earthquake_trace != sc.earthquake_trace
        or build_scenario(tiny_subset, seed=5).noise_traces != sc.noise_traces
    )
