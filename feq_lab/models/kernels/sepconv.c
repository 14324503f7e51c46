/* Separable "same" convolution (+ optional nearest upsampling and crop before it, bias, ReLU and
 * "same" max-pooling after it), fused, for CPU inference.
 *
 * Why: the LEQ/FEQ encoder stages are [depthwise conv → pointwise conv → ReLU → max-pool] and
 * their decoder stages [upsample → crop → depthwise → pointwise → ReLU]. PyTorch's CPU depthwise
 * conv1d costs 100-200 µs at batch 1 for ~10^5 MACs (oneDNN's generic grouped path), so eval
 * folded each conv into a dense one, which does k·C_out/(k + C_out) times the work, and the
 * upsampling, padding, ReLU and pooling were passes of their own. Here the depthwise and pointwise
 * halves run as vectorisable row updates on one padded row per channel, and ReLU and pooling are
 * applied as each output row is written.
 *
 * x: (B, G·C, L_in); dw: (G·C, k); pw: (G·O, C) (group g's outputs see only group g's channels);
 * bias: (G·O) or NULL; out: (B, G·O, ceil(L / pool)).
 * The conv input u has L samples: u[t] = x[(t + crop_left) / upsample] (nearest upsampling, then
 * `crop_left` samples dropped; the caller sets L for the crop on the right).
 * Conv padding: `left` zeros before u, k − 1 − left after (TensorFlow "same").
 * Pooling (stride = size): windows start `pool_left` samples before u[0] (TF pads with −inf, so
 * padding never wins); max(ReLU(v)) = ReLU(max(v)). Returns 0, or −1 when out of memory.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "clones.h"

FEQ_CLONES_V3
int feq_separable(const float *x, const float *dw, const float *pw, const float *bias,
                  float *out, int batch, int groups, int channels, int outputs, int length_in,
                  int upsample, int crop_left, int length, int kernel, int left, int relu,
                  int pool, int pool_left)
{
    const int pooled = (length + pool - 1) / pool;
    const int padded = length + kernel - 1;
    float *u = malloc(sizeof(float) * (size_t)padded);
    float *depth = malloc(sizeof(float) * (size_t)channels * length);
    float *row = malloc(sizeof(float) * (size_t)length);
    if (!u || !depth || !row) {
        free(u);
        free(depth);
        free(row);
        return -1;
    }
    memset(u, 0, sizeof(float) * (size_t)padded); /* the zero padding stays zero */
    for (int b = 0; b < batch; ++b) {
        for (int g = 0; g < groups; ++g) {
            for (int c = 0; c < channels; ++c) {
                const int channel = g * channels + c;
                const float *xc = x + ((size_t)b * groups * channels + channel) * length_in;
                if (upsample == 1) {
                    memcpy(u + left, xc + crop_left, sizeof(float) * (size_t)length);
                } else {
                    int src = crop_left / upsample, phase = crop_left % upsample;
                    for (int t = 0; t < length; ++t) {
                        u[left + t] = xc[src];
                        if (++phase == upsample) {
                            phase = 0;
                            ++src;
                        }
                    }
                }
                const float *w = dw + (size_t)channel * kernel;
                float *d = depth + (size_t)c * length;
                for (int t = 0; t < length; ++t) d[t] = w[0] * u[t];
                for (int j = 1; j < kernel; ++j) {
                    const float wj = w[j];
                    const float *uj = u + j;
                    for (int t = 0; t < length; ++t) d[t] += wj * uj[t];
                }
            }
            for (int o = 0; o < outputs; ++o) {
                const int output = g * outputs + o;
                const float bo = bias ? bias[output] : 0.0f;
                float *y = out + ((size_t)b * groups * outputs + output) * pooled;
                float *r = pool == 1 ? y : row;
                for (int t = 0; t < length; ++t) r[t] = bo;
                for (int c = 0; c < channels; ++c) {
                    const float wc = pw[(size_t)output * channels + c];
                    const float *d = depth + (size_t)c * length;
                    for (int t = 0; t < length; ++t) r[t] += wc * d[t];
                }
                if (pool == 1) {
                    if (relu)
                        for (int t = 0; t < length; ++t) y[t] = y[t] > 0.0f ? y[t] : 0.0f;
                    continue;
                }
                for (int i = 0; i < pooled; ++i) {
                    int a = i * pool - pool_left, e = a + pool;
                    if (a < 0) a = 0;
                    if (e > length) e = length;
                    float m = row[a];
                    for (int t = a + 1; t < e; ++t) m = row[t] > m ? row[t] : m;
                    y[i] = relu && m < 0.0f ? 0.0f : m;
                }
            }
        }
    }
    free(u);
    free(depth);
    free(row);
    return 0;
}
