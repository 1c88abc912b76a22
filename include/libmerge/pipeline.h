/* libmerge/pipeline.h — text to image with LCM on the CPU: the whole
 * StableDiffusionPipeline + LCMScheduler loop of the LCM-LoRA recipe
 * (Luo et al. 2023, arXiv:2311.05556), in the order diffusers 0.27 runs it:
 *
 *   ids      = CLIP tokenizer(prompt), 77 ids, pad 49407        (tokenizer.h)
 *   context  = CLIP text encoder(ids), clip skip, final LN      (clip.h)
 *   uncond   = the same for the negative prompt ("" if none), only when guidance > 1
 *   x        = randn([4, H/8, W/8]) from torch.Generator("cpu").manual_seed(seed)   (rng.h)
 *   for each of the K LCM timesteps t_i:                       (scheduler.h)
 *       ε = UNet(x, t_i, context)                               (unet.h)
 *       ε = ε_u + g·(ε − ε_u) with ε_u = UNet(x, t_i, uncond)   when g > 1
 *       x = LCM step(x, ε, noise_i = randn(x's shape) from the same generator)
 *   image    = VAE decode(x / 0.18215)                          (vae.h)
 *   rgb      = round(clamp(image/2 + 0.5, 0, 1)·255)
 *
 * LoRAs are applied at load (W + Σ λ·ΔW on the fp32 weights of the UNet and
 * the text encoder), never written. Components are loaded one at a time
 * and freed after use (text encoder, then UNet, then VAE), so peak memory is
 * the largest component plus activations. Reference: the end-to-end golden
 * fixtures/golden/sd15/lcm_pipeline.safetensors (latents within 1e-3, uint8
 * pixels within ±1).
 */
#ifndef LIBMERGE_PIPELINE_H
#define LIBMERGE_PIPELINE_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"
#include "libmerge/rng.h"
#include "libmerge/scheduler.h"
#include "libmerge/tokenizer.h"
#include "libmerge/unet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Progress: stage "text" (k = 1, K = 1), "step" (k = 1..K), "vae" (k = 1, K = 1),
 * called after each with the seconds it took. */
typedef void (*lm_render_progress)(void *ctx, const char *stage, int k, int K, double seconds);

typedef struct lm_render_opts {
    int version;                   /* LM_RENDER_OPTS_VERSION */
    const char *prompt;            /* UTF-8; NULL = "" */
    const char *negative_prompt;   /* NULL = "" (used only when guidance > 1) */
    uint64_t seed;
    int steps;                     /* K LCM steps, 1..original_steps (4) */
    int original_steps;            /* LCM distillation grid (50) */
    float guidance;                /* classifier-free guidance scale; <= 1: off (1) */
    int width, height;             /* image size in pixels, multiples of 8, 8..16384 (512) */
    int clip_skip;                 /* A1111 counting: 1 = last layer (1) */
    const char *vocab;             /* CLIP vocabulary path; NULL: lm_tokenizer_default_vocab */
    int vae_tile;                  /* lm_vae_decode_opts.tile: 0 automatic, < 0 never, > 0 band height in latent rows (exact banded decode) */
    lm_render_progress progress;   /* may be NULL */
    void *progress_ctx;
    /* Given inputs instead of computed ones (verification against goldens;
     * NULL = compute them). With context given no text encoder is loaded. */
    const float *context;          /* [77, context_dim] prompt embeddings */
    const float *uncond_context;   /* [77, context_dim], needed when guidance > 1 and context is given */
    const float *init_latent;      /* [4, H/8, W/8] */
    const float *const *noise;     /* steps-1 arrays [4, H/8, W/8]: the noise of steps 0..K-2 */
} lm_render_opts;
#define LM_RENDER_OPTS_VERSION 1
#define LM_RENDER_OPTS_INIT { LM_RENDER_OPTS_VERSION, NULL, NULL, 0, 4, 50, 1.0f, 512, 512, 1, NULL, 0, \
                              NULL, NULL, NULL, NULL, NULL, NULL }

/* Where the components come from: one checkpoint for all three, or separate
 * files (NULL = take it from unet). Not owned. */
typedef struct lm_render_models {
    const lm_source *unet;
    const lm_source *vae;
    const lm_source *text_encoder;
} lm_render_models;

typedef struct lm_render_result {
    int width, height;             /* image size */
    int latent_h, latent_w;        /* height/8, width/8 */
    int32_t ids[LM_CLIP_CTX];      /* prompt ids (all 0 when context was given) */
    float *context;                /* [77, context_dim] prompt embeddings used */
    int context_dim;
    float *latent;                 /* final latents [4, latent_h, latent_w] (before / 0.18215) */
    float *image;                  /* raw VAE decode [3, height, width], unclamped */
    uint8_t *rgb;                  /* [height, width, 3] post-processed */
    double seconds_text, seconds_unet, seconds_vae;
} lm_render_result;

/* Runs the pipeline with n_loras LoRAs (opened with lm_lora_open; not
 * owned) at weights lambdas[i] applied to the UNet and text encoder.
 * out is filled (free with lm_render_result_free; emptied on error).
 * Errors: LM_EUSAGE (bad options: size, steps, clip skip), LM_EINPUT
 * (missing component or tensor, named), LM_EMISMATCH (LoRA modules that
 * match nothing), LM_EIO (vocabulary not found), LM_ENOMEM. */
int lm_render_sources(const lm_render_models *models, const lm_lora *const *loras, const float *lambdas,
                      size_t n_loras, const lm_render_opts *opts, lm_render_result *out, lm_err *err);

/* Convenience: opens model_path (and each "PATH" in lora_paths) and calls
 * lm_render_sources. lora_paths/lambdas may be NULL when n_loras = 0. */
int lm_render(const char *model_path, const char *const *lora_paths, const float *lambdas, size_t n_loras,
              const lm_render_opts *opts, lm_render_result *out, lm_err *err);

/* Frees the buffers of r and empties it; safe on NULL and on an emptied result. */
void lm_render_result_free(lm_render_result *r);

/* A1111's "parameters" text (lm_png_a1111_parameters, png.h) for a render
 * of model_path with LoRAs lora_paths[i] at lambdas[i] and options o: names
 * are the files' base names without extension; with hash, the model's AutoV2
 * hash (SHA-256 of the whole file, first 10 hex digits) and each LoRA's
 * addnet hash (SHA-256 of its data area, first 12: A1111's "Lora hashes"),
 * as A1111 writes them; version "libmerge VERSION". Returns 0 and a malloc'd
 * string in *out. Errors: LM_EIO (a file cannot be hashed, named), LM_ENOMEM. */
int lm_render_infotext(const char *model_path, const char *const *lora_paths, const float *lambdas,
                       size_t n_loras, const lm_render_opts *o, int hash, char **out, lm_err *err);

/* The denoising loop of the pipeline above on its own, for a batch (the
 * render pipeline and `lcm-verify sample` both run it). */
typedef struct lm_lcm_sample_args {
    lm_unet *unet;                 /* loaded, LoRAs applied */
    const lm_lcm *sched;           /* timesteps set (lm_lcm_set_timesteps) */
    int N, C, h, w;                /* latent batch [N, C, h, w]; N ≤ 64 */
    const float *context;          /* [N, ctx_len, context_dim] */
    int ctx_len;
    const float *uncond;           /* [N, unc_len, context_dim]; used only when guidance > 1 */
    int unc_len;
    float guidance;                /* classifier-free guidance; ≤ 1: the conditional branch alone */
    const float *const *noise;     /* NULL, or n_steps−1 entries, each [N, C, h, w] or NULL: the
                                      re-noising noise of steps 0..K−2; a missing one is drawn */
    lm_rng *rng;                   /* draws missing noise (randn of the latent's shape, as
                                      diffusers' generator does); may be NULL when all is given */
    float *const *denoised;        /* NULL, or n_steps entries (each NULL or [N, C, h, w]):
                                      step i's clean estimate */
    lm_render_progress progress;   /* stage "step", k = 1..K; may be NULL */
    void *progress_ctx;
} lm_lcm_sample_args;

/* x [N, C, h, w] holds x_T on entry and the final latents on return: for
 * each LCM timestep t_i, ε = UNet(x, t_i, context) (combined with the
 * unconditional branch by lm_cfg_combine when guidance > 1), then
 * x = lm_lcm_step(x, ε, noise_i). Errors: LM_EUSAGE (bad sizes, noise
 * needed but neither given nor an rng), those of lm_unet_forward, LM_ENOMEM. */
int lm_lcm_sample(const lm_lcm_sample_args *a, float *x, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
