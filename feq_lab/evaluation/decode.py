"""The one decoder: probability traces -> detections and P/S picks, under a named protocol.

Offline evaluation (`picks.extract_picks`, `metrics.evaluate`, `thresholds.threshold_grid`) and
the streaming monitor (`streaming.engine`) all decode through this module, so a continuous record
scored offline and streamed through the monitor give the same picks.

Two protocols (``eval.protocol``):

``eqt`` — EQTransformer's tester decisions (Mousavi et al. 2020, Nat. Commun. 11:3952; its code's
``tester.py`` + ``EqT_utils.picker``; summarised in REFERENCE §3):

- Triggers: obspy ``trigger_onset`` with on = off threshold, i.e. the maximal runs of samples with
  ``det > threshold`` (strictly). A trigger whose last sample ``ed`` is fewer than 10 samples after
  its first ``bg`` (``ed - bg < 10``) is dropped.
- P and S candidates: local maxima of the P (S) trace at or above its threshold, found like
  ``detect_peaks(x, mph=threshold, mpd=1)``: the first sample of a rise that stops rising
  (``x[i-1] < x[i] >= x[i+1]``), never the first or last sample of the record.
- S = the *first* S candidate strictly inside the trigger (``bg < i < ed``), not the highest.
- P = the highest P candidate with ``bg - 1.0 s < i < S - 10`` (``< ed`` when there is no S);
  "highest" compares the values rounded to 3 decimals as EQT does (the first wins a tie).
- A trigger is a detection only when it has a P or an S candidate.
- 60-s trace protocol (`decode_traces`): only the first detection of a trace is scored (EQT's
  tester writes the first entry of ``matches``); later detections only appear in
  ``det_intervals``.

``lab`` — the lab's earlier rules, kept exactly: triggers are runs of ``det >= threshold``;
a trace is detected when it has one; the P (S) pick is the highest sample of the P (S) trace
inside the union of the triggers widened by ``association_margin_s`` (0.5 s), when that maximum
is at or above the threshold (the first sample on ties). S may come before P.

Continuous records (`decode_record`, longer than a 60-s window): every trigger is decoded on its
own with the per-trigger rules above (eqt: length, candidates, first S, P before S; lab: the
highest P and S within the trigger widened by the margin) and every surviving trigger is one
`Detection` — the "first trigger only" rule belongs to the 60-s trace protocol alone. Under
``eqt`` S is never before P (P < S - 10 samples).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import maximum_filter1d

from feq_lab.errors import ConfigError, DataError

PROTOCOLS = ("eqt", "lab")
DEFAULT_PROTOCOL = "eqt"  # the study's tables (issue 14): comparable with EQT's and the FEQ report's
THRESHOLD_KEYS = ("detection", "p", "s")
# EQT's tester defaults (tester.py: detection_threshold=0.20, P_threshold=0.1, S_threshold=0.1).
EQT_TESTER_THRESHOLDS = {"detection": 0.2, "p": 0.1, "s": 0.1}
EQT_MIN_TRIGGER = 10  # samples: EqT_utils.picker keeps a trigger when ed - bg >= 10
EQT_P_LEAD_S = 1.0  # P candidates from 1 s (100 samples) before the trigger starts
EQT_P_BEFORE_S = 10  # samples: a P candidate lies more than 10 samples before the chosen S
EQT_ROUND = 3  # EQT compares P peak heights rounded to 3 decimals
CHUNK_TRACES = 512  # traces processed at once: bounds memory at ~25 MB per (N, 6000) float32 temp


@dataclass(frozen=True)
class TracePicks:
    """What one trace yields: detection flag, trigger intervals, and the P/S picks (or None)."""

    detected: bool
    det_intervals: tuple[tuple[int, int], ...] = ()
    p_sample: float | None = None
    p_prob: float | None = None
    s_sample: float | None = None
    s_prob: float | None = None


@dataclass(frozen=True)
class Detection:
    """One decoded trigger of a record: half-open [on, off) samples, its peak detection
    probability (EQT's tester reports the mean; only the monitor's events carry this value) and
    its P/S picks (sample indices of the record, or None)."""

    on: int
    off: int
    det_prob: float
    p_sample: int | None = None
    p_prob: float | None = None
    s_sample: int | None = None
    s_prob: float | None = None

    def shifted(self, offset: int) -> Detection:
        """The same detection with every sample index moved by `offset`."""
        return Detection(
            self.on + offset, self.off + offset, self.det_prob,
            None if self.p_sample is None else self.p_sample + offset, self.p_prob,
            None if self.s_sample is None else self.s_sample + offset, self.s_prob,
        )


@dataclass(frozen=True)
class DecodeSettings:
    """The decoding rules of one evaluation: protocol name and the sampling rate they are in.

    `association_margin_s` is the lab protocol's; EQT's own window (P from 1 s before the
    trigger) is fixed by its tester.
    """

    protocol: str = DEFAULT_PROTOCOL
    sampling_rate: float = 100.0
    association_margin_s: float = 0.5

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError("eval.protocol", f"must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.sampling_rate > 0:
            raise ConfigError("sampling_rate", f"must be > 0, got {self.sampling_rate}")
        if self.association_margin_s < 0:
            raise ConfigError(
                "association_margin_s", f"must be >= 0, got {self.association_margin_s}"
            )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> DecodeSettings:
        """From an `eval` config block (keys protocol, sampling_rate, association_margin_s)."""
        cfg = cfg or {}
        return cls(
            protocol=str(cfg.get("protocol", DEFAULT_PROTOCOL)),
            sampling_rate=float(cfg.get("sampling_rate", 100.0)),
            association_margin_s=float(cfg.get("association_margin_s", 0.5)),
        )

    @property
    def margin(self) -> int:
        """The lab association margin in samples."""
        return round(self.association_margin_s * self.sampling_rate)

    @property
    def lead(self) -> int:
        """EQT's P look-back before the trigger, in samples."""
        return round(EQT_P_LEAD_S * self.sampling_rate)

    @property
    def context(self) -> int:
        """Samples before a trigger's start that its decision may read (for streaming buffers)."""
        return self.lead + 2 if self.protocol == "eqt" else self.margin

    @property
    def lookahead(self) -> int:
        """Final samples needed after a trigger's end before it can be decoded."""
        return 1 if self.protocol == "eqt" else max(self.margin, 1)


# ----------------------------------------------------------------------- checks and shapes
def check_thresholds(
    thresholds: Mapping[str, float], key_prefix: str = "thresholds"
) -> dict[str, float]:
    """Validate a {detection, p, s} mapping of thresholds in [0, 1]; errors name the key."""
    out: dict[str, float] = {}
    for key in THRESHOLD_KEYS:
        if key not in thresholds:
            raise ConfigError(f"{key_prefix}.{key}", "missing (need detection, p and s)")
        try:
            value = float(thresholds[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key_prefix}.{key}", f"not a number: {thresholds[key]!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key_prefix}.{key}", f"must lie in [0, 1], got {value}")
        out[key] = value
    return out


def as_traces(x: Any, name: str) -> np.ndarray:
    """(N, T) view of probability traces; a single (T,) trace becomes (1, T)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(f"{name} probabilities must be (N, T), got shape {arr.shape}")
    return arr


def _three(det: Any, p: Any, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    det, p, s = as_traces(det, "detection"), as_traces(p, "p"), as_traces(s, "s")
    if not (det.shape == p.shape == s.shape):
        raise DataError(f"probability shapes differ: det {det.shape}, p {p.shape}, s {s.shape}")
    return det, p, s


def trigger_intervals(above: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open [on, off) runs of True in a 1-D boolean trace."""
    edges = np.diff(np.concatenate(([0], np.asarray(above).astype(np.int8), [0])))
    on = np.flatnonzero(edges == 1)
    off = np.flatnonzero(edges == -1)
    return tuple((int(a), int(b)) for a, b in zip(on, off))


def above_threshold(det: np.ndarray, threshold: float, protocol: str) -> np.ndarray:
    """The trigger condition: ``det > th`` for eqt (obspy trigger_onset), ``det >= th`` for lab."""
    d = np.asarray(det, np.float32)
    th = np.float32(threshold)
    return d > th if protocol == "eqt" else d >= th


def find_triggers(det: np.ndarray, threshold: float, protocol: str) -> tuple[tuple[int, int], ...]:
    """All trigger runs [on, off) of a 1-D detection trace (no length rule applied yet)."""
    return trigger_intervals(above_threshold(det, threshold, protocol))


def local_maxima(x: np.ndarray) -> np.ndarray:
    """Indices of rising-edge local maxima (``x[i-1] < x[i] >= x[i+1]``), as EQT's
    ``detect_peaks(mpd=1)``: the first sample of a plateau, never the record's first/last."""
    x = np.asarray(x, np.float32)
    if x.size < 3:
        return np.zeros(0, np.int64)
    rise = x[1:-1] > x[:-2]
    stop = x[2:] <= x[1:-1]
    return np.flatnonzero(rise & stop) + 1


# --------------------------------------------------------------------------- EQT rules
class _Candidates:
    """Threshold-free P and S peak candidates of one record (built once, queried per rule)."""

    def __init__(self, p: np.ndarray, s: np.ndarray):
        p, s = np.asarray(p, np.float32), np.asarray(s, np.float32)
        self.p_idx = local_maxima(p)
        self.p_val = p[self.p_idx]
        self.p_rank = np.round(self.p_val, EQT_ROUND)
        self.s_idx = local_maxima(s)
        self.s_val = s[self.s_idx]
        self._memo: dict[tuple, int | None] = {}  # threshold grids ask the same query often

    def first_s(self, bg: int, ed: int, threshold: float) -> int | None:
        """Position (in `s_idx`) of the first S candidate >= threshold with bg < i < ed."""
        key = ("s", bg, ed, threshold)
        if key not in self._memo:
            self._memo[key] = self._first_s(bg, ed, threshold)
        return self._memo[key]

    def _first_s(self, bg: int, ed: int, threshold: float) -> int | None:
        a = int(np.searchsorted(self.s_idx, bg, side="right"))
        b = int(np.searchsorted(self.s_idx, ed, side="left"))
        hits = np.flatnonzero(self.s_val[a:b] >= np.float32(threshold))
        return a + int(hits[0]) if hits.size else None

    def best_p(self, lo: int, hi: int, threshold: float) -> int | None:
        """Position (in `p_idx`) of the highest P candidate >= threshold with lo < i < hi
        (heights rounded to 3 decimals; the first wins a tie)."""
        key = ("p", lo, hi, threshold)
        if key not in self._memo:
            self._memo[key] = self._best_p(lo, hi, threshold)
        return self._memo[key]

    def _best_p(self, lo: int, hi: int, threshold: float) -> int | None:
        a = int(np.searchsorted(self.p_idx, lo, side="right"))
        b = int(np.searchsorted(self.p_idx, hi, side="left"))
        if b <= a:
            return None
        ok = self.p_val[a:b] >= np.float32(threshold)
        if not ok.any():
            return None
        rank = np.where(ok, self.p_rank[a:b], -np.inf)
        return a + int(np.argmax(rank))


def _eqt_trigger(
    cand: _Candidates, on: int, off: int, p_th: float, s_th: float, lead: int
) -> tuple[int | None, int | None] | None:
    """EQT's per-trigger decision: (P position, S position) in the candidate arrays, or None
    when the trigger is too short or has neither candidate (not a detection)."""
    bg, ed = on, off - 1  # trigger_onset's on and off are both samples above the threshold
    if ed - bg < EQT_MIN_TRIGGER:
        return None
    s_pos = cand.first_s(bg, ed, s_th)
    hi = ed if s_pos is None else int(cand.s_idx[s_pos]) - EQT_P_BEFORE_S
    p_pos = cand.best_p(bg - lead, hi, p_th)
    if p_pos is None and s_pos is None:
        return None
    return p_pos, s_pos


def _eqt_detections(
    det: np.ndarray, cand: _Candidates, triggers: Sequence[tuple[int, int]],
    th: Mapping[str, float], lead: int,
) -> list[Detection]:
    out = []
    for on, off in triggers:
        found = _eqt_trigger(cand, on, off, th["p"], th["s"], lead)
        if found is None:
            continue
        p_pos, s_pos = found
        out.append(Detection(
            on, off, float(np.max(det[on:off])),
            None if p_pos is None else int(cand.p_idx[p_pos]),
            None if p_pos is None else float(cand.p_val[p_pos]),
            None if s_pos is None else int(cand.s_idx[s_pos]),
            None if s_pos is None else float(cand.s_val[s_pos]),
        ))
    return out


# --------------------------------------------------------------------------- lab rules
def _lab_detections(
    det: np.ndarray, p: np.ndarray, s: np.ndarray, triggers: Sequence[tuple[int, int]],
    th: Mapping[str, float], margin: int,
) -> list[Detection]:
    """Per trigger: the highest P and S within [on - margin, off + margin) (clipped)."""
    out = []
    n = det.shape[-1]
    for on, off in triggers:
        lo, hi = max(on - margin, 0), min(off + margin, n)
        picks: list[Any] = []
        for trace, key in ((p, "p"), (s, "s")):
            seg = np.asarray(trace[lo:hi], np.float32)
            i = int(np.argmax(seg))
            ok = seg[i] >= np.float32(th[key])
            picks += [lo + i, float(seg[i])] if ok else [None, None]
        out.append(Detection(on, off, float(np.max(det[on:off])), *picks))
    return out


@dataclass(frozen=True)
class PeakFeatures:
    """Lab protocol, threshold-free peaks of one detection threshold: (N,) arrays.

    `*_value` is -inf where the association region is empty (no detection).
    """

    detected: np.ndarray
    p_sample: np.ndarray
    p_value: np.ndarray
    s_sample: np.ndarray
    s_value: np.ndarray

    def picks_at(self, phase: str, threshold: float) -> np.ndarray:
        """Pick samples (float, NaN = no pick) of `phase` at `threshold`."""
        sample = getattr(self, f"{phase}_sample")
        value = getattr(self, f"{phase}_value")
        return np.where(value >= np.float32(threshold), sample.astype(np.float64), np.nan)


def _masked_peak(
    prob: np.ndarray, region: np.ndarray, buf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Index and value of the maximum of `prob` inside `region` (-inf where it is empty)."""
    buf.fill(-np.inf)
    np.copyto(buf, prob, where=region)
    idx = buf.argmax(axis=1)
    return idx, np.take_along_axis(buf, idx[:, None], axis=1)[:, 0]


def peak_features_multi(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    detection_thresholds: Sequence[float],
    margin: int,
) -> list[PeakFeatures]:
    """Lab protocol: `PeakFeatures` for each detection threshold, from one pass over the traces.

    Why one pass: widening the trigger intervals by `margin` equals thresholding a running
    maximum of the detection trace (max over +-margin samples >= threshold), so that running
    maximum and the float32 copies are computed once per chunk and shared by every threshold.
    """
    det, p, s = _three(det, p, s)
    n, k = det.shape[0], len(detection_thresholds)
    detected = np.zeros((k, n), bool)
    p_idx, s_idx = np.zeros((k, n), np.int64), np.zeros((k, n), np.int64)
    p_val, s_val = np.full((k, n), -np.inf, np.float32), np.full((k, n), -np.inf, np.float32)
    for a in range(0, n, CHUNK_TRACES):
        b = min(a + CHUNK_TRACES, n)
        det_c = np.asarray(det[a:b], np.float32)
        p_c, s_c = np.asarray(p[a:b], np.float32), np.asarray(s[a:b], np.float32)
        if margin > 0:
            det_c = maximum_filter1d(det_c, size=2 * margin + 1, axis=1, mode="nearest")
        buf = np.empty_like(p_c)
        for j, th in enumerate(detection_thresholds):
            region = det_c >= np.float32(th)
            detected[j, a:b] = region.any(axis=1)
            p_idx[j, a:b], p_val[j, a:b] = _masked_peak(p_c, region, buf)
            s_idx[j, a:b], s_val[j, a:b] = _masked_peak(s_c, region, buf)
    return [PeakFeatures(detected[j], p_idx[j], p_val[j], s_idx[j], s_val[j]) for j in range(k)]


def _lab_traces(
    det: np.ndarray, p: np.ndarray, s: np.ndarray, th: Mapping[str, float], margin: int
) -> list[TracePicks]:
    feats = peak_features_multi(det, p, s, [th["detection"]], margin)[0]
    p_pick, s_pick = feats.picks_at("p", th["p"]), feats.picks_at("s", th["s"])
    out: list[TracePicks] = []
    for i in range(det.shape[0]):
        intervals = find_triggers(det[i], th["detection"], "lab") if feats.detected[i] else ()
        has_p, has_s = np.isfinite(p_pick[i]), np.isfinite(s_pick[i])
        out.append(TracePicks(
            detected=bool(feats.detected[i]),
            det_intervals=intervals,
            p_sample=float(p_pick[i]) if has_p else None,
            p_prob=float(feats.p_value[i]) if has_p else None,
            s_sample=float(s_pick[i]) if has_s else None,
            s_prob=float(feats.s_value[i]) if has_s else None,
        ))
    return out


# ------------------------------------------------------------------------- entry points
def decode_triggers(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    triggers: Sequence[tuple[int, int]],
    thresholds: Mapping[str, float],
    settings: DecodeSettings = DecodeSettings(),
) -> list[Detection]:
    """Apply the per-trigger rules of `settings.protocol` to given triggers of one record
    (1-D arrays; trigger and pick indices are positions in them). The streaming engine calls
    this on its final samples; `decode_record` on a whole record."""
    th = check_thresholds(thresholds)
    det = np.asarray(det, np.float32)
    if settings.protocol == "eqt":
        return _eqt_detections(det, _Candidates(p, s), triggers, th, settings.lead)
    return _lab_detections(det, p, s, triggers, th, settings.margin)


def decode_record(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    thresholds: Mapping[str, float],
    settings: DecodeSettings = DecodeSettings(),
) -> list[Detection]:
    """Every detection of one continuous 1-D record (any length), in time order."""
    det, p, s = (a[0] for a in _three(det, p, s))
    th = check_thresholds(thresholds)
    return decode_triggers(
        det, p, s, find_triggers(det, th["detection"], settings.protocol), th, settings
    )


def decode_traces(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    thresholds: Mapping[str, float],
    settings: DecodeSettings = DecodeSettings(),
) -> list[TracePicks]:
    """One `TracePicks` per trace of (N, T) arrays under the 60-s trace protocol (module doc)."""
    th = check_thresholds(thresholds)
    det, p, s = _three(det, p, s)
    if settings.protocol == "lab":
        return _lab_traces(det, p, s, th, settings.margin)
    out = []
    for i in range(det.shape[0]):
        found = decode_triggers(
            det[i], p[i], s[i], find_triggers(det[i], th["detection"], "eqt"), th, settings
        )
        if not found:
            out.append(TracePicks(False))
            continue
        first = found[0]
        out.append(TracePicks(
            True, tuple((d.on, d.off) for d in found),
            None if first.p_sample is None else float(first.p_sample), first.p_prob,
            None if first.s_sample is None else float(first.s_sample), first.s_prob,
        ))
    return out


@dataclass(frozen=True)
class GridPicks:
    """Per-trace outcomes at one (detection, p, s) threshold combination: (N,) arrays."""

    detected: np.ndarray
    p_pick: np.ndarray  # float sample, NaN = no pick
    s_pick: np.ndarray


def eqt_grid(
    det: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    detection_thresholds: Sequence[float],
    p_thresholds: Sequence[float],
    s_thresholds: Sequence[float],
    settings: DecodeSettings = DecodeSettings(),
) -> list[tuple[tuple[float, float, float], GridPicks]]:
    """EQT-protocol outcomes of every threshold combination (in `itertools.product` order of
    the three lists), from one candidate search per trace.

    Why this shape: under EQT's rules the detection flag depends on all three thresholds (a
    trigger counts only with a P or S candidate) and P depends on the chosen S, so the lab's
    per-phase shortcut does not apply; instead each trace's candidates are found once and
    the same per-trigger rule (`_eqt_trigger`) is evaluated for each combination.
    """
    det, p, s = _three(det, p, s)
    n = det.shape[0]
    combos = list(itertools.product(detection_thresholds, p_thresholds, s_thresholds))
    detected = np.zeros((len(combos), n), bool)
    p_pick = np.full((len(combos), n), np.nan)
    s_pick = np.full((len(combos), n), np.nan)
    lead = settings.lead
    for i in range(n):
        cand = _Candidates(p[i], s[i])
        d32 = np.asarray(det[i], np.float32)
        triggers = {th: find_triggers(d32, th, "eqt") for th in set(detection_thresholds)}
        for c, (d_th, p_th, s_th) in enumerate(combos):
            for on, off in triggers[d_th]:
                found = _eqt_trigger(cand, on, off, p_th, s_th, lead)
                if found is None:
                    continue
                detected[c, i] = True
                if found[0] is not None:
                    p_pick[c, i] = cand.p_idx[found[0]]
                if found[1] is not None:
                    s_pick[c, i] = cand.s_idx[found[1]]
                break  # only the first detection of a trace is scored
    return [(combo, GridPicks(detected[c], p_pick[c], s_pick[c])) for c, combo in enumerate(combos)]
