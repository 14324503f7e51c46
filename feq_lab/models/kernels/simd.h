/* Shared helpers of the training kernels (sep_train.c, conv_train.c): 16-float vectors and
 * register-blocked loops that GCC would not produce from plain C.
 *
 * Why GNU C vector extensions (GCC and Clang): written as plain C (a fully unrolled block of
 * float accumulators), GCC's auto-vectoriser turns these loops into spilling 4-lane code; with
 * `vf` every accumulator is one register (AVX-512) or two (AVX2), and the compiler still picks
 * the instructions for each target_clones target. Include after <string.h>, with
 * fp-contract=fast in effect (multiply-adds fuse).
 */
#ifndef FEQ_SIMD_H
#define FEQ_SIMD_H

#define LANES 16
#define MAX_TAPS 11 /* the widest kernel whose tap sums are kept in registers (tap_sums) */

/* every helper is inlined into its target_clones caller: an out-of-line static function is
 * compiled for the default target only (SSE2) */
#define FEQ_INLINE static inline __attribute__((always_inline))

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));

/* Whether the CPU has 32 vector registers of 16 floats (AVX-512), so that blocks of up to 16
 * vf accumulators stay in registers. Elsewhere (AVX2: 16 registers of 8 floats; NEON) they
 * would spill, and every blocked loop has a narrow form with at most 4 accumulators instead.
 * Asked at run time, once per kernel call: the preprocessor cannot tell target_clones' targets
 * apart. */
#if defined(FEQ_WIDE) /* given on the command line, e.g. -D'FEQ_WIDE()=0' to test the narrow forms */
#elif defined(__x86_64__) && defined(__GNUC__)
#define FEQ_WIDE() __builtin_cpu_supports("avx512f")
#else
#define FEQ_WIDE() 0
#endif
#pragma GCC diagnostic ignored "-Wpsabi" /* vf never crosses a non-inlined call */

/* The narrow forms' vector: one AVX2 register (two SSE ones). Arrays of v8 indexed by constants
 * stay in registers where arrays of vf do not, so the narrow forms block their loops in v8. */
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));

FEQ_INLINE v8 v8load(const float *p)
{
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

FEQ_INLINE void v8store(float *p, v8 v)
{
    memcpy(p, &v, sizeof v);
}

typedef int v8i __attribute__((vector_size(8 * sizeof(int))));

/* max(v, 0) lane by lane, 0 where v is NaN (as `v > 0 ? v : 0`) */
FEQ_INLINE v8 v8relu(v8 v)
{
    return (v8)((v8i)v & (v > (v8){0}));
}

FEQ_INLINE float v8sum(v8 v)
{
    float s = 0.0f;
    for (int i = 0; i < 8; ++i) s += v[i];
    return s;
}

FEQ_INLINE vf vload(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

FEQ_INLINE void vstore(float *p, vf v)
{
    memcpy(p, &v, sizeof v);
}

FEQ_INLINE float vsum(vf v)
{
    float s = 0.0f;
    for (int i = 0; i < LANES; ++i) s += v[i];
    return s;
}

/* dst[i] = src[i], i < min(m, full): `full` is a constant, so the common whole block is a few
 * vector moves instead of a variable-length memcpy (a slow `rep movs` for these sizes) */
FEQ_INLINE void copy_block(float *restrict dst, const float *restrict src, int m, const int full)
{
    if (m >= full)
        memcpy(dst, src, sizeof(float) * (size_t)full);
    else
        memcpy(dst, src, sizeof(float) * (size_t)m);
}

/* s[j][lane] += sum over h < n (whole LANES blocks) of g[h] u[h + j], j < k, lanes h mod LANES:
 * the k tap sums of a correlation (a conv's weight gradient) in registers for the whole row (k
 * a constant after inlining): each g block is loaded once for k multiply-adds, each u load
 * feeds one. Reads g up to n rounded up to LANES, u that plus k - 1. */
FEQ_INLINE void tap_sums_k(float *restrict s, const float *restrict g, const float *restrict u,
                           int n, const int k)
{
    vf a[MAX_TAPS];
    for (int j = 0; j < k; ++j) a[j] = vload(s + j * LANES);
    for (int h = 0; h < n; h += LANES) {
        const vf gh = vload(g + h);
        for (int j = 0; j < k; ++j) a[j] += gh * vload(u + h + j);
    }
    for (int j = 0; j < k; ++j) vstore(s + j * LANES, a[j]);
}

/* tap_sums_k's narrow form: taps four at a time, each in two v8 (the LANES lanes), so eight
 * independent accumulators hide the multiply-add latency and each g block feeds four taps */
FEQ_INLINE void tap_sums_narrow(float *restrict s, const float *restrict g,
                                const float *restrict u, int n, int k)
{
    int j = 0;
    for (; j + 4 <= k; j += 4) {
        v8 a[8];
        for (int q = 0; q < 8; ++q) a[q] = v8load(s + j * LANES + q * 8);
        for (int h = 0; h < n; h += LANES) {
            const v8 g0 = v8load(g + h), g1 = v8load(g + h + 8);
            for (int e = 0; e < 4; ++e) {
                a[2 * e] += g0 * v8load(u + h + j + e);
                a[2 * e + 1] += g1 * v8load(u + h + j + e + 8);
            }
        }
        for (int q = 0; q < 8; ++q) v8store(s + j * LANES + q * 8, a[q]);
    }
    for (; j < k; ++j) {
        v8 a0 = v8load(s + j * LANES), a1 = v8load(s + j * LANES + 8);
        v8 b0 = {0}, b1 = {0}; /* two chains per half: n is a multiple of LANES */
        int h = 0;
        for (; h + 2 * LANES <= n; h += 2 * LANES) {
            a0 += v8load(g + h) * v8load(u + h + j);
            a1 += v8load(g + h + 8) * v8load(u + h + j + 8);
            b0 += v8load(g + h + LANES) * v8load(u + h + LANES + j);
            b1 += v8load(g + h + LANES + 8) * v8load(u + h + LANES + j + 8);
        }
        for (; h < n; h += LANES) {
            a0 += v8load(g + h) * v8load(u + h + j);
            a1 += v8load(g + h + 8) * v8load(u + h + j + 8);
        }
        v8store(s + j * LANES, a0 + b0);
        v8store(s + j * LANES + 8, a1 + b1);
    }
}

/* tap_sums_k for any k: wide, the common odd sizes as constants; narrow in v8 blocks
 * (tap_sums_narrow); other sizes, a plain loop */
FEQ_INLINE void tap_sums(float *restrict s, const float *restrict g, const float *restrict u,
                         int n, int k, int wide)
{
    if (!wide) {
        tap_sums_narrow(s, g, u, n, k);
        return;
    }
    switch (k) {
    case 3: tap_sums_k(s, g, u, n, 3); break;
    case 5: tap_sums_k(s, g, u, n, 5); break;
    case 7: tap_sums_k(s, g, u, n, 7); break;
    case 9: tap_sums_k(s, g, u, n, 9); break;
    case 11: tap_sums_k(s, g, u, n, 11); break;
    default:
        for (int j = 0; j < k; ++j)
            for (int h = 0; h < n; h += LANES)
                for (int i = 0; i < LANES; ++i) s[j * LANES + i] += g[h + i] * u[h + j + i];
    }
}

#endif
