/* Function multiversioning for the kernels (GCC on x86-64): a function marked FEQ_CLONES is
 * built for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline, and the loader runs the
 * widest the CPU supports; FEQ_CLONES_V3 builds v3 and the baseline only (the GRU kernels and
 * sepconv.c). Elsewhere (Clang, other CPUs, -DFEQ_NO_CLONES) both mark plain functions. */
#ifndef FEQ_CLONES_H
#define FEQ_CLONES_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FEQ_NO_CLONES)
#define FEQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FEQ_CLONES_V3 __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FEQ_CLONES
#define FEQ_CLONES_V3
#endif

#endif
