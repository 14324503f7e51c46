"""The live plot, like the study's figure: the last few 1-minute blocks as panels in different
colours, detection/P/S probabilities underneath, dashed lines at P and S once picked (final),
dotted ones while a pick is provisional (an event lifecycle's `pick`/`update`, see outputs.py).

A desktop window when one is available; otherwise PNG files refreshed (atomically) in the
output directory, one per station.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feq_lab.errors import ConfigError
from feq_lab.paths import atomic_path
from feq_lab.streaming.engine import SAMPLING_RATE, StreamEngine, iso_utc
from feq_lab.streaming.outputs import (
    PROVISIONAL,
    current_events,
    posix_time,
    record_kind,
    record_picks,
)

log = logging.getLogger("feq_lab.streaming")

BLOCK_COLOURS = (
    "tab:green",
    "tab:purple",
    "tab:orange",
    "tab:brown",
    "tab:olive",
    "tab:cyan",
    "tab:pink",
)
P_COLOUR, S_COLOUR, DET_COLOUR = "tab:blue", "tab:red", "0.35"
PHASE_COLOURS = {"P": P_COLOUR, "S": S_COLOUR}
# (line style, width): final picks dashed as before, provisional ones dotted and thinner
FINAL_STYLE, PROVISIONAL_STYLE = ("--", 1.2), (":", 1.0)


def window_available() -> bool:
    """A desktop session we can open a window on."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class LiveDisplay:
    """Redraw a station's recent blocks after each block (`mode`: window | png | none | auto)."""

    def __init__(
        self,
        mode: str,
        out_dir: str | Path,
        n_blocks: int = 4,
        block_s: float = 60.0,
        dpi: int = 80,
    ):
        if mode not in ("window", "png", "none", "auto"):
            raise ConfigError("display", f"must be window, png, none or auto, got {mode!r}")
        if mode == "auto":
            mode = "window" if window_available() else "png"
        if mode == "window" and not window_available():
            log.warning("display: no desktop display available; writing PNG files instead")
            mode = "png"
        self.mode = mode
        self.out_dir = Path(out_dir)
        self.n_blocks = int(n_blocks)
        self.block_s = float(block_s)
        self.dpi = dpi
        self.figures: dict[str, Any] = {}
        self._plt = None
        if mode == "window":
            import matplotlib.pyplot as plt

            plt.ion()
            self._plt = plt
        self.written: dict[str, Path] = {}

    def _figure(self, station: str):
        fig = self.figures.get(station)
        if fig is None:
            if self._plt is not None:
                fig = self._plt.figure(figsize=(3.2 * self.n_blocks, 5.0))
                fig.canvas.manager.set_window_title(f"feq-lab monitor {station}")
            else:
                from matplotlib.figure import Figure

                fig = Figure(figsize=(3.2 * self.n_blocks, 5.0))
            self.figures[station] = fig
        fig.clear()
        return fig

    def update(
        self, engine: StreamEngine, station: str, events: Sequence[Any] | None = None
    ) -> Path | None:
        """Redraw `station`; returns the PNG path in png mode. `events`: the emitted objects
        (lifecycle ones included) to mark, in emission order; default the engine's events."""
        if self.mode == "none" or station not in engine.stations:
            return None
        view = engine.history_view(station, self.n_blocks * self.block_s + self.block_s)
        if view["waveform"].shape[1] == 0:
            return None
        if events is not None:
            view = {**view, "events": list(events)}
        fig = self._figure(station)
        draw_blocks(fig, view, self.n_blocks, self.block_s, station)
        if self.mode == "window":
            fig.canvas.draw_idle()
            self._plt.pause(0.001)
            return None
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", station)
        path = self.out_dir / f"monitor_{name}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=self.dpi)
        self.written[station] = path
        return path

    def close(self) -> None:
        if self._plt is not None:
            self._plt.ioff()
            self._plt.show(block=False)


def draw_blocks(
    fig: Any, view: dict[str, Any], n_blocks: int, block_s: float, station: str
) -> None:
    """Draw the last `n_blocks` blocks of `view` (engine.history_view) onto `fig`."""
    origin, start = view["origin"], view["start"]
    wave, prob = view["waveform"], view["prob"]
    stop = start + wave.shape[1]
    step = int(round(block_s * SAMPLING_RATE))
    last_block = (stop - 1) // step
    first_block = max(start // step, last_block - n_blocks + 1)
    blocks = list(range(first_block, last_block + 1))
    axes = fig.subplots(
        2,
        n_blocks,
        sharey="row",
        squeeze=False,
        gridspec_kw={"height_ratios": [2, 1], "hspace": 0.08, "wspace": 0.05},
    )
    picks = pick_marks(view["events"])
    for col in range(n_blocks):
        top, bottom = axes[0, col], axes[1, col]
        if col >= len(blocks):
            top.axis("off")
            bottom.axis("off")
            continue
        k = blocks[col]
        a, b = max(k * step, start), min((k + 1) * step, stop)
        t = (np.arange(a, b) - k * step) / SAMPLING_RATE
        colour = BLOCK_COLOURS[k % len(BLOCK_COLOURS)]
        seg = wave[:, a - start : b - start].astype(np.float64)
        seg = seg - seg.mean(axis=1, keepdims=True)
        scale = np.abs(seg).max() or 1.0
        for row, comp in enumerate("ENZ"):
            top.plot(
                t,
                seg[row] / scale + 2.2 * (2 - row),
                color=colour,
                lw=0.6,
                alpha=(0.55, 0.75, 1.0)[row],
            )
        top.set_yticks([0.0, 2.2, 4.4], ["Z", "N", "E"])
        p = prob[:, a - start : b - start]
        bottom.fill_between(t, 0, p[0], color=DET_COLOUR, alpha=0.35, lw=0, label="detection")
        bottom.plot(t, p[1], color=P_COLOUR, lw=0.9, label="P")
        bottom.plot(t, p[2], color=S_COLOUR, lw=0.9, label="S")
        bottom.set_ylim(0, 1.05)
        for ax in (top, bottom):
            ax.set_xlim(0, block_s)
            for when, c, (ls, lw) in picks:
                x = (when - origin) - k * block_s
                if 0 <= x <= block_s:
                    ax.axvline(x, color=c, ls=ls, lw=lw)
        top.set_title(iso_utc(origin + k * block_s)[11:19], fontsize=9, color=colour)
        top.set_xticks([])
        bottom.set_xlabel("s", fontsize=8)
    axes[1, 0].set_ylabel("probability", fontsize=8)
    axes[1, 0].legend(loc="upper left", fontsize=7, frameon=False)
    fig.suptitle(
        f"{station} — last {len(blocks)} block(s), P (blue) and S (red) picks: "
        "dashed final, dotted provisional",
        fontsize=10,
    )


def pick_marks(objects: Sequence[Any]) -> list[tuple[float, str, tuple[str, float]]]:
    """(POSIX time, colour, (line style, width)) of every pick that stands now: a retracted
    event has none, an update moves its provisional pick, a final one is drawn as final."""
    marks = []
    for rec in current_events(objects):
        style = PROVISIONAL_STYLE if record_kind(rec) in PROVISIONAL else FINAL_STYLE
        for phase, when, _ in record_picks(rec):
            if phase in PHASE_COLOURS:
                marks.append((posix_time(when), PHASE_COLOURS[phase], style))
    return marks
