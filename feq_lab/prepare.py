"""`python -m feq_lab.prepare`: build the STEAD-format subset the lab trains on (reads `cfg.data`).

Examples:
  python -m feq_lab.prepare                                   # synthetic default -> data/subset
  python -m feq_lab.prepare data=stead data.source=/data/STEAD data.n_earthquakes=400000
  python -m feq_lab.prepare data=seisbench data.source=~/.seisbench/datasets/stead
A rerun with the same `data` config is a no-op (the config is stored in summary.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf


def format_summary(summary: dict[str, Any], out_dir: Path) -> str:
    """A few human lines: counts, medians vs STEAD's, SNR spread, travel-time agreement."""
    lines = [f"subset: {out_dir} ({summary.get('n_traces', 0)} traces)",
             f"  categories: {summary.get('categories')}", f"  splits: {summary.get('splits')}"]
    dist = summary.get("earthquake_distributions", {})
    stead = summary.get("stead_medians", {})
    for key, ref in stead.items():
        d = dist.get(key, {})
        if d.get("count"):
            lines.append(f"  median {key}: {d['q50']:.2f} (STEAD {ref})")
    snr = dist.get("snr_db_mean", {})
    if snr.get("count"):
        lines.append(f"  snr_db (mean of channels): median {snr['q50']:.1f} dB, "
                     f"{100 * snr['frac_below_10db']:.1f}% below 10 dB")
    tt = summary.get("traveltime_check", {})
    if tt.get("count"):
        lines.append(f"  S-P vs TauP table: max |error| {tt['max_abs_error_sec']:.4f} s over "
                     f"{tt['count']} traces")
    live = tt.get("live_taup", {})
    if live.get("count"):
        lines.append(f"  S-P vs live TauP (iasp91): max |error| {live['max_abs_error_sec']:.4f} s "
                     f"over {live['count']} random traces")
    skipped = summary.get("skipped")
    if skipped:
        lines.append(f"  skipped bad traces: {skipped['count']}")
    return "\n".join(lines)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from feq_lab.data.subset import prepare

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    out_dir = prepare(data_cfg)
    summary = json.loads((out_dir / "summary.json").read_text())
    print(format_summary(summary, out_dir))


if __name__ == "__main__":
    main()
