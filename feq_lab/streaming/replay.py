"""Play a source through the monitor, and seeded replay scenarios summarised.

One place for "feed a record to the engine, write its events, score it against the scenario's
truth": `python -m feq_lab.stream` (one monitor run or `scenarios=N`) and the study's
validation replays (`feq_lab.evaluate`, `eval.replays`) both call it, so the replays a champion
is chosen on run the very code, decoder and backend that ship.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from feq_lab.streaming.engine import EngineConfig, Predictor, StreamEngine
from feq_lab.streaming.monitor import run_monitor, score_scenario, summarise_scenarios
from feq_lab.streaming.outputs import EventSink, OutputConfig
from feq_lab.streaming.sources import make_source
from feq_lab.tracking import keys


@dataclass(frozen=True)
class Monitor:
    """What every monitor run of one model shares: its predict function and label, the engine
    settings, where the events go (`lines`: the JSON lines, default stdout; the picks files;
    the publisher) and the display refresh."""

    predict: Predictor
    label: str
    engine_cfg: EngineConfig
    output_cfg: OutputConfig
    data_cfg: Mapping[str, Any] | None = None
    publisher: Any | None = None
    refresh_s: float = 1.0
    mc: bool = False
    lines: TextIO | None = None

    def play(self, source_cfg: Mapping[str, Any], run_dir: Path,
             display: Any | None = None) -> dict[str, Any]:
        """One monitor run of `source_cfg` into `run_dir`: its summary, with `scenario` (the
        score against the truth) when the source is a replay scenario."""
        blocks, scenario = make_source(dict(source_cfg), run_dir, self.data_cfg)
        engine = StreamEngine(self.predict, self.label, self.engine_cfg, mc=self.mc)
        sink = EventSink(run_dir, stream=self.lines, config=self.output_cfg,
                         publisher=self.publisher)
        stats = run_monitor(blocks, engine, sink, display, self.refresh_s,
                            keep_objects=scenario is not None)
        result = {"type": "summary", "model": self.label,
                  "thresholds": dict(self.engine_cfg.thresholds), "out_dir": str(run_dir),
                  **stats.summary()}
        if scenario is not None:
            result["scenario"] = score_scenario(sink.events, scenario, objects=stats.objects)
        return result

    def replay(self, n: int, source_cfg: Mapping[str, Any], out_dir: Path,
               display_for: Callable[[Path], Any] | None = None) -> dict[str, Any]:
        """`n` replay scenarios with seeds `source.seed`, +1, ... (one folder each under
        `out_dir`), summarised (`monitor.summarise_scenarios`), every score in `per_scenario`."""
        first = int(source_cfg.get("seed", 0))
        scores = []
        for seed in range(first, first + int(n)):
            run_dir = Path(out_dir) / f"scenario_{seed:03d}"
            run_dir.mkdir(parents=True, exist_ok=True)
            display = display_for(run_dir) if display_for is not None else None
            try:
                scores.append(self.play({**source_cfg, "seed": seed}, run_dir,
                                        display)["scenario"])
            finally:
                if display is not None:
                    display.close()
        return {"type": "scenarios_summary", "model": self.label,
                "thresholds": dict(self.engine_cfg.thresholds), **summarise_scenarios(scores),
                "per_scenario": scores}


def split_metrics(summary: Mapping[str, Any], split: str) -> dict[str, float]:
    """`<split>/stream_*` metrics of a scenarios summary (keys.STREAM_SPLIT_NAMES; a latency
    with no pick within 0.5 s in any scenario is left out)."""
    n = int(summary.get("scenarios") or 0)
    values = {name: summary.get(name) for name in keys.STREAM_SPLIT_NAMES}
    values["p_within_0.5s_rate"] = summary["p_within_0.5s"] / n if n else None
    return {keys.stream_key(split, k): float(v) for k, v in values.items() if v is not None}


def tuned_thresholds(metrics: Mapping[str, float]) -> dict[str, float] | None:
    """The `thresholds/*` a run's scores used, or None when it has none (not a picker)."""
    if not all(keys.threshold_key(k) in metrics for k in keys.OUTPUTS):
        return None
    return {k: float(metrics[keys.threshold_key(k)]) for k in keys.OUTPUTS}


def monitor_defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    """(`engine`, replay `source`) as conf/stream.yaml and conf/source/replay.yaml set them: the
    settings the monitor ships with, read without Hydra (the study's stages are other apps)."""
    from omegaconf import OmegaConf

    from feq_lab.paths import CONF_DIR

    stream = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "stream.yaml"))
    source = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "source" / "replay.yaml"))
    return dict(stream["engine"]), dict(source)


def study_replay_metrics(
    checkpoint: Path,
    onnx_path: Path | None,
    thresholds: Mapping[str, float],
    replays_cfg: Mapping[str, Any],
    subset_dir: Path,
    work_dir: Path,
) -> tuple[dict[str, float], Path]:
    """A trained variant's replays for the study (`eval.replays`), as a run logs them:
    `scenarios` seeded scenarios drawn from `split` of the subset, through the monitor's default
    engine on onnxruntime with 1 thread (the monitor's backend) at the variant's own tuned
    `thresholds` (`subset_dir` unless `replays_cfg.subset_dir` names one). Returns the
    `<split>/stream_*` metrics and the summary JSON written to
    `work_dir/<split>_scenarios_summary.json` (the run's artifact). The `evaluate` stage and the
    main job (`measure.replays`) both call this."""
    from feq_lab.models import load_checkpoint
    from feq_lab.paths import atomic_write_text
    from feq_lab.streaming.predictors import make_predictor

    engine_map, source = monitor_defaults()
    engine_map["thresholds"] = {k: float(thresholds[k]) for k in keys.OUTPUTS}
    split = str(replays_cfg.get("split", "val"))
    subset_dir = Path(str(replays_cfg.get("subset_dir") or subset_dir))
    source.update(kind="replay", subset_dir=str(subset_dir), split=split,
                  seed=int(replays_cfg.get("seed", 0)))
    model = load_checkpoint(checkpoint)
    work_dir.mkdir(parents=True, exist_ok=True)
    predict = make_predictor(model, onnx_path, "onnxruntime", 1, 0, work_dir)
    with open(os.devnull, "w") as lines:  # the events are scored, not printed
        monitor = Monitor(predict, model.name, EngineConfig.from_mapping(engine_map),
                          OutputConfig(files=()), lines=lines)
        summary = monitor.replay(int(replays_cfg.get("scenarios", 20)), source, work_dir)
    path = Path(work_dir) / f"{split}_scenarios_summary.json"
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return split_metrics(summary, split), path
