/* End-to-end text to image against fixtures/golden/sd15/lcm_pipeline.safetensors
 * (diffusers StableDiffusionPipeline + LCMScheduler, tiny random UNet and VAE,
 * given prompt embeddings, initial latents and per-step noise). README
 * acceptance: final latents within 1e-3 absolute, uint8 images at most a
 * few values off by 1. Also the text path with the tiny CLIP encoder. */
#include <stdint.h>

#include "libmerge/pipeline.h"
#include "libmerge/source.h"
#include "test.h"

static lm_source *g_gold, *g_unet, *g_vae, *g_clip;

static float *rd(lm_source *s, const char *name, int64_t numel)
{
    lm_err e;
    int64_t i = lm_source_find(s, name);
    if (i < 0 || lm_source_entry(s, (size_t)i)->numel != numel) return NULL;
    float *b = malloc((size_t)numel * sizeof *b);
    if (b && lm_source_read_f32(s, (size_t)i, b, &e)) { free(b); b = NULL; }
    return b;
}

static void run_golden(int steps, lm_source *unet, lm_source *vae)
{
    char n[64];
    float *ctx = rd(g_gold, "prompt_embeds", 77 * 32), *init = rd(g_gold, "init_latents", 256);
    float *noise[8] = { 0 };
    int ok = ctx && init;
    for (int i = 0; i < steps - 1 && ok; i++) {
        snprintf(n, sizeof n, "s%d.step%d.noise", steps, i);
        ok = (noise[i] = rd(g_gold, n, 256)) != NULL;
    }
    snprintf(n, sizeof n, "s%d.final_latents", steps);
    float *want = ok ? rd(g_gold, n, 256) : NULL;
    uint8_t want_rgb[64 * 64 * 3];
    snprintf(n, sizeof n, "s%d.image_uint8", steps);
    int64_t ii = lm_source_find(g_gold, n);
    lm_err e;
    ok = ok && want && ii >= 0 && lm_source_read(g_gold, (size_t)ii, want_rgb, &e) == 0;
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.steps = steps;
    o.width = o.height = 64;
    o.context = ctx;
    o.init_latent = init;
    o.noise = (const float *const *)noise;
    lm_render_models m = { unet, vae, NULL };
    lm_render_result r;
    int rc = ok ? lm_render_sources(&m, NULL, NULL, 0, &o, &r, &e) : -1;
    double dl = INFINITY;
    int off = -1, worst = 256;
    if (!rc) {
        dl = 0;
        for (int i = 0; i < 256; i++) { double d = fabs((double)r.latent[i] - want[i]); if (!(d <= dl)) dl = d; }
        off = 0;
        worst = 0;
        for (int i = 0; i < 64 * 64 * 3; i++) {
            int d = abs((int)r.rgb[i] - (int)want_rgb[i]);
            off += d != 0;
            if (d > worst) worst = d;
        }
        lm_render_result_free(&r);
    }
    free(ctx); free(init); free(want);
    for (int i = 0; i < 8; i++) free(noise[i]);
    CHECK_MSG(ok, "golden tensors missing");
    CHECK_OK(rc, &e);
    printf("# %d steps: latents max |diff| %.3g, %d pixel values differ (max %d)\n", steps, dl, off, worst);
    CHECK_MSG(dl <= 1e-3, "final latents max |diff| %.3g > 1e-3", dl);
    CHECK_MSG(worst <= 1 && off <= 8, "uint8 image: %d values differ, max by %d", off, worst);
}

static void test_pipeline_golden_4_steps(void) { CHECK(g_gold && g_unet && g_vae); run_golden(4, g_unet, g_vae); }
static void test_pipeline_golden_1_step(void) { CHECK(g_gold && g_unet && g_vae); run_golden(1, g_unet, g_vae); }

static void test_pipeline_golden_8_steps_diffusers(void)
{
    lm_err e;
    lm_source *u = NULL, *v = NULL;
    CHECK(g_gold);
    CHECK_OK(lm_source_open(&u, FIXTURE("golden/sd15/unet_diffusers.safetensors"), NULL, &e), &e);
    if (lm_source_open(&v, FIXTURE("golden/sd15/vae_diffusers.safetensors"), NULL, &e)) { lm_source_close(u); CHECK(0); }
    run_golden(8, u, v);
    lm_source_close(u);
    lm_source_close(v);
}

/* Guidance with uncond == cond must give exactly the unguided result
 * (ε_u + g·(ε − ε_u) = ε_u when ε = ε_u). */
static void test_pipeline_guidance_identity(void)
{
    CHECK(g_gold && g_unet && g_vae);
    float *ctx = rd(g_gold, "prompt_embeds", 77 * 32);
    CHECK(ctx);
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.steps = 2;
    o.width = o.height = 64;
    o.seed = 7;
    o.context = ctx;
    lm_render_models m = { g_unet, g_vae, NULL };
    lm_render_result a, b;
    lm_err e;
    int r1 = lm_render_sources(&m, NULL, NULL, 0, &o, &a, &e);
    o.guidance = 3.0f;
    o.uncond_context = ctx;
    int r2 = r1 ? r1 : lm_render_sources(&m, NULL, NULL, 0, &o, &b, &e);
    free(ctx);
    CHECK_OK(r1 ? r1 : r2, &e);
    int same = !memcmp(a.latent, b.latent, 256 * sizeof(float));
    lm_render_result_free(&a);
    lm_render_result_free(&b);
    CHECK(same);
}

/* Prompt → tiny CLIP (width 32 = the tiny UNet's context) → UNet → VAE: the
 * context equals the CLIP golden, the seed decides the image. */
static void test_pipeline_text_to_image(void)
{
    CHECK(g_unet && g_vae && g_clip);
    lm_err e;
    lm_source *cg = NULL;
    CHECK_OK(lm_source_open(&cg, FIXTURE("golden/clip/clip_tiny_goldens.safetensors"), NULL, &e), &e);
    float *want = rd(cg, "last_hidden_state", 3 * 77 * 32);
    lm_source_close(cg);
    CHECK(want);
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.prompt = "a photo of a cat";
    o.vocab = FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz");
    o.steps = 2;
    o.width = o.height = 64;
    o.seed = 42;
    lm_render_models m = { g_unet, g_vae, g_clip };
    lm_render_result a, b, c;
    int rc = lm_render_sources(&m, NULL, NULL, 0, &o, &a, &e);
    if (rc) { free(want); CHECK_OK(rc, &e); }
    double d = 0;
    for (int i = 0; i < 77 * 32; i++) { double x = fabs((double)a.context[i] - want[i]); if (!(x <= d)) d = x; }
    free(want);
    int r2 = lm_render_sources(&m, NULL, NULL, 0, &o, &b, &e);
    o.seed = 43;
    int r3 = r2 ? r2 : lm_render_sources(&m, NULL, NULL, 0, &o, &c, &e);
    int ids_ok = a.ids[0] == 49406 && a.ids[5] == 2368 && a.ids[6] == 49407;
    int same = !r3 && !memcmp(a.rgb, b.rgb, 64 * 64 * 3);
    int differ = !r3 && memcmp(a.rgb, c.rgb, 64 * 64 * 3);
    lm_render_result_free(&a);
    if (!r2) lm_render_result_free(&b);
    if (!r3) lm_render_result_free(&c);
    CHECK_OK(r3, &e);
    CHECK(ids_ok);
    CHECK_MSG(d <= 1e-4, "context max |diff| %.3g", d);
    CHECK_MSG(same, "same seed, different image");
    CHECK_MSG(differ, "different seed, same image");
}

static void test_pipeline_errors(void)
{
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.width = 60;
    lm_render_models m = { g_unet, g_vae, g_clip };
    lm_render_result r;
    lm_err e;
    CHECK_EQ_INT(lm_render_sources(&m, NULL, NULL, 0, &o, &r, &e), LM_EUSAGE);
    o.width = 64;
    o.height = 64;
    o.prompt = "x";
    o.vocab = FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz");
    lm_render_models m2 = { g_unet, g_vae, g_vae };   /* no text encoder there */
    CHECK_EQ_INT(lm_render_sources(&m2, NULL, NULL, 0, &o, &r, &e), LM_EINPUT);
}

int main(void)
{
    lm_err e;
    if (lm_source_open(&g_gold, FIXTURE("golden/sd15/lcm_pipeline.safetensors"), NULL, &e)) g_gold = NULL;
    if (lm_source_open(&g_unet, FIXTURE("golden/sd15/unet_ldm.safetensors"), NULL, &e)) g_unet = NULL;
    if (lm_source_open(&g_vae, FIXTURE("golden/sd15/vae_ldm.safetensors"), NULL, &e)) g_vae = NULL;
    if (lm_source_open(&g_clip, FIXTURE("golden/clip/clip_tiny.safetensors"), NULL, &e)) g_clip = NULL;
    RUN(test_pipeline_golden_4_steps);
    RUN(test_pipeline_golden_1_step);
    RUN(test_pipeline_golden_8_steps_diffusers);
    RUN(test_pipeline_guidance_identity);
    RUN(test_pipeline_text_to_image);
    RUN(test_pipeline_errors);
    lm_source_close(g_gold);
    lm_source_close(g_unet);
    lm_source_close(g_vae);
    lm_source_close(g_clip);
    TEST_EXIT();
}
