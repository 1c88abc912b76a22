/* dtype names, sizes, scalar conversions (the portable reference path) and
 * bulk conversions (fp16/bf16 through the run-time dispatched kernels of
 * dtype_simd.c, bit-identical to the scalar code).
 * Rounding: round to nearest, ties to even, as IEEE 754 and torch's .to() do;
 * every conversion rounds once (F64 sources included). */
#include "libmerge/dtype.h"
#include "libmerge/err.h"
#include "dtype_simd.h"

#include <math.h>
#include <string.h>

static const struct { const char *name; size_t size; int is_float; } k_dtypes[LM_DT_COUNT] = {
    [LM_DT_INVALID] = { "INVALID", 0, 0 },
    [LM_DT_BOOL] = { "BOOL", 1, 0 },
    [LM_DT_U8] = { "U8", 1, 0 },
    [LM_DT_I8] = { "I8", 1, 0 },
    [LM_DT_U16] = { "U16", 2, 0 },
    [LM_DT_I16] = { "I16", 2, 0 },
    [LM_DT_U32] = { "U32", 4, 0 },
    [LM_DT_I32] = { "I32", 4, 0 },
    [LM_DT_U64] = { "U64", 8, 0 },
    [LM_DT_I64] = { "I64", 8, 0 },
    [LM_DT_F16] = { "F16", 2, 1 },
    [LM_DT_BF16] = { "BF16", 2, 1 },
    [LM_DT_F32] = { "F32", 4, 1 },
    [LM_DT_F64] = { "F64", 8, 1 },
    [LM_DT_F8_E4M3] = { "F8_E4M3", 1, 1 },
    [LM_DT_F8_E5M2] = { "F8_E5M2", 1, 1 },
};

size_t lm_dtype_size(lm_dtype t)
{
    return (t > LM_DT_INVALID && t < LM_DT_COUNT) ? k_dtypes[t].size : 0;
}

const char *lm_dtype_name(lm_dtype t)
{
    return (t > LM_DT_INVALID && t < LM_DT_COUNT) ? k_dtypes[t].name : "INVALID";
}

lm_dtype lm_dtype_from_name(const char *s)
{
    if (!s) return LM_DT_INVALID;
    for (int t = LM_DT_INVALID + 1; t < LM_DT_COUNT; t++)
        if (strcmp(s, k_dtypes[t].name) == 0) return (lm_dtype)t;
    return LM_DT_INVALID;
}

int lm_dtype_is_float(lm_dtype t)
{
    return (t > LM_DT_INVALID && t < LM_DT_COUNT) ? k_dtypes[t].is_float : 0;
}

static inline uint32_t f32_bits(float f) { uint32_t x; memcpy(&x, &f, 4); return x; }
static inline float bits_f32(uint32_t x) { float f; memcpy(&f, &x, 4); return f; }

float lm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    /* NaN comes out quiet with its payload kept, as IEEE 754 conversions and
     * the F16C instruction vcvtph2ps do (the SIMD path must match bit for bit) */
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant ? 0x400000u : 0) | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: mant × 2^-24, exact in fp32 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return bits_f32(f32_bits(v) | sign);
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t lm_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) /* Inf stays Inf; NaN stays NaN (quiet, top payload bits kept) */
        return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x3ffu) : 0x7c00u));
    if (a >= 0x477ff000u) /* ≥ 65520 rounds past the largest fp16 (65504) */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {
        /* result is fp16-subnormal or zero: adding 0.5 puts the value in units of
         * 2^-24 into the low mantissa bits, rounded to nearest even by the FPU */
        float v = bits_f32(a) + 0.5f;
        return (uint16_t)(sign | (f32_bits(v) - 0x3f000000u));
    }
    uint32_t odd = (a >> 13) & 1u;
    a += 0xc8000fffu + odd; /* re-bias exponent by -112 and round to nearest even */
    return (uint16_t)(sign | (a >> 13));
}

float lm_bf16_to_f32(uint16_t b)
{
    return bits_f32((uint32_t)b << 16);
}

uint16_t lm_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* F8 E4M3 "fn" (no Inf, NaN = S.1111.111, max 448) and E5M2 (IEEE-like, max
 * 57344), as torch.float8_e4m3fn / torch.float8_e5m2. */
float lm_f8e4m3_to_f32(uint8_t v);
uint8_t lm_f32_to_f8e4m3(float f, int *overflow);
float lm_f8e5m2_to_f32(uint8_t v);
uint8_t lm_f32_to_f8e5m2(float f, int *overflow);

float lm_f8e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp = (v >> 3) & 0xfu, mant = v & 0x7u;
    if (exp == 0xf && mant == 0x7) return bits_f32(sign | 0x7fc00000u);
    if (exp == 0) return bits_f32(f32_bits((float)mant * (1.0f / 512.0f)) | sign);
    return bits_f32(sign | ((exp + 120u) << 23) | (mant << 20));
}

float lm_f8e5m2_to_f32(uint8_t v)
{
    return lm_f16_to_f32((uint16_t)((uint16_t)v << 8));
}

/* Rounds |x| (finite, non-negative) to a float with `mbits` mantissa bits and
 * minimum normal exponent emin, nearest even; returns the rounded value. */
static float round_small_float(float a, int mbits, int emin)
{
    int e;
    if (a == 0.0f) return 0.0f;
    frexpf(a, &e);           /* a = m·2^e, m in [0.5,1) */
    e -= 1;                  /* a = 1.x·2^e */
    if (e < emin) e = emin;  /* subnormal range: fixed quantum */
    float q = ldexpf(1.0f, e - mbits);
    return nearbyintf(a / q) * q; /* default rounding mode: ties to even */
}

uint8_t lm_f32_to_f8e4m3(float f, int *overflow)
{
    uint32_t x = f32_bits(f);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
    if (isnan(f)) return (uint8_t)(sign | 0x7fu);
    float a = fabsf(f);
    float r = isinf(a) ? a : round_small_float(a, 3, -6);
    if (r > 448.0f) { /* no Inf in e4m3fn: out of range becomes NaN, as torch's cast does */
        if (overflow && !isinf(a)) *overflow = 1;
        return (uint8_t)(sign | 0x7fu);
    }
    if (r == 0.0f) return sign;
    int e;
    frexpf(r, &e);
    e -= 1;
    if (e < -6) return (uint8_t)(sign | (uint8_t)(r * 512.0f)); /* subnormal: r / 2^-9 */
    uint32_t m = (uint32_t)(ldexpf(r, -e) * 8.0f) & 0x7u;
    return (uint8_t)(sign | (uint8_t)((e + 7) << 3) | (uint8_t)m);
}

uint8_t lm_f32_to_f8e5m2(float f, int *overflow)
{
    uint32_t x = f32_bits(f);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
    if (isnan(f)) return (uint8_t)(sign | 0x7eu);
    float a = fabsf(f);
    if (isinf(a)) return (uint8_t)(sign | 0x7cu);
    float r = round_small_float(a, 2, -14);
    if (r > 57344.0f) { if (overflow) *overflow = 1; return (uint8_t)(sign | 0x7cu); }
    return (uint8_t)(sign | (lm_f32_to_f16(r) >> 8)); /* exact: r fits e5m2; keeps -0 */
}

#define LOAD(T, p, i) ({ T v_; memcpy(&v_, (const char *)(p) + (i) * sizeof(T), sizeof(T)); v_; })

int lm_convert_to_f32(float *dst, const void *src, lm_dtype from, size_t n)
{
    const unsigned char *b = src;
    switch (from) {
    case LM_DT_F32: memcpy(dst, src, n * 4); return 0;
    case LM_DT_F16:
        if (lm_dtype_simd_available()) lm_f16_to_f32_n_avx2(dst, src, n);
        else lm_f16_to_f32_n_portable(dst, src, n);
        return 0;
    case LM_DT_BF16:
        if (lm_dtype_simd_available()) lm_bf16_to_f32_n_avx2(dst, src, n);
        else lm_bf16_to_f32_n_portable(dst, src, n);
        return 0;
    case LM_DT_F64: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(double, b, i); return 0;
    case LM_DT_F8_E4M3: for (size_t i = 0; i < n; i++) dst[i] = lm_f8e4m3_to_f32(b[i]); return 0;
    case LM_DT_F8_E5M2: for (size_t i = 0; i < n; i++) dst[i] = lm_f8e5m2_to_f32(b[i]); return 0;
    case LM_DT_BOOL: for (size_t i = 0; i < n; i++) dst[i] = b[i] ? 1.0f : 0.0f; return 0;
    case LM_DT_U8: for (size_t i = 0; i < n; i++) dst[i] = (float)b[i]; return 0;
    case LM_DT_I8: for (size_t i = 0; i < n; i++) dst[i] = (float)(int8_t)b[i]; return 0;
    case LM_DT_U16: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(uint16_t, b, i); return 0;
    case LM_DT_I16: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(int16_t, b, i); return 0;
    case LM_DT_U32: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(uint32_t, b, i); return 0;
    case LM_DT_I32: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(int32_t, b, i); return 0;
    case LM_DT_U64: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(uint64_t, b, i); return 0;
    case LM_DT_I64: for (size_t i = 0; i < n; i++) dst[i] = (float)LOAD(int64_t, b, i); return 0;
    default: return LM_EUNSUPPORTED;
    }
}

int64_t lm_convert_from_f32(void *dst, lm_dtype to, const float *src, size_t n)
{
    unsigned char *b = dst;
    int64_t over = 0;
    switch (to) {
    case LM_DT_F32: memcpy(dst, src, n * 4); return 0;
    case LM_DT_F16:
        return lm_dtype_simd_available() ? lm_f32_to_f16_n_avx2(dst, src, n) : lm_f32_to_f16_n_portable(dst, src, n);
    case LM_DT_BF16:
        return lm_dtype_simd_available() ? lm_f32_to_bf16_n_avx2(dst, src, n) : lm_f32_to_bf16_n_portable(dst, src, n);
    case LM_DT_F64:
        for (size_t i = 0; i < n; i++) { double d = src[i]; memcpy(b + 8 * i, &d, 8); }
        return 0;
    case LM_DT_F8_E4M3:
        for (size_t i = 0; i < n; i++) { int o = 0; b[i] = lm_f32_to_f8e4m3(src[i], &o); over += o; }
        return over;
    case LM_DT_F8_E5M2:
        for (size_t i = 0; i < n; i++) { int o = 0; b[i] = lm_f32_to_f8e5m2(src[i], &o); over += o; }
        return over;
    default: return LM_EUNSUPPORTED;
    }
}

/* Rounds a finite, non-negative double once, to nearest even, onto a binary
 * float format with `mbits` explicit mantissa bits and minimum normal
 * exponent emin (no upper bound: the caller checks the maximum). a / q and
 * r * q only scale by powers of two, so they are exact. */
static double round_double(double a, int mbits, int emin)
{
    if (a == 0.0) return 0.0;
    int e;
    frexp(a, &e);
    e -= 1;
    if (e < emin) e = emin;
    double q = ldexp(1.0, e - mbits);
    return nearbyint(a / q) * q;
}

/* F64 -> F16/BF16/F8 rounded once from the double (going through fp32 first
 * would round twice: 1 + 2^-11 + 2^-40 would become the tie 1 + 2^-11 in
 * fp32 and then 1.0 in fp16 instead of 1 + 2^-10). The once-rounded value
 * is exact in fp32, so the fp32 encoders finish the job without rounding. */
static int64_t convert_from_f64(unsigned char *d, lm_dtype to, const unsigned char *s, size_t n)
{
    int mbits, emin;
    double max;
    switch (to) {
    case LM_DT_F16: mbits = 10; emin = -14; max = 65504.0; break;
    case LM_DT_BF16: mbits = 7; emin = -126; max = 0x1.fep127; break;
    case LM_DT_F8_E4M3: mbits = 3; emin = -6; max = 448.0; break;
    case LM_DT_F8_E5M2: mbits = 2; emin = -14; max = 57344.0; break;
    default: mbits = 0; emin = 0; max = 0; break;
    }
    int64_t over = 0;
    size_t ts = lm_dtype_size(to);
    for (size_t i = 0; i < n; i++) {
        double x = LOAD(double, s, i);
        float f;
        if (to == LM_DT_F32) {
            f = (float)x;   /* one IEEE rounding */
            over += isinf(f) && isfinite(x);
            memcpy(d + 4 * i, &f, 4);
            continue;
        }
        if (!isfinite(x)) {
            f = (float)x;   /* Inf stays Inf; NaN stays NaN (top payload bits kept) */
        } else {
            double r = round_double(fabs(x), mbits, emin);
            if (r > max) {
                over++;
                f = INFINITY;   /* the encoders map it to Inf, or NaN for F8_E4M3 */
            } else {
                f = (float)r;
            }
            if (signbit(x)) f = -f;
        }
        int64_t o = lm_convert_from_f32(d + ts * i, to, &f, 1);
        if (o < 0) return o;
    }
    return over;
}

int64_t lm_convert(void *dst, lm_dtype to, const void *src, lm_dtype from, size_t n)
{
    if (!lm_dtype_is_float(to) || !lm_dtype_is_float(from)) return LM_EUNSUPPORTED;
    if (to == from) { memcpy(dst, src, n * lm_dtype_size(to)); return 0; }
    if (from == LM_DT_F64) return convert_from_f64(dst, to, src, n);
    float buf[1024];
    int64_t over = 0;
    const unsigned char *s = src;
    unsigned char *d = dst;
    size_t fs = lm_dtype_size(from), ts = lm_dtype_size(to);
    for (size_t i = 0; i < n; i += 1024) {
        size_t k = n - i < 1024 ? n - i : 1024;
        lm_convert_to_f32(buf, s + i * fs, from, k);
        int64_t o = lm_convert_from_f32(d + i * ts, to, buf, k);
        if (o < 0) return o;
        over += o;
    }
    return over;
}
