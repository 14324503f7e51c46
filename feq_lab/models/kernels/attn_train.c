/* Additive attention scores e[t, s] = sum_u w[u] tanh(q[t, u] + k[s, u]) for TRAINING, forward
 * and backward, without the (B, T, S, U) tensor.
 *
 * Why: EQT's global transformer (keras-self-attention's additive SeqSelfAttention) scores every
 * pair of steps through a tanh of U = 32 units; in torch that is a (B, T, T, U) tensor written,
 * passed through tanh, multiplied, and the same again backward (tanh_backward) -- a quarter of
 * FEQ3's training step once its convs and GRUs are fused. Here the tanh values live in registers
 * (recomputed in backward), vectorised over s with a polynomial exp (glibc's tanhf does not
 * vectorise and costs ~20 ns).
 *
 * q (B, T, U); kt: k transposed (B, U, S); w (U); e (B, T, S). Backward: de (B, T, S) -> dq
 * (B, T, U), dkt (B, U, S) for the batch range [b0, b1), and ADDS that range's dw (U) into dw
 * (a per-thread copy, summed by the caller). Row-major float32.
 */
/* fused multiply-adds: faster, and no less accurate than separate roundings */
#pragma GCC optimize("fp-contract=fast")
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "clones.h"

#define LANES 16

/* x clamped to [lo, hi] by selecting bit patterns. Why not `x < lo ? lo : x`: GCC then threads the
 * constant branch through the rest of exp_poly, whose float-to-int conversion may trap, and keeps
 * the branch, so on AVX2 (x86-64-v3) the loops over s stayed scalar (~7 ns a pair; AVX-512 masks
 * it either way). Same values for every input, NaN included (it passes through). */
static inline float clamp_bits(float x, float lo, float hi)
{
    union {
        float f;
        int32_t i;
    } v = {x}, l = {lo}, h = {hi};
    const int32_t below = -(int32_t)(x < lo), above = -(int32_t)(x > hi);
    v.i = (v.i & ~below) | (l.i & below);
    v.i = (v.i & ~above) | (h.i & above);
    return v.f;
}

/* e^x to ~2 ulp for x in [-87, 88] (clamped outside): x = n ln2 + r, |r| <= ln2 / 2, a degree-6
 * Taylor polynomial for e^r, 2^n through the exponent bits. Branch-free, so loops vectorise. */
static inline float exp_poly(float x)
{
    x = clamp_bits(x, -87.0f, 88.0f);
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const float n = (x * 1.44269504f + shifter) - shifter;
    const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f; /* ln 2 in two parts */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* tanh(x) = 1 - 2 / (e^{2x} + 1): absolute error ~1e-7 (relative error grows near 0, where
 * the absolute one is what reaches the sums below) */
static inline float tanh_poly(float x) { return 1.0f - 2.0f / (exp_poly(2.0f * x) + 1.0f); }

FEQ_CLONES
void feq_attn_fwd(const float *q, const float *kt, const float *w, float *e, int batch, int steps,
                  int keys, int units, int b0, int b1)
{
    const int T = steps, S = keys, U = units;
    float acc[S];
    (void)batch;
    for (int b = b0; b < b1; ++b) {
        const float *kb = kt + (size_t)b * U * S;
        for (int t = 0; t < T; ++t) {
            const float *qt = q + ((size_t)b * T + t) * U;
            memset(acc, 0, sizeof(float) * S);
            for (int u = 0; u < U; ++u) {
                const float qv = qt[u], wu = w[u];
                const float *ku = kb + (size_t)u * S;
                for (int s = 0; s < S; ++s) acc[s] += wu * tanh_poly(qv + ku[s]);
            }
            memcpy(e + ((size_t)b * T + t) * S, acc, sizeof(float) * S);
        }
    }
}

static inline float sum16(const float *a, int n)
{
    float acc[LANES] = {0};
    int t = 0;
    for (; t + LANES <= n; t += LANES)
        for (int i = 0; i < LANES; ++i) acc[i] += a[t + i];
    float s = 0.0f;
    for (; t < n; ++t) s += a[t];
    for (int i = 0; i < LANES; ++i) s += acc[i];
    return s;
}

FEQ_CLONES
void feq_attn_bwd(const float *q, const float *kt, const float *w, const float *de, float *dq,
                  float *dkt, float *dw, int batch, int steps, int keys, int units, int b0, int b1)
{
    const int T = steps, S = keys, U = units;
    float g[S], gh[S];
    (void)batch;
    for (int b = b0; b < b1; ++b) {
        const float *kb = kt + (size_t)b * U * S;
        float *dkb = dkt + (size_t)b * U * S;
        memset(dkb, 0, sizeof(float) * (size_t)U * S);
        for (int t = 0; t < T; ++t) {
            const float *qt = q + ((size_t)b * T + t) * U;
            const float *det = de + ((size_t)b * T + t) * S;
            float *dqt = dq + ((size_t)b * T + t) * U;
            for (int u = 0; u < U; ++u) {
                const float qv = qt[u], wu = w[u];
                const float *ku = kb + (size_t)u * S;
                float *dku = dkb + (size_t)u * S;
                for (int s = 0; s < S; ++s) {
                    const float h = tanh_poly(qv + ku[s]);
                    gh[s] = det[s] * h;
                    g[s] = det[s] * wu * (1.0f - h * h);
                    dku[s] += g[s];
                }
                dqt[u] = sum16(g, S);
                dw[u] += sum16(gh, S);
            }
        }
    }
}
