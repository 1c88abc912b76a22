/* Internal: vectorised exp-based kernels for the ops (softmax, SiLU, GELU).
 * Written with GCC/Clang vector extensions (8 floats at a time: SSE2 pairs
 * on baseline x86-64, one AVX2 register in the AVX2 clone the loader picks
 * at run time). exp is Cephes' expf scheme (range reduction by ln 2 in two
 * parts, degree-6 polynomial; about 1 ulp); erf comes from the complementary
 * error function approximation of Numerical Recipes (erfcc, fractional error
 * < 1.2e-7). Both agree with the C library to ~1e-7 relative, the level of
 * float32 rounding; the libm calls they replace cost 4–10 ns each, which at
 * 512 px (≈ 0.7 G exponentials in attention softmax) would be seconds. */
#ifndef LIBMERGE_OPS_VMATH_H
#define LIBMERGE_OPS_VMATH_H

#include <stddef.h>

/* x[i] ← exp(x[i] − sub); returns Σ x[i] (after). exp(−∞) = 0. */
float lm_vexp_sub_sum(float *x, size_t n, float sub);
/* x[i] ← x[i] · sigmoid(k · x[i]) (k = 1: SiLU; k = 1.702: QuickGELU). */
void lm_vsilu(float *x, size_t n, float k);
/* y[i] ← a[i] · gelu(g[i]) (exact-erf GELU); a = NULL means a[i] = 1. y may be g. */
void lm_vgelu_mul(float *y, const float *a, const float *g, size_t n);
/* max of x[0..n) (−∞ for n = 0) */
float lm_vmax(const float *x, size_t n);

#endif
