/* GroupNorm and LayerNorm, statistics accumulated in double; groups (or
 * blocks of tokens) run in parallel on the ops' threads when large.
 * GroupNorm is one formula in three parts (lm_group_norm_stats, _moments,
 * _apply), so a caller that sees an image a band of rows at a time (the
 * VAE's banded decode) normalises exactly as lm_group_norm does. */
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

/* Σ x[i] and Σ x[i]² of one channel, four interleaved pairs of double sums
 * (a float's square is exact in double) */
static void sums_d(const float *x, size_t n, double *s, double *q)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
        s0 += a; s1 += b; s2 += c; s3 += d;
        q0 += a * a; q1 += b * b; q2 += c * c; q3 += d * d;
    }
    for (; i < n; i++) { double a = x[i]; s0 += a; q0 += a * a; }
    *s += (s0 + s1) + (s2 + s3);
    *q += (q0 + q1) + (q2 + q3);
}

/* mean and 1/σ of a group from its totals Σx, Σx² over n elements: biased
 * variance E[x²] − μ² in double (clamped at 0 against rounding) */
static void moments_tot(double s, double q, double n, float eps, double *mean, double *rstd)
{
    double m = s / n, var = q / n - m * m;
    *mean = m;
    *rstd = 1.0 / sqrt((var > 0 ? var : 0) + (double)eps);
}

/* normalise one channel: y = (x − μ)/σ · γ + β as one float multiply-add,
 * per 4096 elements with SiLU while they are in L1 (one pass over a large
 * channel instead of two) */
static void apply1(const float *xc, int64_t n, double mean, double rstd, float gamma, float beta, int silu,
                   float *yc)
{
    float a = (float)(rstd * gamma);
    float bb = (float)(beta - mean * rstd * gamma);
    for (int64_t i0 = 0; i0 < n; i0 += 4096) {
        int64_t i1 = i0 + 4096 < n ? i0 + 4096 : n;
        for (int64_t i = i0; i < i1; i++) yc[i] = xc[i] * a + bb;
        if (silu) lm_vsilu(yc + i0, (size_t)(i1 - i0), 1.0f);
    }
}

typedef struct {
    const float *x, *gamma, *beta;
    float *y, eps;
    int cpg, silu;
    int64_t n, ld;
    double *sum, *sumsq;
    const double *mean, *rstd;
} gn_job;

/* lm_group_norm: one group, statistics then normalisation */
static void gn_group(void *p, int64_t g, int tid)
{
    (void)tid;
    const gn_job *j = p;
    double s = 0, q = 0, mean, rstd;
    for (int cc = 0; cc < j->cpg; cc++) {
        double cs = 0, cq = 0;   /* per channel, then summed: as lm_group_norm_moments does */
        sums_d(j->x + ((size_t)g * j->cpg + cc) * j->n, (size_t)j->n, &cs, &cq);
        s += cs;
        q += cq;
    }
    moments_tot(s, q, (double)j->n * j->cpg, j->eps, &mean, &rstd);
    for (int cc = 0; cc < j->cpg; cc++) {
        int c = (int)g * j->cpg + cc;
        apply1(j->x + (size_t)c * j->n, j->n, mean, rstd, j->gamma ? j->gamma[c] : 1.0f,
               j->beta ? j->beta[c] : 0.0f, j->silu, j->y + (size_t)c * j->n);
    }
}

void lm_group_norm(const float *x, int C, int64_t HW, int groups, const float *gamma,
                   const float *beta, float eps, int silu, float *y)
{
    double t0 = lm_prof_t0();
    gn_job j = { x, gamma, beta, y, eps, C / groups, silu, HW, HW, NULL, NULL, NULL, NULL };
    lm_parallel(groups, (int64_t)C * HW >= PAR_MIN ? lm_par_threads() : 1, gn_group, &j);
    lm_prof_end(LM_PROF_GNORM, t0);
}

static void gn_stats_ch(void *p, int64_t c, int tid)
{
    (void)tid;
    const gn_job *j = p;
    sums_d(j->x + (size_t)c * j->ld, (size_t)j->n, &j->sum[c], &j->sumsq[c]);
}

void lm_group_norm_stats(const float *x, int C, int64_t n, int64_t ld, double *sum, double *sumsq)
{
    double t0 = lm_prof_t0();
    gn_job j = { x, NULL, NULL, NULL, 0, 1, 0, n, ld, sum, sumsq, NULL, NULL };
    lm_parallel(C, (int64_t)C * n >= PAR_MIN ? lm_par_threads() : 1, gn_stats_ch, &j);
    lm_prof_end(LM_PROF_GNORM, t0);
}

void lm_group_norm_moments(const double *sum, const double *sumsq, int C, int groups, int64_t count,
                           float eps, double *mean, double *rstd)
{
    const int cpg = C / groups;
    for (int g = 0; g < groups; g++) {
        double s = 0, q = 0;
        for (int cc = 0; cc < cpg; cc++) { s += sum[g * cpg + cc]; q += sumsq[g * cpg + cc]; }
        moments_tot(s, q, (double)count * cpg, eps, &mean[g], &rstd[g]);
    }
}

static void gn_apply_ch(void *p, int64_t c, int tid)
{
    (void)tid;
    const gn_job *j = p;
    int64_t g = c / j->cpg;
    apply1(j->x + (size_t)c * j->n, j->n, j->mean[g], j->rstd[g], j->gamma ? j->gamma[c] : 1.0f,
           j->beta ? j->beta[c] : 0.0f, j->silu, j->y + (size_t)c * j->n);
}

void lm_group_norm_apply(const float *x, int C, int64_t n, int groups, const double *mean, const double *rstd,
                         const float *gamma, const float *beta, int silu, float *y)
{
    double t0 = lm_prof_t0();
    gn_job j = { x, gamma, beta, y, 0, C / groups, silu, n, n, NULL, NULL, mean, rstd };
    lm_parallel(C, (int64_t)C * n >= PAR_MIN ? lm_par_threads() : 1, gn_apply_ch, &j);
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
