/* lm_verify_compare and lm_verify_sweep: rendering through the pipeline (pipeline.h) to
 * compare a baked model with base + LoRA applied at load, and to lay out a grid over
 * steps and λ. Thresholds: lcm-verify(1), COMPARE. */
#include "verify_impl.h"
#include "libmerge/png.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double lm_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        se += d * d;
    }
    if (se == 0 || n == 0) return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

void lm_compare_thresholds(lm_dtype dt, double amplification, double latent_scale, double *latent_tol, double *psnr_min)
{
    double u = lm_verify_unit_roundoff(dt);
    if (u == 0) u = lm_verify_unit_roundoff(LM_DT_F32);
    double rel = (amplification > 0 ? amplification : LM_COMPARE_AMPLIFICATION) * u;
    if (latent_tol) *latent_tol = rel * (latent_scale > 1 ? latent_scale : 1);
    if (psnr_min) {
        double p = 20.0 * log10(2.0 / rel);
        *psnr_min = p < 48.0 ? p : 48.0;
    }
}

/* The least precise float dtype among the file's tensors (F32 when none). */
static lm_dtype least_precise(const lm_source *s)
{
    lm_dtype best = LM_DT_F32;
    for (size_t i = 0; i < lm_source_count(s); i++) {
        lm_dtype d = lm_source_entry(s, i)->dtype;
        if (lm_dtype_is_float(d) && lm_verify_unit_roundoff(d) > lm_verify_unit_roundoff(best)) best = d;
    }
    return best;
}

static int open_opt(lm_source **s, const char *path, lm_err *err)
{
    *s = NULL;
    return path ? lm_source_open(s, path, NULL, err) : 0;
}

int lm_verify_compare(const char *baked, const char *base, const lm_lora *const *loras, const float *lambdas,
                      size_t n, const lm_verify_render *r, lm_compare_report *rep, lm_err *err)
{
    memset(rep, 0, sizeof *rep);
    double t0 = now();
    lm_source *bk = NULL, *bs = NULL, *vae = NULL, *te = NULL;
    lm_render_result a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int rc = lm_source_open(&bk, baked, NULL, err);
    if (!rc) rc = lm_source_open(&bs, base, NULL, err);
    if (!rc) rc = open_opt(&vae, r->vae, err);
    if (!rc) rc = open_opt(&te, r->text_encoder, err);
    if (rc) goto done;
    rep->dtype = least_precise(bk);
    lm_render_models mb = { bk, vae, te }, mr = { bs, vae, te };
    if ((rc = lm_render_sources(&mb, NULL, NULL, 0, &r->opts, &a, err))) { lm_err_file(err, baked); goto done; }
    if ((rc = lm_render_sources(&mr, loras, lambdas, n, &r->opts, &b, err))) { lm_err_file(err, base); goto done; }
    size_t nl = (size_t)4 * (size_t)a.latent_h * (size_t)a.latent_w, np = (size_t)a.width * (size_t)a.height * 3;
    double scale = 0;
    for (size_t i = 0; i < nl; i++) {
        double d = fabs((double)a.latent[i] - b.latent[i]);
        if (!(d <= rep->latent_max_abs)) rep->latent_max_abs = d;     /* NaN counts as a difference */
        if (fabs(b.latent[i]) > scale) scale = fabs(b.latent[i]);
    }
    rep->latent_scale = scale > 1 ? scale : 1;
    rep->psnr = lm_psnr_u8(a.rgb, b.rgb, np);
    lm_compare_thresholds(rep->dtype, r->amplification, rep->latent_scale, &rep->latent_tol, &rep->psnr_min);
    rep->ok = rep->latent_max_abs <= rep->latent_tol && rep->psnr >= rep->psnr_min;
    rep->width = a.width;
    rep->height = a.height;
    rep->rgb_baked = malloc(np);
    rep->rgb_runtime = malloc(np);
    if (!rep->rgb_baked || !rep->rgb_runtime) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    memcpy(rep->rgb_baked, a.rgb, np);
    memcpy(rep->rgb_runtime, b.rgb, np);
done:
    lm_render_result_free(&a);
    lm_render_result_free(&b);
    lm_source_close(bk);
    lm_source_close(bs);
    lm_source_close(vae);
    lm_source_close(te);
    rep->seconds = now() - t0;
    if (rc) lm_compare_report_free(rep);
    return rc;
}

void lm_compare_report_free(lm_compare_report *r)
{
    if (!r) return;
    free(r->rgb_baked);
    free(r->rgb_runtime);
    r->rgb_baked = r->rgb_runtime = NULL;
}

int lm_verify_sweep(const char *model, const lm_lora *const *loras, const float *lora_lambdas, size_t n,
                    const int *steps, size_t n_steps, const double *lambdas, size_t n_lambdas,
                    const lm_verify_render *r, uint8_t **rgb, int *w, int *h, lm_err *err)
{
    *rgb = NULL;
    if (!n_steps || !n_lambdas)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "no steps or no λ to sweep");
    lm_source *ms = NULL, *vae = NULL, *te = NULL;
    size_t cells = n_steps * n_lambdas;
    uint8_t **img = calloc(cells, sizeof *img);
    char **rl = calloc(n_steps, sizeof *rl), **cl = calloc(n_lambdas, sizeof *cl);
    float *lam = calloc(n ? n : 1, sizeof *lam);
    int rc = (img && rl && cl && lam) ? 0 : lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    if (!rc) rc = lm_source_open(&ms, model, NULL, err);
    if (!rc) rc = open_opt(&vae, r->vae, err);
    if (!rc) rc = open_opt(&te, r->text_encoder, err);
    int cw = 0, ch = 0;
    lm_render_models m = { ms, vae, te };
    for (size_t i = 0; !rc && i < n_steps; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%d STEP%s", steps[i], steps[i] == 1 ? "" : "S");
        if (!(rl[i] = strdup(buf))) rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        for (size_t j = 0; !rc && j < n_lambdas; j++) {
            if (i == 0) {
                snprintf(buf, sizeof buf, "λ=%g", lambdas[j]);
                if (!(cl[j] = strdup(buf))) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); break; }
            }
            for (size_t k = 0; k < n; k++) lam[k] = (float)(lambdas[j] * lora_lambdas[k]);
            lm_render_opts o = r->opts;
            o.steps = steps[i];
            lm_render_result res;
            /* λ = 0 renders the model alone (same numbers as every LoRA at 0) */
            rc = lm_render_sources(&m, lambdas[j] != 0 ? loras : NULL, lambdas[j] != 0 ? lam : NULL,
                                   lambdas[j] != 0 ? n : 0, &o, &res, err);
            if (rc) break;
            cw = res.width;
            ch = res.height;
            img[i * n_lambdas + j] = res.rgb;   /* keep the image, free the rest */
            res.rgb = NULL;
            lm_render_result_free(&res);
        }
    }
    if (!rc) rc = lm_png_grid((const uint8_t *const *)img, (int)n_steps, (int)n_lambdas, cw, ch,
                              (const char *const *)rl, (const char *const *)cl, rgb, w, h, err);
    for (size_t i = 0; img && i < cells; i++) free(img[i]);
    for (size_t i = 0; rl && i < n_steps; i++) free(rl[i]);
    for (size_t j = 0; cl && j < n_lambdas; j++) free(cl[j]);
    free(img); free(rl); free(cl); free(lam);
    lm_source_close(ms);
    lm_source_close(vae);
    lm_source_close(te);
    return rc;
}
