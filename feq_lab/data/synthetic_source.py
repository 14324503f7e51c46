"""Earthquake ground motion for the synthetic STEAD: the stochastic method, one realisation per trace.

Each wave group (P, S, and surface waves for shallow events far away) is band-limited white
noise under a time envelope whose Fourier amplitude is set to a physical spectrum (Boore 1983,
2003, "stochastic method"): the windowed noise's spectrum is normalised to unit mean square
and multiplied by

    A(f) = R_theta_phi * F * V / (4 pi rho c^3) * M0 / (1 + (f/fc)^2) * G(R) * D(f; t*) * 2 pi f

- source: Brune (1970) omega-squared spectrum, log10 M0 = 1.5 Mw + 9.1 (Hanks & Kanamori 1979),
  fc = 0.37 beta (16 dsigma / 7 M0)^(1/3); P corner 1.5x S's (Madariaga 1976);
- radiation: double couple of a random mechanism (Aki & Richards 2002, eq. 4.89), smoothed
  towards the focal-sphere average at high frequency (Takemura et al. 2009), free surface
  F = 2, partition V = 1/sqrt 2; P smaller by (beta/alpha)^3 ~ 0.2 (the 1/(rho c^3) factor);
- path: 1/R body-wave spreading, 1/sqrt(R) beyond 100 km for the crust-guided S (Lg)
  (Street et al. 1975); attenuation exp(-pi f t*) with t* = T/Q + kappa (Anderson & Hough 1984),
  made causal by the constant-Q dispersion (Kjartansson 1979) so no energy precedes an onset;
- durations: source 1/fc plus path 0.05 R (Herrmann 1985; Boore 2003), the onset rise widened
  by scattering with distance (Sato 1989; Saito et al. 2002: envelope broadening grows with
  travel distance) so far events have emergent onsets; regional phases Pg/P*/Pn and Sg/S*/Sn
  from iasp91 branches (head waves weaker than the direct wave, Cerveny & Ravindra 1971) and Lg
  as the long crustal S train; short-period Rayleigh waves (Rg) for shallow sources, whose
  excitation decays with source depth (Kafka 1990);
- coda: after each direct wave the envelope decays as t^-1.5 exp(-pi f t / Q_c) in lapse time t
  (Aki & Chouet 1975), Q_c = Q0 f^0.7 a property of the path (Sato & Fehler 1998), not of M.
Amplitudes come out in m/s; the noise (synthetic_noise) is in m/s too, so SNR follows from
magnitude, distance and the station's noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from feq_lab.data.synthetic_noise import FS, recording_filter

SYNTH_LENGTH = 8192  # > 6000: room for the causal responses, no wrap-around into the window
RHO = 2800.0  # kg/m^3
CODA_GAMMA = 1.5  # t^-1 (single scattering) .. t^-1.5 (diffusion): Sato & Fehler 1998
ETA = 0.5  # Q(f) = Q0 f^eta, crustal S/Lg (e.g. Erickson et al. 2004: eta 0.4-0.7)
BETA = 3500.0  # m/s
ALPHA = 6000.0  # m/s
_F = np.fft.rfftfreq(SYNTH_LENGTH, d=1.0 / FS)
_REC = recording_filter(_F).astype(np.complex64)


def moment_magnitude(local_magnitude: np.ndarray) -> np.ndarray:
    """Mw of a catalogue (local/duration) magnitude: Mw = 2/3 ML + 1.15 below ML 3.45, Mw = ML
    above (Munafo et al. 2016; Deichmann 2017: the 2/3 slope of small events follows from the
    omega-squared source and attenuation). STEAD's magnitudes are mostly ml/md."""
    ml = np.asarray(local_magnitude, dtype=np.float64)
    return np.where(ml < 3.45, 2.0 / 3.0 * ml + 1.15, ml)


def brune_corner(m0: np.ndarray, stress_pa: np.ndarray) -> np.ndarray:
    """S-wave corner frequency (Hz), Brune (1970) with beta = 3.5 km/s."""
    return 0.37 * BETA * (16.0 * stress_pa / (7.0 * m0)) ** (1.0 / 3.0)


def radiation(strike: np.ndarray, dip: np.ndarray, rake: np.ndarray, takeoff: np.ndarray,
              azimuth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Far-field radiation coefficients (R_P, R_SV, R_SH) of a double couple, Aki & Richards
    (2002) eq. 4.89; angles in radians, takeoff from the downward vertical."""
    lam, dl, i = rake, dip, takeoff
    ph = azimuth - strike
    rp = (np.cos(lam) * np.sin(dl) * np.sin(i) ** 2 * np.sin(2 * ph)
          - np.cos(lam) * np.cos(dl) * np.sin(2 * i) * np.cos(ph)
          + np.sin(lam) * np.sin(2 * dl) * (np.cos(i) ** 2 - np.sin(i) ** 2 * np.sin(ph) ** 2)
          + np.sin(lam) * np.cos(2 * dl) * np.sin(2 * i) * np.sin(ph))
    rsv = (np.sin(lam) * np.cos(2 * dl) * np.cos(2 * i) * np.sin(ph)
           - np.cos(lam) * np.cos(dl) * np.cos(2 * i) * np.cos(ph)
           + 0.5 * np.cos(lam) * np.sin(dl) * np.sin(2 * i) * np.sin(2 * ph)
           - 0.5 * np.sin(lam) * np.sin(2 * dl) * np.sin(2 * i) * (1 + np.sin(ph) ** 2))
    rsh = (np.cos(lam) * np.cos(dl) * np.cos(i) * np.sin(ph)
           + np.cos(lam) * np.sin(dl) * np.sin(i) * np.cos(2 * ph)
           + np.sin(lam) * np.cos(2 * dl) * np.cos(i) * np.cos(ph)
           - 0.5 * np.sin(lam) * np.sin(2 * dl) * np.sin(i) * np.sin(2 * ph))
    return rp, rsv, rsh


def attenuation(freqs: np.ndarray, tstar: np.ndarray, kappa: np.ndarray, eta: float = ETA,
                f_ref: float = 50.0) -> np.ndarray:
    """(n, nf) causal attenuation: path exp(-pi f t*(f)) with t*(f) = t*_1Hz f^-eta (Q = Q0 f^eta)
    times the site's exp(-pi kappa f) (frequency-independent, Anderson & Hough 1984); phase from
    Kjartansson's (1979) constant-Q dispersion, every frequency delayed by (t/pi) ln(f_ref/f)
    >= 0 (numpy's e^{-i w t} convention) so nothing precedes the onset."""
    f = np.maximum(freqs, 1e-3)[None, :]
    ts = tstar[:, None] * f ** -eta + kappa[:, None]
    return np.exp(-np.pi * f * ts - 2j * f * ts * np.log(f_ref / f))


def source_path_spectrum(fc: np.ndarray, tstar: np.ndarray, kappa: np.ndarray,
                         level: np.ndarray) -> np.ndarray:
    """(n, nf) complex velocity Fourier spectrum (m/s * s): level * 2 pi i f / (1 + i f/fc)^2
    x causal attenuation x recording filter. `level` = C * M0 * G(R) (m*s); the causal Brune
    factor has |.| = 1/(1 + (f/fc)^2)."""
    f = _F[None, :]
    brune = 1.0 / (1.0 + 1j * f / fc[:, None]) ** 2
    return (level[:, None] * 2j * np.pi * f * brune * attenuation(_F, tstar, kappa)
            * _REC[None, :]).astype(np.complex64)


def phase_envelope(t: np.ndarray, onset: np.ndarray, rise: np.ndarray, hold: np.ndarray,
                   origin: np.ndarray, f_coda: np.ndarray, q_coda: np.ndarray,
                   coda_level: np.ndarray) -> np.ndarray:
    """(n, T) float32 envelope of one phase, all times in samples (NaN onset: zero envelope).

    The direct wave rises linearly over `rise` from `onset`, holds for `hold`, then dies out
    (time constant a third of rise + hold); under it the scattered coda, `coda_level` times the
    direct peak at the end of the hold, decays as t^-1.5 exp(-pi f t / Q_c) in lapse time t since
    `origin` (Aki & Chouet 1975) - the coda level relative to the direct wave grows with
    distance (coda normalisation, Aki 1980)."""
    f32 = np.float32
    on = np.nan_to_num(onset, nan=1e9)[:, None].astype(f32)
    x = t[None, :] - on
    up = np.clip(x / rise[:, None].astype(f32), 0.0, 1.0)
    end = on + (rise + hold)[:, None].astype(f32)
    after = np.maximum(t[None, :] - end, 0.0)
    tau = ((rise + hold) / 3.0 + 5.0)[:, None].astype(f32)
    direct = np.exp(-after / tau)
    lapse_end = np.maximum(end - origin[:, None].astype(f32), 1.0)
    rate = (np.pi * f_coda / q_coda / FS)[:, None].astype(f32)
    coda = (coda_level[:, None].astype(f32) * (lapse_end / (lapse_end + after)) ** f32(CODA_GAMMA)
            * np.exp(-rate * after))
    return up * np.maximum(direct, coda)


def synthesize(rng: np.random.Generator, env: np.ndarray, spectrum: np.ndarray, n_out: int,
               pulses: list[tuple[np.ndarray, np.ndarray]] = ()) -> np.ndarray:
    """Boore's (2003) recipe, batched: white noise x envelope, spectrum normalised to unit mean
    square, times the target spectrum (m/s * s), back to time (m/s). env (n, L) float32,
    spectrum (n, nf) complex64 -> (n, n_out) float32. Rows with an all-zero envelope give 0.

    `pulses` (onset samples, signed amplitudes in carrier units) add the coherent direct wave:
    an impulse in the carrier becomes the source-path impulse response - the first-motion
    pulse whose width is set by the corner frequency and t* - on top of the scattered,
    incoherent part the envelope carries."""
    n, length = env.shape
    white = rng.standard_normal((n, length), dtype=np.float32)
    white *= env
    rows = np.arange(n)
    for onset, amp in pulses:
        ok = np.isfinite(onset) & (onset >= 0) & (onset < length - 1) & (amp != 0)
        i0 = np.floor(np.where(ok, onset, 0)).astype(np.int64)
        frac = np.where(ok, onset - i0, 0.0)
        a = np.where(ok, amp, 0.0)
        white[rows, i0] += (a * (1 - frac)).astype(np.float32)
        white[rows, i0 + 1] += (a * frac).astype(np.float32)
    spec = sfft.rfft(white, axis=1)
    ms = np.mean(np.abs(spec) ** 2, axis=1, keepdims=True)
    spec *= (1.0 / np.sqrt(np.maximum(ms, 1e-30))).astype(np.float32)
    spec *= spectrum * np.float32(FS)  # continuous FT / dt
    return sfft.irfft(spec, n=length, axis=1)[:, :n_out].astype(np.float32, copy=False)


@dataclass
class Wavefield:
    """Per-trace ground velocity components (m/s) before the station: P, SV, SH (n, 3, T) and
    Rayleigh radial/vertical (n, 2, T); with the parameters that the labels and checks use."""

    body: np.ndarray
    rayleigh: np.ndarray
    incidence_p: np.ndarray
    incidence_s: np.ndarray
    rise_p_s: np.ndarray  # onset rise time of the first P (s), before the station
    s_env: np.ndarray  # (n, T) S-group RMS envelope (m/s), for coda_end


def earthquake_wavefield(rng: np.random.Generator, magnitude: np.ndarray,
                         distance_km: np.ndarray, depth_km: np.ndarray, p_true: np.ndarray,
                         tp_first: np.ndarray, p_branches: np.ndarray, s_branches: np.ndarray,
                         n_out: int) -> Wavefield:
    """Synthesize P, SV, SH (and Rg where due) for n events; p_true = first-P sample in the
    window, tp_first its travel time (s); *_branches (n, 3) iasp91 branch times (s)."""
    n = magnitude.size
    f32 = np.float32
    r_hyp = np.sqrt(distance_km**2 + depth_km**2) + 0.5
    m0 = 10 ** (1.5 * moment_magnitude(magnitude) + 9.1)
    stress = 10 ** rng.normal(np.log10(3e6), 0.35, n)  # ~1-10 MPa (Allmann & Shearer 2009)
    fc_s = brune_corner(m0, stress)
    fc_p = 1.5 * fc_s

    # Mechanism and ray geometry: direct-ray takeoff from a straight ray (upgoing).
    strike, dip, rake = (rng.uniform(0, 2 * np.pi, n), np.arccos(rng.uniform(0, 1, n)),
                         rng.uniform(-np.pi, np.pi, n))
    takeoff = np.pi - np.arctan2(distance_km, np.maximum(depth_km, 0.1))
    azimuth = rng.uniform(0, 2 * np.pi, n)
    rp, rsv, rsh = radiation(strike, dip, rake, takeoff, azimuth)
    pol_p, pol_sv, pol_sh = (np.where(r < 0, -1.0, 1.0) for r in (rp, rsv, rsh))
    mix = rng.uniform(0.3, 0.7, n)  # high-frequency pattern smoothing (Takemura et al. 2009)
    rp = np.sqrt((1 - mix) * rp**2 + mix * 0.52**2)  # focal-sphere rms: P 0.52, S 0.63
    rsv = np.sqrt((1 - mix) * rsv**2 + mix * 0.45**2)  # (Boore & Boatwright 1984)
    rsh = np.sqrt((1 - mix) * rsh**2 + mix * 0.45**2)

    # Path: Q0 (at 1 Hz) ~ 180 for S, Q = Q0 f^0.5 (a few hundred at 1-10 Hz), kappa 0.01-0.05 s
    # (Anderson & Hough 1984); t* (at 1 Hz) grows with travel time.
    q_s = 10 ** rng.normal(np.log10(180.0), 0.15, n)
    q_p = q_s  # Qp ~ Qs in the crust at 1-20 Hz (e.g. Abercrombie 1995; Sato & Fehler 1998)
    kappa = rng.uniform(0.01, 0.05, n)
    ts_first = np.fmin.reduce(s_branches, axis=1)
    tstar_p = tp_first / q_p
    tstar_s = ts_first / q_s
    q0_coda = 10 ** rng.normal(np.log10(100.0), 0.2, n)  # Q_c(1 Hz), Sato & Fehler 1998
    f_coda = np.clip(fc_s, 2.0, 8.0)
    qc = q0_coda * f_coda**0.7
    coda_level = np.clip(0.03 * 10 ** rng.normal(0.0, 0.15, n) * np.sqrt(r_hyp / 20.0), 0.02, 0.5)

    # Spreading: 1/R, and for S beyond 100 km the Lg's 1/sqrt(R) (Street et al. 1975).
    g_p = 1.0 / (r_hyp * 1e3)
    g_s = np.where(r_hyp <= 100.0, 1.0 / (r_hyp * 1e3), 1.0 / 1e5 * np.sqrt(100.0 / r_hyp))
    const = 2.0 / np.sqrt(2.0) / (4 * np.pi * RHO)
    # Near-surface impedance amplification is smaller for P than for S (high Vp/Vs in soft
    # layers; Boore & Joyner 1997 give it for S): P x 0.75 relative.
    level_p = 0.75 * const * m0 * g_p * rp / ALPHA**3
    level_sv = const * m0 * g_s * rsv / BETA**3
    level_sh = const * m0 * g_s * rsh / BETA**3

    # Envelopes in window samples; origin = p_true - tp * FS.
    t = np.arange(SYNTH_LENGTH, dtype=f32)
    origin = p_true - tp_first * FS
    scatter = 10 ** rng.normal(np.log10(0.0025), 0.35, n)  # s of onset broadening per km
    dur_p = 1.0 / fc_p + 0.05 * r_hyp * BETA / ALPHA  # s (Herrmann 1985 / Boore 2003 form)
    dur_s = 1.0 / fc_s + 0.05 * r_hyp
    env_p = np.zeros((n, SYNTH_LENGTH), dtype=f32)
    env_s = np.zeros((n, SYNTH_LENGTH), dtype=f32)
    rise_first = np.full(n, np.nan)
    # Branch weights: the upper-crust direct wave (Pg/Sg) strongest, the Conrad wave P*/S*
    # weaker, the head wave Pn/Sn weak (Cerveny & Ravindra 1971).
    head = rng.uniform(0.15, 0.5, n)
    weights = np.stack([np.ones(n), np.full(n, 0.45), head], axis=1)
    coherent = 0.3 * np.exp(-r_hyp / 10 ** rng.normal(np.log10(25.0), 0.25, n))
    pulses: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"P": [], "S": []}
    for wave, branches, dur, env, fcw in (("P", p_branches, dur_p, env_p, fc_p),
                                          ("S", s_branches, dur_s, env_s, fc_s)):
        first = np.fmin.reduce(branches, axis=1)
        k_scatter = scatter * (1.0 if wave == "P" else 1.7)
        for b in range(3):
            tb = branches[:, b]
            ok = np.isfinite(tb)
            onset = np.where(ok, p_true + (tb - tp_first) * FS, np.nan)
            # Head waves are emergent: a longer rise (x2).
            rise_s = 0.5 / fcw + k_scatter * r_hyp * (2.0 if b == 2 else 1.0)
            rise = np.maximum(rise_s * FS, 1.0)
            hold = np.maximum(dur * FS - rise, 0.0)
            env += (weights[:, b, None].astype(f32)
                    * phase_envelope(t, onset, rise, hold, origin, f_coda, qc, coda_level))
            # The coherent share of the direct wave: energy fraction phi of the branch's direct
            # part, lost to scattering with distance (exp(-r / l), l ~ 25 km: Sato & Fehler 1998).
            energy = weights[:, b] ** 2 * (rise / 3.0 + hold)
            pulses[wave].append((onset, np.sqrt(coherent * energy)))
            if wave == "P":
                is_first = ok & (tb <= first + 1e-6) & np.isnan(rise_first)
                rise_first[is_first] = rise_s[is_first]

    # A second, weaker event in ~8% of traces (unlabelled, as in STEAD).
    second = np.flatnonzero(rng.random(n) < 0.08)
    if second.size:
        s_true = p_true + (ts_first - tp_first) * FS
        p2 = rng.uniform(s_true[second] + 200.0, n_out - 200.0)
        sp2 = rng.uniform(100.0, 1500.0, second.size)
        w2 = (10 ** -rng.uniform(0.3, 1.5, second.size)).astype(f32)[:, None]
        short = np.full(second.size, 5.0)
        o2 = p2 - 1.7 * sp2
        env_p[second] += w2 * phase_envelope(t, p2, short, 0.5 * dur_p[second] * FS, o2,
                                             f_coda[second], qc[second], coda_level[second])
        env_s[second] += w2 * phase_envelope(t, p2 + sp2, 2 * short, 0.5 * dur_s[second] * FS,
                                             o2, f_coda[second], qc[second], coda_level[second])

    spec_p = source_path_spectrum(fc_p, tstar_p, kappa, level_p)
    spec_s = source_path_spectrum(fc_s, tstar_s, kappa, np.ones(n))
    # First-motion polarity from the mechanism (sign of the unsmoothed pattern).
    signed = lambda group, sign: [(on, amp * sign) for on, amp in pulses[group]]
    p_series = synthesize(rng, env_p, spec_p, n_out, signed("P", pol_p))
    sv = synthesize(rng, env_s, spec_s * level_sv[:, None].astype(f32), n_out, signed("S", pol_sv))
    sh = synthesize(rng, env_s, spec_s * level_sh[:, None].astype(f32), n_out, signed("S", pol_sh))
    # Expected S RMS envelope (Parseval: sum x^2 dt = 2 sum |A|^2 df), for coda_end.
    df = _F[1] - _F[0]
    energy = 2.0 * (np.abs(spec_s) ** 2).sum(axis=1) * df * (level_sv**2 + level_sh**2)
    norm = np.sqrt(energy / np.maximum((env_s.astype(np.float64) ** 2).sum(axis=1) / FS, 1e-30))
    s_rms_env = env_s[:, :n_out] * norm[:, None].astype(f32)

    # Rg: shallow sources, beyond ~20 km; group velocity ~3 km/s, dispersed over R(1/2.6-1/3.1).
    rayleigh = np.zeros((n, 2, n_out), dtype=f32)
    rg = np.flatnonzero((depth_km < 6.0) & (distance_km > 20.0))
    if rg.size:
        d = distance_km[rg]
        onset = origin[rg] + d / 3.1 * FS
        hold = (d * (1 / 2.6 - 1 / 3.1) + 2.0) * FS
        env_r = phase_envelope(t, onset, np.full(rg.size, 100.0), hold, origin[rg],
                               np.full(rg.size, 1.5), qc[rg], np.full(rg.size, 0.1))
        excite = np.exp(-depth_km[rg] / 2.5) * rng.uniform(0.3, 1.0, rg.size)
        # Surface waves spread as 1/sqrt(R): relative to the S level at R, x sqrt(R / 20 km).
        level_r = level_sv[rg] * excite * np.sqrt(np.maximum(r_hyp[rg], 20.0) / 20.0) * 2.0
        fc_r = np.minimum(fc_s[rg], 1.5)
        spec_r = source_path_spectrum(fc_r, tstar_s[rg], kappa[rg], level_r)
        radial = synthesize(rng, env_r, spec_r, SYNTH_LENGTH)
        # Retrograde ellipse: the vertical a quarter cycle from the radial, ~1.5x larger.
        vert = sfft.irfft(sfft.rfft(radial, axis=1) * np.complex64(-1.5j), n=SYNTH_LENGTH, axis=1)
        rayleigh[rg, 0] = radial[:, :n_out]
        rayleigh[rg, 1] = vert[:, :n_out]

    # Near-surface velocity gradient bends rays to steep incidence (P on Z, S on horizontals).
    inc_p = np.deg2rad(rng.uniform(10.0, 35.0, n))
    inc_s = np.deg2rad(rng.uniform(5.0, 25.0, n))
    body = np.stack([p_series, sv, sh], axis=1)
    return Wavefield(body, rayleigh, inc_p, inc_s, rise_first, s_rms_env)
