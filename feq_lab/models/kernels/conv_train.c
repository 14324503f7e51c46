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

#include "conv_rows.h"

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
            pad_rows(pad, stride, xg, C, length_in, left); /* row[p] = x[p - left] */
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
    flipped_transpose(wt, w, groups, O, C, k);
    for (int b = b0; b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            const float *xg = x + ((size_t)b * groups + g) * C * length_in;
            const float *gyg = gy + ((size_t)b * groups + g) * O * length_out;
            pad_rows(gpad, gs, gyg, O, length_out, shift); /* gpad[o][p] = gy[o][p - shift] */
            conv_rows(gpad, gs, O, wt + (size_t)g * C * O * k, C, k, NULL,
                      gx + ((size_t)b * groups + g) * C * length_in, length_in, length_in, wide);
            pad_rows(xpad, xs, xg, C, length_in, left); /* xpad[c][p] = x[c][p - left] */
            conv_weight_grads(gw + (size_t)g * O * C * k, gbias + (size_t)g * O, gyg, O,
                              length_out, xpad, xs, C, k, taps, wide);
        }
    }
    free(xpad);
    free(gpad);
    free(wt);
    free(taps);
    return 0;
}
