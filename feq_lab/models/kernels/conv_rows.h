/* The register-blocked conv rows shared by the dense conv kernels (conv_train.c) and the
 * separable stage fused with its head (sep_train.c): one copy of the loops, so the fused head
 * computes exactly the sums, in the same order, that the separate conv does.
 * Include after simd.h and clones.h. */
#ifndef FEQ_CONV_ROWS_H
#define FEQ_CONV_ROWS_H

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

/* conv_block's narrow form (FEQ_WIDE): OB outputs x TV v8 of samples in OB TV <= 8 v8 registers
 * (GCC lowers vf arrays through memory where vf spans several registers; v8 arrays stay in
 * registers), each input load feeding OB multiply-adds and each weight broadcast TV */
FEQ_INLINE void conv_block_narrow(const float *in, size_t is, int C, const float *w, int k,
                                  const float *bias, float *out, size_t os, int t0, int n,
                                  const int OB, const int TV)
{
    v8 a[8];
    for (int q = 0; q < OB; ++q)
        for (int v = 0; v < TV; ++v) a[q * TV + v] = (v8){0} + (bias ? bias[q] : 0.0f);
    for (int c = 0; c < C; ++c) {
        const float *row = in + (size_t)c * is + t0;
        for (int j = 0; j < k; ++j) {
            v8 xv[8];
            for (int v = 0; v < TV; ++v) xv[v] = v8load(row + j + v * 8);
            for (int q = 0; q < OB; ++q) {
                const float wq = w[((size_t)q * C + c) * k + j];
                for (int v = 0; v < TV; ++v) a[q * TV + v] += wq * xv[v];
            }
        }
    }
    for (int q = 0; q < OB; ++q)
        for (int v = 0; v < TV; ++v) {
            const int t = t0 + v * 8;
            if (t >= n) break;
            float tmp[8];
            v8store(tmp, a[q * TV + v]);
            copy_block(out + (size_t)q * os + t, tmp, n - t, 8);
        }
}

/* out[o][t] = (bias ? bias[o] : 0) + sum_c sum_j w[(o * C + c) * k + j] in[c][t + j], t < n,
 * wide in blocks of 8 outputs x 32 samples, 4 x 64, or 1 x 128, narrow (FEQ_WIDE) 4 x 16 or
 * 1 x 64, the same sums in the same order either way; rows of `in` (stride `is`) must be
 * readable up to n rounded up to ROW_PAD, plus k - 1 */
FEQ_INLINE void conv_rows(const float *in, size_t is, int C, const float *w, int O, int k,
                          const float *bias, float *out, size_t os, int n, int wide)
{
    int o = 0;
    if (!wide) {
        for (; o + 4 <= O; o += 4)
            for (int t0 = 0; t0 < n; t0 += 16)
                conv_block_narrow(in, is, C, w + (size_t)o * C * k, k, bias ? bias + o : NULL,
                                  out + (size_t)o * os, os, t0, n, 4, 2);
        for (; o < O; ++o)
            for (int t0 = 0; t0 < n; t0 += 64)
                conv_block_narrow(in, is, C, w + (size_t)o * C * k, k, bias ? bias + o : NULL,
                                  out + (size_t)o * os, os, t0, n, 1, 8);
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

/* rows dst[r][lo + i] = src[r][skip + i] (lo = max(shift, 0), skip = max(-shift, 0)) for the
 * `rows` rows of src (n_src samples each) into dst rows `ds` apart, cut at the row's end: a
 * shifted copy into rows whose other samples the caller keeps zero (the zero padding) */
FEQ_INLINE void pad_rows(float *dst, size_t ds, const float *src, int rows, int n_src, int shift)
{
    const int lo = shift > 0 ? shift : 0, skip = shift < 0 ? -shift : 0;
    for (int r = 0; r < rows; ++r) {
        int m = n_src - skip;
        if (lo + m > (int)ds) m = (int)ds - lo;
        if (m > 0) memcpy(dst + (size_t)r * ds + lo, src + (size_t)r * n_src + skip, sizeof(float) * m);
    }
}

/* wt[g, c, o, k - 1 - j] = w[g, o, c, j]: the transposed, flipped weight that makes a conv's
 * input gradient the same conv (conv_rows) on its padded output gradient */
FEQ_INLINE void flipped_transpose(float *wt, const float *w, int groups, int O, int C, int k)
{
    for (int g = 0; g < groups; ++g)
        for (int o = 0; o < O; ++o)
            for (int c = 0; c < C; ++c)
                for (int j = 0; j < k; ++j)
                    wt[(((size_t)g * C + c) * O + o) * k + (k - 1 - j)] =
                        w[(((size_t)g * O + o) * C + c) * k + j];
}

/* one group's weight and bias gradients of a conv, ADDED into gw (O, C, k) and gbias (O):
 * gbias[o] += sum_t gy[o][t], gw[o, c, j] += sum_t gy[o][t] xpad[c][t + j] (t < length_out;
 * xpad rows `xs` apart: the input with its left padding; `taps`: k LANES scratch floats) */
FEQ_INLINE void conv_weight_grads(float *gw, float *gbias, const float *gy, int O, int length_out,
                                  const float *xpad, size_t xs, int C, int k, float *taps,
                                  int wide)
{
    for (int o = 0; o < O; ++o) {
        const float *go = gy + (size_t)o * length_out;
        float s = 0.0f, acc[LANES] = {0};
        int t = 0;
        for (; t + LANES <= length_out; t += LANES)
            for (int i = 0; i < LANES; ++i) acc[i] += go[t + i];
        for (; t < length_out; ++t) s += go[t];
        for (int i = 0; i < LANES; ++i) s += acc[i];
        gbias[o] += s;
        const int whole = length_out / LANES * LANES; /* go is not padded */
        for (int c = 0; c < C; ++c) {
            float *gwc = gw + ((size_t)o * C + c) * k;
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

#endif
