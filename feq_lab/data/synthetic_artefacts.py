"""Recording artefacts for the synthetic STEAD, applied alike to earthquake and noise traces.

Why both classes: in v3 gaps and single-channel stations occurred only in noise and dropped
channels only in earthquakes, so a zeroed channel meant "earthquake" (issue #14). Real archives
show all of them on any record: telemetry gaps filled with zeros, spikes (digitiser/telemetry
glitches), dead components, single-component stations whose vertical is copied to E and N
(STEAD: < 4% of noise traces, Mousavi et al. 2019), and clipping where the ground motion
exceeds the digitiser's full scale (e.g. 16-bit loggers at +-32768 counts).
"""

from __future__ import annotations

import numpy as np

# Per-trace probabilities (each artefact independently); single-channel and full scale are
# station properties passed in.
P_SPIKES = 0.03
P_GAP = 0.03
P_DEAD_CHANNEL = 0.025


def apply_artefacts(rng: np.random.Generator, waves: np.ndarray, single: np.ndarray,
                    full_scale: np.ndarray) -> None:
    """In place on (n, T, 3) counts: clipping at +-full_scale, spikes, zero gaps, dead channels,
    then Z copied onto E and N for single-channel stations (so every glitch shows everywhere)."""
    n, t_len, _ = waves.shape
    np.clip(waves, -full_scale[:, None, None].astype(np.float32),
            full_scale[:, None, None].astype(np.float32), out=waves)
    for i in np.flatnonzero(rng.random(n) < P_SPIKES):
        rms = float(np.sqrt(np.mean(np.square(waves[i], dtype=np.float64)))) + 1e-30
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, t_len - 2))
            width = int(rng.integers(1, 3))
            # 5-20x RMS: a glitch, not the trace's whole energy
            waves[i, at:at + width, int(rng.integers(0, 3))] += (
                rng.choice([-1.0, 1.0]) * rms * rng.uniform(5, 20))
    for i in np.flatnonzero(rng.random(n) < P_GAP):
        length = int(rng.integers(50, 2000))
        at = int(rng.integers(0, t_len - length))
        waves[i, at:at + length, :] = 0.0
    for i in np.flatnonzero((rng.random(n) < P_DEAD_CHANNEL) & ~single):
        dead = rng.choice(3, int(rng.integers(1, 3)), replace=False)
        waves[i, :, dead] = 0.0
    waves[single, :, 0] = waves[single, :, 2]
    waves[single, :, 1] = waves[single, :, 2]
