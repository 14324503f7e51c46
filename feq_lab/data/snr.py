"""Signal-to-noise ratio per channel, measured on the waveform (the value written to `snr_db`).

Definition used throughout the lab: on the demeaned trace, for each channel,
    snr_db = 10 * log10( mean(x^2) over [P, P + 5 s) / mean(x^2) over [P - 5 s, P) )
i.e. a power ratio of the 5 s after the P arrival to the 5 s before it (windows clipped to the
trace; STEAD starts its windows 5-10 s before P, so the noise window is normally complete). This
follows STEAD's "ratio of signal power to noise power around P, in dB".
"""

from __future__ import annotations

import numpy as np

SNR_WINDOW = 500  # samples (5 s at 100 Hz)


def window_power(x: np.ndarray, start: np.ndarray, stop: np.ndarray, time_axis: int = 1,
                 mean: np.ndarray | None = None) -> np.ndarray:
    """Mean power of x[i, start_i:stop_i] per channel for a batch (n, T, c) or (n, c, T).

    Gathers only the windows (fixed maximal length with a mask), so cost is independent of T.
    `mean` (n, c) is subtracted first when given.
    """
    n = x.shape[0]
    start = np.asarray(start, dtype=np.int64)
    stop = np.asarray(stop, dtype=np.int64)
    length = max(int((stop - start).max()), 1) if n else 1
    idx = start[:, None] + np.arange(length)[None, :]
    valid = idx < stop[:, None]
    idx = np.minimum(idx, x.shape[time_axis] - 1)
    rows = np.arange(n)[:, None]
    win = x[rows, idx, :] if time_axis == 1 else np.swapaxes(x, 1, 2)[rows, idx, :]
    win = win.astype(np.float64)  # (n, L, c)
    if mean is not None:
        win -= mean[:, None, :]
    win *= valid[:, :, None]
    counts = np.maximum(valid.sum(axis=1), 1)[:, None]
    return np.einsum("nlc,nlc->nc", win, win) / counts


def waveform_snr_db(waveforms: np.ndarray, p_samples: np.ndarray,
                    window: int = SNR_WINDOW) -> np.ndarray:
    """(N, 6000, 3) waveforms and (N,) P samples -> (N, 3) SNR in dB (NaN without a P)."""
    x = np.asarray(waveforms)
    if x.ndim == 2:
        x = x[None]
    p = np.asarray(p_samples, dtype=np.float64).reshape(-1)
    n, t, c = x.shape
    out = np.full((n, c), np.nan)
    ok = np.nonzero(np.isfinite(p) & (p >= 1) & (p < t - 1))[0]
    if ok.size == 0:
        return out
    xs = x[ok]
    pi = np.round(p[ok]).astype(np.int64)
    mean = xs.mean(axis=1, dtype=np.float64)
    noise = window_power(xs, np.maximum(pi - window, 0), pi, mean=mean)
    signal = window_power(xs, pi, np.minimum(pi + window, t), mean=mean)
    tiny = np.finfo(np.float64).tiny
    out[ok] = 10.0 * np.log10(np.maximum(signal, tiny) / np.maximum(noise, tiny))
    return out
