/* End-to-end text to image against fixtures/golden/sd15/lcm_pipeline.safetensors
 * (diffusers StableDiffusionPipeline + LCMScheduler, tiny random UNet and VAE,
 * given prompt embeddings, initial latents and per-step noise). README
 * acceptance: final latents within 1e-3 absolute, uint8 images at most a
 * few values off by 1. Also the text path with the tiny CLIP encoder. */
#include <stdint.h>

#include <unistd.h>

#include "libmerge/pipeline.h"
#include "support/data_sha256.h"
#include "libmerge/source.h"
#include "libmerge/writer.h"
#include "test.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() RUNNING_ON_VALGRIND
#else
#define UNDER_VALGRIND() 0
#endif

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

/* ---- LoRA at load == baked weights ---- */

#define LORA_UNET "lora_unet_down_blocks_0_attentions_0_proj_in"
#define LORA_TE "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
#define W_UNET "model.diffusion_model.input_blocks.1.1.proj_in.weight"
#define W_TE "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"

typedef struct { const char *name; lm_dtype dt; int ndim; int64_t shape[4]; const void *data; size_t nbytes; } wt;

static int write_st(const char *path, const wt *t, size_t n, lm_err *e)
{
    lm_wtensor *w = calloc(n, sizeof *w);
    for (size_t i = 0; i < n; i++) {
        w[i].name = t[i].name;
        w[i].dtype = t[i].dt;
        w[i].ndim = t[i].ndim;
        memcpy(w[i].shape, t[i].shape, sizeof t[i].shape);
    }
    lm_writer *wr = NULL;
    int rc = lm_writer_open(&wr, path, w, n, NULL, 0, NULL, e);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t i = lm_writer_tensor_index(wr, k);
        rc = lm_writer_write(wr, t[i].data, t[i].nbytes, e);
    }
    if (!rc) rc = lm_writer_commit(wr, e);
    else lm_writer_abort(wr);
    free(w);
    return rc;
}

/* One single-file checkpoint from the tiny UNet, text encoder and VAE (LDM
 * names, as a real SD1.5 file), with up to two tensors replaced by
 * W + scale·up·down in F32 (a bake; down == NULL: unchanged). */
typedef struct { const char *name; const float *down, *up; float scale; } bake_mod;

static int write_sources(const char *path, lm_source *const *srcs, int n_srcs, const bake_mod *mods, int n_mods,
                         int r, lm_err *e)
{
    size_t n = 0;
    for (int k = 0; k < n_srcs; k++) n += lm_source_count(srcs[k]);
    wt *t = calloc(n, sizeof *t);
    float *owned[2] = { 0 };
    size_t q = 0;
    for (int k = 0; k < n_srcs; k++)
        for (size_t i = 0; i < lm_source_count(srcs[k]); i++, q++) {
            const lm_entry *en = lm_source_entry(srcs[k], i);
            t[q] = (wt){ en->name, en->dtype, en->ndim, { 0 }, lm_source_raw(srcs[k], i), en->nbytes };
            memcpy(t[q].shape, en->shape, sizeof t[q].shape);
            for (int m = 0; m < n_mods; m++) {
                if (!mods[m].down || strcmp(en->name, mods[m].name)) continue;
                const int out = (int)en->shape[0], in = (int)(en->numel / out);
                float *W = owned[m] = malloc((size_t)en->numel * sizeof *W);
                lm_source_read_f32(srcs[k], i, W, e);
                for (int o = 0; o < out; o++)
                    for (int c = 0; c < in; c++) {
                        float d = 0;
                        for (int j = 0; j < r; j++) d += mods[m].up[o * r + j] * mods[m].down[j * in + c];
                        W[o * in + c] += mods[m].scale * d;
                    }
                t[q].dt = LM_DT_F32;
                t[q].data = W;
                t[q].nbytes = (size_t)en->numel * sizeof(float);
            }
        }
    int rc = write_st(path, t, n, e);
    free(owned[0]);
    free(owned[1]);
    free(t);
    return rc;
}

static int write_checkpoint(const char *path, const bake_mod *mods, int n_mods, int r, lm_err *e)
{
    lm_source *srcs[3] = { g_unet, g_clip, g_vae };
    return write_sources(path, srcs, 3, mods, n_mods, r, e);
}

static void test_pipeline_lora_equals_baked(void)
{
    CHECK(g_unet && g_vae && g_clip);
    enum { R = 4, C = 32 };
    float ud[R * C], uu[C * R], td[R * C], tu[C * R], ua = 2.0f, ta = 4.0f;
    uint32_t x = 99;
    for (int i = 0; i < R * C; i++) {
        x = x * 1664525u + 1013904223u; ud[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.4f;
        x = x * 1664525u + 1013904223u; uu[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.4f;
        x = x * 1664525u + 1013904223u; td[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.4f;
        x = x * 1664525u + 1013904223u; tu[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.4f;
    }
    wt lt[6] = {
        { LORA_UNET ".lora_down.weight", LM_DT_F32, 4, { R, C, 1, 1 }, ud, sizeof ud },
        { LORA_UNET ".lora_up.weight", LM_DT_F32, 4, { C, R, 1, 1 }, uu, sizeof uu },
        { LORA_UNET ".alpha", LM_DT_F32, 0, { 0 }, &ua, sizeof ua },
        { LORA_TE ".lora_down.weight", LM_DT_F32, 2, { R, C }, td, sizeof td },
        { LORA_TE ".lora_up.weight", LM_DT_F32, 2, { C, R }, tu, sizeof tu },
        { LORA_TE ".alpha", LM_DT_F32, 0, { 0 }, &ta, sizeof ta },
    };
    const float lambda = 0.75f;
    char lp[] = "/tmp/lm_test_lora_XXXXXX", cp[] = "/tmp/lm_test_ckpt_XXXXXX", bp[] = "/tmp/lm_test_baked_XXXXXX";
    close(mkstemp(lp)); close(mkstemp(cp)); close(mkstemp(bp));
    lm_err e;
    bake_mod none[1] = { { NULL, NULL, NULL, 0 } };
    bake_mod mods[2] = { { W_UNET, ud, uu, lambda * ua / R }, { W_TE, td, tu, lambda * ta / R } };
    int rc = write_st(lp, lt, 6, &e);
    if (!rc) rc = write_checkpoint(cp, none, 1, R, &e);
    if (!rc) rc = write_checkpoint(bp, mods, 2, R, &e);
    lm_lora *lora = NULL;
    lm_source *ck = NULL, *bk = NULL;
    if (!rc) rc = lm_lora_open(&lora, lp, NULL, &e);
    if (!rc) rc = lm_source_open(&ck, cp, NULL, &e);
    if (!rc) rc = lm_source_open(&bk, bp, NULL, &e);
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.prompt = "a photo of a cat";
    o.vocab = FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz");
    o.steps = 2;
    o.width = o.height = 64;
    o.seed = 5;
    lm_render_result a = { 0 }, b = { 0 }, c = { 0 };
    lm_render_models m = { ck, NULL, NULL }, mb = { bk, NULL, NULL };
    const lm_lora *ls[1] = { lora };
    if (!rc) rc = lm_render_sources(&m, ls, &lambda, 1, &o, &a, &e);
    if (!rc) rc = lm_render_sources(&mb, NULL, NULL, 0, &o, &b, &e);
    if (!rc) rc = lm_render_sources(&m, NULL, NULL, 0, &o, &c, &e);
    double d_ctx = 0, d_lat = 0, eff = 0;
    if (!rc) {
        for (int i = 0; i < 77 * C; i++) { double d = fabs((double)a.context[i] - b.context[i]); if (!(d <= d_ctx)) d_ctx = d; }
        for (int i = 0; i < 256; i++) {
            double d = fabs((double)a.latent[i] - b.latent[i]), f = fabs((double)a.latent[i] - c.latent[i]);
            if (!(d <= d_lat)) d_lat = d;
            if (f > eff) eff = f;
        }
    }
    lm_render_result_free(&a); lm_render_result_free(&b); lm_render_result_free(&c);
    lm_lora_close(lora);
    lm_source_close(ck); lm_source_close(bk);
    unlink(lp); unlink(cp); unlink(bp);
    CHECK_OK(rc, &e);
    printf("# LoRA at load vs baked: context %.3g, latents %.3g (LoRA effect %.3g)\n", d_ctx, d_lat, eff);
    CHECK_MSG(d_ctx <= 1e-5, "context differs by %.3g", d_ctx);
    CHECK_MSG(d_lat <= 1e-3, "latents differ by %.3g", d_lat);
    CHECK_MSG(eff > 1e-2, "the LoRA changed nothing (%.3g)", eff);
}

/* A UNet-only LoRA over separate UNet / text encoder / VAE files: the bare
 * tiny CLIP file has no architecture the key map can detect, and it needs
 * none since no module targets it (was: "cannot map LoRA names"). The result
 * equals the same parts with that module baked into the UNet file. A LoRA that
 * does have text-encoder modules still fails there, clearly. */
static void test_pipeline_unet_lora_separate_text_encoder(void)
{
    CHECK(g_unet && g_vae && g_clip);
    enum { R = 4, C = 32 };
    float ud[R * C], uu[C * R], td[R * C], tu[C * R], ua = 2.0f;
    uint32_t x = 7;
    for (int i = 0; i < R * C; i++) {
        x = x * 1664525u + 1013904223u; ud[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.4f;
        x = x * 1664525u + 1013904223u; uu[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.4f;
        td[i] = ud[i];
        tu[i] = uu[i];
    }
    wt lt[6] = {
        { LORA_UNET ".lora_down.weight", LM_DT_F32, 4, { R, C, 1, 1 }, ud, sizeof ud },
        { LORA_UNET ".lora_up.weight", LM_DT_F32, 4, { C, R, 1, 1 }, uu, sizeof uu },
        { LORA_UNET ".alpha", LM_DT_F32, 0, { 0 }, &ua, sizeof ua },
        { LORA_TE ".lora_down.weight", LM_DT_F32, 2, { R, C }, td, sizeof td },
        { LORA_TE ".lora_up.weight", LM_DT_F32, 2, { C, R }, tu, sizeof tu },
        { LORA_TE ".alpha", LM_DT_F32, 0, { 0 }, &ua, sizeof ua },
    };
    const float lambda = 0.5f;
    char lp[] = "/tmp/lm_test_ulora_XXXXXX", tp[] = "/tmp/lm_test_tlora_XXXXXX", bp[] = "/tmp/lm_test_ubaked_XXXXXX";
    close(mkstemp(lp)); close(mkstemp(tp)); close(mkstemp(bp));
    lm_err e, e2;
    bake_mod mods[1] = { { W_UNET, ud, uu, lambda * ua / R } };
    int rc = write_st(lp, lt, 3, &e);
    if (!rc) rc = write_st(tp, lt, 6, &e);
    lm_source *unet_only[1] = { g_unet };
    if (!rc) rc = write_sources(bp, unet_only, 1, mods, 1, R, &e);
    lm_lora *ul = NULL, *tl = NULL;
    lm_source *bk = NULL;
    if (!rc) rc = lm_lora_open(&ul, lp, NULL, &e);
    if (!rc) rc = lm_lora_open(&tl, tp, NULL, &e);
    if (!rc) rc = lm_source_open(&bk, bp, NULL, &e);
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.prompt = "a photo of a cat";
    o.vocab = FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz");
    o.steps = 1;
    o.width = o.height = 64;
    o.seed = 11;
    lm_render_result a = { 0 }, b = { 0 }, c = { 0 }, t = { 0 };
    lm_render_models parts = { g_unet, g_vae, g_clip }, baked = { bk, g_vae, g_clip };
    const lm_lora *uls[1] = { ul }, *tls[1] = { tl };
    if (!rc) rc = lm_render_sources(&parts, uls, &lambda, 1, &o, &a, &e);
    if (!rc) rc = lm_render_sources(&baked, NULL, NULL, 0, &o, &b, &e);
    if (!rc) rc = lm_render_sources(&parts, NULL, NULL, 0, &o, &c, &e);
    int te_rc = rc ? 0 : lm_render_sources(&parts, tls, &lambda, 1, &o, &t, &e2);
    double d_ctx = 0, d_lat = 0, eff = 0;
    if (!rc) {
        for (int i = 0; i < 77 * C; i++) { double d = fabs((double)a.context[i] - b.context[i]); if (!(d <= d_ctx)) d_ctx = d; }
        for (int i = 0; i < 256; i++) {
            double d = fabs((double)a.latent[i] - b.latent[i]), f = fabs((double)a.latent[i] - c.latent[i]);
            if (!(d <= d_lat)) d_lat = d;
            if (f > eff) eff = f;
        }
    }
    lm_render_result_free(&a); lm_render_result_free(&b); lm_render_result_free(&c);
    if (!te_rc) lm_render_result_free(&t);
    lm_lora_close(ul); lm_lora_close(tl);
    lm_source_close(bk);
    unlink(lp); unlink(tp); unlink(bp);
    CHECK_OK(rc, &e);
    CHECK_MSG(d_ctx <= 1e-5, "context differs by %.3g", d_ctx);
    CHECK_MSG(d_lat <= 1e-3, "latents differ from the baked checkpoint's by %.3g", d_lat);
    CHECK_MSG(eff > 1e-2, "the LoRA changed nothing (%.3g)", eff);
    CHECK_EQ_INT(te_rc, LM_EUNSUPPORTED);
    CHECK_MSG(te_rc && strstr(e2.msg, "cannot map LoRA names") && strstr(e2.msg, "architecture unknown"),
              "text-encoder LoRA over a bare CLIP file: '%s'", te_rc ? e2.msg : "");
}

/* lm_render_infotext: A1111's parameters with the model's AutoV2 hash and each LoRA's
 * addnet hash (SHA-256 of the data area: computed here independently) and names. */
static void test_pipeline_infotext_hashes(void)
{
    const char *model = FIXTURE("golden/sd15/unet_ldm.safetensors"), *lora = FIXTURE("bake/lora_a_kohya.safetensors");
    char mhex[65], lhex[65], want[256];
    CHECK(t_sha256_from(model, 0, mhex) == 0);
    FILE *f = fopen(lora, "rb");
    unsigned char le[8] = { 0 };
    CHECK(f && fread(le, 1, 8, f) == 8);
    if (f) fclose(f);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | le[i];
    CHECK(t_sha256_from(lora, 8 + n, lhex) == 0);
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    o.prompt = "a cat";
    o.seed = 7;
    o.width = o.height = 64;
    const char *paths[1] = { lora };
    float lam[1] = { 0.75f };
    char *txt = NULL;
    lm_err err;
    lm_err_clear(&err);
    CHECK_OK(lm_render_infotext(model, paths, lam, 1, &o, 1, &txt, &err), &err);
    if (!txt) return;
    snprintf(want, sizeof want, "Model hash: %.10s, Model: unet_ldm", mhex);
    CHECK_MSG(strstr(txt, want) != NULL, "no '%s' in: %s", want, txt);
    snprintf(want, sizeof want, "Lora hashes: \"lora_a_kohya: %.12s\"", lhex);
    CHECK_MSG(strstr(txt, want) != NULL, "no '%s' in: %s", want, txt);
    CHECK_MSG(strncmp(txt, "a cat <lora:lora_a_kohya:0.75>\n", 31) == 0, "prompt line: %s", txt);
    free(txt);
    CHECK_OK(lm_render_infotext(model, paths, lam, 1, &o, 0, &txt, &err), &err);   /* --no-hash */
    CHECK(txt && !strstr(txt, "Model hash") && !strstr(txt, "Lora hashes"));
    free(txt);
    CHECK_EQ_INT(lm_render_infotext("/nonexistent/m.safetensors", NULL, NULL, 0, &o, 1, &txt, &err), LM_EIO);
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
    if (!UNDER_VALGRIND()) RUN(test_pipeline_golden_4_steps);   /* minutes under valgrind */
    RUN(test_pipeline_golden_1_step);
    if (!UNDER_VALGRIND()) RUN(test_pipeline_golden_8_steps_diffusers);   /* minutes under valgrind */
    if (!UNDER_VALGRIND()) RUN(test_pipeline_guidance_identity);   /* minutes under valgrind */
    RUN(test_pipeline_text_to_image);
    if (!UNDER_VALGRIND()) RUN(test_pipeline_lora_equals_baked);   /* minutes under valgrind */
    RUN(test_pipeline_unet_lora_separate_text_encoder);
    RUN(test_pipeline_errors);
    RUN(test_pipeline_infotext_hashes);
    lm_source_close(g_gold);
    lm_source_close(g_unet);
    lm_source_close(g_vae);
    lm_source_close(g_clip);
    TEST_EXIT();
}
