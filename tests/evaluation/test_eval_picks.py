"""Pick extraction on hand-built probability traces: the `lab` protocol's rules.

(Since issue 14 the default protocol is `eqt`, tested in test_decode.py; these tests keep the
lab's earlier rules reachable and exact, so they ask for `protocol="lab"`.)
"""

from functools import partial

import numpy as np
import pytest
from helpers_eval import T, box, gauss, stack

from feq_lab.errors import ConfigError, DataError
from feq_lab.evaluation.picks import extract_picks as extract_any
from feq_lab.evaluation.picks import trigger_intervals

extract_picks = partial(extract_any, protocol="lab")

TH = {"detection": 0.3, "p": 0.1, "s": 0.1}


def test_detection_interval_and_highest_peaks():
    det = box(1000, 2500, 0.9)
    p = gauss(1000, 0.8) + gauss(1800, 0.3)  # highest peak wins over a second, smaller one
    s = gauss(2000, 0.7)
    (pk,) = extract_picks(det, p, s, TH)
    assert pk.detected and pk.det_intervals == ((1000, 2500),)
    assert pk.p_sample == 1000.0 and pk.p_prob == pytest.approx(0.8)
    assert pk.s_sample == 2000.0 and pk.s_prob == pytest.approx(0.7)


def test_no_detection_means_no_picks_however_high_the_peaks():
    (pk,) = extract_picks(box(1000, 2000, 0.29), gauss(1000, 1.0), gauss(1500, 1.0), TH)
    assert not pk.detected and pk.det_intervals == ()
    assert pk.p_sample is None and pk.s_sample is None


def test_peaks_outside_the_association_region_are_ignored():
    det = box(3000, 4000)
    # the big P peak is far before the trigger; inside the region only a sub-threshold bump
    p = gauss(1000, 1.0) + gauss(3100, 0.05)
    s = gauss(5000, 1.0) + gauss(3500, 0.4)
    (pk,) = extract_picks(det, p, s, TH)
    assert pk.detected
    assert pk.p_sample is None  # 0.05 < 0.1 inside the region; the 1.0 peak is not associated
    assert pk.s_sample == 3500.0


def test_association_margin_of_half_a_second():
    det = box(1000, 2000)
    near, far = extract_picks(
        stack(det, det), stack(gauss(960), gauss(940)), stack(gauss(1500), gauss(1500)), TH
    )
    assert near.p_sample == 960.0  # 40 samples before trigger-on: within the 50-sample margin
    assert far.p_sample is not None and far.p_sample == 950.0  # region edge: the 940 peak is out
    (none,) = extract_picks(det, gauss(900), gauss(1500), TH, association_margin_s=0.0)
    assert none.p_sample is None  # without a margin the 900 peak is 100 samples outside


def test_several_triggers_give_several_intervals():
    det = box(100, 200) + box(3000, 3100)
    (pk,) = extract_picks(det, gauss(3050), gauss(150), TH)
    assert pk.det_intervals == ((100, 200), (3000, 3100))
    assert (pk.p_sample, pk.s_sample) == (3050.0, 150.0)
    assert trigger_intervals(np.ones(10, bool)) == ((0, 10),)


def test_bad_thresholds_and_shapes_name_the_problem():
    det, p, s = box(0, 10), gauss(5), gauss(5)
    with pytest.raises(ConfigError, match="thresholds.s"):
        extract_picks(det, p, s, {"detection": 0.3, "p": 0.1})
    with pytest.raises(ConfigError, match="thresholds.p"):
        extract_picks(det, p, s, {"detection": 0.3, "p": 1.5, "s": 0.1})
    with pytest.raises(DataError, match="shapes differ"):
        extract_picks(det, p[: T - 1], s, TH)
