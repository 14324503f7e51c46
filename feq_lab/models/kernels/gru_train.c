/* GRU recurrence for TRAINING: forward saving the gates, and the backward recurrence.
 *
 * Why: PyTorch has no fused CPU GRU; nn.GRU in training (and a Keras-style cell written in torch)
 * runs ~10 small ATen ops per time step forward and as many autograd nodes backward. Here each
 * direction's whole recurrence is one call each way; the input projections (x W_ih^T + b) and the
 * weight gradients (sums over batch and time) stay as large torch GEMMs (see autograd.py).
 *
 * Both flavours take gi = x W_ih^T + b_ih: (B, T, 3H), row-major float32, and write rows of
 * the batch range [b0, b1) only (callers split the batch over threads).
 *   flavour 0 ("torch", nn.GRU; gate rows r, z, n):
 *     r = s(gi_r + W_hr h + b_hr), z = s(gi_z + W_hz h + b_hz),
 *     n = tanh(gi_n + r * (W_hn h + b_hn)), h' = (1 - z) n + z h
 *   flavour 1 ("keras", Keras 2.3.1 reset_after=False; rows z, r, n; no recurrent bias):
 *     z = s(gi_z + W_hz h), r = s(gi_r + W_hr h), n = tanh(gi_n + W_hn (r h)), h' = z h + (1 - z) n
 * Forward saves per step gates (B, T, 3H): the three activations in row order, and `aux`
 * (B, T, H): W_hn h + b_hn (torch) or r * h_prev (keras), both needed by the backward pass.
 * whh_t: W_hh transposed (H, 3H) for the forward's row updates; the backward uses W_hh (3H, H).
 * `reverse` runs the time axis backwards (a bidirectional GRU's second direction).
 *
 * Backward: gout (B, T, H) = dL/dh_t from outside; writes dgi (B, T, 3H) = dL/d(gate
 * pre-activations) in row order (= the gradient of gi) and, torch flavour only, dgh (B, T, 3H) =
 * dL/d(W_hh h + b_hh) (equal to dgi but for the n rows, scaled by r; the keras flavour's
 * recurrent gradients are dgi's rows themselves).
 */
#include <math.h>
/* fused multiply-adds: faster, and no less accurate than separate roundings */
#pragma GCC optimize("fp-contract=fast")
#include <stddef.h>
#include <string.h>

#include "clones.h"

static float sig(float x) { return 1.0f / (1.0f + expf(-x)); }

FEQ_CLONES_V3
void feq_gru_train_fwd(const float *gi, const float *whh_t, const float *bhh, float *out,
                       float *gates, float *aux, int batch, int steps, int hidden, int b0, int b1,
                       int reverse, int flavour)
{
    const int H = hidden, G = 3 * hidden;
    float h[H], rh[H], gh[G];
    (void)batch;
    for (int b = b0; b < b1; ++b) {
        memset(h, 0, sizeof(float) * H);
        for (int step = 0; step < steps; ++step) {
            const int t = reverse ? steps - 1 - step : step;
            const size_t row = (size_t)b * steps + t;
            const float *g = gi + row * G;
            float *sv = gates + row * G, *ax = aux + row * H, *o = out + row * H;
            if (flavour == 0) {
                memcpy(gh, bhh, sizeof(float) * G);
                for (int k = 0; k < H; ++k) {
                    const float hk = h[k];
                    const float *w = whh_t + (size_t)k * G;
                    for (int j = 0; j < G; ++j) gh[j] += w[j] * hk;
                }
                for (int j = 0; j < H; ++j) {
                    const float r = sig(g[j] + gh[j]);
                    const float z = sig(g[H + j] + gh[H + j]);
                    const float n = tanhf(g[2 * H + j] + r * gh[2 * H + j]);
                    sv[j] = r;
                    sv[H + j] = z;
                    sv[2 * H + j] = n;
                    ax[j] = gh[2 * H + j];
                    h[j] = (1.0f - z) * n + z * h[j];
                    o[j] = h[j];
                }
            } else {
                memset(gh, 0, sizeof(float) * G);
                for (int k = 0; k < H; ++k) {
                    const float hk = h[k];
                    const float *w = whh_t + (size_t)k * G;
                    for (int j = 0; j < 2 * H; ++j) gh[j] += w[j] * hk;
                }
                for (int j = 0; j < H; ++j) {
                    const float z = sig(g[j] + gh[j]);
                    const float r = sig(g[H + j] + gh[H + j]);
                    sv[j] = z;
                    sv[H + j] = r;
                    rh[j] = r * h[j];
                    ax[j] = rh[j];
                }
                for (int k = 0; k < H; ++k) {
                    const float v = rh[k];
                    const float *w = whh_t + (size_t)k * G + 2 * H;
                    for (int j = 0; j < H; ++j) gh[2 * H + j] += w[j] * v;
                }
                for (int j = 0; j < H; ++j) {
                    const float z = sv[j];
                    const float n = tanhf(g[2 * H + j] + gh[2 * H + j]);
                    sv[2 * H + j] = n;
                    h[j] = z * h[j] + (1.0f - z) * n;
                    o[j] = h[j];
                }
            }
        }
    }
}

FEQ_CLONES_V3
void feq_gru_train_bwd(const float *whh, const float *out, const float *gates, const float *aux,
                       const float *gout, float *dgi, float *dgh, int batch, int steps,
                       int hidden, int b0, int b1, int reverse, int flavour)
{
    const int H = hidden, G = 3 * hidden;
    float dh[H], dnext[H], da[G], drh[H];
    (void)batch;
    for (int b = b0; b < b1; ++b) {
        memset(dh, 0, sizeof(float) * H);
        for (int step = steps - 1; step >= 0; --step) {
            const int t = reverse ? steps - 1 - step : step;
            const int tp = reverse ? t + 1 : t - 1; /* the previous step in processing order */
            const size_t row = (size_t)b * steps + t;
            const float *hp = step > 0 ? out + ((size_t)b * steps + tp) * H : NULL;
            const float *sv = gates + row * G, *ax = aux + row * H, *go = gout + row * H;
            float *dg = dgi + row * G;
            for (int j = 0; j < H; ++j) dh[j] += go[j];
            if (flavour == 0) {
                for (int j = 0; j < H; ++j) {
                    const float r = sv[j], z = sv[H + j], n = sv[2 * H + j];
                    const float h0 = hp ? hp[j] : 0.0f;
                    const float dn = dh[j] * (1.0f - z);
                    const float dz = dh[j] * (h0 - n);
                    const float dan = dn * (1.0f - n * n);
                    const float dr = dan * ax[j];
                    dg[j] = dr * r * (1.0f - r);
                    dg[H + j] = dz * z * (1.0f - z);
                    dg[2 * H + j] = dan;
                    da[j] = dg[j];
                    da[H + j] = dg[H + j];
                    da[2 * H + j] = dan * r;
                    dnext[j] = dh[j] * z;
                }
                memcpy(dgh + row * G, da, sizeof(float) * G);
                for (int i = 0; i < G; ++i) { /* dh_prev += W_hh^T da */
                    const float a = da[i];
                    const float *w = whh + (size_t)i * H;
                    for (int j = 0; j < H; ++j) dnext[j] += w[j] * a;
                }
            } else {
                for (int j = 0; j < H; ++j) {
                    const float z = sv[j], n = sv[2 * H + j];
                    const float h0 = hp ? hp[j] : 0.0f;
                    const float dn = dh[j] * (1.0f - z);
                    dg[j] = dh[j] * (h0 - n) * z * (1.0f - z);
                    dg[2 * H + j] = dn * (1.0f - n * n);
                    dnext[j] = dh[j] * z;
                    drh[j] = 0.0f;
                }
                for (int i = 0; i < H; ++i) { /* d(r h) = W_hn^T dan */
                    const float a = dg[2 * H + i];
                    const float *w = whh + (size_t)(2 * H + i) * H;
                    for (int j = 0; j < H; ++j) drh[j] += w[j] * a;
                }
                for (int j = 0; j < H; ++j) {
                    const float r = sv[H + j];
                    const float h0 = hp ? hp[j] : 0.0f;
                    dg[H + j] = drh[j] * h0 * r * (1.0f - r);
                    dnext[j] += drh[j] * r;
                }
                for (int i = 0; i < 2 * H; ++i) { /* dh_prev += W_hz^T daz + W_hr^T dar */
                    const float a = dg[i];
                    const float *w = whh + (size_t)i * H;
                    for (int j = 0; j < H; ++j) dnext[j] += w[j] * a;
                }
            }
            memcpy(dh, dnext, sizeof(float) * H);
        }
    }
}
