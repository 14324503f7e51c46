"""`python -m feq_lab.profile model=feq3 [rnn=… cnn_blocks=…] [format=table|json]`

Parameters per report section (paper and torch conventions), model size (state dict and ONNX) and
latency (torch eager and onnxruntime, batch 1 and N) of one variant; `model=all` prints the five
presets side by side like the report's Table 1; `sections=true` adds where the eager time goes
(encoder, bottleneck, RNN blocks, transformers, picker RNN/attention, decoders).
Config: conf/profile.yaml, key=value overrides.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from feq_lab.errors import ConfigError, FeqLabError
from feq_lab.paths import CONF_DIR

CONFIG_PATH = CONF_DIR / "profile.yaml"
SECTION_LABELS = {
    "encoder": "Encoder",
    "bottleneck": "ResNet / bottleneck",
    "rnn_transformer": "RNN & Transformer",
    "decoder": "Decoder",
    "total": "Total",
}


def load_config(argv: Sequence[str]) -> DictConfig:
    """conf/profile.yaml merged with `key=value` overrides; unknown keys name themselves."""
    cfg = OmegaConf.load(CONFIG_PATH)
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(arg, "expected key=value (e.g. model=feq3 rnn=gru format=json)")
        key = arg.split("=", 1)[0].lstrip("+")
        if key not in cfg:
            raise ConfigError(key, f"unknown option; known: {', '.join(cfg.keys())}")
    if argv:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([a.lstrip("+") for a in argv]))
    unknown = sorted(set(cfg.backends) - {"torch", "onnxruntime"})
    if unknown:
        raise ConfigError(
            "backends", f"unknown backend {unknown[0]!r}; expected torch and/or onnxruntime"
        )
    if cfg.format not in ("table", "json"):
        raise ConfigError("format", f"expected table or json, got {cfg.format!r}")
    return cfg


def profile_variant(model_name: str, cfg: DictConfig) -> dict[str, Any]:
    """Everything the report needs about one variant, as plain data."""
    from feq_lab.export.onnx import export_onnx
    from feq_lab.models import build_model, parameter_report
    from feq_lab.profiling.latency import measure_latency
    from feq_lab.profiling.size import file_size_mb, model_size_mb

    knobs = {k: cfg[k] for k in ("rnn", "picker_rnn", "cnn_blocks", "rnn_blocks", "gru_impl")}
    model = build_model(model_name, **knobs).eval()
    result: dict[str, Any] = {
        "model": model_name,
        "overrides": {k: v for k, v in knobs.items() if v is not None},
        "spec": model.to_config(),
        "params": parameter_report(model),
        "size_mb": model_size_mb(model),
        "latency": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None  # exported once, for its size and the onnxruntime timings
        if "onnxruntime" in cfg.backends:
            onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        result["onnx_mb"] = file_size_mb(onnx_path) if onnx_path else None
        for backend in cfg.backends:
            for batch in cfg.batches:
                r = measure_latency(
                    model,
                    backend,
                    batch=int(batch),
                    threads=int(cfg.threads),
                    warmup=int(cfg.warmup),
                    repeats=int(cfg.repeats),
                    onnx_path=onnx_path,
                )
                result["latency"].append(r.to_dict())
    return result


def add_sections(results: list[dict[str, Any]], cfg: DictConfig) -> None:
    """Eager time per model section (`eager_sections_ms`), the variants timed round-robin."""
    from feq_lab.models import build_model
    from feq_lab.profiling.sections import time_sections

    models = {
        str(i): build_model(r["model"], **r["overrides"]).eval() for i, r in enumerate(results)
    }
    timed = time_sections(models, passes=max(int(cfg.repeats) // 4, 1), threads=int(cfg.threads))
    for i, r in enumerate(results):
        r["eager_sections_ms"] = timed[str(i)]


def format_table(results: list[dict[str, Any]]) -> str:
    """Rows = measures, columns = variants (Table 1 layout)."""
    names = [r["model"] + "".join(f" {k}={v}" for k, v in r["overrides"].items()) for r in results]
    rows: list[tuple[str, list[str]]] = []
    for conv in ("paper", "torch"):
        for section, label in SECTION_LABELS.items():
            rows.append((f"{label} ({conv})", [f"{r['params'][conv][section]:,}" for r in results]))
    rows.append(("Size, state dict (MB)", [f"{r['size_mb']:.3f}" for r in results]))
    rows.append(
        ("Size, ONNX (MB)", [f"{r['onnx_mb']:.3f}" if r["onnx_mb"] else "n/a" for r in results])
    )
    for i, lat in enumerate(results[0]["latency"]):
        label = f"Latency {lat['backend']} b={lat['batch']} p50/p90 (ms)"
        rows.append(
            (
                label,
                [
                    f"{r['latency'][i]['p50_ms']:.2f}/{r['latency'][i]['p90_ms']:.2f}"
                    for r in results
                ],
            )
        )
        if lat["batch"] > 1:
            rows.append(
                (
                    f"  per window, b={lat['batch']} (ms)",
                    [f"{r['latency'][i]['window_ms_p50']:.2f}" for r in results],
                )
            )
    if "eager_sections_ms" in results[0]:
        for section in results[0]["eager_sections_ms"]:
            rows.append(
                (
                    f"Eager {section}, b=1 (ms)",
                    [f"{r['eager_sections_ms'].get(section, float('nan')):.3f}" for r in results],
                )
            )
    width0 = max(len(label) for label, _ in rows)
    widths = [max(len(n), *(len(v[j]) for _, v in rows)) for j, n in enumerate(names)]
    lines = ["  ".join([" " * width0, *(n.rjust(w) for n, w in zip(names, widths))])]
    for label, values in rows:
        lines.append(
            "  ".join([label.ljust(width0), *(v.rjust(w) for v, w in zip(values, widths))])
        )
    lat0 = results[0]["latency"][0] if results[0]["latency"] else None
    if lat0:
        lines.append(
            f"device: {lat0['device']}; threads: {lat0['threads']}; repeats: {lat0['repeats']}"
        )
    return "\n".join(lines)


def run(argv: Sequence[str]) -> str:
    from feq_lab.models import PRESETS

    cfg = load_config(argv)
    names = list(PRESETS) if cfg.model == "all" else [str(cfg.model)]
    results = [profile_variant(name, cfg) for name in names]
    if cfg.sections:
        add_sections(results, cfg)
    if cfg.format == "json":
        return json.dumps({"variants": results}, indent=2)
    return format_table(results)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(CONFIG_PATH.read_text())
        return 0
    try:
        print(run(argv))
    except FeqLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
