"""Event outputs: JSON lines on stdout, a ZeroMQ publisher, and picks files as CSV, QuakeML and
SC3ML (SeisComP), the files through obspy.

An emitted object is a dict or anything with `to_dict()` (the engine's `Event`). Its JSON
object goes unchanged to the JSON lines and the publisher. Objects may carry an event
lifecycle (issue #16): `kind` is `pick` (provisional), `update` (the provisional pick moved),
`final` or `retract`, default `final` when absent; `event_id` ties the objects of one event
together and `emitted_at` is the stream time they were emitted at. Only final events reach the
picks files: a final replaces an earlier final of the same `event_id`, a retract removes the
event. Objects without `event_id` are each one final event (what the engine emits today).

Why rewrite the picks files after every event (atomically): a monitor is stopped by a signal,
not by a clean end; the files on disk must always be complete and valid.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from lxml import etree
from obspy import UTCDateTime
from obspy.core.event import (
    Catalog,
    Comment,
    CreationInfo,
    Pick,
    ResourceIdentifier,
    WaveformStreamID,
)
from obspy.core.event import Event as QEvent
from obspy.core.util.base import ENTRY_POINTS
from obspy.io.seiscomp.core import SCHEMA_VERSION as SC3ML_VERSIONS

from feq_lab.errors import ConfigError, DataError
from feq_lab.paths import atomic_path, atomic_write_text

KINDS = ("pick", "update", "final", "retract")
PROVISIONAL = ("pick", "update")

# file format -> file name in the run's output directory
FILE_NAMES = {"csv": "picks.csv", "quakeml": "picks.xml", "sc3ml": "picks.sc3ml.xml"}

# obspy >= 1.5 calls the SeisComP format "SCML" and warns on "SC3ML" (same writer)
_SCML_FORMAT = "SCML" if "SCML" in ENTRY_POINTS["event_write"] else "SC3ML"

CSV_COLUMNS = (
    "station",
    "phase",
    "time",
    "probability",
    "detection_start",
    "detection_end",
    "det_prob",
    "model",
    "flags",
    "event_id",
    "emitted_at",
)


@dataclass(frozen=True)
class OutputConfig:
    """`outputs` of conf/stream.yaml (the publisher's part is `publish.PublishConfig`)."""

    files: tuple[str, ...] = ("csv", "quakeml", "sc3ml")
    # SeisComP schema version obspy writes; 0.12 (SeisComP 5) is obspy's default and is read by
    # every later SeisComP. obspy 1.5 writes 0.7-0.13 (SC3ML) and 0.14 (SCML).
    sc3ml_version: str = "0.12"
    publish: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, key: str = "outputs") -> OutputConfig:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{key}.{min(unknown)}", "unknown key")
        files = cfg.get("files", cls.files)
        if isinstance(files, str) or not all(f in FILE_NAMES for f in files or ()):
            raise ConfigError(
                f"{key}.files", f"must be a list of {', '.join(FILE_NAMES)}, got {files!r}"
            )
        version = sc3ml_version(cfg.get("sc3ml_version", cls.sc3ml_version), f"{key}.sc3ml_version")
        return cls(tuple(files or ()), version, dict(cfg.get("publish") or {}))


def sc3ml_version(value: Any, key: str = "outputs.sc3ml_version") -> str:
    """The schema version as obspy names it; a YAML/CLI float 0.1 means '0.10'."""
    candidates = [str(value)]
    if isinstance(value, float):
        candidates.append(f"{value:.2f}")
    for c in candidates:
        if c in SC3ML_VERSIONS:
            return c
    raise ConfigError(key, f"obspy writes SeisComP XML {', '.join(SC3ML_VERSIONS)}, got {value!r}")


# ---------------------------------------------------------------------------- objects


def as_record(obj: Any) -> dict[str, Any]:
    """The JSON object of an emitted thing (a dict, or an object with `to_dict()`), checked."""
    rec = dict(obj) if isinstance(obj, Mapping) else dict(obj.to_dict())
    kind = record_kind(rec)
    if kind != "final" and not rec.get("event_id"):
        raise DataError(f"a {kind!r} object needs an event_id: {rec}")
    return rec


def record_kind(rec: Mapping[str, Any]) -> str:
    kind = rec.get("kind", "final")
    if kind not in KINDS:
        raise DataError(f"event kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def posix_time(value: Any) -> float | None:
    """POSIX seconds from a float or an ISO-8601 UTC string (the JSON objects' times)."""
    if value is None or isinstance(value, (int, float)):
        return value
    return datetime.fromisoformat(str(value)).timestamp()  # 3.11 reads "Z"


def record_picks(rec: Mapping[str, Any]) -> list[tuple[str, str, float | None]]:
    """(phase, ISO time, probability) of each pick of a record: `p_time`/`s_time` (an event)
    or `phase`/`time`/`prob` (a single-pick object)."""
    if rec.get("phase") and rec.get("time"):
        return [(str(rec["phase"]).upper(), rec["time"], rec.get("prob"))]
    return [
        (ph, rec[f"{ph.lower()}_time"], rec.get(f"{ph.lower()}_prob"))
        for ph in ("P", "S")
        if rec.get(f"{ph.lower()}_time")
    ]


@dataclass
class Lifecycle:
    """What is known about every event: the open (provisional) ones by id, the final ones in
    the order they first became final. Why one place: the sink's files and the live plot must
    agree on which events exist."""

    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    finals: dict[str, tuple[dict[str, Any], Any]] = field(default_factory=dict)
    _anonymous: int = 0

    def apply(self, rec: dict[str, Any], obj: Any = None) -> bool:
        """Take one record (and the object it came from); True when the final set changed."""
        kind, event_id = record_kind(rec), rec.get("event_id")
        if kind in PROVISIONAL:
            if event_id in self.finals:  # a late provisional for a final event changes nothing
                return False
            self.open[event_id] = _merge_provisional(self.open.get(event_id), rec)
            return False
        if kind == "retract":
            self.open.pop(event_id, None)
            return self.finals.pop(event_id, None) is not None
        if event_id is None:
            self._anonymous += 1
            event_id = f"#{self._anonymous}"
        self.open.pop(event_id, None)
        self.finals[event_id] = (rec, obj if obj is not None else rec)
        return True

    def final_records(self) -> list[dict[str, Any]]:
        return [rec for rec, _ in self.finals.values()]

    def final_objects(self) -> list[Any]:
        return [obj for _, obj in self.finals.values()]

    def current(self) -> list[dict[str, Any]]:
        """Final and still-open events (the plot's view): provisional ones last."""
        return self.final_records() + list(self.open.values())


_PICK_KEYS = ("phase", "time", "prob")


def _merge_provisional(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """An open event's state after `new`: a single-pick object (`phase`/`time`/`prob`) sets
    that phase's pick and keeps the other's (a P then an S pick of one event are both shown);
    an event-shaped object overrides the fields it carries."""
    if not (new.get("phase") and new.get("time")):
        return {**(old or {}), **new}
    ph = str(new["phase"]).lower()
    merged = {k: v for k, v in {**(old or {}), **new}.items() if k not in _PICK_KEYS}
    merged[f"{ph}_time"], merged[f"{ph}_prob"] = new["time"], new.get("prob")
    return merged


def current_events(objects: Iterable[Any]) -> list[dict[str, Any]]:
    """Replay `objects` (in emission order) through a Lifecycle: the events that stand now."""
    state = Lifecycle()
    for obj in objects:
        state.apply(as_record(obj))
    return state.current()


# ---------------------------------------------------------------------------- files


def picks_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, object]]:
    """One row per pick (P, S); a detection without picks gives one row with phase 'detection'."""
    rows = []
    for rec in records:
        common = {
            "station": rec.get("station"),
            "detection_start": rec.get("detection_start"),
            "detection_end": rec.get("detection_end"),
            "det_prob": _round(rec.get("det_prob")),
            "model": rec.get("model"),
            "flags": ";".join(rec.get("flags") or ()),
            "event_id": rec.get("event_id", ""),
            "emitted_at": rec.get("emitted_at", ""),
        }
        picks = record_picks(rec)
        if not picks:
            rows.append(
                {
                    **common,
                    "phase": "detection",
                    "time": rec.get("detection_start"),
                    "probability": _round(rec.get("det_prob")),
                }
            )
        for phase, t, prob in picks:
            rows.append({**common, "phase": phase, "time": t, "probability": _round(prob)})
    return rows


def _round(x: Any) -> float | None:
    return None if x is None else round(float(x), 4)


def write_picks_csv(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(picks_rows(records))
    return atomic_write_text(path, buf.getvalue())


def quakeml_safe(text: str) -> str:
    """`text` with the characters a QuakeML resource URI's path may not hold (':', '@', spaces,
    ...) replaced by '-', e.g. 'feq3:feq-picker@champion' -> 'feq3-feq-picker-champion'.
    Why: obspy writes such an id anyway, but the file then fails QuakeML validation."""
    return re.sub(r"[^\w\-.*()+?~'=,;#/&]", "-", str(text)) or "model"


def _event_key(rec: Mapping[str, Any]) -> str:
    """A stable id: the event id, else station + detection start. Why stable: the files are
    rewritten after every event, and a consumer (SeisComP merges by publicID) must see the same
    pick under the same id every time, not a fresh random one."""
    return quakeml_safe(rec.get("event_id") or f"{rec.get('station')}/{rec.get('detection_start')}")


def _detection_text(rec: Mapping[str, Any]) -> str:
    flags = rec.get("flags") or ()
    return (
        f"detection {rec.get('detection_start')} - {rec.get('detection_end')}, "
        f"det_prob {float(rec.get('det_prob') or 0.0):.3f}"
        + (f", flags {','.join(flags)}" if flags else "")
    )


def _picks(rec: Mapping[str, Any], with_detection: bool) -> list[Pick]:
    """obspy Picks of one final record (automatic, probability and model in a comment)."""
    parts = str(rec.get("station", "")).split(".")
    wid = WaveformStreamID(
        network_code=parts[0],
        station_code=parts[1] if len(parts) > 1 else "",
        location_code=parts[2] if len(parts) > 2 else None,
    )
    model = str(rec.get("model", ""))
    created = rec.get("emitted_at")
    out = []
    for phase, t, prob in record_picks(rec):
        pick_id = f"smi:local/feq-lab/pick/{_event_key(rec)}/{phase}"
        text = f"probability {float(prob or 0.0):.4f}, model {model}"
        comments = [Comment(text=text, resource_id=ResourceIdentifier(f"{pick_id}/probability"))]
        if with_detection:
            comments.append(
                Comment(
                    text=_detection_text(rec),
                    resource_id=ResourceIdentifier(f"{pick_id}/detection"),
                )
            )
        out.append(
            Pick(
                resource_id=ResourceIdentifier(pick_id),
                time=UTCDateTime(t),
                waveform_id=wid,
                phase_hint=phase,
                evaluation_mode="automatic",
                method_id=f"smi:local/feq-lab/{quakeml_safe(model)}",
                creation_info=CreationInfo(
                    author=model, creation_time=UTCDateTime(created) if created else None
                ),
                comments=comments,
            )
        )
    return out


def events_to_catalog(records: Sequence[Mapping[str, Any]]) -> Catalog:
    """An obspy Catalog: one Event per final detection, its P and S as automatic Picks."""
    catalog = Catalog(description="feq-lab real-time monitor picks")
    for rec in records:
        catalog.append(
            QEvent(
                resource_id=ResourceIdentifier(f"smi:local/feq-lab/event/{_event_key(rec)}"),
                event_type="earthquake",
                creation_info=CreationInfo(author=str(rec.get("model", ""))),
                comments=[
                    Comment(
                        text=_detection_text(rec),
                        resource_id=ResourceIdentifier(
                            f"smi:local/feq-lab/event/{_event_key(rec)}/detection"
                        ),
                    )
                ],
                picks=_picks(rec, with_detection=False),
            )
        )
    return catalog


def sc3ml_catalog(records: Sequence[Mapping[str, Any]]) -> Catalog:
    """The records' picks (detection in each pick's comment) in one holder event that the
    SeisComP writer drops (see write_sc3ml)."""
    holder = QEvent(resource_id=ResourceIdentifier("smi:local/feq-lab/picks"))
    for rec in records:
        holder.picks.extend(_picks(rec, with_detection=True))
    return Catalog(events=[holder], description="feq-lab real-time monitor picks")


def _render(fmt: str, records: Sequence[Mapping[str, Any]], version: str) -> Any:
    """obspy's document for `records`, parsed (lxml): QuakeML, or SeisComP XML without events."""
    buf = io.BytesIO()
    if fmt == "quakeml":
        events_to_catalog(records).write(buf, format="QUAKEML")
    else:
        sc3ml_catalog(records).write(buf, format=_SCML_FORMAT, version=version, event_removal=True)
    return etree.fromstring(buf.getvalue())


def _container(root: Any) -> Any:
    """eventParameters (QuakeML) or EventParameters (SeisComP): where events / picks live."""
    return (
        root.find("{*}eventParameters")
        if root.find("{*}eventParameters") is not None
        else (root.find("{*}EventParameters"))
    )


_ID_PREFIXES = ("smi:local/feq-lab/event/", "smi:local/feq-lab/pick/")


def _element_key(element: Any) -> str | None:
    """The _event_key an event or pick element was written for (from its stable publicID)."""
    pid = element.get("publicID") or ""
    if pid.startswith(_ID_PREFIXES[0]):
        return pid[len(_ID_PREFIXES[0]) :]
    if pid.startswith(_ID_PREFIXES[1]):
        return pid[len(_ID_PREFIXES[1]) :].rsplit("/", 1)[0]
    return None


class XmlPicksFile:
    """One picks XML file (`fmt` quakeml or sc3ml) kept as obspy's parsed document whose
    elements for each final event are made by obspy once, when the event becomes final (all
    new ones of an emit in one call).

    Why: obspy takes about 4 ms (QuakeML) and 12 ms (SeisComP XML, an XSLT) per event, measured
    on this shared 2-core machine; rewriting every event with obspy after each one took 1.6 s
    per emit at 100 events and grows with the run. Splicing the cached elements is one C-speed
    serialisation of the file.
    """

    def __init__(self, fmt: str, version: str = "0.12"):
        if fmt not in ("quakeml", "sc3ml"):
            raise ValueError(f"not an XML picks format: {fmt!r}")
        self.fmt, self.version = fmt, version
        self.root = _render(fmt, [], version)
        self.container = _container(self.root)
        self.fixed = list(self.container)  # the catalog's description (QuakeML)
        self._cache: dict[str, tuple[Mapping[str, Any], list[Any]]] = {}

    def update(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Make the document hold exactly `records` (final events, in this order)."""
        keys = [_event_key(r) for r in records]
        stale = [(k, r) for k, r in zip(keys, records) if self._cache.get(k, (None,))[0] is not r]
        if stale:
            grouped: dict[str | None, list[Any]] = {}
            for element in list(_container(_render(self.fmt, [r for _, r in stale], self.version))):
                grouped.setdefault(_element_key(element), []).append(element)
            for k, r in stale:
                self._cache[k] = (r, grouped.get(k, []))
        self._cache = {k: self._cache[k] for k in keys}
        for element in list(self.container)[len(self.fixed) :]:
            self.container.remove(element)
        self.container.extend(e for k in keys for e in self._cache[k][1])

    def write(self, path: str | Path) -> Path:
        etree.indent(self.root, space="  ")
        with atomic_path(path, suffix=".xml") as tmp:
            etree.ElementTree(self.root).write(str(tmp), xml_declaration=True, encoding="UTF-8")
        return Path(path)


def write_quakeml(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    doc = XmlPicksFile("quakeml")
    doc.update(records)
    return doc.write(path)


def write_sc3ml(
    path: str | Path, records: Sequence[Mapping[str, Any]], version: str = "0.12"
) -> Path:
    """SeisComP XML as scautopick writes picks: the picks alone in EventParameters (the
    detection in each pick's comment). Why no <event>: in SeisComP an event groups origins
    (located hypocentres); a single-station detection has none, and an origin-less event would
    be an empty event in the observatory's database (obspy's `event_removal`, "useful ... when
    injecting SCML into seiscomp"). obspy's reader returns an empty catalog for such a file: its
    SeisComP-to-QuakeML conversion keeps only picks that an origin's arrivals reference."""
    doc = XmlPicksFile("sc3ml", version)
    doc.update(records)
    return doc.write(path)


# ---------------------------------------------------------------------------- the sink


class EventSink:
    """Prints each object as one JSON line, publishes the same text (when a publisher is given),
    and keeps the picks files of the final events up to date.

    `events` are the final events' objects as emitted (an update or retract replaces or drops
    them by event id); `lifecycle` holds the still-provisional ones too.
    """

    def __init__(
        self,
        out_dir: str | Path | None,
        stream: TextIO | None = None,
        config: OutputConfig | None = None,
        publisher: Any | None = None,
    ):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.stream = stream if stream is not None else sys.stdout
        self.config = config if config is not None else OutputConfig()
        self.publisher = publisher
        self.lifecycle = Lifecycle()
        self.emitted = 0
        self._xml: dict[str, XmlPicksFile] = {}
        if self.out_dir is not None:
            self._write_files()  # empty but valid files from the start

    @property
    def events(self) -> list[Any]:
        return self.lifecycle.final_objects()

    def emit(self, objects: Sequence[Any]) -> None:
        """Write every object out at once (JSON line, publisher), then the files once."""
        changed = False
        for obj in objects:
            rec = as_record(obj)
            text = json.dumps(rec)
            self.stream.write(text + "\n")
            self.stream.flush()
            if self.publisher is not None:
                self.publisher.send(record_kind(rec), text)
            self.emitted += 1
            changed |= self.lifecycle.apply(rec, obj)
        if changed and self.out_dir is not None:
            self._write_files()

    def paths(self) -> dict[str, Path]:
        assert self.out_dir is not None
        return {fmt: self.out_dir / FILE_NAMES[fmt] for fmt in self.config.files}

    def _write_files(self) -> None:
        records = self.lifecycle.final_records()
        for fmt, path in self.paths().items():
            if fmt == "csv":
                write_picks_csv(path, records)
                continue
            if fmt not in self._xml:
                self._xml[fmt] = XmlPicksFile(fmt, self.config.sc3ml_version)
            self._xml[fmt].update(records)
            self._xml[fmt].write(path)
