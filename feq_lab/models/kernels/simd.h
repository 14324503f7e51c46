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

/* tap_sums_k for any k: wide, the common odd sizes as constants; narrow (GCC lowers vf arrays
 * through memory where vf spans several registers) and other sizes, a plain loop */
FEQ_INLINE void tap_sums(float *restrict s, const float *restrict g, const float *restrict u,
                         int n, int k, int wide)
{
    switch (wide ? k : 0) {
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
