"""`python -m feq_lab.profile model=feq3 [rnn=… cnn_blocks=…] [format=table|json]`

Parameters per report section (paper and torch conventions), model size (state dict and ONNX) and
latency (torch eager and onnxruntime, batch 1 and N) of one variant; `presets=all` prints the five
presets side by side like the report's Table 1; `sections=true` adds where the eager time goes
(encoder, bottleneck, RNN blocks, transformers, picker RNN/attention, decoders).
A Hydra app (conf/profile.yaml): `model=` is the conf/model/ group, composed as training does.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from feq_lab.errors import ConfigError, one_line_errors
from feq_lab.job.config import to_plain
from feq_lab.models import PRESETS, build_model
from feq_lab.models.spec import GRID_KNOBS
from feq_lab.paths import CONF_DIR

SECTION_LABELS = {
    "encoder": "Encoder",
    "bottleneck": "ResNet / bottleneck",
    "rnn_transformer": "RNN & Transformer",
    "decoder": "Decoder",
    "total": "Total",
}
OVERRIDES = (*GRID_KNOBS, "gru_impl")  # what a profile may change on top of a preset
BACKENDS = ("torch", "onnxruntime")


def check_config(cfg: DictConfig) -> list[str | dict[str, Any]]:
    """The variants to profile (preset names or the composed `model` mapping), after checking
    every option; errors name the key."""
    unknown = sorted(set(cfg.backends) - set(BACKENDS))
    if unknown:
        raise ConfigError(
            "backends", f"unknown backend {unknown[0]!r}; expected torch and/or onnxruntime"
        )
    if cfg.format not in ("table", "json"):
        raise ConfigError("format", f"expected table or json, got {cfg.format!r}")
    for key, least in (("threads", 1), ("warmup", 0), ("repeats", 1)):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(key, f"must be an integer >= {least}, got {value!r}")
    if not cfg.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                              for b in cfg.batches):
        raise ConfigError("batches", f"must be a list of integers >= 1, got {list(cfg.batches)!r}")
    presets = cfg.get("presets")
    if presets is None:
        if cfg.get("model") is None:
            raise ConfigError("model", "missing: choose a preset (model=feq3) or presets=all")
        variants: list[str | dict[str, Any]] = [to_plain(cfg.model)]
    elif presets == "all":
        variants = list(PRESETS)
    elif isinstance(presets, str):
        variants = [presets]
    else:
        variants = [str(p) for p in presets]
    knobs = {k: cfg.get(k) for k in OVERRIDES}
    for variant in variants:  # builds each once: every preset and knob value checked up front
        build_model(variant, **knobs)
    return variants


def variant_name(variant: str | Mapping[str, Any]) -> str:
    return variant if isinstance(variant, str) else str(variant.get("name", "model"))


def profile_variant(variant: str | Mapping[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """Everything the report needs about one variant (a preset name or a preset mapping)."""
    from feq_lab.export.onnx import export_onnx
    from feq_lab.models import parameter_report
    from feq_lab.profiling.latency import measure_latency
    from feq_lab.profiling.size import file_size_mb, model_size_mb

    knobs = {k: cfg.get(k) for k in OVERRIDES}
    model = build_model(variant, **knobs).eval()
    result: dict[str, Any] = {
        "model": variant_name(variant),
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
    from feq_lab.profiling.sections import time_sections

    models = {str(i): build_model(r["spec"]).eval() for i, r in enumerate(results)}
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


def run(cfg: DictConfig) -> str:
    """The table or JSON for a composed conf/profile.yaml."""
    variants = check_config(cfg)
    results = [profile_variant(variant, cfg) for variant in variants]
    if cfg.sections:
        add_sections(results, cfg)
    if cfg.format == "json":
        return json.dumps({"variants": results}, indent=2)
    return format_table(results)


@hydra.main(config_path=str(CONF_DIR), config_name="profile", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("feq_lab.profile"):
        print(run(cfg))


if __name__ == "__main__":
    main()
