"""`python -m feq_lab.prepare`: build the STEAD-format subset the lab trains on (reads `cfg.data`).

Examples:
  python -m feq_lab.prepare                                   # synthetic default -> data/subset
  python -m feq_lab.prepare data=stead data.source=/data/STEAD data.n_earthquakes=400000
  python -m feq_lab.prepare data=seisbench data.source=~/.seisbench/datasets/stead
A rerun with the same `data` config is a no-op (the config is stored in summary.json).
Beside summary.json it writes `summary.png`: example traces of each kind and the noise PSDs
against Peterson's (1993) NLNM/NHNM, so a look tells whether the data look like seismograms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from feq_lab.errors import one_line_errors

FIGURE_NAME = "summary.png"


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
    ws = summary.get("waveform_statistics", {})
    for key in ("s_to_p_peak_ratio_median", "rise_time_frac_over_0.1s",
                "noise_rms_max_over_median_q90", "noise_psd_frac_within_peterson",
                "dominant_frequency_falls_with_distance"):
        item = ws.get(key)
        if isinstance(item, dict) and item.get("value") is not None:
            value = item["value"]
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key}: {text} (band {item['band']}, "
                         f"{'ok' if item['ok'] else 'OUT OF BAND'})")
    skipped = summary.get("skipped")
    if skipped:
        lines.append(f"  skipped bad traces: {skipped['count']}")
    return "\n".join(lines)


def _examples(meta, waves) -> list[tuple[str, int]]:
    """(title, row) of example traces: a near and a far earthquake, a noise trace with its
    strongest transient, an artefact (copied channels, gap or dead channel)."""
    from feq_lab.data.waveform_stats import artefact_flags, rms_nonstationarity

    cat = meta["trace_category"].to_numpy()
    dist = meta["source_distance_km"].to_numpy(dtype=np.float64)
    picks: list[tuple[str, int]] = []
    eq = np.flatnonzero(cat == "earthquake_local")
    for title, sel in (("earthquake < 20 km", eq[dist[eq] < 20]),
                       ("earthquake > 100 km", eq[dist[eq] > 100])):
        if sel.size:
            picks.append(((f"{title} ({dist[sel[0]]:.0f} km, "
                          f"M {meta['source_magnitude'].iloc[sel[0]]:.1f})"), int(sel[0])))
    noise = np.flatnonzero(cat == "noise")
    if noise.size:
        ns = np.array([rms_nonstationarity(waves[i]) for i in noise])
        i = int(noise[np.nanargmax(ns)]) if np.isfinite(ns).any() else int(noise[0])
        picks.append(("noise, strongest transient", i))
    for i in range(len(meta)):
        flags = artefact_flags(waves[i])
        hit = [k for k in ("single_channel", "gap", "dead_channel") if flags[k]]
        if hit:
            picks.append((f"{cat[i]}: {', '.join(hit)}", i))
            break
    return picks


def write_summary_figure(out_dir: Path, max_traces: int = 2000) -> Path:
    """`<out_dir>/summary.png`: example traces (E, N, Z; labelled and true picks) and the
    noise acceleration PSDs (10/50/90th percentiles) against NLNM/NHNM (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feq_lab.data.stead import read_csv_index
    from feq_lab.data.synthetic_noise import peterson_models
    from feq_lab.data.waveform_stats import acceleration_psd_db, artefact_flags, read_subset

    meta = read_csv_index(out_dir / "subset.csv")
    waves, rows, truth, gains = read_subset(out_dir, meta, max_traces=max_traces)
    examples = _examples(rows, waves)
    fig, axes = plt.subplots(3, 2, figsize=(13, 10), constrained_layout=True)
    t = np.arange(waves.shape[1]) / 100.0
    for ax, (title, i) in zip(axes.ravel()[:4], examples):
        w = waves[i].astype(np.float64)
        w = w - w.mean(axis=0)
        scale = np.abs(w).max() or 1.0
        for c, name in enumerate("ENZ"):
            ax.plot(t, w[:, c] / scale + 2 * (2 - c), lw=0.4, color="k")
            ax.text(-1.5, 2 * (2 - c), name, ha="right", va="center")
        for key, colour, style in (("p_arrival_sample", "tab:blue", "-"),
                                   ("s_arrival_sample", "tab:red", "-")):
            v = rows[key].iloc[i]
            if np.isfinite(v):
                ax.axvline(v / 100.0, color=colour, ls=style, lw=0.8,
                           label=f"{key.split('_')[0].upper()} label")
            tv = truth.get(f"{key}_true") if truth else None
            if tv is not None and np.isfinite(tv[i]):
                ax.axvline(tv[i] / 100.0, color=colour, ls=":", lw=1.0,
                           label=f"{key.split('_')[0].upper()} true")
        ax.set_title(title, fontsize=10)
        ax.set_yticks([])
        ax.set_xlim(-2, 60)
        ax.set_xlabel("s")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    ax = axes[2, 0]
    f_mod, low, high = peterson_models()
    ax.semilogx(f_mod, low, "k--", lw=1, label="NLNM / NHNM (Peterson 1993)")
    ax.semilogx(f_mod, high, "k--", lw=1)
    psd = []
    for i in np.flatnonzero(rows["trace_category"].to_numpy() == "noise"):
        flags = artefact_flags(waves[i])
        if np.isfinite(gains[i]) and not (flags["gap"] or flags["dead_channel"]) and np.any(waves[i][:, 2]):
            f, db = acceleration_psd_db(waves[i], gains[i])
            psd.append(db)
    if psd:
        band = (f >= 0.1) & (f <= 45)
        f = f[band]
        q = np.percentile(np.array(psd)[:, band], [10, 50, 90], axis=0)
        band = np.ones(f.size, dtype=bool)
        ax.fill_between(f[band], q[0][band], q[2][band], alpha=0.3, label="noise Z, 10-90%")
        ax.semilogx(f[band], q[1][band], lw=1.5, label=f"median ({len(psd)} traces)")
    else:
        ax.text(0.5, 0.5, "no station gain: PSD not in ground units", transform=ax.transAxes,
                ha="center")
    ax.set_xlim(0.1, 45)
    ax.set_ylim(-200, -60)
    ax.set_xlabel("Hz")
    ax.set_ylabel("dB re 1 (m/s²)²/Hz")
    ax.set_title("noise PSD (vertical, filter-corrected) vs Peterson models", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2, 1]
    summary = json.loads((out_dir / "summary.json").read_text())
    ws = summary.get("waveform_statistics", {})
    lines = []
    for key, item in ws.items():
        if isinstance(item, dict) and "band" in item:
            v = item["value"]
            lines.append(f"{key}: {v:.3g}" if isinstance(v, float) else f"{key}: {v}")
            lines[-1] += f"  band {item['band']}  {'ok' if item['ok'] else 'OUT'}"
    by = ws.get("dominant_frequency_by_distance", {})
    lines.append("dominant P frequency by distance (Hz): " + ", ".join(
        f"{k} {v['median_hz']:.1f}" for k, v in by.items() if v.get("median_hz") is not None))
    ax.text(0.0, 1.0, "\n".join(lines), va="top", fontsize=8, family="monospace", wrap=True)
    ax.axis("off")
    ax.set_title("waveform statistics (summary.json)", fontsize=10)
    path = out_dir / FIGURE_NAME
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from feq_lab.data.subset import prepare

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    with one_line_errors("feq_lab.prepare"):
        out_dir = prepare(data_cfg)
    summary = json.loads((out_dir / "summary.json").read_text())
    print(format_summary(summary, out_dir))
    figure = out_dir / FIGURE_NAME
    if not figure.exists() or figure.stat().st_mtime_ns < (out_dir / "summary.json").stat().st_mtime_ns:
        print(f"  figure: {write_summary_figure(out_dir)}")


if __name__ == "__main__":
    main()
