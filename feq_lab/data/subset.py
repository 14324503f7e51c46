"""Build the lab's subset directory from a `data` config: synthetic, real STEAD or SeisBench.

Output (`data.out_dir`): `subset.hdf5` (merged layout), `subset.csv` (35 STEAD columns + `split`)
and `summary.json`, written last as the completion marker; it stores the config used, so a rerun
with the same config is a no-op. Extraction from a real dataset streams one trace at a time
(bounded memory) in a seeded random order, stratified by category.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from feq_lab.errors import ConfigError, DataError
from feq_lab.paths import atomic_write_text
from feq_lab.plain import to_plain

SUBSET_FILES = ("subset.hdf5", "subset.csv", "summary.json")
KINDS = ("synthetic", "stead", "seisbench")
# Keys that decide the subset's content; training-only keys (batch_size, augment...) do not.
_CONTENT_KEYS = ("kind", "source", "n_earthquakes", "n_noise", "seed", "split", "on_bad_trace",
                 "filters")


def content_config(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `data` that determines the subset, validated, in canonical form."""
    cfg = to_plain(data_cfg)
    kind = cfg.get("kind", "synthetic")
    if kind not in KINDS:
        raise ConfigError("data.kind", f"must be one of {KINDS}, got {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    for key in ("n_earthquakes", "n_noise", "seed"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"data.{key}", f"must be an integer >= 0, got {value!r}")
        out[key] = int(value)
    split = cfg.get("split") or {"train": 0.85, "val": 0.05, "test": 0.10}
    if set(split) != {"train", "val", "test"} or any(
            not isinstance(v, (int, float)) or v < 0 for v in split.values()) or sum(
            split.values()) <= 0:
        raise ConfigError("data.split", f"needs train/val/test fractions >= 0, got {split!r}")
    out["split"] = {k: float(split[k]) for k in ("train", "val", "test")}
    on_bad = cfg.get("on_bad_trace", "error")
    if on_bad not in ("error", "skip"):
        raise ConfigError("data.on_bad_trace", f"must be 'error' or 'skip', got {on_bad!r}")
    out["on_bad_trace"] = on_bad
    if kind != "synthetic":
        source = cfg.get("source")
        if not source:
            raise ConfigError("data.source", f"data={kind} needs data.source=DIR (the dataset)")
        out["source"] = str(Path(source).expanduser().resolve())
        out["filters"] = to_plain(cfg.get("filters") or {})
    if out["n_earthquakes"] + out["n_noise"] == 0:
        raise ConfigError("data.n_earthquakes", "n_earthquakes + n_noise must be > 0")
    return out


def _existing_config(out_dir: Path) -> dict[str, Any] | None:
    summary = out_dir / "summary.json"
    if not all((out_dir / f).exists() for f in SUBSET_FILES):
        return None
    try:
        return json.loads(summary.read_text()).get("config")
    except (OSError, ValueError):
        return None


def prepare(data_cfg: Mapping[str, Any]) -> Path:
    """Build `data_cfg.out_dir` (default data/subset) unless it already matches the config."""
    cfg = to_plain(data_cfg)
    content = content_config(cfg)
    out_dir = Path(cfg.get("out_dir") or "data/subset")
    existing = _existing_config(out_dir)
    if existing is not None and _same(existing, content):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # incomplete until rewritten last
    if content["kind"] == "synthetic":
        from feq_lab.data.synthetic import GENERATOR_VERSION, make_synthetic_subset

        make_synthetic_subset(out_dir, content["n_earthquakes"], content["n_noise"],
                              content["seed"], content["split"])
        # make_synthetic_subset records its own config; store the prepare-level one instead.
        summary = json.loads((out_dir / "summary.json").read_text())
        summary["config"] = {**content, "generator_version": GENERATOR_VERSION}
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
        os.chmod(out_dir / "summary.json", 0o644)
        return out_dir
    extract(content, out_dir)
    return out_dir


def _same(existing: Mapping[str, Any], content: Mapping[str, Any]) -> bool:
    from feq_lab.data.synthetic import GENERATOR_VERSION

    want = dict(content)
    if content["kind"] == "synthetic":
        want["generator_version"] = GENERATOR_VERSION
    return json.loads(json.dumps(existing)) == json.loads(json.dumps(want))


def extract(content: Mapping[str, Any], out_dir: Path) -> Path:
    """Stratified, seeded subset of a real STEAD/SeisBench dataset, one trace in memory at a time.

    Candidates are filtered on metadata, shuffled per category with the seed, and read in that
    order until each category's count is reached; bad traces raise, or with on_bad_trace=skip
    are counted (and replaced by the next candidate).
    """
    from feq_lab.data.stead import SteadWriter, open_dataset
    from feq_lab.data.summary import summarize
    from feq_lab.data.synthetic import assign_split

    on_bad = content["on_bad_trace"]
    ds = open_dataset(content["source"], on_bad_trace=on_bad)
    skipped: list[dict[str, str]] = [{"trace": t, "reason": r} for t, r in ds.skipped]
    filters = dict(content.get("filters") or {})
    wanted = {"earthquake_local": content["n_earthquakes"], "noise": content["n_noise"]}
    rng = np.random.default_rng(content["seed"])
    shortfall: dict[str, int] = {}
    with SteadWriter(out_dir / "subset.hdf5", out_dir / "subset.csv",
                     extra_columns=("split",)) as writer:
        for category, count in wanted.items():
            if count == 0:
                continue
            part = ds.filter(category=category,
                             **(_eq_filters(filters) if category != "noise" else {}))
            # Split labels for the count's slots, drawn up front so each trace is read once.
            slots = assign_split(np.array([category] * count), content["split"],
                                 int(rng.integers(2**31)))
            order = rng.permutation(len(part))
            part_meta = part.metadata
            taken = 0
            for pos in order:
                if taken == count:
                    break
                row = part_meta.iloc[int(pos)].to_dict()
                try:
                    wave = part.get_waveform_at(int(pos))
                except DataError as exc:
                    if on_bad == "error":
                        raise
                    skipped.append({"trace": row["trace_name"], "reason": str(exc)})
                    continue
                row["split"] = slots[taken]
                writer.add(wave, row)
                taken += 1
            if taken < count:
                shortfall[category] = count - taken
    ds.close()
    extra = {"skipped": {"count": len(skipped), "traces": skipped[:1000]},
             "shortfall": shortfall, "source_traces": len(ds)}
    summary = summarize(out_dir, config=dict(content), extra=extra)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    os.chmod(out_dir / "summary.json", 0o644)
    return out_dir


def _eq_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if filters.get("min_snr_db") is not None:
        out["min_snr_db"] = float(filters["min_snr_db"])
    for key in ("distance_km", "magnitude"):
        if filters.get(key) is not None:
            lo, hi = filters[key]
            out[key] = (lo, hi)
    return out


def data_version(out_dir: str | os.PathLike) -> str:
    """DVC 3's md5 of a directory (`<md5>.dir`), so runs can be tied to `dvc.lock` entries.

    Same recipe as dvc-data: md5 of the JSON list of {"md5", "relpath"} sorted by relpath.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise DataError("subset directory does not exist", path=str(root))
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        entries.append({"md5": digest.hexdigest(), "relpath": path.relative_to(root).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"
