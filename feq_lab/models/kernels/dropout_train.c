/* Dropout for TRAINING: y = x / (1 - p) where an element is kept, else 0, with its mask drawn from
 * a counter-based hash instead of a stored random tensor.
 *
 * Why: torch's CPU dropout draws its mask with bernoulli_, one element at a time on one thread
 * (~7 ns an element measured here), then divides and multiplies in two more passes: FEQ3's
 * transformer dropouts on (32, 56, 128) cost ~6% of its 2-thread train step. Here the keep
 * decision of element i is a pure function of (seed, i) -- splitmix64's finaliser of
 * seed + i * golden ratio -- so one vectorised pass draws and applies it, the threads split the
 * elements freely, backward recomputes the same mask from the seed (no mask is stored), and the
 * masks are the same on every CPU and thread count (bernoulli_'s path depends on the CPU vendor).
 *
 * Element i is kept when the hash's upper 32 bits are >= threshold (= p * 2^32, rounded): kept
 * with probability 1 - threshold / 2^32. Backward is the same call on the output gradient.
 */
#include <stddef.h>
#include <stdint.h>

#include "clones.h"

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

FEQ_CLONES
void feq_dropout(const float *x, float *y, int64_t n, uint64_t seed, uint32_t threshold,
                 float scale, int chunks)
{
    (void)chunks;
#pragma omp parallel for num_threads(chunks) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t draw = (uint32_t)(mix64(seed + (uint64_t)i * 0x9e3779b97f4a7c15ULL) >> 32);
        y[i] = draw >= threshold ? x[i] * scale : 0.0f;
    }
}
