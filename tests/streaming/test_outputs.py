"""Outputs where observatories read them: SC3ML, the ZeroMQ publisher (real sockets on
127.0.0.1, bounded waits), the event lifecycle in the files, provisional picks in the plot."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import obspy
import pytest
import zmq
from conftest import EVENT_P_S, EVENT_S_S, T0, make_record, standin_predict
from lxml import etree
from obspy.io.seiscomp.core import SCHEMA_VERSION
from obspy.io.seiscomp.core import validate as validate_scml
from stream_helpers import run_blocks

from feq_lab.errors import ConfigError
from feq_lab.paths import PROJECT_ROOT
from feq_lab.streaming.engine import StreamEngine, iso_utc
from feq_lab.streaming.outputs import FILE_NAMES, EventSink, OutputConfig, write_sc3ml
from feq_lab.streaming.publish import PublishConfig, Publisher
from feq_lab.streaming.sources import record_blocks

WAIT_S = 20.0  # upper bound on any wait for a socket (never reached when things work)


def engine_events(model: str = "feq3:feq-picker@champion"):
    """The engine's real events for the synthetic record (one event, P and S picked)."""
    return run_blocks(
        StreamEngine(standin_predict, model),
        record_blocks("XX.STA.00", T0, make_record(), block_s=60.0),
    )


def lifecycle(station: str = "XX.STA.00") -> list[dict]:
    """A provisional event later final (its P moved once), and one retracted: what the engine's
    lifecycle will emit (issue #16 deliverable 2)."""
    common = {"type": "event", "station": station, "model": "m", "flags": []}
    a, b = iso_utc(T0 + 100.0), iso_utc(T0 + 150.0)
    return [
        {**common, "kind": "pick", "event_id": "e1", "emitted_at": iso_utc(T0 + 101),
         "phase": "P", "time": iso_utc(T0 + 100.2), "prob": 0.3},
        {**common, "kind": "pick", "event_id": "e2", "emitted_at": iso_utc(T0 + 151),
         "phase": "P", "time": iso_utc(T0 + 150.7), "prob": 0.2},
        {**common, "kind": "update", "event_id": "e1", "emitted_at": iso_utc(T0 + 103),
         "phase": "P", "time": iso_utc(T0 + 100.1), "prob": 0.6},
        {**common, "kind": "retract", "event_id": "e2", "emitted_at": iso_utc(T0 + 160)},
        {**common, "kind": "final", "event_id": "e1", "emitted_at": iso_utc(T0 + 170),
         "detection_start": a, "detection_end": iso_utc(T0 + 110.0), "det_prob": 0.9,
         "p_time": iso_utc(T0 + 100.1), "p_prob": 0.6,
         "s_time": iso_utc(T0 + 104.0), "s_prob": 0.5},
        {**common, "kind": "pick", "event_id": "e3", "emitted_at": iso_utc(T0 + 171),
         "phase": "S", "time": b, "prob": 0.4},
    ]  # fmt: skip


def scml_picks(path: Path) -> list[dict]:
    root = etree.parse(str(path)).getroot()
    return [
        {
            "id": p.get("publicID"),
            "phase": p.findtext("{*}phaseHint"),
            "time": obspy.UTCDateTime(p.findtext("{*}time/{*}value")).timestamp,
            "station": p.find("{*}waveformID").get("stationCode"),
        }
        for p in root.iter("{*}pick")
    ]


def test_sc3ml_validates_and_holds_the_picks(tmp_path):
    events = engine_events()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated format name, no invalid resource id
        sink = EventSink(tmp_path, stream=io.StringIO())
        assert validate_scml(str(tmp_path / FILE_NAMES["sc3ml"]))  # empty but valid from the start
        sink.emit(events)
    path = tmp_path / FILE_NAMES["sc3ml"]
    assert validate_scml(str(path), verbose=True)  # obspy's bundled SeisComP schema (0.12)
    assert 'seiscomp3-schema/0.12"' in path.read_text()
    # obspy reads it back; its SeisComP->QuakeML conversion keeps only picks that an origin
    # references, and a single-station detection has no origin: so the picks are read as XML
    assert isinstance(obspy.read_events(str(path), format="SCML"), obspy.Catalog)
    picks = {p["phase"]: p for p in scml_picks(path)}
    assert set(picks) == {"P", "S"} and picks["P"]["station"] == "STA"
    assert abs(picks["P"]["time"] - (T0 + EVENT_P_S)) <= 0.05
    assert abs(picks["S"]["time"] - (T0 + EVENT_S_S)) <= 0.05
    assert picks["P"]["time"] == pytest.approx(obspy.UTCDateTime(events[0].p_time).timestamp)
    # ids are stable across rewrites (SeisComP merges by publicID), and match the QuakeML's
    sink.emit([])
    write_sc3ml(tmp_path / "again.xml", [events[0].to_dict()])
    assert [p["id"] for p in scml_picks(tmp_path / "again.xml")] == [
        p["id"] for p in scml_picks(path)
    ]
    quakeml_ids = {
        str(p.resource_id) for p in obspy.read_events(str(tmp_path / "picks.xml"))[0].picks
    }
    assert quakeml_ids == {p["id"] for p in scml_picks(path)}


@pytest.mark.parametrize("version", SCHEMA_VERSION)
def test_every_sc3ml_version_obspy_writes_validates(tmp_path, version):
    records = [lifecycle()[4]]
    path = write_sc3ml(tmp_path / "p.xml", records, OutputConfig.from_mapping(
        {"sc3ml_version": version}).sc3ml_version)  # fmt: skip
    assert validate_scml(str(path), version=version)
    assert [p["phase"] for p in scml_picks(path)] == ["P", "S"]


def test_a_retracted_pick_never_reaches_the_files(tmp_path):
    out = io.StringIO()
    sink = EventSink(tmp_path, stream=out)
    objects = lifecycle()
    sink.emit(objects[:4])  # provisional only so far: nothing final, the files stay empty
    assert len(obspy.read_events(str(tmp_path / "picks.xml"))) == 0
    sink.emit(objects[4:])
    sink.emit([objects[4]])  # a repeated final of e1 replaces it, never a second event
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines == [*objects, objects[4]]  # every object to the JSON lines, unchanged
    rows = (tmp_path / "picks.csv").read_text().splitlines()
    assert rows[0].startswith("station,phase,time") and len(rows) == 3
    assert all(",e1," in r for r in rows[1:])  # e2 (retracted), e3 (provisional): absent
    cat = obspy.read_events(str(tmp_path / "picks.xml"))
    assert len(cat) == 1 and sorted(p.phase_hint for p in cat[0].picks) == ["P", "S"]
    picks = scml_picks(tmp_path / FILE_NAMES["sc3ml"])
    assert len(picks) == 2 and all("/e1/" in p["id"] for p in picks)
    assert T0 + 150.7 not in [p["time"] for p in picks]
    assert [e["event_id"] for e in sink.events] == ["e1"]
    # the files kept up to date piecewise equal one written from scratch
    fresh = write_sc3ml(tmp_path / "fresh.xml", sink.lifecycle.final_records())
    assert fresh.read_text() == (tmp_path / FILE_NAMES["sc3ml"]).read_text()
    assert list(sink.lifecycle.open) == ["e3"]
    # a retract of a final event removes it from the files too
    sink.emit([{"kind": "retract", "event_id": "e1"}])
    assert len(obspy.read_events(str(tmp_path / "picks.xml"))) == 0
    assert scml_picks(tmp_path / FILE_NAMES["sc3ml"]) == []


def subscriber(ctx: zmq.Context, endpoint: str, kinds: tuple[bytes, ...] = (b"",)) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for k in kinds:
        sock.setsockopt(zmq.SUBSCRIBE, k)
    sock.connect(endpoint)
    return sock


def receive(sock: zmq.Socket, idle_ms: int = 300) -> list[list[bytes]]:
    """Everything that arrives until `idle_ms` pass without a message (bounded by WAIT_S)."""
    got: list[list[bytes]] = []
    while sock.poll(idle_ms if got else int(WAIT_S * 1000)):
        got.append(sock.recv_multipart())
    return got


def test_a_subscriber_receives_exactly_the_json_lines(tmp_path):
    out = io.StringIO()
    ctx = zmq.Context()
    with Publisher(PublishConfig(enabled=True, port=0)) as pub:
        sub = subscriber(ctx, pub.endpoint)
        assert pub.wait_for_subscriber(WAIT_S)
        sink = EventSink(tmp_path, stream=out, publisher=pub)
        sink.emit(lifecycle())
        sink.emit(engine_events())
        got = receive(sub)
    sub.close()
    ctx.term()
    lines = out.getvalue().splitlines()
    assert len(lines) == 7
    assert [m[1].decode() for m in got] == lines  # same objects, same order, byte for byte
    assert [m[0].decode() for m in got] == [json.loads(x).get("kind", "final") for x in lines]
    assert [int(m[2]) for m in got] == list(range(7))


def test_the_subscriber_example_prints_the_final_events(tmp_path):
    """`python -m feq_lab.streaming.subscribe --kind final` as docs/outputs.md shows it."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with Publisher(PublishConfig(enabled=True, port=0)) as pub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "feq_lab.streaming.subscribe", "--endpoint", pub.endpoint,
             "--kind", "final", "--count", "2", "--timeout", str(WAIT_S)],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert pub.wait_for_subscriber(WAIT_S)
            out = io.StringIO()
            EventSink(None, stream=out, publisher=pub).emit(lifecycle() + engine_events())
            printed, _ = proc.communicate(timeout=WAIT_S + 10)
        finally:
            proc.kill()
    finals = [
        x for x in out.getvalue().splitlines() if json.loads(x).get("kind", "final") == "final"
    ]
    assert proc.returncode == 0 and printed.splitlines() == finals and len(finals) == 2


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


def test_the_publisher_binds_to_loopback_by_default():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from feq_lab.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("stream"), resolve=False)
    publish = PublishConfig.from_mapping(OutputConfig.from_mapping(cfg["outputs"]).publish)
    assert publish.bind == "127.0.0.1" and PublishConfig().bind == "127.0.0.1"
    with Publisher(PublishConfig.from_mapping({"enabled": True, "port": 0})) as pub:
        host, port = pub.endpoint.removeprefix("tcp://").rsplit(":", 1)
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=WAIT_S):
            pass  # reachable on loopback
        other = outward_address()
        if other is not None:  # not reachable on the machine's network interface
            with pytest.raises(OSError):
                socket.create_connection((other, int(port)), timeout=2).close()
        # the same port twice is a clear error naming the key
        with pytest.raises(ConfigError, match="outputs.publish.port"):
            Publisher(PublishConfig(enabled=True, port=int(port)))
    with Publisher(PublishConfig(enabled=True, port=int(port))) as again:  # close freed it
        assert again.endpoint.endswith(f":{port}")


def test_an_absent_or_stalled_subscriber_does_not_block_emit(tmp_path):
    """No subscriber: every message is discarded at once. A subscriber that never reads: its
    queue fills (queue=10 + the TCP buffers), newer messages are dropped for it, and emit goes
    on. Bounded by a thread join, not a timing."""
    n = 5_000  # 40 MB: far more than the socket buffers between the two ends can hold
    objects = [{"kind": "pick", "event_id": f"e{i}", "pad": "x" * 8000} for i in range(n)]
    lines = io.StringIO()

    def flood(pub: Publisher) -> None:
        EventSink(None, stream=lines, publisher=pub).emit(objects)

    ctx = zmq.Context()
    with Publisher(PublishConfig(enabled=True, port=0, queue=10)) as pub:
        t = threading.Thread(target=flood, args=(pub,), daemon=True)
        t.start()
        t.join(WAIT_S * 3)
        assert not t.is_alive() and pub.seq == n  # nobody listening: nothing waited

        stalled = subscriber(ctx, pub.endpoint)
        stalled.setsockopt(zmq.RCVHWM, 10)
        assert pub.wait_for_subscriber(WAIT_S)
        t = threading.Thread(target=flood, args=(pub,), daemon=True)
        t.start()
        t.join(WAIT_S * 3)
        assert not t.is_alive() and pub.seq == 2 * n
        seqs = [int(m[2]) for m in receive(stalled)]
        # Drops may all fall after the last message it got; the next one it reads shows the gap.
        EventSink(None, stream=lines, publisher=pub).emit(objects[:1])
        late = [int(m[2]) for m in receive(stalled)]
    stalled.close()
    ctx.term()
    assert len(lines.getvalue().splitlines()) == 2 * n + 1  # every JSON line written meanwhile
    assert 0 < len(seqs) < n  # it got some, the rest were dropped for it
    assert late == [2 * n]  # once drained, it gets messages again
    got = seqs + late
    assert got == sorted(set(got)) and got[0] >= n  # in order, no repeats, none from before
    assert got[-1] - got[0] + 1 > len(got)  # the seq numbers show the subscriber its drops


def test_output_config_errors_name_the_key():
    assert OutputConfig.from_mapping({"sc3ml_version": 0.1}).sc3ml_version == "0.10"  # YAML float
    with pytest.raises(ConfigError, match="outputs.sc3ml_version"):
        OutputConfig.from_mapping({"sc3ml_version": "0.99"})
    with pytest.raises(ConfigError, match="outputs.files"):
        OutputConfig.from_mapping({"files": ["pdf"]})
    with pytest.raises(ConfigError, match="outputs.publish.bind"):
        PublishConfig.from_mapping({"bind": "tcp://0.0.0.0:1"})
    with pytest.raises(ConfigError, match="outputs.publish.port"):
        PublishConfig.from_mapping({"port": 70000})
    with pytest.raises(ConfigError, match="outputs.publish.nope"):
        PublishConfig.from_mapping({"nope": 1})


def test_the_plot_shows_provisional_picks_dotted(tmp_path):
    from feq_lab.streaming.display import LiveDisplay, pick_marks

    engine = StreamEngine(standin_predict, "m")
    run_blocks(engine, record_blocks("XX.STA.00", T0, make_record(), block_s=60.0))
    final = engine.history_view("XX.STA.00")["events"]
    assert {m[2][0] for m in pick_marks(final)} == {"--"}  # today's events: final, dashed
    objects = lifecycle()
    objects.append({"kind": "pick", "event_id": "e3", "phase": "P", "time": iso_utc(T0 + 148.0)})
    marks = pick_marks(objects)
    styles = {(round(t - T0, 2), c, ls) for t, c, (ls, _) in marks}
    # e1 final (P moved to 100.1, S), e2 retracted: not drawn, e3's S then P provisional: dotted
    assert styles == {
        (100.1, "tab:blue", "--"),
        (104.0, "tab:red", "--"),
        (150.0, "tab:red", ":"),
        (148.0, "tab:blue", ":"),
    }
    display = LiveDisplay("png", tmp_path, n_blocks=4)
    display.update(engine, "XX.STA.00", events=[*final, *objects])
    fig = display.figures["XX.STA.00"]
    dotted = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    dashed = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert dotted and len(dashed) > len(dotted)
    assert (tmp_path / "monitor_XX.STA.00.png").stat().st_size > 10_000


def test_the_monitor_publishes_what_it_prints(tmp_path, capsys):
    """`python -m feq_lab.stream ... outputs.publish.enabled=true` (as a function): the monitor's
    JSON lines reach a subscriber that connected before it started; SC3ML beside the others."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from feq_lab.models import build_model, save_checkpoint
    from feq_lab.paths import CONF_DIR
    from feq_lab.stream import run

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("feq3"), tmp_path / "feq3.pt")
    trace = obspy.Stream(
        [
            obspy.Trace(x, header={"network": "XX", "station": "STA", "channel": f"HH{c}",
                                   "sampling_rate": 100.0, "starttime": obspy.UTCDateTime(T0)})
            for x, c in zip(make_record(minutes=2.0), "ENZ")
        ]
    )  # fmt: skip
    trace.write(str(tmp_path / "rec.mseed"), format="MSEED", encoding="FLOAT32")
    with socket.socket() as s:  # a free port for the monitor to bind
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [
        "source=files", f"source.paths=[{tmp_path / 'rec.mseed'}]", "model=feq3",
        f"checkpoint={ckpt}", "backend=torch", "display=none", "tracking.uri=sqlite:///u.db",
        "engine.thresholds.detection=0.0", f"out_dir={tmp_path}",
        "outputs.publish.enabled=true", f"outputs.publish.port={port}",
        f"outputs.publish.wait_s={WAIT_S}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("stream", overrides=overrides), resolve=True)
    ctx = zmq.Context()
    sub = subscriber(ctx, f"tcp://127.0.0.1:{port}")  # connects once the monitor binds
    capsys.readouterr()
    result = run(cfg)
    lines = capsys.readouterr().out.splitlines()
    got = receive(sub)
    sub.close()
    ctx.term()
    assert result["events"] == len(lines) > 0
    assert [m[1].decode() for m in got] == lines
    assert len(scml_picks(tmp_path / FILE_NAMES["sc3ml"])) >= 1
    assert validate_scml(str(tmp_path / FILE_NAMES["sc3ml"]))
