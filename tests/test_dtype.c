/* dtype conversions: the F16C/AVX2 kernels agree bit for bit with the
 * portable ones (all 65,536 fp16 values; ~4 million fp32 values: random bit
 * patterns, NaN payloads, subnormals, ties, the overflow edge), both agree
 * with an independent rounding reference, F64 sources round once, overflow is
 * counted, and the F8 formats round to nearest even.
 * (A one-off run over all 2^32 fp32 inputs also found no difference.) */
#include "test.h"
#include "libmerge/dtype.h"
#include "libmerge/err.h"
#include "tensor/dtype_simd.h"

#include <stdint.h>

static uint32_t fbits(float f) { uint32_t x; memcpy(&x, &f, 4); return x; }
static float bitsf(uint32_t x) { float f; memcpy(&f, &x, 4); return f; }

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static uint32_t rnd32(void)
{
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

/* Independent reference for fp32 -> fp16: round |x| in double arithmetic
 * (exact here) to a multiple of the fp16 quantum, ties to even. */
static uint16_t ref_f16(float f)
{
    uint32_t x = fbits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    double v = fabs((double)f);
    int e;
    if (v == 0) return sign;
    frexp(v, &e);
    e -= 1;
    if (e < -14) e = -14;
    double q = ldexp(1.0, e - 10);
    double r = nearbyint(v / q) * q;
    if (r > 65504.0) return (uint16_t)(sign | 0x7c00u);
    if (r < ldexp(1.0, -14)) return (uint16_t)(sign | (uint16_t)(r / ldexp(1.0, -24)));
    frexp(r, &e);
    e -= 1;
    uint32_t m = (uint32_t)((r / ldexp(1.0, e) - 1.0) * 1024.0);
    return (uint16_t)(sign | (uint16_t)((e + 15) << 10) | m);
}

static void f16_to_f32_all_65536_simd_equals_portable(void)
{
    static uint16_t h[65536];
    static float a[65536], b[65536];
    for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    lm_f16_to_f32_n_portable(a, h, 65536);
    if (lm_dtype_simd_available()) {
        lm_f16_to_f32_n_avx2(b, h, 65536);
        for (uint32_t i = 0; i < 65536; i++)
            CHECK_MSG(fbits(a[i]) == fbits(b[i]), "0x%04x: portable %08x, simd %08x", i, fbits(a[i]), fbits(b[i]));
    }
    /* values: exact, against ldexp */
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t e = (i >> 10) & 31, m = i & 1023;
        double want = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, (int)e - 25);
        if (e == 31) {
            CHECK(m ? isnan(a[i]) && (fbits(a[i]) & 0x400000u) : isinf(a[i]));
            if (m) CHECK_EQ_INT((fbits(a[i]) >> 13) & 0x3ff, m | 0x200);
            continue;
        }
        if (i & 0x8000) want = -want;
        CHECK_MSG((double)a[i] == want && !!signbit(a[i]) == !!(i & 0x8000), "0x%04x -> %g", i, a[i]);
    }
    /* and the public bulk entry point gives the same */
    lm_convert_to_f32(b, h, LM_DT_F16, 65536);
    CHECK(memcmp(a, b, sizeof a) == 0);
}

/* Fills v with n test inputs: random bit patterns and targeted classes. */
static void fill_f32_cases(uint32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t r = rnd32(), s = r & 0x80000000u;
        switch (i % 8) {
        case 0: case 1: v[i] = r; break;                                         /* any bits */
        case 2: v[i] = s | 0x7f800000u | (rnd32() & 0x7fffffu) | 1u; break;      /* NaN payloads */
        case 3: v[i] = s | (0x33000000u + (rnd32() % (0x38800000u - 0x33000000u))); break; /* fp16 subnormal range */
        case 4: v[i] = s | (((rnd32() % 0x3bu) + 0x71u) << 23) | ((rnd32() & 0x3ffu) << 13) | 0x1000u; break; /* exact ties */
        case 5: v[i] = s | (0x477fe000u + (rnd32() % 0x4000u)); break;           /* around 65504..65536 */
        case 6: v[i] = s | (0x38000000u + (rnd32() % 0x1000000u)); break;       /* around the normal/subnormal edge */
        default: v[i] = s | (0x7f7f0000u + (rnd32() % 0x20000u)); break;        /* bf16 overflow edge */
        }
    }
}

static void f32_to_f16_random_simd_portable_reference(void)
{
    const size_t n = (size_t)1 << 22;   /* 4,194,304 */
    uint32_t *v = malloc(n * 4);
    uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
    fill_f32_cases(v, n);
    int64_t oa = lm_f32_to_f16_n_portable(a, (const float *)v, n);
    if (lm_dtype_simd_available()) {
        int64_t ob = lm_f32_to_f16_n_avx2(b, (const float *)v, n);
        CHECK_EQ_INT(ob, oa);
        for (size_t i = 0; i < n; i++)
            CHECK_MSG(a[i] == b[i], "%08x: portable %04x, simd %04x", v[i], a[i], b[i]);
    }
    int64_t over = 0;
    for (size_t i = 0; i < n; i += 3) {   /* the double-based reference is slow: every third */
        uint16_t r = ref_f16(bitsf(v[i]));
        CHECK_MSG(a[i] == r, "%08x: got %04x, reference %04x", v[i], a[i], r);
    }
    for (size_t i = 0; i < n; i++)
        over += (a[i] & 0x7fff) == 0x7c00 && (v[i] & 0x7f800000u) != 0x7f800000u;
    CHECK_EQ_INT(oa, over);
    CHECK(over > 100000);   /* the overflow class is exercised */
    /* odd lengths use the scalar tail: same bytes */
    int64_t ot = lm_convert_from_f32(b, LM_DT_F16, (const float *)v, 1001);
    CHECK(memcmp(a, b, 1001 * 2) == 0);
    CHECK(ot >= 0);
    free(v); free(a); free(b);
}

static void bf16_random_simd_equals_portable(void)
{
    const size_t n = (size_t)1 << 21;
    uint32_t *v = malloc(n * 4);
    uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
    float *fa = malloc(n * 4), *fb = malloc(n * 4);
    fill_f32_cases(v, n);
    int64_t oa = lm_f32_to_bf16_n_portable(a, (const float *)v, n);
    /* reference: round-half-even on the low 16 bits */
    for (size_t i = 0; i < n; i++) {
        uint32_t x = v[i];
        uint16_t want;
        if ((x & 0x7fffffffu) > 0x7f800000u) want = (uint16_t)((x >> 16) | 0x40u);
        else {
            uint32_t lo = x & 0xffffu, hi = x >> 16;
            want = (uint16_t)(hi + (lo > 0x8000u || (lo == 0x8000u && (hi & 1))));
        }
        CHECK_MSG(a[i] == want, "%08x: got %04x, want %04x", x, a[i], want);
    }
    lm_bf16_to_f32_n_portable(fa, a, n);
    if (lm_dtype_simd_available()) {
        CHECK_EQ_INT(lm_f32_to_bf16_n_avx2(b, (const float *)v, n), oa);
        CHECK(memcmp(a, b, n * 2) == 0);
        lm_bf16_to_f32_n_avx2(fb, a, n);
        CHECK(memcmp(fa, fb, n * 4) == 0);
    }
    for (size_t i = 0; i < n; i++) CHECK(fbits(fa[i]) == (uint32_t)a[i] << 16);
    CHECK(oa > 1000);
    free(v); free(a); free(b); free(fa); free(fb);
}

/* F64 rounds once: through fp32 these would round twice. */
static void f64_rounds_once(void)
{
    double src[6] = {
        1.0 + ldexp(1, -11) + ldexp(1, -40),   /* just above an fp16 tie: rounds up */
        -(1.0 + ldexp(1, -11) + ldexp(1, -40)),
        65519.99999,                            /* below the fp16 overflow threshold */
        65520.0,                                /* the tie: Inf */
        1e300,                                  /* overflow */
        NAN,
    };
    uint16_t h[6];
    CHECK_EQ_INT(lm_convert(h, LM_DT_F16, src, LM_DT_F64, 6), 2);
    CHECK_EQ_INT(h[0], 0x3c01);
    CHECK_EQ_INT(h[1], 0xbc01);
    CHECK_EQ_INT(h[2], 0x7bff);
    CHECK_EQ_INT(h[3], 0x7c00);
    CHECK_EQ_INT(h[4], 0x7c00);
    CHECK_EQ_INT(h[5] & 0x7e00, 0x7e00);
    /* what double rounding would have given, for contrast */
    float via = (float)src[0];
    CHECK_EQ_INT(lm_f32_to_f16(via), 0x3c00);

    double bsrc[3] = { 1.0 + ldexp(1, -8) + ldexp(1, -40), 0x1.ff8p127, 3.0 };
    uint16_t bb[3];
    CHECK_EQ_INT(lm_convert(bb, LM_DT_BF16, bsrc, LM_DT_F64, 3), 1);
    CHECK_EQ_INT(bb[0], 0x3f81);
    CHECK_EQ_INT(bb[1], 0x7f80);
    CHECK_EQ_INT(bb[2], 0x4040);

    double fsrc[3] = { 1e39, 1.0 / 3.0, -0.0 };
    float f[3];
    CHECK_EQ_INT(lm_convert(f, LM_DT_F32, fsrc, LM_DT_F64, 3), 1);
    CHECK(isinf(f[0]));
    CHECK(f[1] == (float)(1.0 / 3.0));
    CHECK(f[2] == 0 && signbit(f[2]));

    /* F8 from F64: 1 + 2^-4 + 2^-40 rounds up in e4m3 (1.125 = 0x39) */
    double esrc[2] = { 1.0 + ldexp(1, -4) + ldexp(1, -40), 1000.0 };
    uint8_t e8[2];
    CHECK_EQ_INT(lm_convert(e8, LM_DT_F8_E4M3, esrc, LM_DT_F64, 2), 1);
    CHECK_EQ_INT(e8[0], 0x39);
    CHECK_EQ_INT(e8[1], 0x7f);
    /* and F64 targets are exact */
    float one[2] = { 0.1f, -3.0f };
    double d[2];
    CHECK_EQ_INT(lm_convert(d, LM_DT_F64, one, LM_DT_F32, 2), 0);
    CHECK(d[0] == (double)0.1f && d[1] == -3.0);
}

static void overflow_counted_through_lm_convert(void)
{
    float src[5] = { 70000.0f, -70000.0f, INFINITY, 1.0f, 65504.0f };
    uint16_t h[5];
    CHECK_EQ_INT(lm_convert(h, LM_DT_F16, src, LM_DT_F32, 5), 2);
    CHECK_EQ_INT(h[0], 0x7c00);
    CHECK_EQ_INT(h[1], 0xfc00);
    CHECK_EQ_INT(h[2], 0x7c00);
    CHECK_EQ_INT(h[4], 0x7bff);
    CHECK(lm_convert(h, LM_DT_I32, src, LM_DT_F32, 1) == LM_EUNSUPPORTED);
}

/* Nearest of all 256 F8 codes, ties to the even code (brute force). */
static uint8_t ref_f8(float f, int e4m3)
{
    int best = -1;
    double bd = 0;
    for (int c = 0; c < 256; c++) {
        uint8_t u = (uint8_t)c;
        float v;
        lm_convert_to_f32(&v, &u, e4m3 ? LM_DT_F8_E4M3 : LM_DT_F8_E5M2, 1);
        if (!isfinite(v) || !!signbit(v) != !!signbit(f)) continue;
        double d = fabs((double)v - (double)f);
        if (best < 0 || d < bd || (d == bd && !(c & 1))) { best = c; bd = d; }
    }
    return (uint8_t)best;
}

static void f8_round_to_nearest_even(void)
{
    /* all codes round trip */
    for (int c = 0; c < 256; c++) {
        uint8_t u = (uint8_t)c, back;
        float v;
        lm_convert_to_f32(&v, &u, LM_DT_F8_E4M3, 1);
        if (!isnan(v)) { lm_convert_from_f32(&back, LM_DT_F8_E4M3, &v, 1); CHECK_EQ_INT(back, c); }
        lm_convert_to_f32(&v, &u, LM_DT_F8_E5M2, 1);
        if (!isnan(v) && !isinf(v)) { lm_convert_from_f32(&back, LM_DT_F8_E5M2, &v, 1); CHECK_EQ_INT(back, c); }
    }
    /* random values inside the finite ranges against brute force */
    for (int i = 0; i < 20000; i++) {
        float f = ldexpf((float)(rnd32() & 0xffffff) / 16777216.0f, (int)(rnd32() % 24) - 14);
        if (rnd32() & 1) f = -f;
        uint8_t a, b;
        if (fabsf(f) <= 448.0f) {
            lm_convert_from_f32(&a, LM_DT_F8_E4M3, &f, 1);
            b = ref_f8(f, 1);
            CHECK_MSG(a == b || (f == 0), "e4m3 %a: %02x vs %02x", f, a, b);
        }
        lm_convert_from_f32(&a, LM_DT_F8_E5M2, &f, 1);
        b = ref_f8(f, 0);
        CHECK_MSG(a == b || (f == 0), "e5m2 %a: %02x vs %02x", f, a, b);
    }
    /* ties and overflow */
    float t[4] = { 1.0f + 1.0f / 16, 1.0f + 3.0f / 16, 500.0f, 62000.0f };
    uint8_t o[4];
    CHECK_EQ_INT(lm_convert_from_f32(o, LM_DT_F8_E4M3, t, 3), 1);
    CHECK_EQ_INT(o[0], 0x38);
    CHECK_EQ_INT(o[1], 0x3a);
    CHECK_EQ_INT(o[2], 0x7f);
    float t2[2] = { 60000.0f, 62000.0f };
    CHECK_EQ_INT(lm_convert_from_f32(o, LM_DT_F8_E5M2, t2, 2), 1);
    CHECK_EQ_INT(o[0], 0x7b);
    CHECK_EQ_INT(o[1], 0x7c);
}

static void names_sizes(void)
{
    CHECK_EQ_INT(lm_dtype_from_name("F8_E4M3"), LM_DT_F8_E4M3);
    CHECK_EQ_INT(lm_dtype_from_name("F8_E8M0"), LM_DT_INVALID);
    CHECK_EQ_INT(lm_dtype_size(LM_DT_BF16), 2);
    CHECK_EQ_STR(lm_dtype_name(LM_DT_U64), "U64");
    for (int t = 1; t < LM_DT_COUNT; t++) CHECK_EQ_INT(lm_dtype_from_name(lm_dtype_name((lm_dtype)t)), t);
}

int main(void)
{
    printf("# dtype kernels: %s\n", lm_dtype_simd_available() ? "F16C/AVX2 and portable" : "portable only (no F16C/AVX2)");
    RUN(f16_to_f32_all_65536_simd_equals_portable);
    RUN(f32_to_f16_random_simd_portable_reference);
    RUN(bf16_random_simd_equals_portable);
    RUN(f64_rounds_once);
    RUN(overflow_counted_through_lm_convert);
    RUN(f8_round_to_nearest_even);
    RUN(names_sizes);
    TEST_EXIT();
}
