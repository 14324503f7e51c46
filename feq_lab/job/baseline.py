"""The classical reference row (`model=stalta`): obspy STA/LTA + AR picker on the same test
split, scored by the same `metrics.score`, logged with the same `test/` keys."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from feq_lab.evaluation.baseline import stalta_picks
from feq_lab.evaluation.metrics import score
from feq_lab.evaluation.truth import Truth
from feq_lab.job.assess import PLOTS_DIR, Assessment, draw_figures, eval_settings, prefixed


def test_split(data_dir: str | Path) -> tuple[Any, np.ndarray, Truth, list[str]]:
    """(metadata, raw waveforms (N, 6000, 3), truth, trace names) of the test split, CSV order."""
    from feq_lab.data.stead import open_dataset
    from feq_lab.errors import DataError

    ds = open_dataset(data_dir)
    meta = ds.metadata
    if "split" not in meta.columns:
        raise DataError("subset has no split column", path=str(data_dir))
    test = meta[meta["split"].astype(str) == "test"]
    if test.empty:
        raise DataError("subset has no test traces", path=str(data_dir))
    names = test["trace_name"].astype(str).tolist()
    waveforms = np.stack([ds.get_waveform(n) for n in names])
    return test, waveforms, Truth.from_metadata(test), names


def assess_baseline(model_cfg: Mapping[str, Any], data_dir: str | Path, eval_cfg: Mapping[str, Any],
                    out_dir: Path) -> Assessment:
    """Metrics and figures of the STA/LTA baseline; `latency/window_ms_p50` is its median
    time per window (one trace at a time, this process)."""
    _, waveforms, truth, names = test_split(data_dir)
    kw = eval_settings(eval_cfg)
    picks, times_ms = [], []
    for i, name in enumerate(names):  # one window at a time, as the latency key means
        start = time.perf_counter()
        picks.extend(stalta_picks(waveforms[i:i + 1], model_cfg, trace_names=[name]))
        times_ms.append((time.perf_counter() - start) * 1e3)
    scores = score(picks, truth, kw["sampling_rate"], kw["tolerance_s"])
    result = Assessment(metrics=prefixed(scores))
    result.metrics["latency/window_ms_p50"] = float(np.median(times_ms))
    for path in draw_figures(out_dir / PLOTS_DIR, None, picks, scores, None, None, kw, 0,
                             truth=truth):
        result.add(PLOTS_DIR, path)
    return result
