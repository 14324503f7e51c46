"""Event outputs: JSON lines on stdout, and a picks file as CSV and QuakeML (obspy Catalog/Pick).

Why rewrite the picks files after every event (atomically): a monitor is stopped by a signal,
not by a clean end; the files on disk must always be complete and valid.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Sequence, TextIO

from feq_lab.paths import atomic_path, atomic_write_text
from feq_lab.streaming.engine import Event, iso_utc

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
)


def picks_rows(events: Sequence[Event]) -> list[dict[str, object]]:
    """One row per pick (P, S); a detection without picks gives one row with phase 'detection'."""
    rows = []
    for ev in events:
        common = {
            "station": ev.station,
            "detection_start": iso_utc(ev.detection_start),
            "detection_end": iso_utc(ev.detection_end),
            "det_prob": round(ev.det_prob, 4),
            "model": ev.model,
            "flags": ";".join(ev.flags),
        }
        picks = [
            (ph, t, p)
            for ph, t, p in (("P", ev.p_time, ev.p_prob), ("S", ev.s_time, ev.s_prob))
            if t is not None
        ]
        if not picks:
            rows.append(
                {
                    **common,
                    "phase": "detection",
                    "time": iso_utc(ev.detection_start),
                    "probability": round(ev.det_prob, 4),
                }
            )
        for phase, t, prob in picks:
            rows.append(
                {**common, "phase": phase, "time": iso_utc(t), "probability": round(prob, 4)}
            )
    return rows


def write_picks_csv(path: str | Path, events: Sequence[Event]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(picks_rows(events))
    return atomic_write_text(path, buf.getvalue())


def events_to_catalog(events: Sequence[Event]):
    """An obspy Catalog: one Event per detection, its P and S as automatic Picks."""
    from obspy import UTCDateTime
    from obspy.core.event import Catalog, Comment, CreationInfo, Pick, WaveformStreamID
    from obspy.core.event import Event as QEvent

    catalog = Catalog(description="feq-lab real-time monitor picks")
    for ev in events:
        parts = ev.station.split(".")
        wid = WaveformStreamID(
            network_code=parts[0],
            station_code=parts[1] if len(parts) > 1 else "",
            location_code=parts[2] if len(parts) > 2 else None,
        )
        qev = QEvent(
            event_type="earthquake",
            creation_info=CreationInfo(author=ev.model),
            comments=[
                Comment(
                    text=(
                        f"detection {iso_utc(ev.detection_start)} - "
                        f"{iso_utc(ev.detection_end)}, det_prob {ev.det_prob:.3f}"
                        + (f", flags {','.join(ev.flags)}" if ev.flags else "")
                    )
                )
            ],
        )
        for phase, t, prob in (("P", ev.p_time, ev.p_prob), ("S", ev.s_time, ev.s_prob)):
            if t is None:
                continue
            qev.picks.append(
                Pick(
                    time=UTCDateTime(t),
                    waveform_id=wid,
                    phase_hint=phase,
                    evaluation_mode="automatic",
                    method_id=f"smi:local/feq-lab/{quakeml_safe(ev.model)}",
                    comments=[Comment(text=f"probability {prob:.4f}, model {ev.model}")],
                )
            )
        catalog.append(qev)
    return catalog


def quakeml_safe(text: str) -> str:
    """`text` with the characters a QuakeML resource URI's path may not hold (':', '@', spaces,
    ...) replaced by '-', e.g. 'feq3:feq-picker@champion' -> 'feq3-feq-picker-champion'.
    Why: obspy writes such an id anyway, but the file then fails QuakeML validation."""
    return re.sub(r"[^\w\-.*()+?~'=,;#/&]", "-", str(text)) or "model"


def write_quakeml(path: str | Path, events: Sequence[Event]) -> Path:
    with atomic_path(path, suffix=".xml") as tmp:
        events_to_catalog(events).write(str(tmp), format="QUAKEML")
    return Path(path)


class EventSink:
    """Prints each event as one JSON line and keeps picks.csv / picks.xml up to date."""

    def __init__(self, out_dir: str | Path | None, stream: TextIO | None = None):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.stream = stream if stream is not None else sys.stdout
        self.events: list[Event] = []
        if self.out_dir is not None:
            self._write_files()  # empty but valid files from the start

    def emit(self, events: Sequence[Event]) -> None:
        for ev in events:
            self.stream.write(json.dumps(ev.to_dict()) + "\n")
            self.stream.flush()
        if events:
            self.events.extend(events)
            if self.out_dir is not None:
                self._write_files()

    def _write_files(self) -> None:
        write_picks_csv(self.out_dir / "picks.csv", self.events)
        write_quakeml(self.out_dir / "picks.xml", self.events)
