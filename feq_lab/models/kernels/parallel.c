/* Batch-parallel drivers of the training kernels: `*_mt(..., chunks)` runs the kernel of the same
 * name once per chunk c of `chunks`, over the samples [batch*c/chunks, batch*(c+1)/chunks), on an
 * OpenMP team of `chunks` threads.
 *
 * Why here and not in Python: torch's own ops run on OpenMP (its libgomp, the one this library
 * resolves to once torch is loaded), whose idle threads spin for a while after each op. A second
 * pool of threads (Python's, as before) then shares the 2 cores with spinning threads: FEQ3's
 * train step took as long on 2 threads as on 1. Running the chunks on the same team lets the idle
 * threads pick them up instead.
 *
 * Kernels with weight gradients add each chunk's part into its own copy (`gdw + c * size`, ...),
 * summed by the caller in chunk order, so results do not depend on which thread ran which chunk.
 * Built without OpenMP (no -fopenmp) the chunks run one after another, with the same results.
 */
#include <stddef.h>

void feq_gru_train_fwd(const float *gi, const float *whh_t, const float *bhh, float *out,
                       float *gates, float *aux, int batch, int steps, int hidden, int b0, int b1,
                       int reverse, int flavour);
void feq_gru_train_bwd(const float *whh, const float *out, const float *gates, const float *aux,
                       const float *gout, float *dgi, float *dgh, int batch, int steps,
                       int hidden, int b0, int b1, int reverse, int flavour);
int feq_sep_fwd(const float *x, const float *dw, const float *pw, const float *bias, float *out,
                int *idx, int batch, int groups, int channels, int outputs, int length_in, int up,
                int crop_left, int length, int kernel, int left, int relu, int pool, int pool_left,
                int b0, int b1, int pooled);
int feq_sep_bwd(const float *x, const float *dw, const float *pw, const float *out,
                const int *idx, const float *gout, float *gx, float *gdw, float *gpw,
                float *gbias, int batch, int groups, int channels, int outputs, int length_in,
                int up, int crop_left, int length, int kernel, int left, int relu, int pool,
                int pool_left, int b0, int b1, int pooled);
int feq_sephead_fwd(const float *x, const float *dw, const float *pw, const float *bias,
                    const float *hw, const float *hbias, float *out, float *z, int batch,
                    int groups, int channels, int outputs, int length_in, int up, int crop_left,
                    int length, int kernel, int left, int hkernel, int hleft, int b0, int b1);
int feq_sephead_bwd(const float *x, const float *dw, const float *pw, const float *hw,
                    const float *out, const float *gz, float *gx, float *gdw, float *gpw,
                    float *gbias, float *ghw, float *ghbias, int batch, int groups, int channels,
                    int outputs, int length_in, int up, int crop_left, int length, int kernel,
                    int left, int hkernel, int hleft, int b0, int b1);
int feq_conv_fwd(const float *x, const float *w, const float *bias, float *y, int batch,
                 int groups, int channels, int outputs, int length_in, int kernel, int left,
                 int length_out, int b0, int b1);
int feq_conv_bwd(const float *x, const float *w, const float *gy, float *gx, float *gw,
                 float *gbias, int batch, int groups, int channels, int outputs, int length_in,
                 int kernel, int left, int length_out, int b0, int b1);
void feq_attn_fwd(const float *q, const float *kt, const float *w, float *e, int batch,
                  int steps, int keys, int units, int b0, int b1);
void feq_attn_bwd(const float *q, const float *kt, const float *w, const float *de, float *dq,
                  float *dkt, float *dw, int batch, int steps, int keys, int units, int b0, int b1);

/* whether this build runs the chunks on OpenMP threads (else one after another) */
int feq_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define LO(c) ((int)((long)batch * (c) / chunks))
#define HI(c) ((int)((long)batch * ((c) + 1) / chunks))
/* for each chunk c: BODY (which sets `status` on failure); a status reduction across threads */
#define CHUNKS(BODY)                                                                           \
    _Pragma("omp parallel for num_threads(chunks) schedule(static, 1) reduction(| : status)") \
    for (int c = 0; c < chunks; ++c) {                                                         \
        BODY;                                                                                  \
    }

void feq_gru_train_fwd_mt(const float *gi, const float *whh_t, const float *bhh, float *out,
                          float *gates, float *aux, int batch, int steps, int hidden, int reverse,
                          int flavour, int chunks)
{
    int status = 0;
    CHUNKS(feq_gru_train_fwd(gi, whh_t, bhh, out, gates, aux, batch, steps, hidden, LO(c), HI(c),
                             reverse, flavour))
    (void)status;
}

void feq_gru_train_bwd_mt(const float *whh, const float *out, const float *gates,
                          const float *aux, const float *gout, float *dgi, float *dgh, int batch,
                          int steps, int hidden, int reverse, int flavour, int chunks)
{
    int status = 0;
    CHUNKS(feq_gru_train_bwd(whh, out, gates, aux, gout, dgi, dgh, batch, steps, hidden, LO(c),
                             HI(c), reverse, flavour))
    (void)status;
}

int feq_sep_fwd_mt(const float *x, const float *dw, const float *pw, const float *bias,
                   float *out, int *idx, int batch, int groups, int channels, int outputs,
                   int length_in, int up, int crop_left, int length, int kernel, int left,
                   int relu, int pool, int pool_left, int pooled, int chunks)
{
    int status = 0;
    CHUNKS(status |= feq_sep_fwd(x, dw, pw, bias, out, idx, batch, groups, channels, outputs,
                                 length_in, up, crop_left, length, kernel, left, relu, pool,
                                 pool_left, LO(c), HI(c), pooled))
    return status;
}

int feq_sep_bwd_mt(const float *x, const float *dw, const float *pw, const float *out,
                   const int *idx, const float *gout, float *gx, float *gdw, float *gpw,
                   float *gbias, int batch, int groups, int channels, int outputs, int length_in,
                   int up, int crop_left, int length, int kernel, int left, int relu, int pool,
                   int pool_left, int pooled, int chunks)
{
    /* per-chunk copies: depthwise (G·C, 1, k), pointwise (G·O, C, 1), bias (G·O) */
    const size_t ndw = (size_t)groups * channels * kernel, npw = (size_t)groups * outputs * channels;
    const size_t nb = (size_t)groups * outputs;
    int status = 0;
    CHUNKS(status |= feq_sep_bwd(x, dw, pw, out, idx, gout, gx, gdw + c * ndw, gpw + c * npw,
                                 gbias + c * nb, batch, groups, channels, outputs, length_in, up,
                                 crop_left, length, kernel, left, relu, pool, pool_left, LO(c),
                                 HI(c), pooled))
    return status;
}

int feq_sephead_fwd_mt(const float *x, const float *dw, const float *pw, const float *bias,
                       const float *hw, const float *hbias, float *out, float *z, int batch,
                       int groups, int channels, int outputs, int length_in, int up,
                       int crop_left, int length, int kernel, int left, int hkernel, int hleft,
                       int chunks)
{
    int status = 0;
    CHUNKS(status |= feq_sephead_fwd(x, dw, pw, bias, hw, hbias, out, z, batch, groups, channels,
                                     outputs, length_in, up, crop_left, length, kernel, left,
                                     hkernel, hleft, LO(c), HI(c)))
    return status;
}

int feq_sephead_bwd_mt(const float *x, const float *dw, const float *pw, const float *hw,
                       const float *out, const float *gz, float *gx, float *gdw, float *gpw,
                       float *gbias, float *ghw, float *ghbias, int batch, int groups,
                       int channels, int outputs, int length_in, int up, int crop_left,
                       int length, int kernel, int left, int hkernel, int hleft, int chunks)
{
    /* per-chunk copies: depthwise (G·C, 1, k), pointwise (G·O, C, 1), bias (G·O), head weight
     * (G, O, hk), head bias (G) */
    const size_t ndw = (size_t)groups * channels * kernel, npw = (size_t)groups * outputs * channels;
    const size_t nb = (size_t)groups * outputs, nhw = (size_t)groups * outputs * hkernel;
    int status = 0;
    CHUNKS(status |= feq_sephead_bwd(x, dw, pw, hw, out, gz, gx, gdw + c * ndw, gpw + c * npw,
                                     gbias + c * nb, ghw + c * nhw, ghbias + (size_t)c * groups,
                                     batch, groups, channels, outputs, length_in, up, crop_left,
                                     length, kernel, left, hkernel, hleft, LO(c), HI(c)))
    return status;
}

int feq_conv_fwd_mt(const float *x, const float *w, const float *bias, float *y, int batch,
                    int groups, int channels, int outputs, int length_in, int kernel, int left,
                    int length_out, int chunks)
{
    int status = 0;
    CHUNKS(status |= feq_conv_fwd(x, w, bias, y, batch, groups, channels, outputs, length_in,
                                  kernel, left, length_out, LO(c), HI(c)))
    return status;
}

int feq_conv_bwd_mt(const float *x, const float *w, const float *gy, float *gx, float *gw,
                    float *gbias, int batch, int groups, int channels, int outputs, int length_in,
                    int kernel, int left, int length_out, int chunks)
{
    /* per-chunk copies: weight (G·O, C, k), bias (G·O) */
    const size_t nw = (size_t)groups * outputs * channels * kernel, nb = (size_t)groups * outputs;
    int status = 0;
    CHUNKS(status |= feq_conv_bwd(x, w, gy, gx, gw + c * nw, gbias + c * nb, batch, groups,
                                  channels, outputs, length_in, kernel, left, length_out, LO(c),
                                  HI(c)))
    return status;
}

void feq_attn_fwd_mt(const float *q, const float *kt, const float *w, float *e, int batch,
                     int steps, int keys, int units, int chunks)
{
    int status = 0;
    CHUNKS(feq_attn_fwd(q, kt, w, e, batch, steps, keys, units, LO(c), HI(c)))
    (void)status;
}

void feq_attn_bwd_mt(const float *q, const float *kt, const float *w, const float *de, float *dq,
                     float *dkt, float *dw, int batch, int steps, int keys, int units, int chunks)
{
    int status = 0;
    CHUNKS(feq_attn_bwd(q, kt, w, de, dq, dkt, dw + (size_t)c * units, batch, steps, keys, units,
                        LO(c), HI(c)))
    (void)status;
}
