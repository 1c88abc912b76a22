/* fp16/bf16 <-> fp32 in bulk: portable loops over the scalar conversions of
 * dtype.c, and F16C/AVX2 versions selected at run time.
 *
 * Why they agree bit for bit:
 *  - fp16 -> fp32 is exact; NaNs come out quiet with the payload kept, which
 *    is what vcvtph2ps does and what lm_f16_to_f32 does.
 *  - fp32 -> fp16 uses vcvtps2ph with an explicit round-to-nearest-even
 *    immediate (independent of MXCSR). Its NaN rule (quiet, top 9 payload
 *    bits kept) and overflow rule (|x| >= 65520 -> Inf) are those of
 *    lm_f32_to_f16.
 *  - bf16 is done with the same integer arithmetic as lm_f32_to_bf16.
 * Tails (n % 8) go through the scalar code. */
#include "dtype_simd.h"
#include "libmerge/dtype.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <cpuid.h>
#define LM_HAVE_X86 1
#endif

void lm_f16_to_f32_n_portable(float *dst, const void *src, size_t n)
{
    const unsigned char *b = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, b + 2 * i, 2);
        dst[i] = lm_f16_to_f32(h);
    }
}

void lm_bf16_to_f32_n_portable(float *dst, const void *src, size_t n)
{
    const unsigned char *b = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, b + 2 * i, 2);
        dst[i] = lm_bf16_to_f32(h);
    }
}

static int finite_f32(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return (x & 0x7f800000u) != 0x7f800000u;
}

int64_t lm_f32_to_f16_n_portable(void *dst, const float *src, size_t n)
{
    unsigned char *b = dst;
    int64_t over = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = lm_f32_to_f16(src[i]);
        over += ((h & 0x7fffu) == 0x7c00u) && finite_f32(src[i]);
        memcpy(b + 2 * i, &h, 2);
    }
    return over;
}

int64_t lm_f32_to_bf16_n_portable(void *dst, const float *src, size_t n)
{
    unsigned char *b = dst;
    int64_t over = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = lm_f32_to_bf16(src[i]);
        over += ((h & 0x7fffu) == 0x7f80u) && finite_f32(src[i]);
        memcpy(b + 2 * i, &h, 2);
    }
    return over;
}

#ifdef LM_HAVE_X86

int lm_dtype_simd_available(void)
{
    static int cached = -1;   /* benign race: every thread computes the same value */
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c < 0) {
        const char *off = getenv("LIBMERGE_NO_SIMD");
        __builtin_cpu_init();
        /* F16C from CPUID leaf 1 (clang 14's __builtin_cpu_supports has no "f16c") */
        unsigned a, b, cx, d;
        int f16c = __get_cpuid(1, &a, &b, &cx, &d) && (cx & bit_F16C);
        c = (!off || !*off || strcmp(off, "0") == 0) && f16c && __builtin_cpu_supports("avx2");
        __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    }
    return c;
}

__attribute__((target("f16c,avx2")))
void lm_f16_to_f32_n_avx2(float *dst, const void *src, size_t n)
{
    const unsigned char *b = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(b + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    lm_f16_to_f32_n_portable(dst + i, b + 2 * i, n - i);
}

__attribute__((target("f16c,avx2")))
int64_t lm_f32_to_f16_n_avx2(void *dst, const float *src, size_t n)
{
    unsigned char *b = dst;
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    const __m256i lo = _mm256_set1_epi32(0x477fefff);   /* |x| > this rounds to Inf */
    const __m256i inf = _mm256_set1_epi32(0x7f800000);
    int64_t over = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(src + i);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(b + 2 * i), h);
        __m256i a = _mm256_and_si256(_mm256_castps_si256(v), absmask);
        __m256i o = _mm256_and_si256(_mm256_cmpgt_epi32(a, lo), _mm256_cmpgt_epi32(inf, a));
        over += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(o)));
    }
    return over + lm_f32_to_f16_n_portable(b + 2 * i, src + i, n - i);
}

__attribute__((target("avx2")))
void lm_bf16_to_f32_n_avx2(float *dst, const void *src, size_t n)
{
    const unsigned char *b = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(b + 2 * i));
        __m256i x = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_si256((__m256i *)(dst + i), x);
    }
    lm_bf16_to_f32_n_portable(dst + i, b + 2 * i, n - i);
}

__attribute__((target("avx2")))
int64_t lm_f32_to_bf16_n_avx2(void *dst, const float *src, size_t n)
{
    unsigned char *b = dst;
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000);
    const __m256i bias = _mm256_set1_epi32(0x7fff);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i qbit = _mm256_set1_epi32(0x40);
    const __m256i inf16 = _mm256_set1_epi32(0x7f80);
    const __m256i abs16 = _mm256_set1_epi32(0x7fff);
    int64_t over = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i a = _mm256_and_si256(x, absmask);
        __m256i nan = _mm256_cmpgt_epi32(a, inf);
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), one);
        __m256i r = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(bias, odd)), 16);
        __m256i q = _mm256_or_si256(_mm256_srli_epi32(x, 16), qbit);
        r = _mm256_blendv_epi8(r, q, nan);
        /* overflow: result ±Inf from a finite input */
        __m256i isinf = _mm256_cmpeq_epi32(_mm256_and_si256(r, abs16), inf16);
        __m256i fin = _mm256_cmpgt_epi32(inf, a);
        over += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_and_si256(isinf, fin))));
        /* 8 x 32-bit lanes (values < 2^16) -> 8 x 16-bit */
        __m256i p = _mm256_packus_epi32(r, r);                  /* lanes: 0-3 0-3 | 4-7 4-7 */
        p = _mm256_permute4x64_epi64(p, 0x08);                  /* 0-3, 4-7 in the low 128 */
        _mm_storeu_si128((__m128i *)(b + 2 * i), _mm256_castsi256_si128(p));
    }
    return over + lm_f32_to_bf16_n_portable(b + 2 * i, src + i, n - i);
}

#else  /* no x86: the portable versions are all there is */

int lm_dtype_simd_available(void) { return 0; }
void lm_f16_to_f32_n_avx2(float *dst, const void *src, size_t n) { lm_f16_to_f32_n_portable(dst, src, n); }
void lm_bf16_to_f32_n_avx2(float *dst, const void *src, size_t n) { lm_bf16_to_f32_n_portable(dst, src, n); }
int64_t lm_f32_to_f16_n_avx2(void *dst, const float *src, size_t n) { return lm_f32_to_f16_n_portable(dst, src, n); }
int64_t lm_f32_to_bf16_n_avx2(void *dst, const float *src, size_t n) { return lm_f32_to_bf16_n_portable(dst, src, n); }

#endif
