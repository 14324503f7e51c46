/* Dense grouped conv1d with explicit zero padding, stride 1, for TRAINING: forward and backward.
 *
 * Why: oneDNN runs PyTorch's CPU conv1d well for wide layers, but the thin ones of this model
 * family (the decoders' 1-channel heads: 8 -> 1 channels, k = 11, at 6000 samples) run at ~1
 * GMAC/s, backward worst of all. Here every output block is computed in registers: 8 output
 * channels x 32 samples (or 4 x 64, 1 x 128) accumulate over all input channels and taps, each
 * input load feeding up to 8 multiply-adds (the input gradient is the same conv on the padded
 * output gradient with the transposed, flipped weight); a weight gradient keeps its k tap sums
 * in registers over the whole row (simd.h, tap_sums).
 *
 * x (B, G C, L_in), w (G O, C, k), bias (G O) or NULL; y (B, G O, L_out) with
 * y[o, t] = bias[o] + sum_c sum_j w[o, c, j] x[c, t + j - left], zeros outside [0, L_in),
 * L_out = L_in + left + right - k + 1. Backward writes gx for samples [b0, b1) and ADDS that
 * range's weight gradients into gw, gbias (per-thread copies, summed by the caller).
 * Return 0, or -1 when out of memory.
 */
/* fused multiply-adds: faster, and no less accurate than separate roundings */
#pragma GCC optimize("fp-contract=fast")
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "clones.h"

#include "simd.h"

#define ROW_PAD (8 * LANES) /* the widest sample block conv_rows computes at once */

/* out[q][t] = (bias ? bias[q] : 0) + sum_c sum_j w[(q * C + c) * k + j] in[c][t + j] for
 * q < OB, t in [t0, t0 + TV LANES) and < n: OB outputs x TV vectors of samples in OB TV vector
 * registers (constants after inlining, OB TV <= 16), each input load feeding OB multiply-adds
 * and each weight broadcast TV */
FEQ_INLINE void conv_block(const float *in, size_t is, int C, const float *w, int k,
                           const float *bias, float *out, size_t os, int t0, int n, const int OB,
                           const int TV)
{
    vf a[16];
    for (int q = 0; q < OB; ++q)
        for (int v = 0; v < TV; ++v) a[q * TV + v] = (vf){0} + (bias ? bias[q] : 0.0f);
    for (int c = 0; c < C; ++c) {
        const float *row = in + (size_t)c * is + t0;
        for (int j = 0; j < k; ++j) {
            vf xv[8];
            for (int v = 0; v < TV; ++v) xv[v] = vload(row + j + v * LANES);
            for (int q = 0; q < OB; ++q) {
                const float wq = w[((size_t)q * C + c) * k + j];
                for (int v = 0; v < TV; ++v) a[q * TV + v] += wq * xv[v];
            }
        }
    }
    for (int q = 0; q < OB; ++q)
        for (int v = 0; v < TV; ++v) {
            const int t = t0 + v * LANES;
            if (t >= n) break;
            float tmp[LANES];
            vstore(tmp, a[q * TV + v]);
            copy_block(out + (size_t)q * os + t, tmp, n - t, LANES);
        }
}

/* the narrow form of conv_block (FEQ_WIDE): one output, 2 LANES samples, plain C (GCC lowers vf
 * arrays through memory where vf spans several registers) */
FEQ_INLINE void conv_block_narrow(const float *in, size_t is, int C, const float *w, int k,
                                  const float *bias, float *out, int t0, int n)
{
    float acc[2 * LANES];
    for (int i = 0; i < 2 * LANES; ++i) acc[i] = bias ? bias[0] : 0.0f;
    for (int c = 0; c < C; ++c) {
        const float *row = in + (size_t)c * is + t0;
        for (int j = 0; j < k; ++j) {
            const float wj = w[(size_t)c * k + j];
            for (int i = 0; i < 2 * LANES; ++i) acc[i] += wj * row[j + i];
        }
    }
    copy_block(out + t0, acc, n - t0, 2 * LANES);
}

/* out[o][t] = (bias ? bias[o] : 0) + sum_c sum_j w[(o * C + c) * k + j] in[c][t + j], t < n,
 * wide in blocks of 8 outputs x 32 samples, 4 x 64, or 1 x 128, narrow (FEQ_WIDE) 1 x 32 (the
 * same sums in the same order); rows of `in` (stride `is`) must be readable up to n rounded up
 * to ROW_PAD, plus k - 1 */
FEQ_INLINE void conv_rows(const float *in, size_t is, int C, const float *w, int O, int k,
                          const float *bias, float *out, size_t os, int n, int wide)
{
    int o = 0;
    if (!wide) {
        for (; o < O; ++o)
            for (int t0 = 0; t0 < n; t0 += 2 * LANES)
                conv_block_narrow(in, is, C, w + (size_t)o * C * k, k, bias ? bias + o : NULL,
                                  out + (size_t)o * os, t0, n);
        return;
    }
    for (; o + 8 <= O; o += 8)
        for (int t0 = 0; t0 < n; t0 += 2 * LANES)
            conv_block(in, is, C, w + (size_t)o * C * k, k, bias ? bias + o : NULL,
                       out + (size_t)o * os, os, t0, n, 8, 2);
    for (; o + 4 <= O; o += 4)
        for (int t0 = 0; t0 < n; t0 += 4 * LANES)
            conv_block(in, is, C, w + (size_t)o * C * k, k, bias ? bias + o : NULL,
                       out + (size_t)o * os, os, t0, n, 4, 4);
    for (; o < O; ++o)
        for (int t0 = 0; t0 < n; t0 += 8 * LANES)
            conv_block(in, is, C, w + (size_t)o * C * k, k, bias ? bias + o : NULL,
                       out + (size_t)o * os, os, t0, n, 1, 8);
}

/* whether this build on this CPU runs the wide forms (simd.h, FEQ_WIDE): for tests and benches */
int feq_kernels_wide(void)
{
    return FEQ_WIDE() != 0;
}

FEQ_CLONES
int feq_conv_fwd(const float *x, const float *w, const float *bias, float *y, int batch,
                 int groups, int channels, int outputs, int length_in, int kernel, int left,
                 int length_out, int b0, int b1)
{
    const int C = channels, O = outputs, k = kernel;
    const int wide = FEQ_WIDE();
    const size_t stride = (size_t)length_out + ROW_PAD + k; /* padded row, readable past the end */
    float *pad = calloc((size_t)C * stride, sizeof(float));
    (void)batch;
    if (!pad) return -1;
    for (int b = b0; b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            const float *xg = x + ((size_t)b * groups + g) * C * length_in;
            for (int c = 0; c < C; ++c) { /* row[p] = x[p - left] inside [0, L_in) */
                float *row = pad + (size_t)c * stride;
                const int lo = left > 0 ? left : 0, skip = left < 0 ? -left : 0;
                int m = length_in - skip;
                if (lo + m > (int)stride) m = (int)stride - lo;
                if (m > 0) memcpy(row + lo, xg + (size_t)c * length_in + skip, sizeof(float) * m);
            }
            conv_rows(pad, stride, C, w + (size_t)g * O * C * k, O, k,
                      bias ? bias + (size_t)g * O : NULL,
                      y + ((size_t)b * groups + g) * O * length_out, length_out, length_out, wide);
        }
    }
    free(pad);
    return 0;
}

FEQ_CLONES
int feq_conv_bwd(const float *x, const float *w, const float *gy, float *gx, float *gw,
                 float *gbias, int batch, int groups, int channels, int outputs, int length_in,
                 int kernel, int left, int length_out, int b0, int b1)
{
    const int C = channels, O = outputs, k = kernel;
    const int wide = FEQ_WIDE();
    /* gx[c][s] = sum_o sum_j w[o, c, j] gy[o][s + left - j]
     *          = sum_o sum_j' wt[c, o, j'] gpad[o][s + j'], wt[c, o, j'] = w[o, c, k - 1 - j'],
     * gpad[o][p] = gy[o][p - (k - 1 - left)] */
    const int shift = k - 1 - left;
    const size_t xs = (size_t)length_out + ROW_PAD + k, gs = (size_t)length_in + ROW_PAD + k;
    float *xpad = calloc((size_t)C * xs, sizeof(float));
    float *gpad = calloc((size_t)O * gs, sizeof(float));
    float *wt = malloc(sizeof(float) * (size_t)groups * C * O * k);
    float *taps = malloc(sizeof(float) * (size_t)k * LANES);
    (void)batch;
    if (!xpad || !gpad || !wt || !taps) {
        free(xpad);
        free(gpad);
        free(wt);
        free(taps);
        return -1;
    }
    for (int g = 0; g < groups; ++g)
        for (int o = 0; o < O; ++o)
            for (int c = 0; c < C; ++c)
                for (int j = 0; j < k; ++j)
                    wt[(((size_t)g * C + c) * O + o) * k + (k - 1 - j)] =
                        w[(((size_t)g * O + o) * C + c) * k + j];
    for (int b = b0; b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            const float *xg = x + ((size_t)b * groups + g) * C * length_in;
            const float *gyg = gy + ((size_t)b * groups + g) * O * length_out;
            for (int o = 0; o < O; ++o) { /* gpad[o][p] = gy[o][p - shift] */
                float *row = gpad + (size_t)o * gs;
                const int lo = shift > 0 ? shift : 0, skip = shift < 0 ? -shift : 0;
                int m = length_out - skip;
                if (lo + m > (int)gs) m = (int)gs - lo;
                if (m > 0) memcpy(row + lo, gyg + (size_t)o * length_out + skip, sizeof(float) * m);
            }
            conv_rows(gpad, gs, O, wt + (size_t)g * C * O * k, C, k, NULL,
                      gx + ((size_t)b * groups + g) * C * length_in, length_in, length_in, wide);
            for (int c = 0; c < C; ++c) { /* xpad[c][p] = x[c][p - left] */
                float *row = xpad + (size_t)c * xs;
                const int lo = left > 0 ? left : 0, skip = left < 0 ? -left : 0;
                int m = length_in - skip;
                if (lo + m > (int)xs) m = (int)xs - lo;
                if (m > 0) memcpy(row + lo, xg + (size_t)c * length_in + skip, sizeof(float) * m);
            }
            for (int o = 0; o < O; ++o) {
                const float *go = gyg + (size_t)o * length_out;
                float s = 0.0f, acc[LANES] = {0};
                int t = 0;
                for (; t + LANES <= length_out; t += LANES)
                    for (int i = 0; i < LANES; ++i) acc[i] += go[t + i];
                for (; t < length_out; ++t) s += go[t];
                for (int i = 0; i < LANES; ++i) s += acc[i];
                gbias[g * O + o] += s;
                const int whole = length_out / LANES * LANES; /* go is not padded */
                for (int c = 0; c < C; ++c) {
                    float *gwc = gw + (((size_t)g * O + o) * C + c) * k;
                    const float *xc = xpad + (size_t)c * xs;
                    memset(taps, 0, sizeof(float) * (size_t)k * LANES);
                    tap_sums(taps, go, xc, whole, k, wide);
                    for (int j = 0; j < k; ++j) {
                        float t = vsum(vload(taps + j * LANES));
                        for (int i = whole; i < length_out; ++i) t += go[i] * xc[i + j];
                        gwc[j] += t;
                    }
                }
            }
        }
    }
    free(xpad);
    free(gpad);
    free(wt);
    free(taps);
    return 0;
}
