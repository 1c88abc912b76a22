/* libmerge/clip.h — the CLIP text encoder (Radford et al. 2021) as Stable
 * Diffusion uses it: the math of Hugging Face transformers' CLIPTextModel
 * (= SD1.5's FrozenCLIPEmbedder):
 *
 *   x = token_embedding[ids] + position_embedding[0..T-1]            x [T, C]
 *   per layer:  x += out_proj(attn(LN1(x)))   causal self-attention, H heads,
 *                                             softmax(q kᵀ / √(C/H)), no padding mask
 *               x += fc2(act(fc1(LN2(x))))    act = quick_gelu (SD1.x) or gelu
 *   last_hidden_state = final_layer_norm(x)
 *
 * Weights come from the single-file layout
 * (cond_stage_model.transformer.text_model.*, also without "text_model." as
 * in early SD1 checkpoints, conditioner.embedders.0.transformer.text_model.*
 * for SDXL's first encoder) or the diffusers layout (text_model.*, or
 * text_encoder.text_model.* in a combined file). Sizes are read from the
 * shapes; heads from a "config" metadata entry when present
 * (num_attention_heads, hidden_act) else C/64 (CLIP ViT-L/14: 768/64 = 12).
 * Reference: fixtures/golden/clip (agreement ≤ 1e-4 max-abs in float32).
 */
#ifndef LIBMERGE_CLIP_H
#define LIBMERGE_CLIP_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_clip_act { LM_CLIP_QUICK_GELU = 0, LM_CLIP_GELU = 1 } lm_clip_act;

typedef struct lm_clip_config {
    int vocab;            /* 49408 */
    int hidden;           /* C: 768 (SD1.x) */
    int layers;           /* 12 */
    int heads;            /* 12 */
    int intermediate;     /* 3072 */
    int positions;        /* 77 */
    lm_clip_act act;
    float eps;            /* LayerNorm eps, 1e-5 */
    char prefix[96];      /* stored name prefix found, e.g. "cond_stage_model.transformer.text_model." */
} lm_clip_config;

typedef struct lm_clip lm_clip;
/* Loads the text encoder of src (a checkpoint in either layout, or a bare
 * text-encoder file) as fp32, with n_loras LoRAs (not owned; their
 * text-encoder modules applied at weights lambdas[i]; loras/lambdas may be
 * NULL when n_loras = 0); the file's "config" metadata gives heads,
 * activation and eps when present. Errors: LM_EINPUT (no text encoder; a
 * missing or misshapen tensor, named), LM_EMISMATCH (a text-encoder LoRA
 * module that matches nothing), LM_ENOMEM, LM_EIO. */
int lm_clip_load_source(lm_clip **out, const lm_source *src, const lm_lora *const *loras,
                        const float *lambdas, size_t n_loras, lm_err *err);
/* Frees the encoder and its weights; safe on NULL. */
void lm_clip_free(lm_clip *c);
/* The sizes found at load, owned by c. */
const lm_clip_config *lm_clip_config_of(const lm_clip *c);

/* Encodes one token row: ids [T] (T ≤ positions, normally 77, ids < vocab)
 * → out [T, C] fp32. clip_skip counts as A1111 does: 1 = output of the last
 * layer, 2 = of the penultimate layer, … (1 ≤ clip_skip ≤ layers).
 * final_ln = 1 applies final_layer_norm to that output (SD1.5, A1111 and
 * diffusers do for any clip skip); 0 returns it raw (SDXL's penultimate
 * states). Errors: LM_EUSAGE (bad T, clip_skip or an id out of range),
 * LM_ENOMEM. */
int lm_clip_encode(const lm_clip *c, const int32_t *ids, int T, int clip_skip, int final_ln,
                   float *out, lm_err *err);

/* Token + position embedding alone (hidden_states[0] of CLIPTextModel with
 * output_hidden_states): ids [T] → out [T, C] fp32. Errors: LM_EUSAGE (bad T
 * or an id out of range). */
int lm_clip_embed(const lm_clip *c, const int32_t *ids, int T, float *out, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
