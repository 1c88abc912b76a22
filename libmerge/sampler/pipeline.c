/* Text to image: tokenizer → CLIP → LCM loop on the UNet → VAE decode.
 * See include/libmerge/pipeline.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "libmerge/clip.h"
#include "libmerge/hash.h"
#include "libmerge/merge.h"
#include "libmerge/pipeline.h"
#include "libmerge/png.h"
#include "libmerge/rng.h"
#include "libmerge/scheduler.h"
#include "libmerge/unet.h"
#include "libmerge/vae.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int oom(lm_err *err) { return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); }

void lm_render_result_free(lm_render_result *r)
{
    if (!r) return;
    free(r->context);
    free(r->latent);
    free(r->image);
    free(r->rgb);
    memset(r, 0, sizeof *r);
}

/* Prompt (and, with guidance, negative prompt) embeddings [77, C] each. */
static int encode_text(const lm_source *src, const lm_lora *const *loras, const float *lambdas, size_t n_loras,
                       const lm_render_opts *o, int cfg, lm_render_result *out, float **uncond, lm_err *err)
{
    char vocab[4096];
    int rc = 0;
    if (o->vocab) snprintf(vocab, sizeof vocab, "%s", o->vocab);
    else if ((rc = lm_tokenizer_default_vocab(vocab, sizeof vocab, err))) return rc;
    lm_tokenizer *tok = NULL;
    lm_clip *clip = NULL;
    int32_t neg_ids[LM_CLIP_CTX];
    if ((rc = lm_tokenizer_open(&tok, vocab, err))) return rc;
    rc = lm_tokenizer_encode(tok, o->prompt ? o->prompt : "", LM_CLIP_PAD_SD15, out->ids, NULL, err);
    if (!rc && cfg) rc = lm_tokenizer_encode(tok, o->negative_prompt ? o->negative_prompt : "", LM_CLIP_PAD_SD15, neg_ids, NULL, err);
    lm_tokenizer_free(tok);
    if (!rc) rc = lm_clip_load_source(&clip, src, loras, lambdas, n_loras, err);
    if (rc) return rc;
    const int C = lm_clip_config_of(clip)->hidden;
    out->context_dim = C;
    out->context = malloc((size_t)LM_CLIP_CTX * C * sizeof(float));
    if (cfg) *uncond = malloc((size_t)LM_CLIP_CTX * C * sizeof(float));
    if (!out->context || (cfg && !*uncond)) rc = oom(err);
    if (!rc) rc = lm_clip_encode(clip, out->ids, LM_CLIP_CTX, o->clip_skip, 1, out->context, err);
    if (!rc && cfg) rc = lm_clip_encode(clip, neg_ids, LM_CLIP_CTX, o->clip_skip, 1, *uncond, err);
    lm_clip_free(clip);
    return rc;
}

/* The UNet part: loads it, draws (or takes) x_T into out->latent and runs
 * the LCM loop (lm_lcm_sample); out->latent holds the final latents. */
static int sample(const lm_source *src, const lm_lora *const *loras, const float *lambdas, size_t n_loras,
                  const lm_render_opts *o, int cfg, const float *uncond, lm_render_result *out, lm_err *err)
{
    lm_lcm s;
    lm_lcm_init(&s);
    int rc = lm_lcm_set_timesteps(&s, o->steps, o->original_steps, 1.0, err);
    if (rc) return rc;
    lm_unet *u = NULL;
    if ((rc = lm_unet_load(&u, src, NULL, loras, lambdas, n_loras, err))) return rc;
    const lm_unet_config *uc = lm_unet_config_of(u);
    if (out->context_dim < 0) {
        /* embeddings were given: they have the UNet's width */
        out->context_dim = uc->context_dim;
        out->context = malloc((size_t)LM_CLIP_CTX * uc->context_dim * sizeof(float));
        if (!out->context) { lm_unet_free(u); return oom(err); }
        memcpy(out->context, o->context, (size_t)LM_CLIP_CTX * uc->context_dim * sizeof(float));
    }
    if (uc->context_dim != out->context_dim) {
        lm_unet_free(u);
        return lm_err_set(err, LM_EMISMATCH, lm_source_path(src), "context", LM_ERR_NO_OFFSET,
                          "the text encoder gives width %d, the UNet takes %d", out->context_dim, uc->context_dim);
    }
    const int h = out->latent_h, w = out->latent_w;
    const size_t n = (size_t)4 * h * w;
    lm_rng *rng = o->init_latent && o->noise ? NULL : malloc(sizeof *rng);
    if (!(o->init_latent && o->noise) && !rng) { lm_unet_free(u); return oom(err); }
    /* diffusers: latents = randn(shape, generator) first, then each step's noise from the same generator */
    if (rng) lm_rng_seed(rng, o->seed);
    if (o->init_latent) memcpy(out->latent, o->init_latent, n * sizeof(float));
    else lm_rng_randn(rng, out->latent, n);
    lm_lcm_sample_args a = { u, &s, 1, 4, h, w, out->context, LM_CLIP_CTX, uncond, LM_CLIP_CTX,
                             cfg ? o->guidance : 1.0f, o->noise, rng, NULL, o->progress, o->progress_ctx };
    rc = lm_lcm_sample(&a, out->latent, err);
    free(rng);
    lm_unet_free(u);
    return rc;
}

static int decode(const lm_source *src, const lm_render_opts *o, lm_render_result *out, lm_err *err)
{
    lm_vae *v = NULL;
    int rc = lm_vae_load_source(&v, src, err);
    if (rc) return rc;
    const size_t HW = (size_t)out->width * out->height;
    out->image = malloc(3 * HW * sizeof(float));
    out->rgb = malloc(3 * HW);
    lm_vae_decode_opts vo = LM_VAE_DECODE_OPTS_INIT;
    vo.scaled = 1;
    vo.tile = o->vae_tile;
    if (!out->image || !out->rgb) rc = oom(err);
    if (!rc) rc = lm_vae_decode(v, out->latent, out->latent_h, out->latent_w, &vo, out->image, err);
    if (!rc) lm_vae_image_to_u8(out->image, out->height, out->width, out->rgb);
    lm_vae_free(v);
    return rc;
}

int lm_render_sources(const lm_render_models *models, const lm_lora *const *loras, const float *lambdas,
                      size_t n_loras, const lm_render_opts *opts, lm_render_result *out, lm_err *err)
{
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    if (opts) o = *opts;
    memset(out, 0, sizeof *out);
    if (o.width < 8 || o.height < 8 || o.width % 8 || o.height % 8 || o.width > 16384 || o.height > 16384)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "image size %dx%d: sides must be multiples of 8, 8 to 16384",
                          o.width, o.height);
    if (o.steps < 1 || o.clip_skip < 1)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "steps and clip skip must be at least 1");
    if (!models || !models->unet) return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "no model");
    const lm_source *te = models->text_encoder ? models->text_encoder : models->unet;
    const lm_source *vae = models->vae ? models->vae : models->unet;
    const int cfg = o.guidance > 1.0f;
    out->width = o.width;
    out->height = o.height;
    out->latent_h = o.height / 8;
    out->latent_w = o.width / 8;
    float *uncond = NULL;
    int rc = 0;
    double t0 = now();
    if (o.context) {
        if (cfg && !o.uncond_context)
            return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "guidance > 1 with given context needs uncond_context");
        /* the width is the UNet's; checked when it is loaded */
        out->context_dim = -1;
    } else {
        rc = encode_text(te, loras, lambdas, n_loras, &o, cfg, out, &uncond, err);
    }
    out->seconds_text = now() - t0;
    if (!rc && !o.context && o.progress) o.progress(o.progress_ctx, "text", 1, 1, out->seconds_text);
    out->latent = malloc((size_t)4 * out->latent_h * out->latent_w * sizeof(float));
    if (!rc && !out->latent) rc = oom(err);
    t0 = now();
    if (!rc) rc = sample(models->unet, loras, lambdas, n_loras, &o, cfg, o.context ? o.uncond_context : uncond, out, err);
    out->seconds_unet = now() - t0;
    free(uncond);
    t0 = now();
    if (!rc) rc = decode(vae, &o, out, err);
    out->seconds_vae = now() - t0;
    if (!rc && o.progress) o.progress(o.progress_ctx, "vae", 1, 1, out->seconds_vae);
    if (rc) lm_render_result_free(out);
    return rc;
}

int lm_render(const char *model_path, const char *const *lora_paths, const float *lambdas, size_t n_loras,
              const lm_render_opts *opts, lm_render_result *out, lm_err *err)
{
    lm_source *src = NULL;
    lm_lora **loras = calloc(n_loras ? n_loras : 1, sizeof *loras);
    memset(out, 0, sizeof *out);
    if (!loras) return oom(err);
    int rc = lm_source_open(&src, model_path, NULL, err);
    for (size_t i = 0; !rc && i < n_loras; i++) rc = lm_lora_open(&loras[i], lora_paths[i], NULL, err);
    if (!rc) {
        lm_render_models m = { src, NULL, NULL };
        rc = lm_render_sources(&m, (const lm_lora *const *)loras, lambdas, n_loras, opts, out, err);
    }
    for (size_t i = 0; i < n_loras; i++) lm_lora_close(loras[i]);
    free(loras);
    lm_source_close(src);
    return rc;
}

/* "dir/name.safetensors" -> "name" */
static void stem(const char *path, char *out, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, n, "%s", b);
    char *dot = strrchr(out, '.');
    if (dot && dot != out) *dot = 0;
}

int lm_render_infotext(const char *model_path, const char *const *lora_paths, const float *lambdas,
                       size_t n_loras, const lm_render_opts *o, int hash, char **out, lm_err *err)
{
    *out = NULL;
    lm_render_opts d = LM_RENDER_OPTS_INIT;
    if (!o) o = &d;
    char (*lname)[256] = calloc(n_loras ? n_loras : 1, sizeof *lname);
    char (*lhash)[16] = calloc(n_loras ? n_loras : 1, sizeof *lhash);
    const char **lnp = calloc(n_loras ? n_loras : 1, sizeof *lnp), **lhp = calloc(n_loras ? n_loras : 1, sizeof *lhp);
    int rc = lname && lhash && lnp && lhp ? 0 : oom(err);
    lm_file_hashes mh;
    memset(&mh, 0, sizeof mh);
    if (!rc && hash) rc = lm_hash_file(model_path, LM_HASH_SHA256, &mh, err);
    for (size_t i = 0; i < n_loras && !rc; i++) {
        lm_file_hashes lh;
        memset(&lh, 0, sizeof lh);
        stem(lora_paths[i], lname[i], sizeof lname[i]);
        lnp[i] = lname[i];
        if (hash) rc = lm_hash_file(lora_paths[i], LM_HASH_ADDNET, &lh, err);
        if (!rc && (lh.have & LM_HASH_ADDNET)) snprintf(lhash[i], sizeof lhash[i], "%s", lh.addnet_short);
        lhp[i] = lhash[i];
    }
    char mname[256];
    stem(model_path, mname, sizeof mname);
    if (!rc) {
        lm_gen_params gp = { o->prompt, o->negative_prompt, o->steps, "LCM", o->guidance, o->seed, o->width, o->height,
                             hash ? mh.autov2 : NULL, mname, o->clip_skip, n_loras, lnp, lambdas, lhp,
                             "libmerge " LM_TOOL_VERSION };
        if (!(*out = lm_png_a1111_parameters(&gp))) rc = oom(err);
    }
    free(lname);
    free(lhash);
    free(lnp);
    free(lhp);
    return rc;
}
