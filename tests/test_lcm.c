/* LCM scheduler against diffusers' LCMScheduler goldens
 * (fixtures/golden/sd15/lcm.json, lcm_scheduler.safetensors,
 * lcm_pipeline.safetensors; see that folder's README.md). */
#include <cjson/cJSON.h>
#include "libmerge/rng.h"
#include "libmerge/scheduler.h"
#include "libmerge/source.h"
#include "test.h"

/* reads tensor `name` of src as fp32 into a new buffer (NULL if absent) */
static float *get(lm_source *src, const char *name, int64_t *numel)
{
    int64_t i = lm_source_find(src, name);
    if (i < 0) return NULL;
    const lm_entry *e = lm_source_entry(src, (size_t)i);
    float *p = malloc((size_t)e->numel * sizeof *p);
    if (lm_source_read_f32(src, (size_t)i, p, NULL)) { free(p); return NULL; }
    if (numel) *numel = e->numel;
    return p;
}

static void test_lcm_timesteps_golden(void)
{
    char *js = t_slurp(FIXTURE("golden/sd15/lcm.json"), NULL);
    CHECK(js);
    cJSON *root = cJSON_Parse(js), *ts = cJSON_GetObjectItem(root, "timesteps"), *it;
    CHECK(ts);
    int n_lists = 0;
    lm_lcm s; lm_err err;
    lm_lcm_init(&s);
    cJSON_ArrayForEach(it, ts) {
        int steps = atoi(it->string);
        CHECK_OK(lm_lcm_set_timesteps(&s, steps, 50, 1.0, &err), &err);
        CHECK_EQ_INT(s.n_steps, cJSON_GetArraySize(it));
        for (int i = 0; i < steps; i++)
            CHECK_EQ_INT(s.timesteps[i], cJSON_GetArrayItem(it, i)->valueint);
        n_lists++;
    }
    CHECK_EQ_INT(n_lists, 7);
    cJSON_Delete(root);
    free(js);
}

static void test_lcm_timesteps_rules(void)
{
    lm_lcm s; lm_err err;
    lm_lcm_init(&s);
    CHECK_EQ_INT(lm_lcm_set_timesteps(&s, 0, 50, 1.0, &err), LM_EUSAGE);
    CHECK_EQ_INT(lm_lcm_set_timesteps(&s, 51, 50, 1.0, &err), LM_EUSAGE);
    CHECK_EQ_INT(lm_lcm_set_timesteps(&s, 30, 50, 0.5, &err), LM_EUSAGE);  /* 25 < 30 */
    CHECK_OK(lm_lcm_set_timesteps(&s, 50, 50, 1.0, &err), &err);          /* the whole grid */
    CHECK_EQ_INT(s.timesteps[0], 999); CHECK_EQ_INT(s.timesteps[49], 19);
    CHECK_OK(lm_lcm_set_timesteps(&s, 4, 50, 0.5, &err), &err);           /* img2img grid 19..499 */
    CHECK_EQ_INT(s.timesteps[0], 499); CHECK_EQ_INT(s.timesteps[1], 379);
    CHECK_EQ_INT(s.timesteps[2], 259); CHECK_EQ_INT(s.timesteps[3], 139);
    CHECK_OK(lm_lcm_set_timesteps(&s, 2, 100, 1.0, &err), &err);          /* k = 10 */
    CHECK_EQ_INT(s.timesteps[0], 999); CHECK_EQ_INT(s.timesteps[1], 499);
}

/* tables bit-exact against the float32 tables diffusers computed */
static void test_lcm_tables_golden(void)
{
    lm_source *src = NULL; lm_err err;
    CHECK_OK(lm_source_open(&src, FIXTURE("golden/sd15/lcm_scheduler.safetensors"), NULL, &err), &err);
    float *betas = get(src, "betas", NULL), *ac = get(src, "alphas_cumprod", NULL);
    float *cs = get(src, "c_skip_by_timestep", NULL), *co = get(src, "c_out_by_timestep", NULL);
    lm_source_close(src);
    CHECK(betas && ac && cs && co);
    lm_lcm s;
    lm_lcm_init(&s);
    int bad_b = 0, bad_a = 0, bad_c = 0;
    double max_rel_a = 0;
    for (int t = 0; t < 1000; t++) {
        bad_b += s.betas[t] != betas[t];
        bad_a += s.alphas_cumprod[t] != ac[t];
        max_rel_a = fmax(max_rel_a, fabs(s.alphas_cumprod[t] - ac[t]) / ac[t]);
        float k, o;
        lm_lcm_scalings(&s, t, &k, &o);
        bad_c += (k != cs[t]) + (o != co[t]);
    }
    free(betas); free(ac); free(cs); free(co);
    CHECK_EQ_INT(bad_b, 0);
    CHECK_MSG(bad_a == 0, "%d alphas_cumprod differ, max rel %g", bad_a, max_rel_a);
    CHECK_EQ_INT(bad_c, 0);
}

/* every step of the 4- and 8-step traces, from the stored sample, model
 * output and noise: denoised and prev_sample bit-exact */
static void test_lcm_step_golden(void)
{
    lm_source *src = NULL; lm_err err;
    CHECK_OK(lm_source_open(&src, FIXTURE("golden/sd15/lcm_pipeline.safetensors"), NULL, &err), &err);
    lm_lcm s;
    lm_lcm_init(&s);
    static const int runs[] = { 1, 2, 4, 8 };
    double worst = 0; int checked = 0;
    for (int r = 0; r < 4; r++) {
        int n = runs[r];
        CHECK_OK(lm_lcm_set_timesteps(&s, n, 50, 1.0, &err), &err);
        for (int i = 0; i < n; i++) {
            char k[64]; int64_t numel = 0;
            snprintf(k, sizeof k, "s%d.step%d.sample", n, i);
            float *x = get(src, k, &numel);
            snprintf(k, sizeof k, "s%d.step%d.model_output", n, i);
            float *eps = get(src, k, NULL);
            snprintf(k, sizeof k, "s%d.step%d.noise", n, i);
            float *noise = get(src, k, NULL);
            snprintf(k, sizeof k, "s%d.step%d.denoised", n, i);
            float *den = get(src, k, NULL);
            snprintf(k, sizeof k, "s%d.step%d.prev_sample", n, i);
            float *prev = get(src, k, NULL);
            CHECK(x && eps && den && prev && (noise || i == n - 1));
            float *d = malloc((size_t)numel * sizeof *d), *xn = malloc((size_t)numel * sizeof *xn);
            CHECK_OK(lm_lcm_step(&s, i, x, eps, noise, (size_t)numel, d, xn, &err), &err);
            for (int64_t e = 0; e < numel; e++) {
                worst = fmax(worst, fabs(d[e] - den[e]) / fmax(1, fabs(den[e])));
                worst = fmax(worst, fabs(xn[e] - prev[e]) / fmax(1, fabs(prev[e])));
            }
            checked++;
            free(x); free(eps); free(noise); free(den); free(prev); free(d); free(xn);
        }
    }
    lm_source_close(src);
    CHECK_EQ_INT(checked, 15);
    CHECK_MSG(worst == 0, "worst relative difference %g (expected bit-exact)", worst);
}

static void test_lcm_step_errors(void)
{
    lm_lcm s; lm_err err;
    lm_lcm_init(&s);
    CHECK_OK(lm_lcm_set_timesteps(&s, 2, 50, 1.0, &err), &err);
    float x = 1, e = 0, o;
    CHECK_EQ_INT(lm_lcm_step(&s, 0, &x, &e, NULL, 1, NULL, &o, &err), LM_EUSAGE);
    CHECK_EQ_INT(lm_lcm_step(&s, 2, &x, &e, NULL, 1, NULL, &o, &err), LM_EUSAGE);
    CHECK_OK(lm_lcm_step(&s, 1, &x, &e, NULL, 1, NULL, &o, &err), &err);  /* last: no noise */
    /* ε = 0: x0 = x/√ᾱ_499 */
    CHECK_NEAR(o, 1.0 / sqrt(s.alphas_cumprod[499]), 1e-5);
    float u[2] = { 1, 2 }, c[2] = { 3, 0 };
    lm_cfg_combine(u, c, 1.5f, 2);
    CHECK_NEAR(u[0], 4, 0); CHECK_NEAR(u[1], -1, 0);
}

/* torch.randn with torch.Generator().manual_seed(s): the goldens' inputs */
static double randn_vs(const char *file, const char *key, uint64_t seed, int64_t *n_out)
{
    lm_source *src = NULL;
    if (lm_source_open(&src, file, NULL, NULL)) return 1e9;
    int64_t n = 0;
    float *ref = get(src, key, &n);
    lm_source_close(src);
    if (!ref) return 1e9;
    float *z = malloc((size_t)n * sizeof *z);
    lm_rng r;
    lm_rng_seed(&r, seed);
    lm_rng_randn(&r, z, (size_t)n);
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(z[i] - ref[i]));
    free(z); free(ref);
    *n_out = n;
    return m;
}

static void test_rng_torch_randn(void)
{
    lm_rng r;
    lm_rng_seed(&r, 5489);   /* MT19937 reference: first output for the default seed */
    CHECK_EQ_INT(lm_rng_u32(&r), 3499211612u);
    int64_t n = 0;
    /* [1,4,8,8]: 256 = 16 blocks of 16 */
    CHECK_NEAR(randn_vs(FIXTURE("golden/sd15/lcm_pipeline.safetensors"), "init_latents", 104, &n), 0, 1e-6);
    CHECK_EQ_INT(n, 256);
    CHECK_NEAR(randn_vs(FIXTURE("golden/sd15/unet_io.safetensors"), "x", 100, &n), 0, 1e-6);
    /* [1,77,32]: 2464 = 154 blocks of 16 */
    CHECK_NEAR(randn_vs(FIXTURE("golden/sd15/unet_io.safetensors"), "encoder_hidden_states", 101, &n), 0, 1e-6);
    CHECK_NEAR(randn_vs(FIXTURE("golden/sd15/vae_io.safetensors"), "z", 102, &n), 0, 1e-6);
    /* n % 16 != 0 and n < 16 paths: values printed by torch 1.13
     * (torch.randn(37, generator=torch.Generator().manual_seed(7))[[0, 36]],
     *  torch.randn(5, generator=...manual_seed(5))[[0, 4]]) */
    float z[37];
    lm_rng_seed(&r, 7);
    lm_rng_randn(&r, z, 37);
    CHECK_NEAR(z[0], -0.820134521, 1e-6); CHECK_NEAR(z[36], -0.100734316, 1e-6);
    lm_rng_seed(&r, 5);
    lm_rng_randn(&r, z, 5);
    CHECK_NEAR(z[0], -0.486780763, 1e-7); CHECK_NEAR(z[4], -0.197415099, 1e-7);
}

int main(void)
{
    RUN(test_rng_torch_randn);
    RUN(test_lcm_timesteps_golden);
    RUN(test_lcm_timesteps_rules);
    RUN(test_lcm_tables_golden);
    RUN(test_lcm_step_golden);
    RUN(test_lcm_step_errors);
    TEST_EXIT();
}
