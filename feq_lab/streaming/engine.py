"""Continuous detection and P/S picking: rolling buffers, 60-s windows, stacking, events.

Why this shape: a window's position depends only on its sample index since the station's first
sample (multiples of `stride`), and a probability sample is "final" once every regular window
covering it has run. Events are read from final samples only, so the blocks' lengths, their
arrival order (within `max_delay_s`) and the batch sizes never change what is emitted, and no
event can be emitted twice. The stream's end runs one right-aligned window over the newest
samples (the tail), so nothing is dropped.

Events are decoded by the evaluation's own decoder (`feq_lab.evaluation.decode`, protocol
`engine.protocol`, EQTransformer's tester rules by default): the engine keeps only its buffering,
finality and de-duplication, so the events of a stream equal `decode.decode_record` on the
stacked probabilities of the whole record (tested on a 10-minute record).

Early picking (issue #16, `engine.early`): besides the regular windows, every `early_every_s`
seconds of new data a window right-aligned on the newest sample runs; its outputs, combined with
the regular windows' partial stack, give provisional probabilities for the samples that are not
final yet. The same decoder reads them: a trigger with a P or S peak becomes a provisional
`pick` (with an event id), an `update` when a later window moves a pick by more than `update_s`,
then the regular (final) decoding makes it `final` or `retract`s it. The provisional
probabilities never enter the final stack, so the final events stay those of the offline
windows whatever the records' sizes.

Time: the engine's clock is the stream time of the newest trusted sample (no wall clock: a
replay at simulated real time). Every emitted object carries it as `emitted_at`. With several
stations the clock is the second-newest station's newest sample, so one station whose records
come from the future (clock skew) cannot move it; such a record is flagged once per station.
A station whose data stop is reported once per silence and never holds the others back: each
station's windows, finality and events depend on its own samples only.

Network: `feed_all` takes the records of many stations; the windows of every station that are
due are predicted together in batches of `batch_size` (one predictor call per batch). Why the
cheap paths, all exact (an emitted-objects hash in bench/network.py checks it): with early
picking a network runs one right-edge window per station per second, and most stations are
quiet: a station whose stack holds no sample above the provisional detection threshold from
its undecided region on (`_Station.hot_last`, max stacking) and whose right-edge window has
none in its not-final part (one reduction) skips the provisional decoding; a right-edge window
that is the newest regular window runs the model once; the batch buffer is reused.

Preprocessing is causal: per-window normalisation identical to training
(`feq_lab.data.labels.normalize`), gap filling from past samples only, and a stateful causal
anti-alias filter when a stream must be resampled to 100 Hz.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from feq_lab.data.labels import normalize
from feq_lab.errors import ConfigError, DataError
from feq_lab.evaluation.decode import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    DecodeSettings,
    Detection,
    above_threshold,
    check_thresholds,
    decode_triggers,
    find_triggers,
    trigger_intervals,
)
from feq_lab.streaming.buffers import SampleSeries

log = logging.getLogger("feq_lab.streaming")

SAMPLING_RATE = 100.0
WINDOW = 6000
COMPONENTS = ("E", "N", "Z")
# Channel-code orientation letter -> E/N/Z row. 1/2 are taken as N/E (the usual convention).
_ORIENTATION = {"E": 0, "N": 1, "Z": 2, "2": 0, "1": 1, "3": 2}
_FILL_CONTEXT = 100  # past samples whose mean fills a gap (causal)
_TRIM_STEP = 4096  # buffers forget old samples this many at a time (amortised copies)

# A predictor maps (B, 3, 6000) float32 normalised windows to (det, p, s), each (B, 6000);
# Monte-Carlo predictors return six arrays: the three means, then the three spreads (std).
Predictor = Callable[[np.ndarray], Sequence[np.ndarray]]


def iso_utc(timestamp: float | None) -> str | None:
    """POSIX seconds -> ISO-8601 UTC with a Z suffix (None stays None)."""
    if timestamp is None:
        return None
    dt = datetime.fromtimestamp(round(timestamp, 6), tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Block:
    """One piece of a station's record: any length, one or more components.

    `channels` maps a channel code ("HHZ", "BH1", or just "Z") to its samples; its last letter
    gives the component. `starttime` is POSIX seconds (UTC) of the first sample.
    """

    station: str
    starttime: float
    sampling_rate: float
    channels: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Event:
    """One detection with its associated P and S picks (times are POSIX seconds, UTC)."""

    station: str
    detection_start: float
    detection_end: float
    det_prob: float
    p_time: float | None
    p_prob: float | None
    s_time: float | None
    s_prob: float | None
    model: str
    flags: tuple[str, ...] = ()
    spread: Mapping[str, float] | None = None  # Monte-Carlo std at the picks (MC mode only)
    # the lifecycle (docs/outputs.md): pick | update (provisional) | final | retract
    kind: str = "final"
    event_id: str | None = None
    emitted_at: float | None = None  # stream time (POSIX s) of the newest sample at emission

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines record: ISO-8601 UTC times, null for a missing pick."""
        out: dict[str, Any] = {
            "type": "event",
            "kind": self.kind,
            "event_id": self.event_id,
            "emitted_at": iso_utc(self.emitted_at),
            "station": self.station,
            "detection_start": iso_utc(self.detection_start),
            "detection_end": iso_utc(self.detection_end),
            "p_time": iso_utc(self.p_time),
            "s_time": iso_utc(self.s_time),
            "p_prob": _round(self.p_prob),
            "s_prob": _round(self.s_prob),
            "det_prob": _round(self.det_prob),
            "model": self.model,
            "flags": list(self.flags),
        }
        if self.spread is not None:
            out["spread"] = {k: _round(v) for k, v in self.spread.items()}
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


# The study's headline thresholds (conf/config.yaml): detection 0.5, P and S 0.1 as in EQT's
# tester and predictor and SeisBench's annotate; used when the model brings none of its own.
DEFAULT_THRESHOLDS = {"detection": 0.5, "p": 0.1, "s": 0.1}


# Provisional thresholds = these factors x the final ones (conf/stream.yaml says how they were
# chosen): a right-edge window's P peak and detection are lower than the full windows' at the
# same onset; a lower S threshold made S picks earlier and wrong (EQT's rule takes the *first*
# S peak), so S keeps its final threshold.
DEFAULT_EARLY_SCALE = {"detection": 0.4, "p": 0.5, "s": 1.0}


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings (the `engine` block of conf/stream.yaml)."""

    stride: int = 3000
    combine: str = "max"
    blinding: int = 0
    require_pick: bool = False
    batch_size: int = 8
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # The decoder's rules (feq_lab/evaluation/decode.py): eqt = EQTransformer's tester, as the
    # study's tables; lab = the lab's earlier rules, each trigger on its own (S may precede P).
    protocol: str = DEFAULT_PROTOCOL
    association_margin_s: float = 0.5  # lab protocol only
    max_delay_s: float = 120.0
    history_s: float = 240.0
    # early picking: a window right-aligned on the newest sample every `early_every_s` seconds
    # of new data; provisional picks moved by more than `update_s` are re-emitted as updates
    early: bool = True
    early_every_s: float = 1.0
    update_s: float = 0.1
    # provisional picks are decoded at `early_scale[k]` x the final threshold of k (why and
    # how chosen: DEFAULT_EARLY_SCALE); final events never see this setting
    early_scale: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_EARLY_SCALE)
    )
    # bad input: a station silent for `silence_s` (engine clock) is reported once; a record
    # starting more than `future_tolerance_s` after the clock is flagged (clock skew)
    silence_s: float = 30.0
    future_tolerance_s: float = 10.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, key: str = "engine") -> "EngineConfig":
        """Validate a config mapping; errors name the offending key."""
        cfg = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(
                f"{key}.{sorted(unknown)[0]}", f"unknown key (known: {sorted(known)})"
            )
        if "thresholds" in cfg:
            cfg["thresholds"] = check_thresholds(cfg["thresholds"], f"{key}.thresholds")
        if "early_scale" in cfg:
            cfg["early_scale"] = _check_scale(cfg["early_scale"], f"{key}.early_scale")
        if cfg.get("protocol", DEFAULT_PROTOCOL) not in PROTOCOLS:
            raise ConfigError(
                f"{key}.protocol", f"must be one of {PROTOCOLS}, got {cfg['protocol']!r}"
            )
        out = cls(**cfg)
        if not 1 <= int(out.stride) <= WINDOW:
            raise ConfigError(
                f"{key}.stride", f"must be in [1, {WINDOW}] samples, got {out.stride}"
            )
        if not 0 <= int(out.blinding) <= (WINDOW - int(out.stride)) // 2:
            raise ConfigError(
                f"{key}.blinding",
                f"must be in [0, (window - stride) / 2] = [0, {(WINDOW - int(out.stride)) // 2}] "
                f"samples so that every sample stays covered, got {out.blinding}",
            )
        if out.combine not in ("max", "mean"):
            raise ConfigError(f"{key}.combine", f"must be 'max' or 'mean', got {out.combine!r}")
        if int(out.batch_size) < 1:
            raise ConfigError(f"{key}.batch_size", f"must be >= 1, got {out.batch_size}")
        for name in ("association_margin_s", "max_delay_s", "history_s", "update_s",
                     "future_tolerance_s"):
            if float(getattr(out, name)) < 0:
                raise ConfigError(f"{key}.{name}", f"must be >= 0, got {getattr(out, name)}")
        for name in ("early_every_s", "silence_s"):
            if not float(getattr(out, name)) > 0:
                raise ConfigError(f"{key}.{name}", f"must be > 0, got {getattr(out, name)}")
        if not isinstance(out.early, bool):
            raise ConfigError(f"{key}.early", f"must be true or false, got {out.early!r}")
        return out


def _check_scale(scale: Any, key: str) -> dict[str, float]:
    """`early_scale`: a factor > 0 per threshold (missing ones are 1: the final threshold)."""
    if not isinstance(scale, Mapping):
        raise ConfigError(key, f"must be a mapping {{detection, p, s}}, got {scale!r}")
    unknown = set(scale) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key (known: detection, p, s)")
    out = {}
    for name in DEFAULT_THRESHOLDS:
        value = scale.get(name, 1.0)
        try:
            out[name] = float(1.0 if value is None else value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{name}", f"not a number: {value!r}") from None
        if not out[name] > 0:
            raise ConfigError(f"{key}.{name}", f"must be > 0, got {value!r}")
    return out


class _Resampler:
    """Causal, stateful resampling of one channel onto the station's 100-Hz grid.

    Downsampling first applies a causal Butterworth low-pass (state carried across blocks);
    the grid samples are then linearly interpolated, bridging block boundaries with the
    previous block's last sample so that block lengths don't matter.
    """

    def __init__(self, sampling_rate: float):
        self.rate = float(sampling_rate)
        self.sos = None
        self.zi = None
        if self.rate > SAMPLING_RATE:
            from scipy.signal import butter

            self.sos = butter(4, 0.4 * SAMPLING_RATE, fs=self.rate, output="sos")
        self.last: tuple[float, float] | None = None  # (time, value) of the previous input sample
        self.next_index: int | None = None  # first grid index not yet produced

    def __call__(self, t0: float, x: np.ndarray, origin: float) -> tuple[int, np.ndarray]:
        """Grid samples (start index, values) covered by this block."""
        if self.sos is not None:
            from scipy.signal import sosfilt, sosfilt_zi

            if self.zi is None:
                self.zi = sosfilt_zi(self.sos) * (x[0] if len(x) else 0.0)
            x, self.zi = sosfilt(self.sos, x, zi=self.zi)
        times = t0 + np.arange(len(x)) / self.rate
        if self.last is not None and abs(t0 - (self.last[0] + 1.0 / self.rate)) < 0.5 / self.rate:
            times = np.concatenate(([self.last[0]], times))
            x = np.concatenate(([self.last[1]], x))
        if len(x) == 0:
            return 0, np.zeros(0)
        self.last = (float(times[-1]), float(x[-1]))
        first = math.ceil((times[0] - origin) * SAMPLING_RATE - 1e-6)
        last = math.floor((times[-1] - origin) * SAMPLING_RATE + 1e-6)
        if self.next_index is not None:
            first = max(first, self.next_index)
        if last < first:
            return first, np.zeros(0)
        grid = np.arange(first, last + 1)
        values = np.interp(origin + grid / SAMPLING_RATE, times, x)
        self.next_index = last + 1
        return first, values


@dataclass
class _Open:
    """A provisional event: its id, its latest provisional trigger and picks (sample indices)."""

    event_id: str
    on: int
    off: int
    p: int | None
    s: int | None
    p_prob: float | None = None
    s_prob: float | None = None


class _Station:
    """Everything the engine keeps for one station."""

    def __init__(self, name: str, origin: float, cfg: EngineConfig, n_spread: int):
        self.name = name
        self.origin = origin
        # Why sized from the config: a network keeps thousands of stations; what must stay is
        # a window plus the display's history (growing, doubling, only for a long trigger)
        need = WINDOW + int(cfg.stride) + int(cfg.history_s * SAMPLING_RATE) + _TRIM_STEP
        cap = 1 << (need - 1).bit_length()
        self.raw = SampleSeries(3, np.float32, 0.0, cap)
        self.present = SampleSeries(3, bool, False, cap)
        self.filled = SampleSeries(1, bool, False, cap)
        self.prob = SampleSeries(3, np.float32, 0.0, cap)  # max or running sum
        # windows per sample (mean mode only)
        self.count = SampleSeries(1, np.float32, 0.0, cap) if cfg.combine == "mean" else None
        self.spread = SampleSeries(3, np.float32, 0.0, cap) if n_spread else None
        self.hwm = 0  # one past the newest sample received
        # every component is present below this mark (the fast path's contiguous records);
        # lets `_commit` skip scanning the presence flags
        self.present_through = 0
        self.scanned_final = -1  # `final` when the events were last decoded (see `_decide`)
        self.layout: tuple[tuple[str, ...], tuple[int, ...]] | None = None  # codes -> rows
        self.channel_hwm = [0, 0, 0]  # the same per component
        # True while the fast path wrote the newest record: every component ends at `hwm`
        # and was seen (`channel_hwm` is then [hwm] * 3, written out when the per-channel
        # path next needs it: one list fewer per 1-s record)
        self.aligned = False
        self.committed = 0  # raw samples below this are final (received or filled)
        self.next_window = 0  # start of the next regular window
        self.final = 0  # probabilities below this are final
        self.scan = 0  # start of the undecided region (a running trigger, else the unscanned)
        self.edge_end = 0  # newest sample the last right-edge window ended at
        # newest sample whose stacked detection exceeds the provisional threshold (max
        # combination only: stacked values never decrease); lets a quiet station skip the
        # provisional decoding without reading its buffers
        self.hot_last = -1
        self.seen = [False, False, False]  # component ever received
        self.resamplers: dict[int, _Resampler] = {}
        self.logged: set[str] = set()
        self.events: deque[Event] = deque(maxlen=200)  # the latest emitted objects (display)
        self.open: list[_Open] = []  # provisional events, oldest first
        self.next_id = 0
        self.silent = False  # reported as silent, not heard from since
        self.ended = False
        self.blinded_tail: tuple[int, list[np.ndarray]] | None = None  # last window's right edge

    def probability_series(self) -> list[SampleSeries]:
        return [x for x in (self.prob, self.count, self.spread) if x is not None]

    @property
    def newest_time(self) -> float:
        """Stream time of the newest sample received."""
        return self.origin + (self.hwm - 1) / SAMPLING_RATE

    def new_id(self) -> str:
        self.next_id += 1
        return f"{self.name}/{self.next_id}"

    def once(self, key: str, message: str, *args: Any) -> None:
        """Log a condition the first time it happens for this station."""
        if key not in self.logged:
            self.logged.add(key)
            log.warning(message, *args)


@dataclass
class _Job:
    """One window to predict: `kind` regular | edge (right-aligned on the newest sample, early
    picking) | tail (right-aligned at the stream's end), and its first sample."""

    st: _Station
    kind: str
    start: int
    last: bool  # the station's last job of this round: its events are decoded after it
    # a regular window that is also this round's right-edge window (it ends at the newest
    # sample): its outputs are stacked and serve the provisional decoding, one model run
    edge: bool = False


class StreamEngine:
    """Feed blocks in, get events out. One engine serves any number of stations.

    `predict` is the model (see `Predictor`); `model_name` labels the events.
    """

    def __init__(
        self,
        predict: Predictor,
        model_name: str,
        config: EngineConfig | Mapping | None = None,
        mc: bool = False,
    ):
        self.cfg = config if isinstance(config, EngineConfig) else EngineConfig.from_mapping(config)
        self.predict = predict
        self.model_name = model_name
        self.mc = mc
        self.stations: dict[str, _Station] = {}
        self.thresholds = check_thresholds(self.cfg.thresholds, "engine.thresholds")
        self.th_det = self.thresholds["detection"]
        # provisional decoding (early picking): the final thresholds scaled, capped at 1
        scale = _check_scale(self.cfg.early_scale, "engine.early_scale")
        self.early_thresholds = {k: min(v * scale[k], 1.0) for k, v in self.thresholds.items()}
        # the same decoder as offline evaluation (one place for the rules)
        self.decoding = DecodeSettings(
            self.cfg.protocol, SAMPLING_RATE, float(self.cfg.association_margin_s)
        )
        # the decoder's look-back and look-ahead (properties of frozen settings), read per
        # record: kept as plain ints
        self.context = self.decoding.context
        self.lookahead = self.decoding.lookahead
        self.max_delay = int(round(self.cfg.max_delay_s * SAMPLING_RATE))
        self.history = int(round(self.cfg.history_s * SAMPLING_RATE))
        self.early_every = max(int(round(self.cfg.early_every_s * SAMPLING_RATE)), 1)
        # the quiet-station exit of `_provisional` needs max stacking (see `_Station.hot_last`)
        self._track_hot = self.cfg.early and self.cfg.combine == "max"
        # one batch buffer, reused: a fresh (batch, 3, 6000) array per call costs page faults
        self._batch = np.empty((int(self.cfg.batch_size), 3, WINDOW), np.float32)
        self.windows_run = 0  # regular and tail windows
        self.edge_windows_run = 0  # right-edge (early picking) windows
        self.edge_windows_quiet = 0  # of which no provisional decoding was needed
        self.edge_windows_shared = 0  # of which a regular window's run (same samples)
        self.predict_calls = 0
        self.clock: float | None = None  # stream time of the newest trusted sample
        self._silence_checked: float | None = None
        self._skewed: set[str] = set()  # stations whose newest record came from the future

    # ------------------------------------------------------------------ input
    def feed(self, block: Block) -> list[Event]:
        """Add one block; return the objects emitted (events whose evidence became complete,
        and with early picking the provisional picks, updates and retractions)."""
        return self.feed_all([block])

    def feed_all(self, blocks: Iterable[Block]) -> list[Event]:
        """Add the records of any stations (e.g. one second of a network); every window that
        is due on any of them is predicted in shared batches of `batch_size`."""
        touched: dict[str, _Station] = {}
        for block in blocks:
            st = self._store_block(block)
            touched[st.name] = st
        self._check_silence()
        return self._process(list(touched.values()), flush=False)

    def feed_array(
        self,
        stations: Sequence[str],
        starttime: float | Sequence[float] | np.ndarray,
        data: np.ndarray,
        channels: Sequence[str] = ("HHE", "HHN", "HHZ"),
        sampling_rate: float = SAMPLING_RATE,
    ) -> list[Event]:
        """`feed_all` for records held as one array: `data[k]` (channels x samples) is the
        record of `stations[k]`, starting at `starttime` (one POSIX time, or one per station).

        Why: a network's multiplexer hands over a second of every station at once, and a
        thousand per-record `Block`s cost more to build, check and copy than the model's share
        of the work. Here the checks run once per array (shape, channel codes, sampling rate,
        NaN/inf of every record in one reduction) and each station in the common case (its
        record starts where its data end) takes one copy into its buffer. Every other record
        (a new, silent, skewed or misaligned station, a NaN) goes through `feed_all`'s own
        per-record path, in the same order: the result is `feed_all` on the equivalent blocks
        (tests/streaming/test_network_intake.py)."""
        names = list(stations)
        x = np.asarray(data)
        codes = tuple(str(c) for c in channels)
        if x.ndim != 3 or x.shape[:2] != (len(names), len(codes)):
            raise DataError(
                f"feed_array: data of shape {x.shape}, expected ({len(names)} stations,"
                f" {len(codes)} channels {list(codes)}, samples)"
            )
        try:
            starts = np.broadcast_to(np.asarray(starttime, dtype=np.float64), (len(names),))
        except ValueError:
            raise DataError(
                f"feed_array: {np.shape(starttime)} start times for {len(names)} stations"
            ) from None
        rows = tuple(_ORIENTATION.get(c[-1:].upper()) for c in codes)
        common = (
            len(codes) == 3
            and None not in rows
            and len(set(rows)) == 3
            and x.dtype.kind in "fiu"
            and x.shape[2] > 0
            and abs(float(sampling_rate) - SAMPLING_RATE) <= 1e-6
        )
        finite = [False] * len(names)
        if common:
            # E, N, Z order and the buffers' float32, once for the whole array; a NaN or inf
            # (or a sum overflowing float32) sends that station's record down the exact path
            enz = x if rows == (0, 1, 2) else x[:, np.argsort(rows)]
            enz = np.ascontiguousarray(enz, dtype=np.float32)
            finite = np.isfinite(np.add.reduce(enz.reshape(len(names), -1), axis=1)).tolist()
        touched: dict[str, _Station] = {}
        for k, (name, t0) in enumerate(zip(names, starts.tolist())):
            st = self.stations.get(name)
            if (
                finite[k]
                and st is not None
                and not (st.ended or st.silent or self._ahead(t0))
                and name not in self._skewed
                and self._append_enz(st, t0, enz[k])
            ):
                self._advance_clock(st)
            else:
                st = self._store_block(
                    Block(name, t0, float(sampling_rate), dict(zip(codes, x[k])))
                )
            touched[name] = st
        self._check_silence()
        return self._process(list(touched.values()), flush=False)

    def flush(self, station: str | None = None) -> list[Event]:
        """End of stream: fill what is missing, run the tail window, close open detections."""
        names = [station] if station is not None else list(self.stations)
        todo = [
            self.stations[n] for n in names if n in self.stations and not self.stations[n].ended
        ]
        events = self._process(todo, flush=True)
        for st in todo:
            st.ended = True
        return events

    def _store_block(self, block: Block) -> _Station:
        if not block.channels:
            raise DataError("block has no channels", trace=block.station)
        if not (block.sampling_rate > 0 and math.isfinite(block.sampling_rate)):
            raise DataError(f"bad sampling rate {block.sampling_rate!r}", trace=block.station)
        st = self.stations.get(block.station)
        if st is None:
            st = self.stations[block.station] = _Station(
                block.station, float(block.starttime), self.cfg, 3 if self.mc else 0
            )
            log.info("station %s: stream starts at %s", block.station, iso_utc(block.starttime))
        if st.ended:
            raise DataError("block after the stream was flushed", trace=block.station)
        future = self._from_the_future(st, float(block.starttime))
        if not self._append(st, block):
            for code, samples in block.channels.items():
                self._write_channel(
                    st, code, float(block.starttime), float(block.sampling_rate), samples
                )
        if st.silent:
            st.silent = False
            log.info("station %s: data again from %s", st.name, iso_utc(block.starttime))
        if future:
            self._skewed.add(st.name)
            self._witnessed(st)
        elif st.name in self._skewed:  # back within the tolerance of the clock
            self._skewed.discard(st.name)
        if st.hwm > 0 and st.name not in self._skewed:
            self._advance_clock(st)
        return st

    def _advance_clock(self, st: _Station) -> None:
        """A trusted station's newest sample moves the clock forward (never back)."""
        newest = st.newest_time
        if self.clock is None or newest > self.clock:
            self.clock = newest

    def _from_the_future(self, st: _Station, start: float) -> bool:
        """A record starting more than `future_tolerance_s` after the clock, while other
        stations define the clock (a single station's gap cannot be told from a skew)."""
        if not self._ahead(start):
            return False
        ahead = start - self.clock
        st.once(
            "future",
            "station %s: record at %s starts %.1f s after the network's newest sample (%s):"
            " clock skew? flagged; not used as the engine's clock",
            st.name,
            iso_utc(start),
            ahead,
            iso_utc(self.clock),
        )
        return True

    def _ahead(self, start: float) -> bool:
        """`_from_the_future`'s test, without its report."""
        return (
            self.clock is not None
            and len(self.stations) >= 2
            and start - self.clock > self.cfg.future_tolerance_s
        )

    def _witnessed(self, st: _Station) -> None:
        """Two flagged stations that agree (within the tolerance) are a real jump of time (the
        whole network back after an outage), not one skewed clock: both are trusted again."""
        for name in list(self._skewed):
            other = self.stations[name]
            if name != st.name and (
                abs(other.newest_time - st.newest_time) <= self.cfg.future_tolerance_s
            ):
                self._skewed -= {name, st.name}
                self.clock = max(self.clock or -math.inf, st.newest_time, other.newest_time)
                log.info(
                    "stations %s and %s agree on the time %s: trusted as the clock",
                    st.name, name, iso_utc(st.newest_time),
                )  # fmt: skip
                return

    def _check_silence(self) -> None:
        """Report (once per silence) each station whose newest sample is `silence_s` behind the
        clock. Checked at most once per second of stream time (cheap for 1,000 stations)."""
        if self.clock is None or (
            self._silence_checked is not None and self.clock - self._silence_checked < 1.0
        ):
            return
        self._silence_checked = self.clock
        limit = self.clock - self.cfg.silence_s
        for st in self.stations.values():
            if not st.silent and not st.ended and st.hwm > 0 and st.newest_time < limit:
                st.silent = True
                log.warning(
                    "station %s: no data since %s (%.0f s behind the network); its events wait"
                    " for its data, the other stations go on",
                    st.name,
                    iso_utc(st.newest_time),
                    self.clock - st.newest_time,
                )

    def _append(self, st: _Station, block: Block) -> bool:
        """The common case in one step: E, N and Z at 100 Hz, finite, equally long, starting
        exactly where the station's data end. Why: a network feeds thousands of 1-s records a
        second, and the per-channel path (resampling, NaN, overlap and disorder checks) costs
        more than the model's share. Anything else returns False and takes that path."""
        channels = block.channels
        if len(channels) != 3 or abs(block.sampling_rate - SAMPLING_RATE) > 1e-6:
            return False
        codes = tuple(channels)
        layout = st.layout
        if layout is None or layout[0] != codes:  # a station keeps its channel codes
            found = tuple(_ORIENTATION.get(str(code)[-1:].upper()) for code in codes)
            if None in found or len(set(found)) != 3:
                return False
            layout = st.layout = (codes, found)  # type: ignore[assignment]
        arrays = list(channels.values())
        n = arrays[0].shape[0] if isinstance(arrays[0], np.ndarray) else 0
        for x in arrays:  # 1-D numeric arrays of one length (anything else: the general path)
            if not isinstance(x, np.ndarray) or x.shape != (n,) or x.dtype.kind not in "fiu":
                return False
        if n == 0:
            return False
        at = self._slot(st, float(block.starttime), n)
        if at is None:
            return False
        # written straight into the buffer (beyond the newest sample: nothing is lost if a
        # NaN sends the block down the per-channel path, which rewrites these samples)
        buf = st.raw.data[:, at : at + n]
        for row, samples in zip(layout[1], arrays):
            buf[row] = samples
        # one reduction instead of isfinite + all: a NaN or inf makes the sum non-finite (an
        # overflowing sum of finite samples only sends the record down the exact slow path)
        if not math.isfinite(np.add.reduce(buf, axis=None)):
            return False
        self._appended(st, at, n)
        return True

    def _append_enz(self, st: _Station, t0: float, enz: np.ndarray) -> bool:
        """`_append` for a record already checked (`feed_array`): finite float32 (3, n) rows
        E, N, Z. False (nothing written) when it does not start where the station's data end."""
        n = enz.shape[1]
        at = self._slot(st, t0, n)
        if at is None:
            return False
        st.raw.data[:, at : at + n] = enz
        self._appended(st, at, n)
        return True

    @staticmethod
    def _slot(st: _Station, t0: float, n: int) -> int | None:
        """Where the common-case paths write a record of `n` samples starting at `t0` (an
        offset into the buffers, room ensured), or None when it does not start exactly where
        every component of the station's data ends."""
        exact = (t0 - st.origin) * SAMPLING_RATE
        start = round(exact)
        if abs(exact - start) > 0.1 or start != st.hwm:
            return None
        if not st.aligned and st.channel_hwm != [start] * 3:
            return None
        raw = st.raw
        if start + n - raw.base > raw.data.shape[1]:  # raw, present, filled share base, size
            for series in (raw, st.present, st.filled):
                series.ensure(start + n)
        return start - raw.base

    @staticmethod
    def _appended(st: _Station, at: int, n: int) -> None:
        """The marks of a record of `n` samples written at buffer offset `at` (`_slot`)."""
        start, stop = st.hwm, st.hwm + n  # (`_slot`: the record starts at `hwm`)
        st.present.data[:, at : at + n] = True  # (present shares raw's base)
        if st.present_through == start:
            st.present_through = stop
        if not st.aligned:
            st.seen = [True, True, True]
            st.aligned = True
        st.hwm = stop

    def _write_channel(self, st: _Station, code: str, t0: float, rate: float, samples: Any) -> None:
        row = _ORIENTATION.get(str(code)[-1:].upper())
        if row is None:
            st.once(
                f"comp-{code}",
                "station %s: channel %s has no E/N/Z/1/2/3 orientation; ignored",
                st.name,
                code,
            )
            return
        x = np.asarray(samples).ravel()
        if x.dtype.kind not in "fiu":  # anything but numbers: converted (or a clear error)
            x = x.astype(np.float64)
        # (the buffer is float32: samples are cast once, when stored, not copied to float64 here)
        bad = ~np.isfinite(x) if x.dtype.kind == "f" else None
        if bad is not None and bad.any():
            good = x[~bad].astype(np.float64)
            x = x.astype(np.float64)
            x[bad] = good.mean() if good.size else 0.0
            log.warning(
                "station %s: %d NaN/inf samples on %s at %s replaced by the block mean",
                st.name,
                int(bad.sum()),
                code,
                iso_utc(t0),
            )
        if abs(rate - SAMPLING_RATE) > 1e-6:
            res = st.resamplers.get(row)
            if res is None or res.rate != rate:
                res = st.resamplers[row] = _Resampler(rate)
                log.warning(
                    "station %s: channel %s at %g Hz, resampled to 100 Hz (causal)",
                    st.name,
                    code,
                    rate,
                )
            start, x = res(t0, x.astype(np.float64, copy=False), st.origin)
        else:
            exact = (t0 - st.origin) * SAMPLING_RATE
            start = int(round(exact))
            if abs(exact - start) > 0.1:
                st.once(
                    "snap",
                    "station %s: block times are off the 100-Hz grid by %.2f samples; snapped",
                    st.name,
                    exact - start,
                )
        self._store(st, row, code, start, x, t0)

    def _store(
        self, st: _Station, row: int, code: str, start: int, x: np.ndarray, t0: float
    ) -> None:
        n = len(x)
        if n == 0:
            return
        stop = start + n
        if start < st.committed:
            late = min(stop, st.committed) - start
            log.warning(
                "station %s: %d samples of %s at %s arrived after that time was processed; dropped",
                st.name,
                late,
                code,
                iso_utc(t0),
            )
            if stop <= st.committed:
                return
            x, start = x[late:], st.committed
        if st.aligned:  # leaving the fast path: its implicit per-channel marks, written out
            st.channel_hwm = [st.hwm] * 3
            st.aligned = False
        st.seen[row] = True
        for series in (st.raw, st.present, st.filled):
            series.ensure(stop)
        have = st.present.view(start, stop)[row]
        if start < st.channel_hwm[row] and not have.all():
            log.info(
                "station %s: %s block at %s arrived out of order; placed in its slot",
                st.name,
                code,
                iso_utc(t0),
            )
        if have.any():
            log.warning(
                "station %s: %d samples of %s at %s overlap data already received; kept the"
                " first copy",
                st.name,
                int(have.sum()),
                code,
                iso_utc(t0),
            )
            new = ~have
            st.raw.view(start, stop)[row][new] = x[new]
        else:
            st.raw.view(start, stop)[row] = x
        have[:] = True
        st.hwm = max(st.hwm, stop)
        st.channel_hwm[row] = max(st.channel_hwm[row], stop)

    # -------------------------------------------------------------- processing
    def _process(self, stations: Sequence[_Station], flush: bool) -> list[Event]:
        """Commit, plan every due window of `stations`, predict them in shared batches, and
        decode each station right after its last window (so only one batch is held)."""
        out: list[Event] = []
        jobs: list[_Job] = []
        regular_only = not (flush or self.cfg.early)
        for st in stations:
            self._commit(st, flush)
            # (`_plan`'s first test inline: most stations have no window due most seconds)
            due = not regular_only or st.next_window + WINDOW <= st.committed
            planned = self._plan(st, flush) if due else []
            if planned:
                planned[-1].last = True
                jobs += planned
            elif flush or st.final != st.scanned_final:
                out += self._decide(st, flush, None)
            # else: no window ran and no sample became final: nothing to decode (the buffers
            # are trimmed after the station's next window; when does not change any output)
        size = int(self.cfg.batch_size)
        for i in range(0, len(jobs), size):
            chunk = jobs[i : i + size]
            batch = self._batch[: len(chunk)]
            for k, job in enumerate(chunk):
                batch[k] = self._window(job.st, job.start)
            outputs = self._predict(batch)
            for k, job in enumerate(chunk):
                edge = self._apply(job, [o[k] for o in outputs])
                if job.last:
                    out += self._decide(job.st, flush, edge)
        return out

    def _commit(self, st: _Station, flush: bool) -> None:
        """Move the committed mark over received samples; fill a gap once data `max_delay_s`
        beyond its start have arrived (late blocks may still fill it until then)."""
        if st.present_through >= st.hwm:  # every sample received in order: nothing to check
            st.committed = st.hwm
            return
        self._commit_gaps(st, flush)
        # below `committed` every sample is received or filled: the fast path may resume
        st.present_through = max(st.present_through, st.committed)

    def _commit_gaps(self, st: _Station, flush: bool) -> None:
        """`_commit` over missing samples: stop at a gap still waiting for late data, fill
        one whose wait is over."""
        while st.committed < st.hwm:
            seg = st.present.view(st.committed, st.hwm).all(axis=0)
            missing = np.flatnonzero(~seg)
            if missing.size == 0:
                st.committed = st.hwm
                return
            gap_start = st.committed + int(missing[0])
            st.committed = gap_start
            limit = st.hwm if flush else st.hwm - self.max_delay
            if gap_start >= limit:
                return
            after = seg[missing[0] :]
            run = np.flatnonzero(after)
            gap_end = gap_start + (int(run[0]) if run.size else after.size)  # the whole gap
            self._fill(st, gap_start, gap_end)
            st.committed = gap_end

    def _fill(self, st: _Station, start: int, stop: int) -> None:
        """Fill missing samples in [start, stop) from the past only, flag them, say so."""
        present = st.present.view(start, stop)
        raw = st.raw.view(start, stop)
        lo = max(st.raw.base, start - _FILL_CONTEXT)
        filled_comps = []
        for row in range(3):
            miss = ~present[row]
            if not miss.any():
                continue
            if not st.seen[row]:
                st.once(
                    f"missing-{row}",
                    "station %s: component %s missing; filled with zeros",
                    st.name,
                    COMPONENTS[row],
                )
                value = 0.0
            else:
                past = st.raw.view(lo, start)[row]
                if past.size:
                    value = float(past.mean())
                else:  # gap at the very start: nearest later sample on this channel
                    later = st.raw.view(start, stop)[row][~miss]
                    value = float(later[0]) if later.size else 0.0
                filled_comps.append(COMPONENTS[row])
            raw[row][miss] = value
            present[row][miss] = True
        st.filled.view(start, stop)[0] = True
        if filled_comps:
            log.warning(
                "station %s: gap of %.2f s on %s at %s filled with the mean of the previous"
                " samples (flagged)",
                st.name,
                (stop - start) / SAMPLING_RATE,
                ",".join(filled_comps),
                iso_utc(st.origin + start / SAMPLING_RATE),
            )

    def _plan(self, st: _Station, flush: bool) -> list[_Job]:
        """The windows due on `st`: regular ones (multiples of `stride` fully committed), then
        at the stream's end a tail window right-aligned on the newest sample, else (early
        picking) a right-edge window when `early_every_s` of new data arrived."""
        jobs = []
        a = st.next_window
        while a + WINDOW <= st.committed:
            jobs.append(_Job(st, "regular", a, False))
            a += self.cfg.stride
        final_after = a if jobs else st.final
        end = st.committed
        if end <= final_after:
            return jobs
        start = end - WINDOW
        if flush:
            # when the last regular window already ends at the newest sample, its outputs are
            # all there is (`_decide` makes them final): no tail window
            if not (a > 0 and start == a - self.cfg.stride):
                jobs.append(_Job(st, "tail", start, False))
        elif self.cfg.early and start >= 0 and end - st.edge_end >= self.early_every:
            # (not before a full window of data: a padded window's border is no onset)
            st.edge_end = end
            if jobs and jobs[-1].start == start:  # the newest regular window is that window
                jobs[-1].edge = True
            else:
                jobs.append(_Job(st, "edge", start, False))
        return jobs

    def _window(self, st: _Station, start: int) -> np.ndarray:
        """(3, 6000) raw samples [start, start + 6000); a stream shorter than a window is
        padded on the left with each channel's mean."""
        end = start + WINDOW
        if start >= 0:
            return st.raw.view(start, end)
        have = st.raw.view(max(st.raw.base, 0), end)
        pad = np.repeat(have.mean(axis=1, keepdims=True), WINDOW - have.shape[1], axis=1)
        return np.concatenate([pad.astype(np.float32), have], axis=1)

    def _apply(
        self, job: _Job, outputs: list[np.ndarray]
    ) -> tuple[int, list[np.ndarray]] | None:
        """Stack a window's outputs (regular, tail) and/or hand them on (edge: provisional)."""
        st, s = job.st, job.start
        if job.kind == "edge":
            self.edge_windows_run += 1
            return s, outputs
        self.windows_run += 1
        if job.kind == "tail":
            end = s + WINDOW
            keep = end - st.final
            self._accumulate(st, st.final, end, [o[WINDOW - keep :] for o in outputs])
            log.info(
                "station %s: end of stream; tail window processed (%.2f s of newest samples)",
                st.name,
                keep / SAMPLING_RATE,
            )
            st.final = end
            return None
        b = int(self.cfg.blinding)
        # blinding: a window's edge samples, where the model sees its zero-padded border, are
        # left to the neighbouring windows (except at the start of the stream)
        left = 0 if s == 0 else b
        self._accumulate(st, s + left, s + WINDOW - b, [o[left : WINDOW - b] for o in outputs])
        if b:  # the newest window's blinded edge, in case the stream ends with that window
            st.blinded_tail = (s + WINDOW - b, [o[WINDOW - b :].copy() for o in outputs])
        st.next_window = s + self.cfg.stride
        st.final = st.next_window
        if job.edge:
            self.edge_windows_run += 1
            self.edge_windows_shared += 1
            return s, outputs
        return None

    def _decide(
        self,
        st: _Station,
        flush: bool,
        edge: tuple[int, list[np.ndarray]] | None,
    ) -> list[Event]:
        """Final events (and retractions) from the final samples, then provisional picks."""
        if flush and st.final < st.committed:
            log.info(
                "station %s: end of stream; the last window already ends at the newest sample",
                st.name,
            )
            if st.blinded_tail is not None:  # only kept when blinding
                at, outputs = st.blinded_tail
                self._accumulate(st, at, at + outputs[0].shape[-1], outputs)
            st.final = st.committed
        emitted: list[Event] = []
        # the final samples are all a scan reads: unchanged since the last one, it would
        # decode the same triggers again (and find no retraction: `st.scan` did not move)
        if flush or st.final != st.scanned_final:
            self._scan(st, flush, emitted)
            st.scanned_final = st.final
        if edge is not None and not self._quiet(st, edge[0], edge[1][0]):
            self._provisional(st, edge[0], edge[1], emitted)
        self._trim(st)
        if emitted:
            st.events.extend(emitted)
        return emitted

    def _predict(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.predict(normalize(x))
        out = [np.asarray(o, dtype=np.float32).reshape(x.shape[0], -1) for o in out]
        if len(out) not in (3, 6):
            raise DataError(f"predictor returned {len(out)} arrays, expected 3 (or 6 in MC mode)")
        self.predict_calls += 1
        return out

    def _accumulate(self, st: _Station, start: int, stop: int, outputs: list[np.ndarray]) -> None:
        for series in st.probability_series():
            series.ensure(stop)
        prob = st.prob.view(start, stop)
        combine = np.maximum if self.cfg.combine == "max" else np.add
        for row in range(3):
            combine(prob[row], outputs[row], out=prob[row])
        if self._track_hot:
            above = np.flatnonzero(
                above_threshold(prob[0], self.early_thresholds["detection"],
                                self.decoding.protocol)
            )  # fmt: skip
            if above.size:
                st.hot_last = max(st.hot_last, start + int(above[-1]))
        if st.count is not None:
            st.count.view(start, stop)[:] += 1.0
        if st.spread is not None and len(outputs) == 6:
            spread = st.spread.view(start, stop)
            np.maximum(spread, np.stack(outputs[3:]), out=spread)

    def probabilities(self, st: _Station, start: int, stop: int) -> np.ndarray:
        """(3, n) combined det/P/S of final samples [start, stop)."""
        prob = st.prob.view(start, stop)
        if self.cfg.combine == "mean":
            return prob / np.maximum(st.count.view(start, stop), 1.0)
        return prob

    # ------------------------------------------------------------------ events
    def _scan(self, st: _Station, flush: bool, emitted: list[Event]) -> None:
        """Decode the triggers whose evidence is final with the evaluation's own decoder.

        `st.scan` is the start of the undecided region: the start of a trigger still running
        (or waiting for its look-ahead), else the first sample not yet scanned. Triggers are
        found on the final samples from there; each one that has ended (plus the protocol's
        look-ahead, or the stream's end) is decoded by `decode.decode_triggers` on the final
        probabilities from `context` samples before the region, exactly as
        `decode.decode_record` decodes the whole record offline. Provisional events the final
        decoding does not contain are then retracted.
        """
        if st.final > st.scan:
            lo = max(st.scan - self.context, st.prob.base, 0)
            probs = self.probabilities(st, lo, st.final)
            n = probs.shape[1]
            start = st.scan - lo
            det = probs[0, start:]
            # (a quiet region, the common case, skips the trigger search)
            found = (
                find_triggers(det, self.th_det, self.decoding.protocol)
                if self._any_above(det, self.th_det)
                else ()
            )
            runs = [(on + start, off + start) for on, off in found]
            ready = []
            for on, off in runs:
                if not flush and (off >= n or off + self.lookahead > n):
                    st.scan = lo + on  # this trigger (and any later one) waits for more samples
                    break
                ready.append((on, off))
            else:
                st.scan = st.final
            if ready:  # (none ready: no detection, and the decoder's peak search is skipped)
                for det in decode_triggers(
                    probs[0], probs[1], probs[2], ready, self.thresholds, self.decoding
                ):
                    self._final(st, det.shifted(lo), emitted)
        for ev in [e for e in st.open if e.off <= st.scan]:  # decided, and not final
            st.open.remove(ev)
            emitted.append(self._retraction(st, ev))

    def _final(self, st: _Station, det: Detection, emitted: list[Event]) -> None:
        """A decoded final detection: `final`, under the id of the provisional event it
        overlaps most (the oldest on a tie), else under a new id."""
        if self.cfg.require_pick and det.p_sample is None and det.s_sample is None:
            log.info(
                "station %s: detection at %s without a P or S pick; dropped (require_pick)",
                st.name,
                iso_utc(st.origin + det.on / SAMPLING_RATE),
            )
            return
        best, overlap = None, 0
        for ev in st.open:
            o = min(ev.off, det.off) - max(ev.on, det.on)
            if o > overlap:
                best, overlap = ev, o
        if best is not None:
            st.open.remove(best)
        event_id = best.event_id if best is not None else st.new_id()
        emitted.append(self._event(st, det, "final", event_id, st.final))

    def _quiet(self, st: _Station, start: int, det: np.ndarray) -> bool:
        """True when `_provisional` would find no trigger, known without reading buffers:
        neither the stack from the undecided region on (`hot_last`) nor the right-edge
        window's not-final detection `det[final - start:]` exceeds the provisional detection
        threshold (max stacking: max(a, b) > t iff a > t or b > t). False means "decode",
        never "skip wrongly"."""
        if not self._track_hot:
            return False
        cut = st.final - start
        if st.hot_last >= st.scan or cut < 0:
            return False
        if self._any_above(det[cut:], self.early_thresholds["detection"]):
            return False
        self.edge_windows_quiet += 1
        return True

    def _any_above(self, x: np.ndarray, threshold: float) -> bool:
        """Whether any sample of `x` passes the trigger test, in one reduction (no trigger
        without one); fmax ignores NaN as the threshold test does."""
        return x.size > 0 and bool(
            above_threshold(np.fmax.reduce(x), threshold, self.decoding.protocol)
        )

    def _provisional(
        self, st: _Station, start: int, outputs: list[np.ndarray], emitted: list[Event]
    ) -> None:
        """Decode the undecided region on provisional probabilities: the final ones, then the
        regular windows' partial stack combined with the right-edge window's outputs. Every
        trigger with a P or S pick is a provisional event: new -> `pick`; a pick of a known
        one moved by more than `update_s`, or a phase appeared -> `update`. A phase that a
        later window no longer shows keeps its last pick (no update: the final decides)."""
        end = start + WINDOW
        if end <= st.scan:
            return
        for series in st.probability_series():
            series.ensure(end)
        lo = max(st.scan - self.context, st.prob.base, 0)
        cut = st.final - start  # the edge window's samples from here on are not final
        if self.cfg.combine == "max":
            # one array, no temporaries: the final stack [lo, final), then the partial stack
            # of [final, end) raised to the edge window's outputs
            probs = st.prob.view(lo, end).copy()
            recent = probs[:, st.final - lo :]
            for row in range(3):
                np.maximum(recent[row], outputs[row][cut:], out=recent[row])
        else:
            edge = np.stack([o[cut:] for o in outputs[:3]])
            recent = (st.prob.view(st.final, end) + edge) / (st.count.view(st.final, end) + 1.0)
            probs = np.concatenate([self.probabilities(st, lo, st.final), recent], axis=1)
        th = self.early_thresholds
        first = st.scan - lo
        above = above_threshold(probs[0, first:], th["detection"], self.decoding.protocol)
        if not above.any():
            return  # no trigger in the undecided region (a quiet station)
        runs = [(on + first, off + first) for on, off in trigger_intervals(above)]
        matched: set[str] = set()
        tolerance = self.cfg.update_s * SAMPLING_RATE
        for det in decode_triggers(probs[0], probs[1], probs[2], runs, th,
                                   self.decoding):  # fmt: skip
            if det.p_sample is None and det.s_sample is None:
                continue  # a pick needs a P or S peak
            det = det.shifted(lo)
            ev = max(
                (e for e in st.open if e.event_id not in matched),
                key=lambda e: min(e.off, det.off) - max(e.on, det.on),
                default=None,
            )
            if ev is None or min(ev.off, det.off) - max(ev.on, det.on) <= 0:
                ev = _Open(st.new_id(), det.on, det.off, det.p_sample, det.s_sample,
                           det.p_prob, det.s_prob)  # fmt: skip
                st.open.append(ev)
                matched.add(ev.event_id)
                emitted.append(self._event(st, det, "pick", ev.event_id, end))
                continue
            matched.add(ev.event_id)
            ev.on, ev.off = det.on, det.off
            if _moved(ev.p, det.p_sample, tolerance) or _moved(ev.s, det.s_sample, tolerance):
                if det.p_sample is not None:
                    ev.p, ev.p_prob = det.p_sample, det.p_prob
                if det.s_sample is not None:
                    ev.s, ev.s_prob = det.s_sample, det.s_prob
                det = Detection(det.on, det.off, det.det_prob, ev.p, ev.p_prob, ev.s, ev.s_prob)
                emitted.append(self._event(st, det, "update", ev.event_id, end))

    def _event(self, st: _Station, det: Detection, kind: str, event_id: str, hi: int) -> Event:
        """One decoded detection -> an emitted object (engine flags, MC spread for finals)."""
        lo = max(det.on - self.context, st.prob.base, 0)
        hi = min(det.off + self.lookahead, hi)
        flags = []
        if st.filled.view(lo, max(lo, min(hi, st.filled.end))).any():
            flags.append("gap_filled")
        if not all(st.seen):
            flags.append("missing_component")
        if st.resamplers:
            flags.append("resampled")
        spread = None
        if st.spread is not None and kind == "final":
            sp = st.spread.view(det.on, det.off)
            spread = {"det": float(sp[0].max())}
            for row, phase, at in ((1, "p", det.p_sample), (2, "s", det.s_sample)):
                if at is not None:
                    spread[phase] = float(st.spread.view(at, at + 1)[row, 0])

        t = partial(_stream_time, st.origin)

        return Event(
            station=st.name,
            detection_start=t(det.on),
            detection_end=t(det.off),
            det_prob=det.det_prob,
            p_time=t(det.p_sample),
            p_prob=det.p_prob,
            s_time=t(det.s_sample),
            s_prob=det.s_prob,
            model=self.model_name,
            flags=tuple(flags),
            spread=spread,
            kind=kind,
            event_id=event_id,
            emitted_at=self.clock,
        )

    def _retraction(self, st: _Station, ev: _Open) -> Event:
        """`retract` of a provisional event the final decoding does not contain (its last
        provisional picks, so a reader sees what is withdrawn)."""

        t = partial(_stream_time, st.origin)

        return Event(
            station=st.name,
            detection_start=t(ev.on),
            detection_end=t(ev.off),
            det_prob=0.0,
            p_time=t(ev.p),
            p_prob=None,
            s_time=t(ev.s),
            s_prob=None,
            model=self.model_name,
            kind="retract",
            event_id=ev.event_id,
            emitted_at=self.clock,
        )

    def _trim(self, st: _Station) -> None:
        keep = min(
            st.next_window,
            st.final - self.history,
            st.scan - self.context,
            st.committed - max(_FILL_CONTEXT, WINDOW),
        )
        if keep - st.raw.base < _TRIM_STEP:  # every series shares `base`: nothing to drop yet
            return
        for series in (st.raw, st.present, st.filled):
            series.trim(keep, _TRIM_STEP)
        for series in st.probability_series():
            series.trim(keep, _TRIM_STEP)

    # ------------------------------------------------------------------ views
    def history_view(self, station: str, seconds: float | None = None) -> dict[str, Any]:
        """Recent final waveforms and probabilities of a station (for the live display)."""
        st = self.stations[station]
        stop = st.final
        start = max(
            st.raw.base,
            st.prob.base,
            0,
            stop - int((seconds or self.cfg.history_s) * SAMPLING_RATE),
        )
        if stop <= start:
            return {
                "origin": st.origin,
                "start": start,
                "waveform": np.zeros((3, 0), np.float32),
                "prob": np.zeros((3, 0), np.float32),
                "events": list(st.events),
            }
        return {
            "origin": st.origin,
            "start": start,
            "waveform": st.raw.view(start, stop).copy(),
            "prob": self.probabilities(st, start, stop).copy(),
            "events": list(st.events),
        }


def _stream_time(origin: float, sample: int | None) -> float | None:
    """POSIX time of a station's sample index (None stays None)."""
    return None if sample is None else origin + sample / SAMPLING_RATE


def finals(objects: Iterable[Event]) -> list[Event]:
    """The final events among emitted objects (what the offline windows give)."""
    return [e for e in objects if e.kind == "final"]


def _moved(old: int | None, new: int | None, tolerance: float) -> bool:
    """A pick appeared or moved by more than `tolerance` samples (one that vanished did not)."""
    if new is None:
        return False
    return old is None or abs(new - old) > tolerance

