"""`protocol: eqt` on hand-built probability traces: each of EQTransformer's tester decisions
(tester.py + EqT_utils.picker, REFERENCE §3) with the outcome EQT's code gives."""

import numpy as np
import pytest
from helpers_eval import T, box, gauss, stack

from feq_lab.errors import ConfigError
from feq_lab.evaluation.decode import (
    EQT_TESTER_THRESHOLDS,
    DecodeSettings,
    decode_record,
    decode_traces,
    local_maxima,
)
from feq_lab.evaluation.picks import extract_picks

TH = EQT_TESTER_THRESHOLDS  # 0.2 / 0.1 / 0.1


def one(det, p, s, th=TH, protocol="eqt"):
    (pk,) = extract_picks(det, p, s, th, protocol=protocol)
    return pk


def test_tester_thresholds_and_default_protocol():
    assert TH == {"detection": 0.2, "p": 0.1, "s": 0.1}
    assert DecodeSettings().protocol == "eqt"
    det, p, s = box(1000, 1800), gauss(1000), gauss(1400)
    assert extract_picks(det, p, s, TH) == extract_picks(det, p, s, TH, protocol="eqt")


def test_p_peak_0_8_s_before_the_trigger_is_picked():
    det, s = box(1000, 1800), gauss(1400)
    pk = one(det, gauss(920), s)  # 80 samples = 0.8 s before the trigger starts
    assert pk.detected and pk.p_sample == 920.0 and pk.s_sample == 1400.0
    assert one(det, gauss(920), s, protocol="lab").p_sample is None  # lab: only 0.5 s before
    late = one(det, gauss(895), s)  # 1.05 s before: outside EQT's (bg - 100, ...) window
    assert late.detected and late.p_sample is None and late.s_sample == 1400.0


def test_first_s_peak_is_kept_not_the_highest():
    det = box(1000, 2400)
    s = gauss(1300, 0.3) + gauss(1700, 0.9)
    pk = one(det, gauss(1000), s)
    assert pk.s_sample == 1300.0 and pk.s_prob == pytest.approx(0.3)
    assert one(det, gauss(1000), s, protocol="lab").s_sample == 1700.0  # lab: the highest


def test_short_trigger_blip_is_ignored():
    p, s = gauss(1002), gauss(1003)
    blip = one(box(1000, 1005), p, s)  # a 5-sample trigger with P and S peaks inside
    assert not blip.detected and blip.p_sample is None and blip.s_sample is None
    # EQT keeps a trigger when ed - bg >= 10 (ed = its last sample above the threshold)
    p2, s2 = gauss(1000), gauss(1005)
    assert one(box(1000, 1011), p2, s2).detected  # 11 samples: ed - bg = 10
    assert not one(box(1000, 1010), p2, s2).detected  # 10 samples: ed - bg = 9


def test_trigger_without_p_or_s_candidate_is_not_a_detection():
    det = box(1000, 2000, 0.9)
    assert not one(det, np.zeros(T, np.float32), np.zeros(T, np.float32)).detected
    below = one(det, gauss(1000, 0.09), gauss(1500, 0.09))  # peaks under 0.1
    assert not below.detected and below.det_intervals == ()
    ramp = np.linspace(0, 0.9, T).astype(np.float32)  # high but never a local maximum
    assert not one(det, ramp, ramp).detected
    assert one(det, np.zeros(T, np.float32), gauss(1500)).detected  # S alone is enough
    assert one(det, np.zeros(T, np.float32), np.zeros(T, np.float32), protocol="lab").detected


def test_only_the_first_detection_of_a_trace_is_scored():
    det = box(1000, 1600) + box(3000, 3800)
    p = gauss(1000, 0.3) + gauss(3000, 0.9)
    s = gauss(1300, 0.3) + gauss(3500, 0.9)
    pk = one(det, p, s)
    assert (pk.p_sample, pk.s_sample) == (1000.0, 1300.0)  # not the stronger second event
    assert pk.det_intervals == ((1000, 1600), (3000, 3800))
    # a first trigger without candidates is no detection, so the next one is the first scored
    p0 = gauss(3000, 0.9)
    s0 = gauss(3500, 0.9)
    assert (one(det, p0, s0).p_sample, one(det, p0, s0).s_sample) == (3000.0, 3500.0)


def test_p_must_lie_more_than_10_samples_before_the_chosen_s():
    det = box(1000, 2000)
    s = gauss(1500)
    close = gauss(1492, 0.9)  # 8 samples before S: not a P candidate
    pk = one(det, close + gauss(1200, 0.4), s)
    assert pk.p_sample == 1200.0 and pk.s_sample == 1500.0
    assert one(det, gauss(1490, 0.9) + gauss(1200, 0.4), s).p_sample == 1200.0  # 10: still out
    assert one(det, gauss(1489, 0.9) + gauss(1200, 0.4), s).p_sample == 1489.0  # 11: in
    after = one(det, gauss(1700, 0.9), s)  # a P peak after S is never chosen
    assert after.p_sample is None and after.s_sample == 1500.0
    # with no S, P candidates run to the trigger's end
    assert one(det, gauss(1700, 0.9), np.zeros(T, np.float32)).p_sample == 1700.0


def test_highest_p_candidate_wins_and_ties_go_to_the_first():
    det = box(1000, 2000)
    pk = one(det, gauss(1000, 0.5) + gauss(1100, 0.8), gauss(1500))
    assert pk.p_sample == 1100.0
    # heights equal to 3 decimals: EQT's rounding makes them a tie, the first wins
    tie = one(det, gauss(1000, 0.80004) + gauss(1100, 0.80001), gauss(1500))
    assert tie.p_sample == 1000.0


def test_trigger_is_strictly_above_the_threshold_and_plateaus_peak_at_their_start():
    at = box(1000, 2000, 0.2)
    assert not one(at, gauss(1000), gauss(1500)).detected  # det == 0.2 is not > 0.2
    assert one(at, gauss(1000), gauss(1500), protocol="lab").detected
    plateau = box(1100, 1200, 0.5)
    assert local_maxima(plateau).tolist() == [1100]
    assert local_maxima(box(0, 100)).tolist() == []  # the record's first sample is no peak


def test_decode_record_decodes_every_trigger_and_s_never_precedes_p():
    n = 60_000
    det, p, s = (np.zeros(n, np.float32) for _ in range(3))
    t = np.arange(n)
    truth = [(5000, 5400), (20000, 20900), (41000, 41300)]
    for a, b in truth:
        det[a : int(b + 0.4 * (b - a))] = 0.9
        p += np.exp(-0.5 * ((t - a) / 10) ** 2).astype(np.float32)
        s += np.exp(-0.5 * ((t - b) / 10) ** 2).astype(np.float32)
    s += 0.8 * np.exp(-0.5 * ((t - 19990) / 10) ** 2).astype(np.float32)  # an S before P
    events = decode_record(det, p, s, TH)
    assert [(e.p_sample, e.s_sample) for e in events] == truth
    assert all(e.p_sample < e.s_sample for e in events)
    first = decode_traces(det[None], p[None], s[None], TH)[0]
    assert (first.p_sample, first.s_sample) == truth[0]


def test_bad_protocol_names_the_key():
    with pytest.raises(ConfigError, match="eval.protocol"):
        extract_picks(box(0, 10), gauss(5), gauss(5), TH, protocol="seisbench")
    with pytest.raises(ConfigError, match="thresholds.p"):
        decode_record(box(0, 10), gauss(5), gauss(5), {"detection": 0.2, "s": 0.1})
    assert stack(box(0, 10)).shape == (1, T)
