/* Separable conv stage for TRAINING, forward (saving what backward needs) and backward.
 *
 * Why: a LEQ/FEQ encoder stage is [depthwise conv -> pointwise conv + bias -> ReLU -> max-pool]
 * and a decoder stage [nearest upsample -> crop -> depthwise -> pointwise + bias -> ReLU]. In
 * torch each arrow is a full pass over the signal forward and again backward, PyTorch's CPU
 * depthwise conv1d (and its backward) is slow at these shapes, and folding the pair into one
 * dense conv multiplies the work by k C_out / (k + C_out). Here one call runs the stage per
 * sample on rows that stay in cache, as vectorisable row updates and 16-lane dot products.
 * A decoder stage's depthwise half runs in polyphase form wherever that needs fewer taps than k
 * (poly_plan: FEQ3's k 5 and 7 after upsampling by 3 need 3), forward and backward: the same
 * function, chosen per call from the shapes alone.
 *
 * Shapes (row-major float32), G groups of C input and O output channels:
 *   x (B, G C, L_in); dw (G C, k); pw (G O, C) (group g's outputs see group g's channels only);
 *   bias (G O) or NULL.
 *   u[t] = x[(t + crop_left) / up], t in [0, L) (nearest upsampling then crop; the caller sets L
 *   for the crop on the right); depthwise "same": `left` zeros before u, k - 1 - left after;
 *   d = depthwise(u) (recomputed in backward, never stored: it is the largest tensor); y = pw d + bias; a = relu ? ReLU(y) : y.
 *   pool == 1: out = a (B, G O, L). pool > 1: out[i] = max of a over samples
 *   [i pool - pool_left, i pool - pool_left + pool) within [0, L) (TF "same" pooling pads with
 *   -inf, so padding never wins) (B, G O, P), and idx (B, G O, P) int32 = the sample that won
 *   (the first maximum, as torch), or -1 where the gradient is zero (the max is a ReLU'd <= 0).
 * Backward: gout like out; writes gx (B, G C, L_in) for samples [b0, b1) and ADDS this batch
 * range's weight gradients into gdw (G C, k), gpw (G O, C), gbias (G O) (the caller gives each
 * thread its own zeroed copies and sums them). Return 0, or -1 when out of memory.
 */
/* fused multiply-adds: faster, and no less accurate than separate roundings */
#pragma GCC optimize("fp-contract=fast")
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "clones.h"

#include "simd.h"

#include "conv_rows.h"

#define TILE 256 /* a multiple of BLK */
#define BLK 64 /* 4 independent 16-lane accumulators: hides the FMA latency */

/* sum of a[t] b[t] in 16 independent partial sums: vectorises without reassociating floats */
FEQ_INLINE float dot(const float *a, const float *b, int n)
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

FEQ_INLINE float sum(const float *a, int n)
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

/* row[i] = xc[(q + i) / up] for i < m (nearest upsampling, starting at upsampled index q);
 * the common factors get branch-free loops */
FEQ_INLINE void upsample_row(float *row, const float *xc, int q, int m, int up)
{
    if (up == 1) {
        memcpy(row, xc + q, sizeof(float) * (size_t)m);
        return;
    }
    int src = q / up, phase = q % up, i = 0;
    for (; phase != 0 && i < m; ++i) {
        row[i] = xc[src];
        if (++phase == up) {
            phase = 0;
            ++src;
        }
    }
    /* whole blocks of 8 source samples by lane shuffles (one permute per 8 outputs) */
    if (up == 2) {
        for (; i + 16 <= m; i += 16, src += 8) {
            const v8 v = v8load(xc + src);
            v8store(row + i, __builtin_shuffle(v, (v8i){0, 0, 1, 1, 2, 2, 3, 3}));
            v8store(row + i + 8, __builtin_shuffle(v, (v8i){4, 4, 5, 5, 6, 6, 7, 7}));
        }
        for (; i + 2 <= m; i += 2, ++src) row[i] = row[i + 1] = xc[src];
    } else if (up == 3) {
        for (; i + 24 <= m; i += 24, src += 8) {
            const v8 v = v8load(xc + src);
            v8store(row + i, __builtin_shuffle(v, (v8i){0, 0, 0, 1, 1, 1, 2, 2}));
            v8store(row + i + 8, __builtin_shuffle(v, (v8i){2, 3, 3, 3, 4, 4, 4, 5}));
            v8store(row + i + 16, __builtin_shuffle(v, (v8i){5, 5, 6, 6, 6, 7, 7, 7}));
        }
        for (; i + 3 <= m; i += 3, ++src) row[i] = row[i + 1] = row[i + 2] = xc[src];
    } else {
        for (; i + up <= m; i += up, ++src)
            for (int p = 0; p < up; ++p) row[i + p] = xc[src];
    }
    for (; i < m; ++i) row[i] = xc[src];
}

/* the adjoint of upsample_row: gxc[(q + i) / up] += g[i] for i < m */
FEQ_INLINE void downsample_row(float *gxc, const float *g, int q, int m, int up)
{
    if (up == 1) {
        for (int i = 0; i < m; ++i) gxc[q + i] += g[i];
        return;
    }
    int src = q / up, phase = q % up, i = 0;
    for (; phase != 0 && i < m; ++i) {
        gxc[src] += g[i];
        if (++phase == up) {
            phase = 0;
            ++src;
        }
    }
    /* whole blocks of 8 outputs: sums of `up` neighbours at every sample (unaligned loads), then
     * every up-th lane by shuffles (the same sums as one at a time) */
    if (up == 2) {
        for (; i + 16 <= m; i += 16, src += 8) {
            const v8 s0 = v8load(g + i) + v8load(g + i + 1);
            const v8 s1 = v8load(g + i + 8) + v8load(g + i + 9);
            const v8 d = __builtin_shuffle(s0, s1, (v8i){0, 2, 4, 6, 8, 10, 12, 14});
            v8store(gxc + src, v8load(gxc + src) + d);
        }
        for (; i + 2 <= m; i += 2, ++src) gxc[src] += g[i] + g[i + 1];
    } else if (up == 3) {
        for (; i + 24 <= m; i += 24, src += 8) {
            const v8 s0 = v8load(g + i) + v8load(g + i + 1) + v8load(g + i + 2);
            const v8 s1 = v8load(g + i + 8) + v8load(g + i + 9) + v8load(g + i + 10);
            const v8 s2 = v8load(g + i + 16) + v8load(g + i + 17) + v8load(g + i + 18);
            const v8 lo = __builtin_shuffle(s0, s1, (v8i){0, 3, 6, 9, 12, 15, 0, 0});
            const v8 hi = __builtin_shuffle(s2, (v8i){0, 0, 0, 0, 0, 0, 2, 5});
            const v8 d = __builtin_shuffle(lo, hi, (v8i){0, 1, 2, 3, 4, 5, 14, 15});
            v8store(gxc + src, v8load(gxc + src) + d);
        }
        for (; i + 3 <= m; i += 3, ++src) gxc[src] += g[i] + g[i + 1] + g[i + 2];
    } else {
        for (; i + up <= m; i += up, ++src)
            for (int p = 0; p < up; ++p) gxc[src] += g[i + p];
    }
    for (; i < m; ++i) gxc[src] += g[i];
}

/* depthwise outputs d[c][0..n) of tile [t0, t0 + n) for the C channels of one group, and the
 * padded input rows they read: useg[c][i] = u_padded[t0 + i], i < n + k - 1 */
FEQ_INLINE void depthwise_tile(float *dt, float *useg, const float *xg, const float *dwg, int C,
                               int length_in, int L, int up, int crop_left, int kernel, int left,
                               int t0, int n)
{
    const int span = n + kernel - 1;
    for (int c = 0; c < C; ++c) {
        const float *xc = xg + (size_t)c * length_in;
        float *us = useg + (size_t)c * (TILE + kernel - 1 + BLK);
        int i = 0, t = t0 - left; /* t: index into u */
        for (; i < span && t < 0; ++i, ++t) us[i] = 0.0f;
        const int m = (L - t < span - i) ? L - t : span - i; /* samples of u in this tile */
        if (m > 0) {
            upsample_row(us + i, xc, t + crop_left, m, up);
            i += m;
        }
        for (; i < span; ++i) us[i] = 0.0f;
        /* the next tile's input samples: C rows read a few cache lines at a time are too many
         * short streams for the hardware prefetcher */
        const int s0 = (t0 + TILE - left + crop_left) / up;
        int s1 = (t0 + 2 * TILE + kernel - left + crop_left) / up + 1;
        if (s1 > length_in) s1 = length_in;
        for (int p = s0 > 0 ? s0 : 0; p < s1; p += LANES) __builtin_prefetch(xc + p);
        const float *w = dwg + (size_t)c * kernel;
        float *dc = dt + (size_t)c * TILE;
        for (int i0 = 0; i0 < n; i0 += BLK) { /* us is readable BLK past the span */
            float acc[BLK] = {0};
            for (int j = 0; j < kernel; ++j) {
                const float wj = w[j];
                const float *uj = us + i0 + j;
                for (int i = 0; i < BLK; ++i) acc[i] += wj * uj[i];
            }
            memcpy(dc + i0, acc, sizeof(acc)); /* dt rows hold TILE, a multiple of BLK */
        }
    }
}

/* --- polyphase form of the upsampling stages' depthwise half (up > 1) ----------------------
 * Output t reads u[t - left + j] = x[floor((s + j - left) / up)], s = t + crop_left = up i + rho:
 * x[i + e] with e = floor((rho + j - left) / up) in [dmin, dmax]. Taps of one phase that land
 * on the same x sample act as one tap of their summed weight, so an output costs D = dmax - dmin
 * + 1 multiply-adds instead of k (k 7, up 3: 3), forward, in backward's recomputation, and in
 * both adjoints. Since x[i + e] = U[s + up e] for every phase (U: the uncropped upsampled row),
 * the D taps are `up` samples apart on U with weights periodic in t: the rows stay at the full
 * rate (same layouts, same vector loops, no interleaving), a 16-sample vector's weights depend
 * only on its first sample's phase. (The same identity as fastdecode.polyphase_weight's.)
 * Exact only where all k taps fall inside the cropped row: the crop and the zero padding cut
 * groups of `up` equal samples, so samples near the ends take the full-rate form. */
#define MAX_PHASES 8 /* the largest upsampling (and polyphase tap count) in polyphase form */

typedef struct {
    int D, dmin;
    int a0; /* U index of V[0] relative to t0: crop_left + up dmin */
    int Ta, Tb; /* outputs [Ta, Tb) (multiples of LANES) take the polyphase form */
    float *wv; /* (G C, up, D, LANES): tap m of a vector whose first sample has phase r */
} poly_t;

static int floordiv(int a, int b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* the polyphase plan of a stage, or p->wv = NULL where it saves nothing (D >= k) or does not
 * apply; returns -1 when out of memory */
static int poly_plan(poly_t *p, const float *dw, int GC, int kernel, int left, int up,
                     int crop_left, int L)
{
    p->wv = NULL;
    if (up < 2 || up > MAX_PHASES) return 0;
    p->dmin = floordiv(-left, up);
    p->D = floordiv(up - 1 + kernel - 1 - left, up) - p->dmin + 1;
    if (p->D >= kernel || p->D > MAX_PHASES) return 0;
    p->a0 = crop_left + up * p->dmin;
    p->Ta = (left + LANES - 1) / LANES * LANES;
    const int end = L - (kernel - 1 - left); /* outputs before `end` read no right padding */
    p->Tb = end > 0 ? end / LANES * LANES : 0;
    if (p->Tb < p->Ta) p->Tb = p->Ta;
    const int D = p->D;
    p->wv = malloc(sizeof(float) * (size_t)GC * up * D * LANES);
    if (!p->wv) return -1;
    for (int c = 0; c < GC; ++c) {
        float comb[MAX_PHASES][MAX_PHASES] = {{0}}; /* [phase][combined tap], taps in order */
        for (int rho = 0; rho < up; ++rho)
            for (int j = 0; j < kernel; ++j)
                comb[rho][floordiv(rho + j - left, up) - p->dmin] += dw[c * kernel + j];
        for (int r = 0; r < up; ++r)
            for (int m = 0; m < D; ++m)
                for (int l = 0; l < LANES; ++l)
                    p->wv[(((size_t)c * up + r) * D + m) * LANES + l] = comb[(r + l) % up][m];
    }
    return 0;
}

/* v[i] = U[q + i], i < m: the uncropped upsampled row U[p] = xc[p / up], zero outside
 * [0, up length_in) (where only zero combined weights read it) */
FEQ_INLINE void extended_row(float *v, const float *xc, int q, int m, int up, int length_in)
{
    int i = 0;
    for (; i < m && q + i < 0; ++i) v[i] = 0.0f;
    int hi = up * length_in - q;
    if (hi > m) hi = m;
    if (hi > i) {
        upsample_row(v + i, xc, q + i, hi - i, up);
        i = hi;
    }
    for (; i < m; ++i) v[i] = 0.0f;
}

/* the weight vectors of the `up` vectors of a group: vector q starts at phase (r0 + q LANES) %
 * up, the same in every group of up vectors */
FEQ_INLINE void poly_load(vf w[MAX_PHASES][MAX_PHASES], const float *wvc, int r0, const int up,
                          const int D)
{
    for (int q = 0; q < up; ++q) {
        const int rq = (r0 + q * LANES) % up;
        for (int m = 0; m < D; ++m) w[q][m] = vload(wvc + ((size_t)rq * D + m) * LANES);
    }
}

/* The narrow forms of the three polyphase loops below, in v8: a v8 whose first sample has phase
 * rho takes lanes 0-7 of phase rho's weight vector, and every up-th v8 has the same phase, so
 * each of `up` passes keeps its D weight v8 in registers. */

/* poly_rows_k, narrow: dc[i] = sum_m wv(i)[m] v[i + up m], i in [pa, pb) (pb - pa a multiple
 * of 8; sign -1: v[i - up m], the adjoint's) */
FEQ_INLINE void poly_rows_narrow(float *dc, const float *v, const float *wvc, int r0, int pa,
                                 int pb, const int up, const int D, const int sign)
{
    for (int p = 0; p < up; ++p) {
        const int rho = (r0 + 8 * p) % up;
        v8 w[MAX_PHASES];
        for (int m = 0; m < D; ++m) w[m] = v8load(wvc + ((size_t)rho * D + m) * LANES);
        for (int i = pa + 8 * p; i < pb; i += 8 * up) {
            v8 a = w[0] * v8load(v + i);
            for (int m = 1; m < D; ++m) a += w[m] * v8load(v + i + sign * up * m);
            v8store(dc + i, a);
        }
    }
}

/* poly_grad_k, narrow: into lanes 0-7 of each phase's sums (bwd_scratch_finish reads lane l of
 * phase r's sums as phase (r + l) % up, which holds for them) */
FEQ_INLINE void poly_grad_narrow(float *gp, const float *g, const float *v, int r0, int pa,
                                 int pb, const int up, const int D)
{
    for (int p = 0; p < up; ++p) {
        const int rho = (r0 + 8 * p) % up;
        v8 a[MAX_PHASES], b[MAX_PHASES]; /* two chains per tap */
        for (int m = 0; m < D; ++m) a[m] = b[m] = (v8){0};
        int i = pa + 8 * p;
        for (; i + 8 * up < pb; i += 16 * up) {
            const v8 g0 = v8load(g + i), g1 = v8load(g + i + 8 * up);
            for (int m = 0; m < D; ++m) {
                a[m] += g0 * v8load(v + i + up * m);
                b[m] += g1 * v8load(v + i + 8 * up + up * m);
            }
        }
        for (; i < pb; i += 8 * up) {
            const v8 g0 = v8load(g + i);
            for (int m = 0; m < D; ++m) a[m] += g0 * v8load(v + i + up * m);
        }
        float *gq = gp + (size_t)rho * D * LANES;
        for (int m = 0; m < D; ++m) v8store(gq + m * LANES, v8load(gq + m * LANES) + a[m] + b[m]);
    }
}

/* dc[i] = sum_m wv(i)[m] v[i + up m], i in [pa, pb) (whole vectors): the polyphase depthwise
 * outputs (up, D constants after inlining, so the weight vectors stay in registers) */
FEQ_INLINE void poly_rows_k(float *dc, const float *v, const float *wvc, int r0, int pa, int pb,
                            const int up, const int D, const int wide)
{
    if (!wide) {
        poly_rows_narrow(dc, v, wvc, r0, pa, pb, up, D, 1);
        return;
    }
    vf w[MAX_PHASES][MAX_PHASES];
    poly_load(w, wvc, r0, up, D);
    int i = pa;
    for (; i + up * LANES <= pb; i += up * LANES)
        for (int q = 0; q < up; ++q) {
            const float *vq = v + i + q * LANES;
            vf a = w[q][0] * vload(vq);
            for (int m = 1; m < D; ++m) a += w[q][m] * vload(vq + up * m);
            vstore(dc + i + q * LANES, a);
        }
    for (int q = 0; i < pb; i += LANES, ++q) {
        const float *vq = v + i;
        vf a = w[q][0] * vload(vq);
        for (int m = 1; m < D; ++m) a += w[q][m] * vload(vq + up * m);
        vstore(dc + i, a);
    }
}

/* gp[rq][m] += sum over vectors i in [pa, pb) of phase rq of g[i] v[i + up m] (lanes kept):
 * the polyphase depthwise weight gradient's partial sums */
FEQ_INLINE void poly_grad_k(float *gp, const float *g, const float *v, int r0, int pa, int pb,
                            const int up, const int D, const int wide)
{
    if (!wide) {
        poly_grad_narrow(gp, g, v, r0, pa, pb, up, D);
        return;
    }
    vf a[MAX_PHASES][MAX_PHASES];
    for (int q = 0; q < up; ++q)
        for (int m = 0; m < D; ++m) a[q][m] = (vf){0};
    int i = pa;
    for (; i + up * LANES <= pb; i += up * LANES)
        for (int q = 0; q < up; ++q) {
            const vf gq = vload(g + i + q * LANES);
            const float *vq = v + i + q * LANES;
            for (int m = 0; m < D; ++m) a[q][m] += gq * vload(vq + up * m);
        }
    for (int q = 0; i < pb; i += LANES, ++q) {
        const vf gq = vload(g + i);
        for (int m = 0; m < D; ++m) a[q][m] += gq * vload(v + i + up * m);
    }
    for (int q = 0; q < up; ++q) {
        float *gq = gp + (size_t)((r0 + q * LANES) % up) * D * LANES;
        for (int m = 0; m < D; ++m) vstore(gq + m * LANES, vload(gq + m * LANES) + a[q][m]);
    }
}

/* gu[i] = sum_m wv(i)[m] g[i - up m], i < nq (rounded up to whole vectors; g readable up (D - 1)
 * before 0 and LANES past nq): the adjoint of poly_rows_k on the whole row, r0 = crop_left % up */
FEQ_INLINE void poly_adjoint_k(float *gu, const float *g, const float *wvc, int r0, int nq,
                               const int up, const int D, const int wide)
{
    if (!wide) {
        poly_rows_narrow(gu, g, wvc, r0, 0, (nq + LANES - 1) / LANES * LANES, up, D, -1);
        return;
    }
    vf w[MAX_PHASES][MAX_PHASES];
    poly_load(w, wvc, r0, up, D);
    int i = 0;
    for (; i + up * LANES <= nq; i += up * LANES)
        for (int q = 0; q < up; ++q) {
            const float *gq = g + i + q * LANES;
            vf a = w[q][0] * vload(gq);
            for (int m = 1; m < D; ++m) a += w[q][m] * vload(gq - up * m);
            vstore(gu + i + q * LANES, a);
        }
    for (int q = 0; i < nq; i += LANES, ++q) {
        vf a = w[q][0] * vload(g + i);
        for (int m = 1; m < D; ++m) a += w[q][m] * vload(g + i - up * m);
        vstore(gu + i, a);
    }
}

/* the polyphase loops with (up, D) constants for FEQ3's decoders (k 5 and 7 after up 2 or 3
 * give D = 3), else as run-time loops */
#define POLY_DISPATCH(fn, up, D, wide, ...)                                                        \
    do {                                                                                           \
        if ((up) == 3 && (D) == 3)                                                                 \
            fn(__VA_ARGS__, 3, 3, wide);                                                           \
        else if ((up) == 2 && (D) == 3)                                                            \
            fn(__VA_ARGS__, 2, 3, wide);                                                           \
        else                                                                                       \
            fn(__VA_ARGS__, up, D, wide);                                                          \
    } while (0)

/* full-rate depthwise outputs dc[i], i in [s, e), from the padded input row us (filled here for
 * [s, e + k - 1): us[i] = u_padded[t0 + i]; readable BLK past it) */
FEQ_INLINE void full_rate_segment(float *dc, float *us, const float *xc, const float *w,
                                  int L, int up, int crop_left, int kernel, int left, int t0,
                                  int s, int e)
{
    if (s >= e) return;
    const int span_end = e + kernel - 1;
    int i = s, t = t0 + s - left;
    for (; i < span_end && t < 0; ++i, ++t) us[i] = 0.0f;
    const int m = (L - t < span_end - i) ? L - t : span_end - i;
    if (m > 0) {
        upsample_row(us + i, xc, t + crop_left, m, up);
        i += m;
    }
    for (; i < span_end; ++i) us[i] = 0.0f;
    int i0 = s;
    for (; i0 + BLK <= e; i0 += BLK) {
        float acc[BLK] = {0};
        for (int j = 0; j < kernel; ++j) {
            const float wj = w[j];
            const float *uj = us + i0 + j;
            for (int i = 0; i < BLK; ++i) acc[i] += wj * uj[i];
        }
        memcpy(dc + i0, acc, sizeof(acc));
    }
    for (; i0 < e; i0 += LANES) { /* the segments are short: a vector at a time */
        vf a = {0};
        for (int j = 0; j < kernel; ++j) a += w[j] * vload(us + i0 + j);
        float acc[LANES];
        vstore(acc, a);
        copy_block(dc + i0, acc, e - i0, LANES);
    }
}

/* the polyphase tile bounds: outputs [*pa, *pb) of tile [t0, t0 + n) take the polyphase form */
FEQ_INLINE void poly_bounds(const poly_t *p, int t0, int n, int *pa, int *pb)
{
    int a = p->Ta - t0, e = p->Tb - t0;
    a = a < 0 ? 0 : (a > n ? n : a);
    e = e < a ? a : (e > n ? n : e);
    *pa = a;
    *pb = e;
}

/* depthwise_tile in polyphase form: the same outputs d[c][0..n); us rows hold the padded input
 * only over the full-rate segments, vs rows the uncropped upsampled row over the polyphase one
 * (vs[i] = U[t0 + a0 + i]) */
FEQ_INLINE void depthwise_tile_poly(float *dt, float *useg, float *vseg, size_t vstride,
                                    const float *xg, const float *dwg, const poly_t *p,
                                    const float *wvg, int C, int length_in, int L, int up,
                                    int crop_left, int kernel, int left, int t0, int n,
                                    int wide)
{
    const int D = p->D;
    int pa, pb;
    poly_bounds(p, t0, n, &pa, &pb);
    const int r0 = (t0 + pa + crop_left) % up;
    for (int c = 0; c < C; ++c) {
        const float *xc = xg + (size_t)c * length_in;
        float *us = useg + (size_t)c * (TILE + kernel - 1 + BLK);
        const float *w = dwg + (size_t)c * kernel;
        float *dc = dt + (size_t)c * TILE;
        full_rate_segment(dc, us, xc, w, L, up, crop_left, kernel, left, t0, 0, pa);
        full_rate_segment(dc, us, xc, w, L, up, crop_left, kernel, left, t0, pb, n);
        /* the next tile's input samples (as depthwise_tile) */
        const int s0 = (t0 + TILE + p->a0) / up;
        int s1 = (t0 + 2 * TILE + p->a0 + up * D) / up + 1;
        if (s1 > length_in) s1 = length_in;
        for (int q = s0 > 0 ? s0 : 0; q < s1; q += LANES) __builtin_prefetch(xc + q);
        if (pb > pa) {
            float *vs = vseg + (size_t)c * vstride;
            extended_row(vs + pa, xc, t0 + p->a0 + pa, pb - pa + up * (D - 1), up, length_in);
            POLY_DISPATCH(poly_rows_k, up, D, wide, dc, vs, wvg + (size_t)c * up * D * LANES, r0, pa,
                          pb);
        }
    }
}

/* rows r[q * rs + i] (q < 8, i < n) = bias[q] + sum_c w[q * C + c] dt[c][i], ReLU'd if relu:
 * eight pointwise outputs of one tile at once, 2 x 16 samples per pass (16 accumulators: each
 * load of a depthwise block feeds eight multiply-adds) */
FEQ_INLINE void pointwise_rows8(float *restrict r, int rs, const float *restrict w, int C,
                                const float *restrict bias, const float *restrict dt, int n,
                                int relu)
{
    enum { W = 2 * LANES };
    for (int i0 = 0; i0 < n; i0 += W) { /* dt rows hold TILE, a multiple of W */
        float a[8][W];
        for (int q = 0; q < 8; ++q)
            for (int i = 0; i < W; ++i) a[q][i] = bias ? bias[q] : 0.0f;
        for (int c = 0; c < C; ++c) {
            const float *d = dt + (size_t)c * TILE + i0;
            for (int q = 0; q < 8; ++q) {
                const float wq = w[q * C + c];
                for (int i = 0; i < W; ++i) a[q][i] += wq * d[i];
            }
        }
        if (relu)
            for (int q = 0; q < 8; ++q)
                for (int i = 0; i < W; ++i) a[q][i] = a[q][i] > 0.0f ? a[q][i] : 0.0f;
        for (int q = 0; q < 8; ++q) copy_block(r + (size_t)q * rs + i0, a[q], n - i0, W);
    }
}

/* rows r[q * rs + i] (q < 4, i < n) = bias[q] + sum_c w[q * C + c] dt[c][i], ReLU'd if relu:
 * four pointwise outputs of one tile at once, 16 samples per pass in eight v8 accumulators (two
 * loads of each depthwise block feed eight multiply-adds); the narrow forms' pointwise rows */
FEQ_INLINE void pointwise_rows4(float *restrict r, int rs, const float *restrict w, int C,
                                const float *restrict bias, const float *restrict dt, int n,
                                int relu)
{
    for (int i0 = 0; i0 < n; i0 += 16) { /* dt rows hold TILE, a multiple of 16 */
        v8 a[4][2];
        for (int q = 0; q < 4; ++q) a[q][0] = a[q][1] = (v8){0} + (bias ? bias[q] : 0.0f);
        for (int c = 0; c < C; ++c) {
            const float *d = dt + (size_t)c * TILE + i0;
            const v8 d0 = v8load(d), d1 = v8load(d + 8);
            for (int q = 0; q < 4; ++q) {
                const float wq = w[q * C + c];
                a[q][0] += wq * d0;
                a[q][1] += wq * d1;
            }
        }
        for (int q = 0; q < 4; ++q) {
            float tmp[16];
            for (int h = 0; h < 2; ++h) {
                v8 v = a[q][h];
                if (relu) v = v8relu(v);
                v8store(tmp + 8 * h, v);
            }
            copy_block(r + (size_t)q * rs + i0, tmp, n - i0, 16);
        }
    }
}

/* acc[e][i] = sum_o p[o C + e] gy[o gys + i], e < 4, i < BLK: four channels' block of the
 * pointwise half's input gradient at once (each gy load feeds four multiply-adds) */
FEQ_INLINE void transpose_pointwise4(float acc[4][BLK], const float *restrict p, int C, int O,
                                     const float *restrict gy, size_t gys, int wide)
{
    if (!wide) { /* 16 samples at a time in eight v8 accumulators: four BLK rows would spill */
        for (int i0 = 0; i0 < BLK; i0 += 16) {
            v8 a[4][2] = {{{0}}};
            for (int o = 0; o < O; ++o) {
                const float *r = gy + (size_t)o * gys + i0;
                const v8 r0 = v8load(r), r1 = v8load(r + 8);
                for (int e = 0; e < 4; ++e) {
                    const float we = p[(size_t)o * C + e];
                    a[e][0] += we * r0;
                    a[e][1] += we * r1;
                }
            }
            for (int e = 0; e < 4; ++e) {
                v8store(acc[e] + i0, a[e][0]);
                v8store(acc[e] + i0 + 8, a[e][1]);
            }
        }
        return;
    }
    float a0[BLK] = {0}, a1[BLK] = {0}, a2[BLK] = {0}, a3[BLK] = {0};
    for (int o = 0; o < O; ++o) {
        const float *r = gy + (size_t)o * gys;
        const float *w = p + (size_t)o * C;
        const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
        for (int i = 0; i < BLK; ++i) {
            a0[i] += w0 * r[i];
            a1[i] += w1 * r[i];
            a2[i] += w2 * r[i];
            a3[i] += w3 * r[i];
        }
    }
    memcpy(acc[0], a0, sizeof(a0));
    memcpy(acc[1], a1, sizeof(a1));
    memcpy(acc[2], a2, sizeof(a2));
    memcpy(acc[3], a3, sizeof(a3));
}

/* gw[q * C + e] += sum_{i < n} r[q][i] d[e][i], q, e < 4 (r rows `rs` apart, d rows TILE apart,
 * both zero from n to the next multiple of LANES): a 4 x 4 block of the pointwise weight
 * gradient, wide in 16 vector accumulators (8 loads feed 16 multiply-adds), narrow (FEQ_WIDE) in
 * v8 accumulators */
FEQ_INLINE void pointwise_grad4x4(float *restrict gw, int C, const float *restrict r, size_t rs,
                                  const float *restrict d, int n, int wide)
{
    if (!wide) { /* two passes of 4 x 2 rows, v8 at a time: 6 loads feed 8 multiply-adds */
        for (int e = 0; e < 4; e += 2) {
            v8 a[4][2] = {{{0}}};
            const float *d0 = d + (size_t)e * TILE, *d1 = d0 + TILE;
            for (int i = 0; i < n; i += 8) {
                const v8 x0 = v8load(d0 + i), x1 = v8load(d1 + i);
                for (int q = 0; q < 4; ++q) {
                    const v8 v = v8load(r + q * rs + i);
                    a[q][0] += v * x0;
                    a[q][1] += v * x1;
                }
            }
            for (int q = 0; q < 4; ++q) {
                gw[q * C + e] += v8sum(a[q][0]);
                gw[q * C + e + 1] += v8sum(a[q][1]);
            }
        }
        return;
    }
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    vf c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, e0 = {0}, e1 = {0}, e2 = {0}, e3 = {0};
    for (int i = 0; i < n; i += LANES) {
        const vf d0 = vload(d + i), d1 = vload(d + TILE + i), d2 = vload(d + 2 * TILE + i),
                 d3 = vload(d + 3 * TILE + i);
        vf v = vload(r + i);
        a0 += v * d0, a1 += v * d1, a2 += v * d2, a3 += v * d3;
        v = vload(r + rs + i);
        b0 += v * d0, b1 += v * d1, b2 += v * d2, b3 += v * d3;
        v = vload(r + 2 * rs + i);
        c0 += v * d0, c1 += v * d1, c2 += v * d2, c3 += v * d3;
        v = vload(r + 3 * rs + i);
        e0 += v * d0, e1 += v * d1, e2 += v * d2, e3 += v * d3;
    }
    const vf acc[16] = {a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, e0, e1, e2, e3};
    for (int q = 0; q < 16; ++q) gw[(q / 4) * C + q % 4] += vsum(acc[q]);
}

/* "same" max-pooling of one row r (L samples) with stride = size = p, the first window
 * starting pool_left samples before r: out[i] = the window's maximum and idx[i] its first
 * argmax, or 0 and -1 where relu and the maximum is <= 0 (its gradient is zero) */
FEQ_INLINE void pool_window(float *out, int *idx, const float *r, int a, int e, int relu)
{
    float m = r[a];
    int arg = a;
    for (int t = a + 1; t < e; ++t) {
        const float v = r[t];
        arg = v > m ? t : arg;
        m = v > m ? v : m;
    }
    const int keep = !relu || m > 0.0f;
    *out = keep ? m : 0.0f;
    *idx = keep ? arg : -1;
}

/* the windows inside [0, L): branch-free selects (data-dependent branches mispredict half the
 * time) with p a constant after inlining */
FEQ_INLINE void pool_inner(float *restrict out, int *restrict idx, const float *restrict r, int i0,
                           int i1, const int p, int pool_left, int relu)
{
    for (int i = i0; i < i1; ++i) {
        const int a = i * p - pool_left;
        float m = r[a];
        int arg = a;
        for (int j = 1; j < p; ++j) {
            const float v = r[a + j];
            arg = v > m ? a + j : arg;
            m = v > m ? v : m;
        }
        const int keep = !relu || m > 0.0f;
        out[i] = keep ? m : 0.0f;
        idx[i] = keep ? arg : -1;
    }
}

/* the windows [i0, i1) lie inside [0, L): window i starts at i p - pool_left >= 0 (pool_left < p,
 * so from i = 1 when pool_left > 0) and ends at i p - pool_left + p <= L */
FEQ_INLINE void inner_windows(int *i0, int *i1, int L, int pooled, int p, int pool_left)
{
    *i0 = pool_left > 0 ? 1 : 0;
    *i1 = (L + pool_left) / p;
    if (*i1 > pooled) *i1 = pooled;
    if (*i1 < *i0) *i1 = *i0;
}

FEQ_INLINE void pool_row(float *out, int *idx, const float *r, int L, int pooled, int p,
                         int pool_left, int relu)
{
    int i0, i1;
    inner_windows(&i0, &i1, L, pooled, p, pool_left);
    switch (p) {
    case 2: pool_inner(out, idx, r, i0, i1, 2, pool_left, relu); break;
    case 3: pool_inner(out, idx, r, i0, i1, 3, pool_left, relu); break;
    default: pool_inner(out, idx, r, i0, i1, p, pool_left, relu);
    }
    for (int i = 0; i < pooled; ++i) { /* the windows cut by the row's ends */
        if (i == i0) i = i1;
        if (i >= pooled) break;
        int a = i * p - pool_left, e = a + p;
        pool_window(out + i, idx + i, r, a < 0 ? 0 : a, e > L ? L : e, relu);
    }
}

/* the adjoint of pool_row: r[t] = go[i] where t = idx[i], else 0 (windows do not overlap) */
FEQ_INLINE void unpool_inner(float *restrict r, const float *restrict go, const int *restrict ix,
                             int i0, int i1, const int p, int pool_left)
{
    for (int i = i0; i < i1; ++i) {
        const int a = i * p - pool_left;
        for (int j = 0; j < p; ++j) r[a + j] = ix[i] == a + j ? go[i] : 0.0f;
    }
}

FEQ_INLINE void unpool_row(float *r, const float *go, const int *ix, int L, int pooled, int p,
                           int pool_left)
{
    int i0, i1;
    inner_windows(&i0, &i1, L, pooled, p, pool_left);
    memset(r, 0, sizeof(float) * (size_t)L);
    switch (p) {
    case 2: unpool_inner(r, go, ix, i0, i1, 2, pool_left); break;
    case 3: unpool_inner(r, go, ix, i0, i1, 3, pool_left); break;
    default: unpool_inner(r, go, ix, i0, i1, p, pool_left);
    }
    for (int i = 0; i < pooled; ++i) {
        if (i == i0) i = i1;
        if (i >= pooled) break;
        if (ix[i] >= 0) r[ix[i]] += go[i];
    }
}

/* rows yg[o * L + t] (o < O, t < L) of one (sample, group): the stage before pooling
 * (pointwise + bias of the depthwise output, ReLU'd if relu), tile by tile on the depthwise
 * output dt (recomputed from xg; the polyphase form where pp->wv) */
FEQ_INLINE void stage_rows(float *yg, const float *xg, const float *dwg,
                           const float *pwg, const float *biasg, const poly_t *pp,
                           const float *wvg, float *dt, float *useg, float *vseg, size_t vstride,
                           int C, int O, int length_in, int L, int up, int crop_left, int kernel,
                           int left, int relu, int wide)
{
    for (int t0 = 0; t0 < L; t0 += TILE) {
        const int n = L - t0 < TILE ? L - t0 : TILE;
        if (pp->wv)
            depthwise_tile_poly(dt, useg, vseg, vstride, xg, dwg, pp, wvg, C, length_in, L, up,
                                crop_left, kernel, left, t0, n, wide);
        else
            depthwise_tile(dt, useg, xg, dwg, C, length_in, L, up, crop_left, kernel, left, t0,
                           n);
        int o = 0;
        for (; wide && o + 8 <= O; o += 8) /* 8 outputs per pass: each d load feeds 8 */
            pointwise_rows8(yg + (size_t)o * L + t0, L, pwg + (size_t)o * C, C,
                            biasg ? biasg + o : NULL, dt, n, relu);
        for (; o + 4 <= O; o += 4) /* 4 outputs per pass: each d load feeds 4 */
            pointwise_rows4(yg + (size_t)o * L + t0, L, pwg + (size_t)o * C, C,
                            biasg ? biasg + o : NULL, dt, n, relu);
        for (; o < O; ++o) {
            const float *w = pwg + (size_t)o * C;
            const float bo = biasg ? biasg[o] : 0.0f;
            float *r = yg + (size_t)o * L + t0;
            for (int i0 = 0; i0 < n; i0 += BLK) {
                float acc[BLK];
                for (int i = 0; i < BLK; ++i) acc[i] = bo;
                for (int c = 0; c < C; ++c) {
                    const float wc = w[c];
                    const float *dc = dt + (size_t)c * TILE + i0;
                    for (int i = 0; i < BLK; ++i) acc[i] += wc * dc[i];
                }
                if (relu)
                    for (int i = 0; i < BLK; ++i) acc[i] = acc[i] > 0.0f ? acc[i] : 0.0f;
                copy_block(r + i0, acc, n - i0, BLK);
            }
        }
    }
}

/* the forward's scratch (per call, so per thread) */
typedef struct {
    poly_t pp;
    size_t vstride;
    float *useg, *dt, *vseg;
} fwd_scratch;

static void fwd_scratch_free(fwd_scratch *s)
{
    free(s->useg);
    free(s->dt);
    free(s->pp.wv);
    free(s->vseg);
}

/* 0, or -1 (everything freed) when out of memory */
static int fwd_scratch_init(fwd_scratch *s, const float *dw, int GC, int C, int kernel, int left,
                            int up, int crop_left, int L)
{
    s->useg = calloc((size_t)C * (TILE + kernel - 1 + BLK), sizeof(float));
    s->dt = calloc((size_t)C * TILE, sizeof(float));
    const int planned = poly_plan(&s->pp, dw, GC, kernel, left, up, crop_left, L);
    s->vstride = (size_t)TILE + up * MAX_PHASES + LANES;
    s->vseg = s->pp.wv ? malloc(sizeof(float) * (size_t)C * s->vstride) : NULL;
    if (!s->useg || !s->dt || planned < 0 || (s->pp.wv && !s->vseg)) {
        fwd_scratch_free(s);
        return -1;
    }
    return 0;
}

/* stage_rows of sample b, group g (the forward's part of the weights and input) */
#define STAGE_ROWS(yg)                                                                         \
    stage_rows((yg), x + ((size_t)b * GC + (size_t)g * C) * length_in,                         \
               dw + (size_t)g * C * kernel, pw + (size_t)g * O * C,                            \
               bias ? bias + g * O : NULL, &fs.pp,                                             \
               fs.pp.wv ? fs.pp.wv + (size_t)g * C * up * fs.pp.D * LANES : NULL, fs.dt,       \
               fs.useg, fs.vseg, fs.vstride, C, O, length_in, L, up, crop_left, kernel, left,  \
               relu && pool == 1, wide)

FEQ_CLONES
int feq_sep_fwd(const float *x, const float *dw, const float *pw, const float *bias, float *out,
                int *idx, int batch, int groups, int channels, int outputs,
                int length_in, int up, int crop_left, int length, int kernel, int left, int relu,
                int pool, int pool_left, int b0, int b1, int pooled)
{
    const int C = channels, O = outputs, L = length, GC = groups * channels, GO = groups * outputs;
    const int wide = FEQ_WIDE();
    fwd_scratch fs;
    (void)batch;
    if (fwd_scratch_init(&fs, dw, GC, C, kernel, left, up, crop_left, L) < 0) return -1;
    float *y = pool > 1 ? malloc(sizeof(float) * (size_t)O * L) : NULL;
    if (pool > 1 && !y) {
        fwd_scratch_free(&fs);
        return -1;
    }
    for (int b = b0; b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            STAGE_ROWS(pool > 1 ? y : out + ((size_t)b * GO + (size_t)g * O) * L);
            if (pool == 1) continue;
            for (int o = 0; o < O; ++o) {
                const size_t base = ((size_t)b * GO + (size_t)g * O + o) * pooled;
                pool_row(out + base, idx + base, y + (size_t)o * L, L, pooled, pool, pool_left,
                         relu);
            }
        }
    }
    fwd_scratch_free(&fs);
    free(y);
    return 0;
}

/* The stage fused with the 1-output conv head that follows it in the decoders: z = head(out),
 * where out = the stage (pool 1, ReLU) as feq_sep_fwd writes it (kept: backward reads it) and
 * head the grouped conv feq_conv_fwd computes (hw (G, O, hk), hbias (G), zero padding hleft on
 * the left, "same" length L): z (B, G, L). Each (sample, group)'s rows go through the head
 * while in cache, with conv_train.c's loops (conv_rows.h): the same sums as the two calls. */
FEQ_CLONES
int feq_sephead_fwd(const float *x, const float *dw, const float *pw, const float *bias,
                    const float *hw, const float *hbias, float *out, float *z, int batch,
                    int groups, int channels, int outputs, int length_in, int up, int crop_left,
                    int length, int kernel, int left, int hkernel, int hleft, int b0, int b1)
{
    const int C = channels, O = outputs, L = length, GC = groups * channels, GO = groups * outputs;
    const int relu = 1, pool = 1, wide = FEQ_WIDE();
    const size_t xs = (size_t)L + ROW_PAD + hkernel; /* a padded head input row (conv_train.c) */
    fwd_scratch fs;
    (void)batch;
    if (fwd_scratch_init(&fs, dw, GC, C, kernel, left, up, crop_left, L) < 0) return -1;
    float *xpad = calloc((size_t)O * xs, sizeof(float));
    if (!xpad) {
        fwd_scratch_free(&fs);
        return -1;
    }
    for (int b = b0; b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            float *a = out + ((size_t)b * GO + (size_t)g * O) * L;
            STAGE_ROWS(a);
            pad_rows(xpad, xs, a, O, L, hleft);
            conv_rows(xpad, xs, O, hw + (size_t)g * O * hkernel, 1, hkernel, hbias + g,
                      z + ((size_t)b * groups + g) * L, (size_t)L, L, wide);
        }
    }
    fwd_scratch_free(&fs);
    free(xpad);
    return 0;
}

/* r[t] = a[t] > 0 ? go[t] : 0: a gradient back through a ReLU, from the ReLU's output a */
FEQ_INLINE void relu_grad_row(float *restrict r, const float *restrict go,
                               const float *restrict a, int L)
{
    for (int t = 0; t < L; ++t) r[t] = a[t] > 0.0f ? go[t] : 0.0f;
}

/* the backward's scratch (per call, so per thread); gy: the O rows of dL/dy (before ReLU) of
 * the (sample, group) at hand, filled by the caller */
typedef struct {
    poly_t pp;
    int D, pre, nq;
    size_t ustride, vstride, gys, gds;
    float *gacc, *gp, *gu, *gy, *gd, *useg, *dt, *vseg;
} bwd_scratch;

static void bwd_scratch_free(bwd_scratch *s)
{
    free(s->gacc);
    free(s->gp);
    free(s->gu);
    free(s->gy);
    free(s->gd);
    free(s->useg);
    free(s->dt);
    free(s->pp.wv);
    free(s->vseg);
}

/* 0, or -1 (everything freed) when out of memory */
static int bwd_scratch_init(bwd_scratch *s, const float *dw, int GC, int C, int O, int kernel,
                            int left, int up, int crop_left, int L)
{
    s->ustride = (size_t)TILE + kernel - 1 + BLK; /* a useg row (depthwise_tile) */
    const int planned = poly_plan(&s->pp, dw, GC, kernel, left, up, crop_left, L);
    s->D = s->pp.wv ? s->pp.D : 0;
    s->vstride = (size_t)TILE + up * MAX_PHASES + LANES;
    /* gd rows: `pre` zeros before the L samples (the full-rate adjoint reads k - 1 back, the
     * polyphase one up (D - 1)) */
    s->pre = s->pp.wv && up * (s->D - 1) > kernel - 1 ? up * (s->D - 1) : kernel - 1;
    /* gu: full rate, the padded row (L + k - 1); polyphase, U from a0 on (L + up (D - 1)) */
    s->nq = s->pp.wv ? L + up * (s->D - 1) : L + kernel - 1;
    s->gacc = malloc(sizeof(float) * (size_t)C * kernel * LANES);
    /* the polyphase weight gradient's lane sums, over the whole call (reduced at the end) */
    s->gp = s->pp.wv ? calloc((size_t)GC * up * s->D * LANES, sizeof(float)) : NULL;
    s->gu = malloc(sizeof(float) * ((size_t)s->nq + BLK));
    s->gys = (size_t)L + BLK;
    s->gds = (size_t)L + s->pre + 2 * BLK;
    s->gy = calloc((size_t)O * s->gys, sizeof(float)); /* zero past L */
    s->gd = calloc((size_t)C * s->gds, sizeof(float)); /* zero around the L samples */
    s->useg = calloc((size_t)C * s->ustride, sizeof(float));
    s->dt = calloc((size_t)C * TILE, sizeof(float));
    s->vseg = s->pp.wv ? malloc(sizeof(float) * (size_t)C * s->vstride) : NULL;
    if (!s->gacc || !s->gu || !s->gy || !s->gd || !s->useg || !s->dt || planned < 0 ||
        (s->pp.wv && (!s->gp || !s->vseg))) {
        bwd_scratch_free(s);
        return -1;
    }
    return 0;
}

/* one (sample, group) of the stage's backward from s->gy (dL/dy, O rows): the pointwise half
 * tile by tile on the recomputed depthwise output (gpw += gy d^T, gd = pw^T gy, gdw's lanes),
 * then gx through the depthwise half, the crop and the upsampling */
FEQ_INLINE void stage_bwd_group(bwd_scratch *s, const float *x, const float *dw, const float *pw,
                                float *gx, float *gdw, float *gpw, int b, int g, int C, int O,
                                int GC, int length_in, int up, int crop_left, int L, int kernel,
                                int left, int wide)
{
    const poly_t *pp = &s->pp;
    const int D = s->D, pre = s->pre, nq = s->nq;
    const size_t ustride = s->ustride, vstride = s->vstride, gys = s->gys, gds = s->gds;
    float *gacc = s->gacc, *gp = s->gp, *gu = s->gu, *gy = s->gy, *gd = s->gd;
    float *useg = s->useg, *dt = s->dt, *vseg = s->vseg;
    const float *xg = x + ((size_t)b * GC + (size_t)g * C) * length_in;
    memset(gacc, 0, sizeof(float) * (size_t)C * kernel * LANES);
    /* pointwise, tile by tile on the recomputed depthwise output: gpw += gy d^T,
     * gd = pw^T gy */
    for (int t0 = 0; t0 < L; t0 += TILE) {
        const int n = L - t0 < TILE ? L - t0 : TILE;
        int pa = n, pb = n; /* the polyphase outputs of this tile */
        if (pp->wv) {
            poly_bounds(pp, t0, n, &pa, &pb);
            depthwise_tile_poly(dt, useg, vseg, vstride, xg, dw + (size_t)g * C * kernel,
                                pp, pp->wv + (size_t)g * C * up * D * LANES, C,
                                length_in, L, up, crop_left, kernel, left, t0, n, wide);
        } else {
            depthwise_tile(dt, useg, xg, dw + (size_t)g * C * kernel, C, length_in, L,
                           up, crop_left, kernel, left, t0, n);
        }
        /* gpw[o, c] += gy[o] . d[c]: 2 outputs x 4 channels per pass (6 loads feed 8
         * multiply-adds) */
        int o = 0;
        if (C % 4 == 0)
            for (; o + 4 <= O; o += 4)
                for (int c = 0; c < C; c += 4)
                    pointwise_grad4x4(gpw + (size_t)(g * O + o) * C + c, C,
                                      gy + (size_t)o * gys + t0, gys,
                                      dt + (size_t)c * TILE, n, wide);
        for (; o + 2 <= O; o += 2) {
            const float *r0 = gy + (size_t)o * gys + t0, *r1 = r0 + gys;
            float *gw0 = gpw + (size_t)(g * O + o) * C, *gw1 = gw0 + C;
            int c = 0;
            for (; c + 4 <= C; c += 4) {
                float a0[4][LANES] = {{0}}, a1[4][LANES] = {{0}};
                const float *d0 = dt + (size_t)c * TILE;
                for (int i0 = 0; i0 < n; i0 += LANES) /* dt and gy are zero past n */
                    for (int q = 0; q < 4; ++q)
                        for (int i = 0; i < LANES; ++i) {
                            const float d = d0[(size_t)q * TILE + i0 + i];
                            a0[q][i] += r0[i0 + i] * d;
                            a1[q][i] += r1[i0 + i] * d;
                        }
                for (int q = 0; q < 4; ++q) {
                    float s0 = 0.0f, s1 = 0.0f;
                    for (int i = 0; i < LANES; ++i) {
                        s0 += a0[q][i];
                        s1 += a1[q][i];
                    }
                    gw0[c + q] += s0;
                    gw1[c + q] += s1;
                }
            }
            for (; c < C; ++c) {
                gw0[c] += dot(r0, dt + (size_t)c * TILE, n);
                gw1[c] += dot(r1, dt + (size_t)c * TILE, n);
            }
        }
        for (; o < O; ++o) {
            const float *r = gy + (size_t)o * gys + t0;
            float *gw = gpw + (size_t)(g * O + o) * C;
            for (int c = 0; c < C; ++c) gw[c] += dot(r, dt + (size_t)c * TILE, n);
        }
        /* gd[c] = sum_o pw[o, c] gy[o]; then, while this tile's gd and padded input
         * rows are in L1, the depthwise weight gradient's lanes gacc[c, j] */
        for (int c = 0; c < C; c += 4) {
            const int nc = C - c < 4 ? C - c : 4;
            for (int i0 = 0; i0 < n; i0 += BLK) {
                float acc[4][BLK];
                if (nc == 4) /* each gy load feeds 4 channels */
                    transpose_pointwise4(acc, pw + (size_t)g * O * C + c, C, O,
                                         gy + t0 + i0, gys, wide);
                else
                    for (int e = 0; e < nc; ++e) {
                        for (int i = 0; i < BLK; ++i) acc[e][i] = 0.0f;
                        for (int o = 0; o < O; ++o) {
                            const float wc = pw[(size_t)(g * O + o) * C + c + e];
                            const float *r = gy + (size_t)o * gys + t0 + i0;
                            for (int i = 0; i < BLK; ++i) acc[e][i] += wc * r[i];
                        }
                    }
                for (int e = 0; e < nc; ++e)
                    copy_block(gd + (size_t)(c + e) * gds + pre + t0 + i0, acc[e],
                               n - i0, BLK);
            }
            /* gd rows are zero past L; useg rows are readable BLK past the span; the
             * full-rate segments [0, pa) and [pb, n) start at multiples of LANES */
            for (int e = 0; e < nc; ++e) {
                float *ga = gacc + (size_t)(c + e) * kernel * LANES;
                const float *gdr = gd + (size_t)(c + e) * gds + pre + t0;
                const float *us = useg + (size_t)(c + e) * ustride;
                if (pa > 0) tap_sums(ga, gdr, us, pa, kernel, wide);
                if (pb < n) tap_sums(ga, gdr + pb, us + pb, n - pb, kernel, wide);
                if (pb > pa)
                    POLY_DISPATCH(poly_grad_k, up, D, wide,
                                  gp + (size_t)(g * C + c + e) * up * D * LANES,
                                  gdr, vseg + (size_t)(c + e) * vstride,
                                  (t0 + pa + crop_left) % up, pa, pb);
            }
        }
    }
    /* depthwise: gdw[c, j] += the lanes of gacc[c, j]; gx: back through the depthwise
     * half, the crop and the upsampling */
    for (int c = 0; c < C; ++c) {
        const int ch = g * C + c;
        const float *w = dw + (size_t)ch * kernel;
        float *q = gd + (size_t)c * gds + pre;
        for (int j = 0; j < kernel; ++j)
            gdw[(size_t)ch * kernel + j] += sum(gacc + ((size_t)c * kernel + j) * LANES, LANES);
        float *gxc = gx + ((size_t)b * GC + ch) * length_in;
        memset(gxc, 0, sizeof(float) * (size_t)length_in);
        if (!pp->wv) {
            /* gu[s] = sum_j w[j] gd[s - j] (gd rows carry k - 1 zeros before and BLK
             * after) */
            for (int s0 = 0; s0 < nq; s0 += BLK) {
                float acc[BLK] = {0};
                for (int j = 0; j < kernel; ++j) {
                    const float wj = w[j];
                    const float *r = q + s0 - j;
                    for (int i = 0; i < BLK; ++i) acc[i] += wj * r[i];
                }
                copy_block(gu + s0, acc, nq - s0, BLK);
            }
            downsample_row(gxc, gu + left, crop_left, L, up);
            continue;
        }
        /* the outputs whose taps reach the padding, at the full rate; then without
         * them (zeroed: gdw is done with gd), the polyphase adjoint on U and U's
         * adjoint of the upsampling */
        const int e0 = left < L ? left : L;
        int e1 = L - (kernel - 1 - left);
        e1 = e1 < e0 ? e0 : e1;
        for (int t = 0; t < L; ++t) {
            if (t == e0) t = e1;
            if (t >= L) break;
            const float gt = q[t];
            for (int j = 0; j < kernel; ++j) {
                const int u = t - left + j;
                if (u >= 0 && u < L) gxc[(u + crop_left) / up] += w[j] * gt;
            }
            q[t] = 0.0f;
        }
        POLY_DISPATCH(poly_adjoint_k, up, D, wide, gu, q, pp->wv + (size_t)ch * up * D * LANES,
                      crop_left % up, nq);
        const int lo = pp->a0 < 0 ? -pp->a0 : 0;
        const int hi = up * length_in - pp->a0 < nq ? up * length_in - pp->a0 : nq;
        if (hi > lo) downsample_row(gxc, gu + lo, lo + pp->a0, hi - lo, up);
    }
}

/* after every (sample, group): the polyphase part of gdw from its lane sums */
static void bwd_scratch_finish(const bwd_scratch *s, float *gdw, int GC, int kernel, int left,
                               int up)
{
    /* the polyphase part of gdw: lane l of a vector whose first sample has phase r holds
     * phase (r + l) % up; tap j of phase rho is its combined tap floor((rho + j - left) / up) */
    for (int ch = 0; s->gp && ch < GC; ++ch) {
        float P[MAX_PHASES][MAX_PHASES] = {{0}}; /* [phase][combined tap] */
        for (int r = 0; r < up; ++r)
            for (int m = 0; m < s->D; ++m)
                for (int l = 0; l < LANES; ++l)
                    P[(r + l) % up][m] += s->gp[(((size_t)ch * up + r) * s->D + m) * LANES + l];
        for (int j = 0; j < kernel; ++j) {
            float t = 0.0f;
            for (int rho = 0; rho < up; ++rho)
                t += P[rho][floordiv(rho + j - left, up) - s->pp.dmin];
            gdw[(size_t)ch * kernel + j] += t;
        }
    }
}

FEQ_CLONES
int feq_sep_bwd(const float *x, const float *dw, const float *pw, const float *out,
                const int *idx, const float *gout, float *gx, float *gdw,
                float *gpw, float *gbias, int batch, int groups, int channels, int outputs,
                int length_in, int up, int crop_left, int length, int kernel, int left, int relu,
                int pool, int pool_left, int b0, int b1, int pooled)
{
    const int C = channels, O = outputs, L = length, GC = groups * channels, GO = groups * outputs;
    const int wide = FEQ_WIDE();
    bwd_scratch s;
    (void)batch;
    if (bwd_scratch_init(&s, dw, GC, C, O, kernel, left, up, crop_left, L) < 0) return -1;
    for (int b = b0; b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            const size_t orow = (size_t)b * GO + (size_t)g * O;
            /* gy = dL/dy through pooling and ReLU */
            for (int o = 0; o < O; ++o) {
                float *r = s.gy + (size_t)o * s.gys;
                if (pool == 1) {
                    const float *go = gout + (orow + o) * L, *a = out + (orow + o) * L;
                    if (relu)
                        relu_grad_row(r, go, a, L);
                    else
                        memcpy(r, go, sizeof(float) * (size_t)L);
                } else {
                    unpool_row(r, gout + (orow + o) * pooled, idx + (orow + o) * pooled, L,
                               pooled, pool, pool_left);
                }
                gbias[g * O + o] += sum(r, L);
            }
            stage_bwd_group(&s, x, dw, pw, gx, gdw, gpw, b, g, C, O, GC, length_in, up,
                            crop_left, L, kernel, left, wide);
        }
    }
    bwd_scratch_finish(&s, gdw, GC, kernel, left, up);
    bwd_scratch_free(&s);
    return 0;
}

/* the backward of feq_sephead_fwd from gz (B, G, L): per (sample, group), the head's input
 * gradient ga and weight gradients (ADDED into ghw, ghbias) as feq_conv_bwd computes them, gy =
 * ga where out > 0, then the stage's backward as feq_sep_bwd's; ga never leaves the cache */
FEQ_CLONES
int feq_sephead_bwd(const float *x, const float *dw, const float *pw, const float *hw,
                    const float *out, const float *gz, float *gx, float *gdw, float *gpw,
                    float *gbias, float *ghw, float *ghbias, int batch, int groups, int channels,
                    int outputs, int length_in, int up, int crop_left, int length, int kernel,
                    int left, int hkernel, int hleft, int b0, int b1)
{
    const int C = channels, O = outputs, L = length, GC = groups * channels, GO = groups * outputs;
    const int wide = FEQ_WIDE(), hk = hkernel, shift = hk - 1 - hleft;
    const size_t xs = (size_t)L + ROW_PAD + hk; /* a padded row: head input and gz alike */
    bwd_scratch s;
    (void)batch;
    if (bwd_scratch_init(&s, dw, GC, C, O, kernel, left, up, crop_left, L) < 0) return -1;
    float *xpad = calloc((size_t)O * xs, sizeof(float));
    float *gpad = calloc(xs, sizeof(float));
    float *ga = malloc(sizeof(float) * (size_t)O * L);
    float *wt = malloc(sizeof(float) * (size_t)groups * O * hk);
    float *taps = malloc(sizeof(float) * (size_t)hk * LANES);
    const int ok = xpad && gpad && ga && wt && taps;
    if (ok) flipped_transpose(wt, hw, groups, 1, O, hk);
    for (int b = b0; ok && b < b1; ++b) {
        for (int g = 0; g < groups; ++g) {
            const float *a = out + ((size_t)b * GO + (size_t)g * O) * L;
            const float *gzg = gz + ((size_t)b * groups + g) * L;
            pad_rows(gpad, xs, gzg, 1, L, shift);
            conv_rows(gpad, xs, 1, wt + (size_t)g * O * hk, O, hk, NULL, ga, (size_t)L, L, wide);
            pad_rows(xpad, xs, a, O, L, hleft);
            conv_weight_grads(ghw + (size_t)g * O * hk, ghbias + g, gzg, 1, L, xpad, xs, O, hk,
                              taps, wide);
            for (int o = 0; o < O; ++o) { /* gy = dL/dy through the ReLU */
                float *r = s.gy + (size_t)o * s.gys;
                relu_grad_row(r, ga + (size_t)o * L, xpad + (size_t)o * xs + hleft, L);
                gbias[g * O + o] += sum(r, L);
            }
            stage_bwd_group(&s, x, dw, pw, gx, gdw, gpw, b, g, C, O, GC, length_in, up,
                            crop_left, L, kernel, left, wide);
        }
    }
    if (ok) bwd_scratch_finish(&s, gdw, GC, kernel, left, up);
    bwd_scratch_free(&s);
    free(xpad);
    free(gpad);
    free(ga);
    free(wt);
    free(taps);
    return ok ? 0 : -1;
}
