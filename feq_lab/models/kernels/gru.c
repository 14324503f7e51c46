/* Fused GRU recurrence for CPU inference (PyTorch's nn.GRU equations, gate order r, z, n).
 *
 * Why: PyTorch runs nn.LSTM on oneDNN on the CPU but nn.GRU as a loop of ~10 small ATen ops per
 * time step; for the pickers' 16-unit GRUs over ~56 steps that loop costs more than the whole
 * rest of the recurrent section. This runs the loop in one call. The input projections
 * (x W_ih^T + b_ih, one large matmul) stay with torch; only the sequential part is here.
 *
 *   r = sigmoid(gi_r + W_hr h + b_hr)
 *   z = sigmoid(gi_z + W_hz h + b_hz)
 *   n = tanh(gi_n + r * (W_hn h + b_hn))
 *   h = (1 - z) * n + z * h
 *
 * gi: (B, T, 3H) input projections with b_ih; whh_t: W_hh transposed, (H, 3H), so the recurrent
 * matvec runs as H vectorisable row updates (no float reduction to reorder); bhh: (3H); h0: (B, H) or NULL for
 * zeros; out: (B, T, stride) and this direction's H columns start at `col`. Row-major float32.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
/* tanh(a) is taken as 2·sigmoid(2a) − 1: glibc's tanhf costs ~3× its expf, and the identity
 * keeps the result within ~2e-7 absolute of torch's tanh. */

void feq_gru(const float *gi, const float *whh_t, const float *bhh, const float *h0, float *out,
             int batch, int steps, int hidden, int stride, int col, int reverse)
{
    const int g3 = 3 * hidden;
    float h[hidden], gh[g3];
    for (int b = 0; b < batch; ++b) {
        if (h0) memcpy(h, h0 + (size_t)b * hidden, sizeof(float) * hidden);
        else memset(h, 0, sizeof(float) * hidden);
        for (int step = 0; step < steps; ++step) {
            const int t = reverse ? steps - 1 - step : step;
            const float *g = gi + ((size_t)b * steps + t) * g3;
            memcpy(gh, bhh, sizeof(float) * g3);
            for (int k = 0; k < hidden; ++k) {
                const float hk = h[k];
                const float *w = whh_t + (size_t)k * g3;
                for (int j = 0; j < g3; ++j) gh[j] += w[j] * hk;
            }
            float *o = out + ((size_t)b * steps + t) * stride + col;
            for (int j = 0; j < hidden; ++j) {
                const float r = sigmoidf(g[j] + gh[j]);
                const float z = sigmoidf(g[hidden + j] + gh[hidden + j]);
                const float n = 2.0f * sigmoidf(2.0f * (g[2 * hidden + j] + r * gh[2 * hidden + j])) - 1.0f;
                h[j] = (1.0f - z) * n + z * h[j];
                o[j] = h[j];
            }
        }
    }
}
