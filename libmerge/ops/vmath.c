/* Vectorised exp, SiLU, GELU and softmax helpers (see vmath.h). */
#include <math.h>
#include <string.h>

#include "ops/vmath.h"

/* the 32-byte vectors only live inside these functions (all helpers are
 * inlined), so the AVX-argument ABI note does not apply */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef unsigned v8u __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define SPLAT(c) ((v8f){ c, c, c, c, c, c, c, c })

static inline v8f vsel(v8i m, v8f a, v8f b)   /* m ? a : b, lane-wise (m all-ones or 0) */
{
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}

/* Cephes expf: exp(x) = 2^n · e^r, n = round(x / ln 2), |r| ≤ ln2/2 */
static inline v8f vexp(v8f x)
{
    v8i under = x < SPLAT(-87.33654f);
    x = vsel(x > SPLAT(88.37626f), SPLAT(88.37626f), x);
    x = vsel(under, SPLAT(-87.33654f), x);
    v8f t = x * SPLAT(1.44269504088896341f) + SPLAT(12582912.0f);   /* 1.5·2^23: round to integer */
    v8i n = (v8i)t - (v8i)SPLAT(12582912.0f);
    t = t - SPLAT(12582912.0f);
    v8f r = x - t * SPLAT(0.693359375f);
    r = r - t * SPLAT(-2.12194440e-4f);
    v8f p = SPLAT(1.9875691500e-4f);
    p = p * r + SPLAT(1.3981999507e-3f);
    p = p * r + SPLAT(8.3334519073e-3f);
    p = p * r + SPLAT(4.1665795894e-2f);
    p = p * r + SPLAT(1.6666665459e-1f);
    p = p * r + SPLAT(5.0000001201e-1f);
    v8f y = p * r * r + r + SPLAT(1.0f);
    y = (v8f)((v8u)y + ((v8u)n << 23));   /* unsigned: n may be negative */
    return vsel(under, SPLAT(0.0f), y);
}

/* erfc(z) for z ≥ 0 (Numerical Recipes erfcc) */
static inline v8f verfc_pos(v8f z)
{
    v8f t = SPLAT(1.0f) / (SPLAT(1.0f) + SPLAT(0.5f) * z);
    v8f p = SPLAT(0.17087277f);
    p = p * t + SPLAT(-0.82215223f);
    p = p * t + SPLAT(1.48851587f);
    p = p * t + SPLAT(-1.13520398f);
    p = p * t + SPLAT(0.27886807f);
    p = p * t + SPLAT(-0.18628806f);
    p = p * t + SPLAT(0.09678418f);
    p = p * t + SPLAT(0.37409196f);
    p = p * t + SPLAT(1.00002368f);
    p = p * t + SPLAT(-1.26551223f);
    return t * vexp(p - z * z);
}

static inline v8f vgelu(v8f x)
{
    /* gelu(x) = 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(−x/√2) */
    v8f z = x * SPLAT(-0.70710678118654752f);
    v8i neg = z < SPLAT(0.0f);
    v8f az = vsel(neg, -z, z);
    v8f e = verfc_pos(az);
    e = vsel(neg, SPLAT(2.0f) - e, e);
    return SPLAT(0.5f) * x * e;
}

static inline v8f load8(const float *p, size_t n, float fill)   /* n < 8: padded tail */
{
    v8f v = SPLAT(fill);
    memcpy(&v, p, n * sizeof(float));
    return v;
}

CLONES float lm_vexp_sub_sum(float *x, size_t n, float sub)
{
    v8f acc = SPLAT(0.0f), s = SPLAT(sub);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v;
        memcpy(&v, x + i, sizeof v);
        v = vexp(v - s);
        memcpy(x + i, &v, sizeof v);
        acc += v;
    }
    float sum = 0.0f;
    if (i < n) {
        v8f v = vexp(load8(x + i, n - i, -INFINITY) - s);
        memcpy(x + i, &v, (n - i) * sizeof(float));
        acc += v;
    }
    for (int k = 0; k < 8; k++) sum += acc[k];
    return sum;
}

CLONES void lm_vsilu(float *x, size_t n, float k)
{
    v8f kk = SPLAT(k);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v;
        memcpy(&v, x + i, sizeof v);
        v = v / (SPLAT(1.0f) + vexp(-(kk * v)));
        memcpy(x + i, &v, sizeof v);
    }
    if (i < n) {
        v8f v = load8(x + i, n - i, 0.0f);
        v = v / (SPLAT(1.0f) + vexp(-(kk * v)));
        memcpy(x + i, &v, (n - i) * sizeof(float));
    }
}

CLONES void lm_vgelu_mul(float *y, const float *a, const float *g, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v, w = SPLAT(1.0f);
        memcpy(&v, g + i, sizeof v);
        if (a) memcpy(&w, a + i, sizeof w);
        v = w * vgelu(v);
        memcpy(y + i, &v, sizeof v);
    }
    if (i < n) {
        v8f v = load8(g + i, n - i, 0.0f), w = a ? load8(a + i, n - i, 0.0f) : SPLAT(1.0f);
        v = w * vgelu(v);
        memcpy(y + i, &v, (n - i) * sizeof(float));
    }
}

CLONES float lm_vmax(const float *x, size_t n)
{
    v8f m = SPLAT(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v;
        memcpy(&v, x + i, sizeof v);
        m = vsel(v > m, v, m);
    }
    float r = -INFINITY;
    for (int k = 0; k < 8; k++) r = m[k] > r ? m[k] : r;
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}
