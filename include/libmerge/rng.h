/* libmerge/rng.h — the sampler's seeded random numbers, compatible with
 * PyTorch's CPU generator, so that a seed gives the starting latent and the
 * per-step noise diffusers gets with torch.Generator("cpu").manual_seed(seed).
 *
 * Algorithm (documented here so it can be reimplemented):
 *  - Uniform bits: MT19937 (Matsumoto & Nishimura 1998), seeded with the low
 *    32 bits of the seed by the reference init_genrand recurrence
 *    (mt[i] = 1812433253·(mt[i−1] ⊕ (mt[i−1] >> 30)) + i); outputs tempered
 *    32-bit words, as PyTorch's at::mt19937.
 *  - Normal samples, n ≥ 16 (torch.randn's "normal_fill" path): fill all n
 *    with u = (w & (2²⁴−1))·2⁻²⁴ ∈ [0,1), one word each; then for every
 *    block of 16 (and, when 16 ∤ n, once more for the last 16 elements
 *    after redrawing their uniforms) Box–Muller: for j < 8,
 *    r = √(−2 ln(1 − u_j)), θ = 2π·u_{j+8}, z_j = r cos θ, z_{j+8} = r sin θ.
 *  - Normal samples, n < 16: per element, double-precision Box–Muller from
 *    two 53-bit uniforms u1, u2 (u = (w64 & (2⁵³−1))·2⁻⁵³, w64 = two words,
 *    the first one high), r = √(−2 ln(1 − u2)), θ = 2π·u1, z = r cos θ, and
 *    r sin θ cached for the next call (at::normal_distribution<double>).
 * PyTorch's AVX2 build evaluates ln/sin/cos with its own polynomials; we use
 * the C library's, so samples agree to about 1 ulp (tests: ≤ 1e-6 abs), not
 * always bit for bit.
 */
#ifndef LIBMERGE_RNG_H
#define LIBMERGE_RNG_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_rng {
    uint32_t mt[624];
    int idx;                 /* next word of mt to temper; 624 = regenerate */
    int has_next_normal;     /* cached second Box–Muller sample (n < 16 path) */
    double next_normal;
} lm_rng;

/* Seeds like torch.manual_seed(seed) / Generator.manual_seed(seed). */
void lm_rng_seed(lm_rng *r, uint64_t seed);

/* Next 32-bit MT19937 output (tempered, as the reference genrand_int32). */
uint32_t lm_rng_u32(lm_rng *r);

/* out [n] ← standard normal samples, as torch.randn(shape, generator=g)
 * fills a float32 tensor of n elements (any shape of that size) on CPU. */
void lm_rng_randn(lm_rng *r, float *out, size_t n);

#ifdef __cplusplus
}
#endif
#endif
