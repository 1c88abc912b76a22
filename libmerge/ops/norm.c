/* GroupNorm and LayerNorm, statistics accumulated in double. */
#include <math.h>

#include "libmerge/ops.h"
#include "ops/vmath.h"
#include "ops/prof.h"

void lm_group_norm(const float *x, int C, int64_t HW, int groups, const float *gamma,
                   const float *beta, float eps, int silu, float *y)
{
    double t0 = lm_prof_t0();
    int cpg = C / groups;
    for (int g = 0; g < groups; g++) {
        const float *xg = x + (size_t)g * cpg * HW;
        size_t n = (size_t)cpg * HW;
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += xg[i];
        double mean = s / (double)n;
        double v = 0.0;
        for (size_t i = 0; i < n; i++) { double d = xg[i] - mean; v += d * d; }
        double rstd = 1.0 / sqrt(v / (double)n + (double)eps);
        for (int cc = 0; cc < cpg; cc++) {
            int c = g * cpg + cc;
            float a = (float)(rstd * (gamma ? gamma[c] : 1.0f));
            float bb = (float)((beta ? beta[c] : 0.0f) - mean * rstd * (gamma ? gamma[c] : 1.0f));
            const float *xc = x + (size_t)c * HW;
            float *yc = y + (size_t)c * HW;
            for (int64_t i = 0; i < HW; i++) yc[i] = xc[i] * a + bb;
            if (silu) lm_vsilu(yc, (size_t)HW, 1.0f);
        }
    }
    lm_prof_end(LM_PROF_GNORM, t0);
}

void lm_layer_norm(const float *x, int64_t T, int C, const float *gamma, const float *beta,
                   float eps, float *y)
{
    double t0 = lm_prof_t0();
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * C;
        float *yr = y + t * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += xr[c];
        double mean = s / C;
        double v = 0.0;
        for (int c = 0; c < C; c++) { double d = xr[c] - mean; v += d * d; }
        double rstd = 1.0 / sqrt(v / C + (double)eps);
        for (int c = 0; c < C; c++) {
            float n = (float)((xr[c] - mean) * rstd);
            yr[c] = n * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
        }
    }
    lm_prof_end(LM_PROF_LNORM, t0);
}
