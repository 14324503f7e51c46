"""The monitor loop (source → engine → outputs, display) and the replay scenario's scoring.

Latency (issue #16) is scored on the stream's own clock: an emitted object's `emitted_at` is the
stream time of the newest sample the engine had when it emitted it, so a replay at simulated
real time measures onset-to-pick latency exactly, without sleeping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from feq_lab.data.labels import detection_end
from feq_lab.streaming.engine import Block, Event, StreamEngine
from feq_lab.streaming.outputs import EventSink
from feq_lab.streaming.sources import Scenario
from feq_lab.tracking import keys

log = logging.getLogger("feq_lab.streaming")


@dataclass
class MonitorStats:
    """What a run did: counts, and how long a block took from arrival to its events."""

    blocks: int = 0
    events: int = 0
    windows: int = 0
    wall_s: float = 0.0
    block_delays_s: list[float] = field(default_factory=list)  # arrival -> engine done
    pick_delays_s: list[float] = field(
        default_factory=list
    )  # arrival -> events out (blocks with events)
    kinds: dict[str, int] = field(default_factory=dict)  # emitted objects per lifecycle kind
    objects: list[Event] | None = None  # every emitted object, in order (when asked to keep)

    def summary(self) -> dict[str, Any]:
        def ms(values: list[float], how: Any) -> float | None:
            return round(float(how(values)) * 1e3, 2) if values else None

        return {
            "blocks": self.blocks,
            "events": self.events,
            "windows": self.windows,
            "wall_s": round(self.wall_s, 3),
            "block_delay_ms_p50": ms(self.block_delays_s, np.median),
            "block_delay_ms_max": ms(self.block_delays_s, np.max),
            "pick_delay_ms_max": ms(self.pick_delays_s, np.max),
            "kinds": dict(self.kinds),
        }

    def count(self, objects: Sequence[Event]) -> None:
        for obj in objects:
            kind = getattr(obj, "kind", "final")
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.objects is not None:
            self.objects.extend(objects)


def run_monitor(
    blocks: Iterable[Block],
    engine: StreamEngine,
    sink: EventSink,
    display: Any | None = None,
    refresh_s: float = 1.0,
    keep_objects: bool = False,
) -> MonitorStats:
    """Feed every block as it arrives; flush at the end (or on Ctrl-C) so the tail is processed.
    `keep_objects`: keep every emitted object in `stats.objects` (replay scoring)."""
    stats = MonitorStats(objects=[] if keep_objects else None)
    started = time.perf_counter()
    last_draw: dict[str, float] = {}
    try:
        for block in blocks:
            arrived = time.perf_counter()
            events = engine.feed(block)
            sink.emit(events)
            done = time.perf_counter()
            stats.blocks += 1
            stats.count(events)
            stats.block_delays_s.append(done - arrived)
            if events:
                stats.pick_delays_s.append(done - arrived)
                stats.events += len(events)
            if display is not None and (
                events or done - last_draw.get(block.station, -1e9) >= refresh_s
            ):
                display.update(engine, block.station)
                last_draw[block.station] = time.perf_counter()
    except KeyboardInterrupt:
        log.warning("interrupted: flushing the stations' buffers")
    events = engine.flush()
    sink.emit(events)
    stats.count(events)
    stats.events += len(events)
    if display is not None:
        for station in engine.stations:
            display.update(engine, station)
    stats.windows = engine.windows_run
    stats.wall_s = time.perf_counter() - started
    return stats


def first_pick_latency(
    objects: Sequence[Any], phase: str, truth: float, tolerance_s: float = 0.5
) -> float | None:
    """Seconds from the true arrival to the `emitted_at` of the first emitted object (a
    provisional pick, an update or a final event, never a retraction) whose `phase` pick lies
    within `tolerance_s` of it; None when no object ever picked it."""
    for obj in objects:
        if getattr(obj, "kind", "final") == "retract" or obj.emitted_at is None:
            continue
        t = getattr(obj, f"{phase}_time")
        if t is not None and abs(t - truth) <= tolerance_s:
            return round(float(obj.emitted_at - truth), 3)
    return None


def score_scenario(
    events: Sequence[Event],
    scenario: Scenario,
    tolerance_s: float = 0.5,
    objects: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Compare a replay's final events with its ground truth; with `objects` (every emitted
    object, in order) also the P and S latency and the lifecycle's counts.

    The earthquake is detected by an event whose detection interval overlaps
    [P − tolerance, S + 0.4 (S − P)] (the detection label's span); every other event is false,
    and those overlapping the noise minutes are counted separately.
    """
    lo = scenario.p_time - tolerance_s
    hi = detection_end(scenario.p_time, scenario.s_time)
    matched = [e for e in events if e.detection_end >= lo and e.detection_start <= hi]
    false = [e for e in events if e not in matched]
    in_noise = [
        e
        for e in events
        if any(e.detection_end > a and e.detection_start < b for a, b in scenario.noise_intervals)
    ]
    best = max(matched, key=lambda e: e.det_prob) if matched else None
    p_err = None if best is None or best.p_time is None else best.p_time - scenario.p_time
    s_err = None if best is None or best.s_time is None else best.s_time - scenario.s_time
    p_ok = p_err is not None and abs(p_err) <= tolerance_s
    s_ok = s_err is not None and abs(s_err) <= tolerance_s
    out: dict[str, Any] = {
        "seed": scenario.seed,
        "earthquake_trace": scenario.earthquake_trace,
        "detected": best is not None,
        "n_events": len(events),
        "false_events": len(false),
        "noise_detections": len(in_noise),
        "duplicate_events": max(len(matched) - 1, 0),
        "p_error_s": None if p_err is None else round(p_err, 3),
        "s_error_s": None if s_err is None else round(s_err, 3),
        "p_within_tolerance": p_ok,
        "s_within_tolerance": s_ok,
        "passed": len(events) == 1 and best is not None and p_ok and s_ok and not in_noise,
    }
    if objects is not None:
        kinds = [getattr(o, "kind", "final") for o in objects]
        out["p_latency_s"] = first_pick_latency(objects, "p", scenario.p_time, tolerance_s)
        out["s_latency_s"] = first_pick_latency(objects, "s", scenario.s_time, tolerance_s)
        out["provisional_picks"] = kinds.count("pick")
        out["updates"] = kinds.count("update")
        out["retractions"] = kinds.count("retract")
    return out


def summarise_scenarios(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over seeded scenarios: detections, misses, false events, pick errors."""

    def errs(key: str) -> np.ndarray:
        return np.array([s[key] for s in scores if s[key] is not None], dtype=np.float64)

    out: dict[str, Any] = {
        "scenarios": len(scores),
        "passed": sum(s["passed"] for s in scores),
        "detections": sum(s["detected"] for s in scores),
        "misses": sum(not s["detected"] for s in scores),
        "false_events": sum(s["false_events"] for s in scores),
        "noise_detections": sum(s["noise_detections"] for s in scores),
        "p_within_0.5s": sum(s["p_within_tolerance"] for s in scores),
        "s_within_0.5s": sum(s["s_within_tolerance"] for s in scores),
    }
    for phase in ("p", "s"):
        e = errs(f"{phase}_error_s")
        out[f"{phase}_picks"] = int(e.size)
        out[f"{phase}_error_mean_s"] = round(float(e.mean()), 3) if e.size else None
        out[f"{phase}_error_mae_s"] = round(float(np.abs(e).mean()), 3) if e.size else None
    if scores and "p_latency_s" in scores[0]:
        for phase in ("p", "s"):
            lat = errs(f"{phase}_latency_s")
            out[f"{phase}_latency_n"] = int(lat.size)
            for q in (50, 95):
                value = round(float(np.percentile(lat, q)), 3) if lat.size else None
                out[f"{phase}_latency_s_p{q}"] = value
        for key in ("provisional_picks", "updates", "retractions"):
            out[key] = sum(s[key] for s in scores)
    return out


# the summary's keys logged to the model's MLflow run (`stream/<key>`): selection and searches
# can use the latency as an objective or a constraint
LATENCY_METRICS = tuple(k.removeprefix(keys.STREAM_PREFIX) for k in keys.STREAM_KEYS)


def latency_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """`stream/*` metrics of a scenarios summary (missing values left out)."""
    return {
        keys.STREAM_PREFIX + k: float(summary[k]) for k in LATENCY_METRICS
        if summary.get(k) is not None
    }
