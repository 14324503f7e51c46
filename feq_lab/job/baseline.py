"""The classical reference row (`model=stalta`, any `Detector`): obspy STA/LTA + AR picker on the same test
and validation splits, scored by the same `metrics.score`, logged with the same `val/` and
`test/` keys (+ bootstrap intervals) as every learned run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from feq_lab.evaluation.metrics import score
from feq_lab.evaluation.significance import interval_metrics, outcomes_from_picks, save_outcomes
from feq_lab.evaluation.truth import Truth
from feq_lab.job.assess import (
    OUTCOMES_FILE,
    PLOTS_DIR,
    Assessment,
    draw_figures,
    eval_settings,
    prefixed,
)
from feq_lab.tracking import keys


def load_split(data_dir: str | Path, split: str = "test") -> tuple[Any, np.ndarray, Truth, list[str]]:
    """(metadata, raw waveforms (N, 6000, 3), truth, trace names) of one split, CSV order."""
    from feq_lab.data.stead import open_dataset
    from feq_lab.errors import DataError

    ds = open_dataset(data_dir)
    meta = ds.metadata
    if "split" not in meta.columns:
        raise DataError("subset has no split column", path=str(data_dir))
    test = meta[meta["split"].astype(str) == split]
    if test.empty:
        raise DataError(f"subset has no {split} traces", path=str(data_dir))
    names = test["trace_name"].astype(str).tolist()
    waveforms = np.stack([ds.get_waveform(n) for n in names])
    return test, waveforms, Truth.from_metadata(test), names


def assess_baseline(detector: Any, data_dir: str | Path, eval_cfg: Mapping[str, Any],
                    out_dir: Path) -> Assessment:
    """Metrics and figures of a classical baseline (a `models.protocol.Detector`, e.g. STA/LTA);
    `latency/window_ms_p50` is its median time per window (one trace at a time, this process,
    on the test split)."""
    kw = eval_settings(eval_cfg)
    boot = dict(eval_cfg.get("bootstrap") or {})
    result = Assessment()
    for split in ("val", "test"):
        _, waveforms, truth, names = load_split(data_dir, split)
        picks, times_ms = [], []
        for i, name in enumerate(names):  # one window at a time, as the latency key means
            start = time.perf_counter()
            picks.extend(detector.picks(waveforms[i:i + 1], trace_names=[name]))
            times_ms.append((time.perf_counter() - start) * 1e3)
        scores = score(picks, truth, kw["sampling_rate"], kw["tolerance_s"])
        outcomes = outcomes_from_picks(picks, truth, kw["sampling_rate"], kw["tolerance_s"], names)
        result.metrics.update(prefixed(scores, f"{split}/"))
        result.metrics.update(interval_metrics(outcomes, f"{split}/", int(boot.get("n", 1000)),
                                               float(boot.get("level", 0.95)),
                                               int(boot.get("seed", 0))))
        result.add("", save_outcomes(out_dir / OUTCOMES_FILE.format(split=split), outcomes))
    result.metrics[keys.LATENCY_EAGER_P50] = float(np.median(times_ms))
    for path in draw_figures(out_dir / PLOTS_DIR, None, picks, scores, None, None, kw, 0,
                             truth=truth):
        result.add(PLOTS_DIR, path)
    return result
