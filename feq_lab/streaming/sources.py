"""Where blocks come from: a replayed scenario, obspy-readable files, or a live SeedLink server.

Every source is an iterator of `engine.Block`; the end of the iterator is the end of the stream
(the monitor then flushes the engine so the tail is processed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from feq_lab.errors import ConfigError, DataError
from feq_lab.paths import atomic_write_text
from feq_lab.streaming.engine import SAMPLING_RATE, Block, iso_utc

log = logging.getLogger("feq_lab.streaming")

DEFAULT_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, when a trace has no usable start time


# ---------------------------------------------------------------------- replay
@dataclass
class Scenario:
    """The study's test: noise minutes joined into one record, then an earthquake trace."""

    station: str
    starttime: float
    data: np.ndarray = field(repr=False)  # (3, n) E, N, Z
    p_time: float
    s_time: float
    noise_intervals: list[tuple[float, float]]
    earthquake_trace: str
    noise_traces: list[str]
    seed: int

    def truth(self) -> dict[str, Any]:
        """Ground truth as written to scenario.json (ISO-8601 UTC)."""
        return {
            "station": self.station,
            "start": iso_utc(self.starttime),
            "end": iso_utc(self.starttime + self.data.shape[1] / SAMPLING_RATE),
            "p_time": iso_utc(self.p_time),
            "s_time": iso_utc(self.s_time),
            "noise_intervals": [[iso_utc(a), iso_utc(b)] for a, b in self.noise_intervals],
            "earthquake_trace": self.earthquake_trace,
            "noise_traces": self.noise_traces,
            "seed": self.seed,
            "sampling_rate": SAMPLING_RATE,
        }

    def write_truth(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.truth(), indent=2) + "\n")


def _start_time(value: Any) -> float | None:
    try:
        import pandas as pd

        ts = pd.Timestamp(value)
        if pd.isna(ts):
            return None
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return float(ts.timestamp())
    except (ValueError, TypeError):
        return None


JOIN_FADE = 200  # samples (2 s) over which one replayed piece fades into the next


LEVEL_WINDOW = 200  # samples (2 s) at each end of a noise piece that meet `level`


def level_to(piece: np.ndarray, level: np.ndarray) -> np.ndarray:
    """A demeaned (3, n) noise piece times a gain that runs linearly from `level` / (RMS of its
    first `LEVEL_WINDOW` samples) to `level` / (RMS of its last ones), per channel.

    Why not one number (its overall std): non-stationary noise scaled by one number starts and
    ends at other levels than `level`, so two pieces met with a level step of 2-3x, which a
    picker reads as an arrival (issue 16). With the ramp every join meets at `level` on both
    sides, while the piece keeps its own variations inside. Flat channels stay 0.
    """
    piece = piece - piece.mean(axis=1, keepdims=True)
    w = min(LEVEL_WINDOW, piece.shape[1])

    def gain(rms: np.ndarray) -> np.ndarray:
        return np.where(rms > 0, level / np.where(rms > 0, rms, 1.0), 0.0)

    g0 = gain(np.sqrt((piece[:, :w] ** 2).mean(axis=1, keepdims=True)))
    g1 = gain(np.sqrt((piece[:, -w:] ** 2).mean(axis=1, keepdims=True)))
    ramp = np.linspace(0.0, 1.0, piece.shape[1])[None, :]
    return piece * (g0 + (g1 - g0) * ramp)


def join_pieces(pieces: Sequence[np.ndarray], fades: Sequence[int]) -> np.ndarray:
    """Concatenate (3, n) pieces; the first `fades[k]` samples of piece k + 1 fade in
    (equal-power sine/cosine) over the previous piece's last samples, mirrored in time.

    Why: pieces of different traces meet with a step in waveform, level and spectrum, which a
    picker rightly reads as an onset; the replay's pieces are whole minutes, so every join fell
    on an edge of the engine's 30-s window grid and looked like a window-edge artefact (issue
    16: P ~0.17-0.27 at the joins, from the window whose middle held the join, while the windows
    ending or starting there stayed below 0.01). A continuous record has no such steps. Lengths
    are kept, so the pieces' times (the earthquake's P and S) do not move.
    """
    out = [np.asarray(pieces[0], np.float64)]
    for piece, fade in zip(pieces[1:], fades):
        piece = np.array(piece, np.float64)
        prev = out[-1]
        c = int(min(fade, piece.shape[1], prev.shape[1]))
        if c > 0:
            up = np.sin(0.5 * np.pi * (np.arange(c) + 0.5) / c)
            back = prev[:, ::-1][:, :c]  # the previous samples, newest first: no jump at the join
            piece[:, :c] = np.sqrt(1.0 - up**2) * back + up * piece[:, :c]
        out.append(piece)
    return np.concatenate(out, axis=1)


def build_scenario(
    subset_dir: str | Path,
    seed: int = 0,
    noise_minutes: int = 3,
    after_minutes: int = 0,
    split: str | None = "test",
    match_amplitude: bool = True,
) -> Scenario:
    """Pick `noise_minutes` noise traces and one earthquake trace (seeded) and join them.

    With `match_amplitude`, each piece is demeaned per channel and the noise pieces are scaled to
    the earthquake trace's pre-P noise level: the record then looks like one station's continuous
    recording instead of stitched stations with counts differing by orders of magnitude.
    `after_minutes` noise minutes may follow the earthquake.
    """
    from feq_lab.data.stead import open_dataset

    if noise_minutes < 1:
        raise ConfigError("source.noise_minutes", f"must be >= 1, got {noise_minutes}")
    ds = open_dataset(subset_dir)
    meta = ds.metadata
    is_eq = meta["trace_category"].astype(str).str.startswith("earthquake").to_numpy()
    finite = np.isfinite(meta["p_arrival_sample"].to_numpy(np.float64)) & np.isfinite(
        meta["s_arrival_sample"].to_numpy(np.float64)
    )
    in_split = np.ones(len(meta), bool)
    if split and "split" in meta:
        in_split = (meta["split"] == split).to_numpy()
    rng = np.random.default_rng(seed)
    eq_rows = np.flatnonzero(is_eq & finite & in_split)
    if eq_rows.size == 0:
        eq_rows = np.flatnonzero(is_eq & finite)
    noise_rows = np.flatnonzero(~is_eq & in_split)
    n_noise = noise_minutes + after_minutes
    if noise_rows.size < n_noise:
        noise_rows = np.flatnonzero(~is_eq)
    if eq_rows.size == 0 or noise_rows.size == 0:
        raise DataError(
            "the subset needs at least one earthquake and one noise trace", path=str(subset_dir)
        )
    eq = int(rng.choice(eq_rows))
    noise = [
        int(i) for i in rng.choice(noise_rows, size=n_noise, replace=noise_rows.size < n_noise)
    ]
    eq_wave = ds.get_waveform_at(eq).T.astype(np.float64)  # (3, 6000)
    p_sample = float(meta["p_arrival_sample"].iat[eq])
    s_sample = float(meta["s_arrival_sample"].iat[eq])
    pieces = [ds.get_waveform_at(i).T.astype(np.float64) for i in noise]
    if match_amplitude:
        eq_wave = eq_wave - eq_wave.mean(axis=1, keepdims=True)
        pre = eq_wave[:, : max(int(p_sample) - 50, 100)]
        level = pre.std(axis=1, keepdims=True)
        pieces = [level_to(piece, level) for piece in pieces]
    before, after = pieces[:noise_minutes], pieces[noise_minutes:]
    guard = max(int(p_sample) - JOIN_FADE, 0)  # the earthquake's fade stays clear of its P
    fades = [JOIN_FADE] * (noise_minutes - 1) + [min(JOIN_FADE, guard)] + [JOIN_FADE] * len(after)
    data = join_pieces(before + [eq_wave] + after, fades).astype(np.float32)
    trace_start = _start_time(meta["trace_start_time"].iat[eq]) or DEFAULT_START + 3600.0 * seed
    start = round(trace_start - noise_minutes * 60.0, 2)
    eq_start = start + noise_minutes * 60.0
    net = str(meta["network_code"].iat[eq]) if "network_code" in meta else "XX"
    sta = str(meta["receiver_code"].iat[eq]) if "receiver_code" in meta else "STA"
    noise_intervals = [(start, eq_start)]
    if after_minutes:
        noise_intervals.append((eq_start + 60.0, eq_start + 60.0 * (1 + after_minutes)))
    names = meta["trace_name"].tolist()
    ds.close()
    return Scenario(
        station=f"{net}.{sta}",
        starttime=start,
        data=data,
        p_time=eq_start + p_sample / SAMPLING_RATE,
        s_time=eq_start + s_sample / SAMPLING_RATE,
        noise_intervals=noise_intervals,
        earthquake_trace=names[eq],
        noise_traces=[names[i] for i in noise],
        seed=seed,
    )


def record_blocks(
    station: str,
    starttime: float,
    data: np.ndarray,
    block_s: float = 1.0,
    speed: float = 0.0,
    channel_prefix: str = "HH",
    key: str = "source.record_s",
) -> Iterator[Block]:
    """Play a (3, n) E, N, Z record in records of `block_s` seconds (1 s: like SeedLink's);
    `speed` > 0 paces them (1 = real time). With speed 0 the replay runs at simulated real
    time: the engine's clock is the stream time of the newest sample fed, no sleeping."""
    if block_s <= 0:
        raise ConfigError(key, f"must be > 0, got {block_s}")
    if speed < 0:
        raise ConfigError("source.speed", f"must be >= 0, got {speed}")
    step = max(int(round(block_s * SAMPLING_RATE)), 1)
    clock = time.monotonic()
    for k, a in enumerate(range(0, data.shape[1], step)):
        seg = data[:, a : a + step]
        if speed > 0:
            due = clock + (k + 1) * (seg.shape[1] / SAMPLING_RATE) / speed
            time.sleep(max(0.0, due - time.monotonic()))
        yield Block(
            station,
            starttime + a / SAMPLING_RATE,
            SAMPLING_RATE,
            {f"{channel_prefix}{c}": seg[i] for i, c in enumerate("ENZ")},
        )


# ----------------------------------------------------------------------- files
def _station_id(stats: Any) -> str:
    loc = stats.location.strip()
    return f"{stats.network}.{stats.station}" + (f".{loc}" if loc else "")


def read_files(paths: Sequence[str | Path]) -> Any:
    """All traces of the files as one obspy Stream, merged per channel (overlaps resolved)."""
    import obspy

    if not paths:
        raise ConfigError("source.paths", "no files given (use 'source.paths=[a.mseed,b.sac]')")
    stream = obspy.Stream()
    for path in paths:
        if not Path(path).exists():
            raise DataError("no such file", path=str(path))
        try:
            stream += obspy.read(str(path))
        except Exception as exc:  # obspy raises many types for unreadable files
            raise DataError(f"obspy cannot read it ({exc})", path=str(path)) from exc
    for tr in stream:
        tr.data = tr.data.astype(np.float64)
    try:
        stream.merge(method=1, fill_value=None)  # gaps become masked, overlaps are resolved
    except Exception as exc:
        raise DataError(
            f"cannot merge the traces ({exc}); mixed sampling rates on one channel?",
            path=str(paths[0]),
        ) from exc
    return stream.split()  # contiguous pieces; the engine fills and flags the gaps


def file_blocks(paths: Sequence[str | Path], block_s: float = 60.0) -> Iterator[Block]:
    """Blocks of `block_s` seconds per channel, cut on absolute time, in time order.

    Gaps and other sampling rates are left to the engine (filled and flagged, resampled to
    100 Hz causally), so files and live feeds go through exactly the same path.
    """
    if block_s <= 0:
        raise ConfigError("source.block_s", f"must be > 0, got {block_s}")
    stream = read_files(paths)
    pieces = []
    for tr in stream:
        rate = float(tr.stats.sampling_rate)
        t0 = float(tr.stats.starttime.timestamp)
        n = tr.stats.npts
        a = 0
        while a < n:
            t = t0 + a / rate
            boundary = (math.floor(t / block_s + 1e-9) + 1) * block_s
            b = min(n, a + max(1, int(math.ceil((boundary - t) * rate - 1e-6))))
            pieces.append(
                (
                    t,
                    _station_id(tr.stats),
                    tr.stats.channel,
                    rate,
                    np.asarray(tr.data[a:b], dtype=np.float64),
                )
            )
            a = b
    pieces.sort(key=lambda p: (p[0], p[1], p[2]))
    if not pieces:
        raise DataError("no samples in the files", path=str(paths[0]))
    for t, station, channel, rate, samples in pieces:
        yield Block(station, t, rate, {channel: samples})


# -------------------------------------------------------------------- seedlink
def parse_stream(spec: str) -> tuple[str, str, str | None]:
    """'NET.STA', 'NET.STA.CHA' or 'NET.STA.LOC.CHA' -> (net, sta, SeedLink selector)."""
    parts = str(spec).split(".")
    if len(parts) == 2:
        return parts[0], parts[1], None
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 4:
        return parts[0], parts[1], f"{parts[2]}{parts[3]}"
    raise ConfigError("source.streams", f"{spec!r}: expected NET.STA[.LOC].CHA (e.g. IU.ANMO.BH?)")


def seedlink_blocks(
    server: str,
    streams: Sequence[str],
    idle_timeout_s: float = 60.0,
    reconnect_delay_s: float = 5.0,
    max_reconnects: int | None = None,
    stop_after_s: float | None = None,
) -> Iterator[Block]:
    """Records from a SeedLink server, one Block per record; reconnects when the feed stops.

    obspy 1.5.1's client compares a `None` connection timeout with a number, so the timeout is
    always set explicitly. A collect call that sees no packet for `idle_timeout_s` (a silent or
    dropped connection) makes us reconnect, resuming from the last sequence number. The stream
    ends when the server sends END (dial-up / time-window mode) or after `stop_after_s`.
    """
    from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
    from obspy.clients.seedlink.seedlinkexception import SeedLinkException
    from obspy.clients.seedlink.slpacket import SLPacket

    if ":" not in str(server):
        raise ConfigError("source.server", f"{server!r}: expected HOST:PORT")
    if not streams:
        raise ConfigError(
            "source.streams", "no streams given (e.g. 'source.streams=[IU.ANMO.BH?]')"
        )
    if idle_timeout_s <= 0:
        raise ConfigError("source.idle_timeout_s", f"must be > 0, got {idle_timeout_s}")
    conn = SeedLinkConnection(timeout=float(idle_timeout_s))
    conn.set_sl_address(str(server))
    conn.set_net_timeout(int(max(1, idle_timeout_s)))
    conn.set_net_delay(int(max(0, reconnect_delay_s)))
    for spec in streams:
        net, sta, selector = parse_stream(spec)
        conn.add_stream(net, sta, selector, seqnum=-1, timestamp=None)
    started = time.monotonic()
    reconnects = 0
    log.info("seedlink: connecting to %s for %s", server, ", ".join(streams))
    try:
        while stop_after_s is None or time.monotonic() - started < stop_after_s:
            asked = time.monotonic()
            try:
                packet = conn.collect()
            except SeedLinkException as exc:
                reconnects += 1
                if max_reconnects is not None and reconnects > max_reconnects:
                    raise DataError(f"SeedLink server {server} unreachable ({exc})") from exc
                log.warning("seedlink: %s; retrying in %.0f s", exc, reconnect_delay_s)
                time.sleep(reconnect_delay_s)
                continue
            if packet == SLPacket.SLTERMINATE:
                if time.monotonic() - asked >= 0.9 * idle_timeout_s:
                    reconnects += 1
                    if max_reconnects is not None and reconnects > max_reconnects:
                        log.warning("seedlink: no data for %.0f s; giving up", idle_timeout_s)
                        return
                    log.warning(
                        "seedlink: no data for %.0f s from %s; reconnecting (resuming after"
                        " the last record)",
                        idle_timeout_s,
                        server,
                    )
                    continue
                log.info("seedlink: server %s ended the stream", server)
                return
            if packet == SLPacket.SLERROR:
                log.warning("seedlink: server %s reported an error", server)
                continue
            if packet is None or packet.get_type() in (SLPacket.TYPE_SLINF, SLPacket.TYPE_SLINFT):
                continue
            try:
                tr = packet.get_trace()
            except Exception as exc:
                log.warning("seedlink: undecodable record skipped (%s)", exc)
                continue
            yield Block(
                _station_id(tr.stats),
                float(tr.stats.starttime.timestamp),
                float(tr.stats.sampling_rate),
                {tr.stats.channel: tr.data},
            )
    finally:
        conn.close()


# ---------------------------------------------------------------------- factory
def make_source(
    cfg: Mapping[str, Any], out_dir: Path, data_cfg: Mapping[str, Any] | None = None
) -> tuple[Iterator[Block], Scenario | None]:
    """The source named by `cfg.kind` (replay | files | seedlink) and, for replay, its scenario."""
    kind = cfg.get("kind")
    if kind == "replay":
        subset_dir = cfg.get("subset_dir")
        if not subset_dir:
            if data_cfg is None:
                raise ConfigError("source.subset_dir", "no subset given and no data config")
            existing = Path(str(data_cfg.get("out_dir") or "data/subset"))
            if (existing / "subset.csv").exists():
                subset_dir = existing  # use what training used; never rebuild it from here
            else:
                from feq_lab.data.subset import prepare

                subset_dir = prepare(data_cfg)
        scenario = build_scenario(
            subset_dir,
            seed=int(cfg.get("seed", 0)),
            noise_minutes=int(cfg.get("noise_minutes", 3)),
            after_minutes=int(cfg.get("after_minutes", 0)),
            split=cfg.get("split", "test"),
            match_amplitude=bool(cfg.get("match_amplitude", True)),
        )
        scenario.write_truth(Path(out_dir) / "scenario.json")
        log.info(
            "replay: %s, earthquake trace %s, P %s, S %s",
            scenario.station,
            scenario.earthquake_trace,
            iso_utc(scenario.p_time),
            iso_utc(scenario.s_time),
        )
        if "block_s" in cfg:
            raise ConfigError("source.block_s", "the replay's record length is source.record_s")
        return record_blocks(
            scenario.station,
            scenario.starttime,
            scenario.data,
            float(cfg.get("record_s", 1.0)),
            float(cfg.get("speed", 0.0)),
        ), scenario
    if kind == "files":
        return file_blocks(list(cfg.get("paths") or []), float(cfg.get("block_s", 60.0))), None
    if kind == "seedlink":
        return seedlink_blocks(
            str(cfg.get("server")),
            list(cfg.get("streams") or []),
            idle_timeout_s=float(cfg.get("idle_timeout_s", 60.0)),
            reconnect_delay_s=float(cfg.get("reconnect_delay_s", 5.0)),
            max_reconnects=cfg.get("max_reconnects"),
            stop_after_s=cfg.get("stop_after_s"),
        ), None
    raise ConfigError("source.kind", f"must be replay, files or seedlink, got {kind!r}")


__all__ = [
    "Scenario",
    "build_scenario",
    "record_blocks",
    "file_blocks",
    "read_files",
    "seedlink_blocks",
    "parse_stream",
    "make_source",
]
