/* GroupNorm and LayerNorm, statistics accumulated in double; groups (or
 * blocks of tokens) run in parallel on the ops' threads when large. */
#include <math.h>

#include "libmerge/ops.h"
#include "ops/vmath.h"
#include "ops/prof.h"
#include "ops/parallel.h"

/* elements below which an op stays on the caller's thread */
#define PAR_MIN ((int64_t)1 << 16)

/* Σ x[i] and Σ (x[i] − m)² in four interleaved double sums (the serial
 * chain of one double add per element was the norms' bottleneck) */
static double sum_d(const float *x, size_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) { s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3]; }
    for (; i < n; i++) s0 += x[i];
    return (s0 + s1) + (s2 + s3);
}

static double sqdev_d(const float *x, size_t n, double m)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double d0 = x[i] - m, d1 = x[i + 1] - m, d2 = x[i + 2] - m, d3 = x[i + 3] - m;
        s0 += d0 * d0; s1 += d1 * d1; s2 += d2 * d2; s3 += d3 * d3;
    }
    for (; i < n; i++) { double d = x[i] - m; s0 += d * d; }
    return (s0 + s1) + (s2 + s3);
}

typedef struct {
    const float *x, *gamma, *beta;
    float *y, eps;
    int cpg, silu;
    int64_t HW;
} gn_job;

static void gn_group(void *p, int64_t g, int tid)
{
    const gn_job *j = p;
    const float *x = j->x, *gamma = j->gamma, *beta = j->beta;
    float *y = j->y;
    int cpg = j->cpg, silu = j->silu;
    int64_t HW = j->HW;
    const float *xg = x + (size_t)g * cpg * HW;
    size_t n = (size_t)cpg * HW;
    double mean = sum_d(xg, n) / (double)n;
    double v = sqdev_d(xg, n, mean);
    double rstd = 1.0 / sqrt(v / (double)n + (double)j->eps);
    for (int cc = 0; cc < cpg; cc++) {
        int c = g * cpg + cc;
        float a = (float)(rstd * (gamma ? gamma[c] : 1.0f));
        float bb = (float)((beta ? beta[c] : 0.0f) - mean * rstd * (gamma ? gamma[c] : 1.0f));
        const float *xc = x + (size_t)c * HW;
        float *yc = y + (size_t)c * HW;
        /* affine and SiLU per 4096 elements, while they are in L1 (one pass
         * over a large channel instead of two) */
        for (int64_t i0 = 0; i0 < HW; i0 += 4096) {
            int64_t i1 = i0 + 4096 < HW ? i0 + 4096 : HW;
            for (int64_t i = i0; i < i1; i++) yc[i] = xc[i] * a + bb;
            if (silu) lm_vsilu(yc + i0, (size_t)(i1 - i0), 1.0f);
        }
    }
}

void lm_group_norm(const float *x, int C, int64_t HW, int groups, const float *gamma,
                   const float *beta, float eps, int silu, float *y)
{
    double t0 = lm_prof_t0();
    gn_job j = { x, gamma, beta, y, eps, C / groups, silu, HW };
    lm_parallel(groups, (int64_t)C * HW >= PAR_MIN ? lm_par_threads() : 1, gn_group, &j);
    lm_prof_end(LM_PROF_GNORM, t0);
}

typedef struct {
    const float *x, *gamma, *beta;
    float *y, eps;
    int C;
    int64_t T;
} ln_job;

#define LN_TOKENS 64   /* tokens per parallel item */

static void ln_tokens(void *p, int64_t item, int tid)
{
    const ln_job *j = p;
    const float *gamma = j->gamma, *beta = j->beta;
    int C = j->C;
    int64_t t1 = (item + 1) * LN_TOKENS < j->T ? (item + 1) * LN_TOKENS : j->T;
    for (int64_t t = item * LN_TOKENS; t < t1; t++) {
        const float *xr = j->x + t * C;
        float *yr = j->y + t * C;
        double mean = sum_d(xr, (size_t)C) / C;
        double v = sqdev_d(xr, (size_t)C, mean);
        double rstd = 1.0 / sqrt(v / C + (double)j->eps);
        for (int c = 0; c < C; c++) {
            float n = (float)((xr[c] - mean) * rstd);
            yr[c] = n * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
        }
    }
}

void lm_layer_norm(const float *x, int64_t T, int C, const float *gamma, const float *beta,
                   float eps, float *y)
{
    double t0 = lm_prof_t0();
    ln_job j = { x, gamma, beta, y, eps, C, T };
    lm_parallel((T + LN_TOKENS - 1) / LN_TOKENS, T * C >= PAR_MIN ? lm_par_threads() : 1, ln_tokens, &j);
    lm_prof_end(LM_PROF_LNORM, t0);
}
