/* The LCM denoising loop (see lm_lcm_sample in include/libmerge/pipeline.h):
 * UNet ε, classifier-free guidance, LCM step, noise from the caller or the
 * seeded generator, in the order diffusers' LCM pipeline runs them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "libmerge/pipeline.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int lm_lcm_sample(const lm_lcm_sample_args *a, float *x, lm_err *err)
{
    if (!a || !a->unet || !a->sched || a->N < 1 || a->N > 64 || a->C < 1 || a->h < 1 || a->w < 1 ||
        !a->context || a->ctx_len < 1)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "LCM sampling: bad batch, latent or context sizes");
    const int cfg = a->guidance > 1.0f, K = a->sched->n_steps;
    if (cfg && (!a->uncond || a->unc_len < 1))
        return lm_err_set(err, LM_EUSAGE, NULL, "uncond_context", LM_ERR_NO_OFFSET, "guidance > 1 needs the unconditional context");
    const size_t n = (size_t)a->N * a->C * a->h * a->w;
    float *eps = malloc(n * sizeof *eps), *eps_c = cfg ? malloc(n * sizeof *eps_c) : NULL, *drawn = malloc(n * sizeof *drawn);
    int rc = 0;
    if (!eps || !drawn || (cfg && !eps_c)) rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    float t[64];
    for (int i = 0; i < K && !rc; i++) {
        double t0 = now();
        for (int b = 0; b < a->N; b++) t[b] = (float)a->sched->timesteps[i];
        if (cfg) {
            rc = lm_unet_forward(a->unet, x, a->N, a->h, a->w, t, a->uncond, a->unc_len, NULL, eps, err);
            if (!rc) rc = lm_unet_forward(a->unet, x, a->N, a->h, a->w, t, a->context, a->ctx_len, NULL, eps_c, err);
            if (!rc) lm_cfg_combine(eps, eps_c, a->guidance, n);
        } else {
            rc = lm_unet_forward(a->unet, x, a->N, a->h, a->w, t, a->context, a->ctx_len, NULL, eps, err);
        }
        const float *nz = NULL;
        if (!rc && i < K - 1) {
            if (a->noise && a->noise[i]) {
                nz = a->noise[i];
            } else if (a->rng) {
                lm_rng_randn(a->rng, drawn, n);   /* randn(latent shape, generator) */
                nz = drawn;
            } else {
                rc = lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "step %d: no noise given and no generator", i + 1);
            }
        }
        if (!rc) rc = lm_lcm_step(a->sched, i, x, eps, nz, n, a->denoised ? a->denoised[i] : NULL, x, err);
        if (!rc && a->progress) a->progress(a->progress_ctx, "step", i + 1, K, now() - t0);
    }
    free(eps);
    free(eps_c);
    free(drawn);
    return rc;
}
