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


def window_power(x: np.ndarray, start: np.ndarray, stop: np.ndarray,
                 mean: np.ndarray | None = None) -> np.ndarray:
    """Mean power per channel of x[i, start_i:stop_i, :] for a batch (n, T, c).

    A loop of contiguous slices: only the windows are touched, whatever T is. `mean` (n, c)
    is subtracted first when given.
    """
    n, _, c = x.shape
    out = np.zeros((n, c))
    for i in range(n):
        a, b = int(start[i]), int(stop[i])
        if b <= a:
            continue
        seg = x[i, a:b, :].astype(np.float64)
        if mean is not None:
            seg -= mean[i][None, :]
        out[i] = np.einsum("tc,tc->c", seg, seg) / (b - a)
    return out


def waveform_snr_db(waveforms: np.ndarray, p_samples: np.ndarray, window: int = SNR_WINDOW,
                    channel_first: bool = False) -> np.ndarray:
    """(N, 6000, 3) waveforms (or (N, 3, 6000) with channel_first) and (N,) P samples -> (N, 3)
    SNR in dB per channel; NaN where there is no P."""
    x = np.asarray(waveforms)
    if x.ndim == 2:
        x = x[None]
    if channel_first:
        x = np.swapaxes(x, 1, 2)
    p = np.asarray(p_samples, dtype=np.float64).reshape(-1)
    n, t, c = x.shape
    out = np.full((n, c), np.nan)
    ok = np.nonzero(np.isfinite(p) & (p >= 1) & (p < t - 1))[0]
    if ok.size == 0:
        return out
    xs = x[ok] if ok.size < n else x
    pi = np.round(p[ok]).astype(np.int64)
    # Channel means by a batched BLAS product: a reduction over the middle axis of (n, T, 3)
    # is several times slower in numpy.
    ones = np.ones((1, t), dtype=xs.dtype if xs.dtype.kind == "f" else np.float64)
    mean = np.matmul(ones, xs)[:, 0, :].astype(np.float64) / t
    noise = window_power(xs, np.maximum(pi - window, 0), pi, mean=mean)
    signal = window_power(xs, pi, np.minimum(pi + window, t), mean=mean)
    tiny = np.finfo(np.float64).tiny
    out[ok] = 10.0 * np.log10(np.maximum(signal, tiny) / np.maximum(noise, tiny))
    return out
