/* Dense grouped conv1d with explicit zero padding, stride 1, for TRAINING: forward and backward.
 *
 * Why: oneDNN runs PyTorch's CPU conv1d well for wide layers, but the thin ones of this model
 * family (the decoders' 1-channel heads: 8 -> 1 channels, k = 11, at 6000 samples) run at ~1
 * GMAC/s, backward worst of all. Here every output row block is computed in registers:
 * BLOCK consecutive samples of one output channel accumulate over all input channels and taps
 * (one load per multiply-add), and weight gradients are 16-lane dot products.
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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FEQ_NO_CLONES)
#define FEQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FEQ_CLONES
#endif

#define BLOCK 32
#define LANES 16

static inline float dot16(const float *a, const float *b, int n)
{
    float acc[LANES] = {0};
    int t = 0;
    for (; t + LANES <= n; t += LANES)
        for (int i = 0; i < LANES; ++i) acc[i] += a[t + i] * b[t + i];
    float s = 0.0f;
    for (; t < n; ++t) s += a[t] * b[t];
    for (int i = 0; i < LANES; ++i) s += acc[i];
    return s;
}

/* s[q] += sum_t a[t] b[t + q], q < 4: four taps' weight gradients in one pass over a */
static inline void dot16x4(float *restrict s, const float *restrict a, const float *restrict b,
                           int n)
{
    float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0}, a3[LANES] = {0};
    int t = 0;
    for (; t + LANES <= n; t += LANES)
        for (int i = 0; i < LANES; ++i) {
            const float g = a[t + i];
            a0[i] += g * b[t + i];
            a1[i] += g * b[t + i + 1];
            a2[i] += g * b[t + i + 2];
            a3[i] += g * b[t + i + 3];
        }
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (; t < n; ++t) {
        s0 += a[t] * b[t];
        s1 += a[t] * b[t + 1];
        s2 += a[t] * b[t + 2];
        s3 += a[t] * b[t + 3];
    }
    for (int i = 0; i < LANES; ++i) {
        s0 += a0[i];
        s1 += a1[i];
        s2 += a2[i];
        s3 += a3[i];
    }
    s[0] += s0;
    s[1] += s1;
    s[2] += s2;
    s[3] += s3;
}

/* out[o][t] = (bias ? bias[o] : 0) + sum_c sum_j w[(o * C + c) * k + j] in[c][t + j], t < n;
 * rows of `in` (stride `is`) must be readable up to n rounded up to BLOCK, plus k - 1 */
static inline void conv_rows(const float *in, size_t is, int C, const float *w, int O, int k,
                             const float *bias, float *out, size_t os, int n)
{
    for (int o = 0; o < O; ++o) {
        const float *wo = w + (size_t)o * C * k;
        float *y = out + (size_t)o * os;
        const float b = bias ? bias[o] : 0.0f;
        int t0 = 0;
        for (; t0 < n; t0 += BLOCK) {
            float acc[BLOCK];
            for (int i = 0; i < BLOCK; ++i) acc[i] = b;
            for (int c = 0; c < C; ++c) {
                const float *row = in + (size_t)c * is + t0;
                const float *wc = wo + (size_t)c * k;
                for (int j = 0; j < k; ++j) {
                    const float wj = wc[j];
                    for (int i = 0; i < BLOCK; ++i) acc[i] += wj * row[j + i];
                }
            }
            const int m = n - t0 < BLOCK ? n - t0 : BLOCK;
            memcpy(y + t0, acc, sizeof(float) * (size_t)m);
        }
    }
}

FEQ_CLONES
int feq_conv_fwd(const float *x, const float *w, const float *bias, float *y, int batch,
                 int groups, int channels, int outputs, int length_in, int kernel, int left,
                 int length_out, int b0, int b1)
{
    const int C = channels, O = outputs, k = kernel;
    const size_t stride = (size_t)length_out + BLOCK + k; /* padded row, readable past the end */
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
                      y + ((size_t)b * groups + g) * O * length_out, length_out, length_out);
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
    /* gx[c][s] = sum_o sum_j w[o, c, j] gy[o][s + left - j]
     *          = sum_o sum_j' wt[c, o, j'] gpad[o][s + j'], wt[c, o, j'] = w[o, c, k - 1 - j'],
     * gpad[o][p] = gy[o][p - (k - 1 - left)] */
    const int shift = k - 1 - left;
    const size_t xs = (size_t)length_out + BLOCK + k, gs = (size_t)length_in + BLOCK + k;
    float *xpad = calloc((size_t)C * xs, sizeof(float));
    float *gpad = calloc((size_t)O * gs, sizeof(float));
    float *wt = malloc(sizeof(float) * (size_t)groups * C * O * k);
    (void)batch;
    if (!xpad || !gpad || !wt) {
        free(xpad);
        free(gpad);
        free(wt);
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
                      gx + ((size_t)b * groups + g) * C * length_in, length_in, length_in);
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
                for (int c = 0; c < C; ++c) {
                    float *gwc = gw + (((size_t)g * O + o) * C + c) * k;
                    const float *xc = xpad + (size_t)c * xs;
                    int j = 0;
                    for (; j + 4 <= k; j += 4) /* 4 taps per pass: each gy load feeds 4 */
                        dot16x4(gwc + j, go, xc + j, length_out);
                    for (; j < k; ++j) gwc[j] += dot16(go, xc + j, length_out);
                }
            }
        }
    }
    free(xpad);
    free(gpad);
    free(wt);
    return 0;
}
