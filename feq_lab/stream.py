"""`python -m feq_lab.stream`: the real-time monitor (see conf/stream.yaml for every option).

    python -m feq_lab.stream source=replay display=png
    python -m feq_lab.stream source=files 'source.paths=[a.mseed,b.sac]'
    python -m feq_lab.stream source=seedlink source.server=HOST:PORT 'source.streams=[NET.STA.CHA?]'
    python -m feq_lab.stream model=feq3 checkpoint=PATH      # a local checkpoint, no registry
    python -m feq_lab.stream scenarios=20 display=none       # 20 seeded replays, summarised
    python -m feq_lab.stream outputs.publish.enabled=true   # also on tcp://127.0.0.1:5566

Events are printed as JSON lines on stdout; logs go to stderr. Bad input exits with code 2 and
a message naming the key or file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from feq_lab.errors import ConfigError, one_line_errors
from feq_lab.paths import CONF_DIR, atomic_write_text

log = logging.getLogger("feq_lab.stream")


def _out_dir(cfg: Mapping[str, Any]) -> Path:
    if cfg.get("out_dir"):
        return Path(cfg["out_dir"])
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (called as a function)
        return Path.cwd()


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """One monitor run (or `scenarios` seeded replays) from a resolved config mapping."""
    from feq_lab.streaming.outputs import OutputConfig
    from feq_lab.streaming.publish import PublishConfig, Publisher

    output_cfg = OutputConfig.from_mapping(cfg.get("outputs"))
    publish_cfg = PublishConfig.from_mapping(output_cfg.publish)
    # bound before the (slower) model load, so subscribers can connect meanwhile; one publisher
    # for all `scenarios` runs, closed (queued messages flushed for linger_ms) however we leave
    publisher = Publisher(publish_cfg) if publish_cfg.enabled else None
    try:
        waiting = publisher is not None and publish_cfg.wait_s > 0
        if waiting and not publisher.wait_for_subscriber(publish_cfg.wait_s):
            log.warning("no subscriber after %g s; publishing anyway", publish_cfg.wait_s)
        return _run(cfg, output_cfg, publisher)
    finally:
        if publisher is not None:
            publisher.close()


def _run(cfg: Mapping[str, Any], output_cfg: Any, publisher: Any) -> dict[str, Any]:
    from feq_lab.streaming.display import LiveDisplay
    from feq_lab.streaming.engine import DEFAULT_THRESHOLDS, EngineConfig
    from feq_lab.streaming.predictors import load_model, make_predictor
    from feq_lab.streaming.replay import Monitor

    out_dir = _out_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_map = dict(cfg.get("engine") or {})
    given = engine_map.get("thresholds") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(
            "engine.thresholds", f"must be a mapping {{detection, p, s}}, got {given!r}"
        )
    open_keys = [k for k in DEFAULT_THRESHOLDS if given.get(k) is None]
    # validate everything else before the (slower) model load
    fixed = {k: v for k, v in given.items() if v is not None}
    engine_map["thresholds"] = {**DEFAULT_THRESHOLDS, **fixed}
    engine_cfg = EngineConfig.from_mapping(engine_map)
    source_cfg = dict(cfg.get("source") or {})
    n_scenarios = int(cfg.get("scenarios") or 0)
    if n_scenarios and source_cfg.get("kind") != "replay":
        raise ConfigError("scenarios", "needs source=replay")
    model, onnx_path, label, model_thresholds = load_model(cfg)
    if open_keys and model_thresholds:
        engine_map["thresholds"].update({k: model_thresholds[k] for k in open_keys})
        engine_cfg = EngineConfig.from_mapping(engine_map)
    origin = "the model's run" if model_thresholds else "the study's defaults"
    log.info(
        "thresholds detection %g, P %g, S %g (%s)",
        *(engine_cfg.thresholds[k] for k in ("detection", "p", "s")),
        f"{', '.join(open_keys)} from {origin}" if open_keys else "engine.thresholds",
    )
    predict = make_predictor(
        model,
        onnx_path,
        str(cfg.get("backend", "onnxruntime")),
        int(cfg.get("threads", 1)),
        int(cfg.get("mc_passes") or 0),
        out_dir,
    )
    log.info(
        "model %s, backend %s, %s thread(s); output in %s",
        label,
        cfg.get("backend"),
        cfg.get("threads"),
        out_dir,
    )

    plot = dict(cfg.get("plot") or {})
    display_mode = str(cfg.get("display", "auto"))

    def display_for(run_dir: Path) -> Any:
        if display_mode == "none":
            return None
        return LiveDisplay(display_mode, run_dir, int(plot.get("n_blocks", 4)),
                           float(plot.get("block_s", 60)), int(plot.get("dpi", 80)))

    monitor = Monitor(predict, label, engine_cfg, output_cfg, data_cfg=cfg.get("data"),
                      publisher=publisher, refresh_s=float(plot.get("refresh_s", 1.0)),
                      mc=bool(cfg.get("mc_passes")))
    if n_scenarios:
        summary = monitor.replay(n_scenarios, source_cfg, out_dir, display_for=display_for)
        atomic_write_text(out_dir / "scenarios_summary.json", json.dumps(summary, indent=2) + "\n")
        _log_latency(cfg, summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "per_scenario"}), flush=True)
        return summary
    display = display_for(out_dir)
    try:
        result = monitor.play(source_cfg, out_dir, display)
    finally:
        if display is not None:
            display.close()
    log.info("summary: %s", json.dumps(result))
    atomic_write_text(out_dir / "summary.json", json.dumps(result, indent=2) + "\n")
    return result


def _log_latency(cfg: Mapping[str, Any], summary: dict[str, Any]) -> None:
    """The scenarios' latency and counts as `stream/*` metrics on the registered model's run
    (only a registry model has a run to log on)."""
    from feq_lab.streaming.monitor import latency_metrics
    from feq_lab.streaming.predictors import parse_model_uri
    from feq_lab.tracking.mlflow import log_model_run_metrics

    if cfg.get("model") or cfg.get("checkpoint"):
        return
    metrics = latency_metrics(summary)
    name, alias = parse_model_uri(cfg.get("model_uri") or "models:/feq-picker@champion")
    uri = (cfg.get("tracking") or {}).get("uri")
    run_id = log_model_run_metrics(uri, name, alias, metrics)
    if run_id:
        log.info("logged %s on run %s", ", ".join(sorted(metrics)), run_id)


@hydra.main(config_path=str(CONF_DIR), config_name="stream", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    with one_line_errors("feq_lab.stream"):  # one line on stderr, not also a log record
        run(plain)


if __name__ == "__main__":
    main()
