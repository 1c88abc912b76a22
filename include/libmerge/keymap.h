/* libmerge/keymap.h — what a checkpoint is, and where each LoRA module lands in it.
 *
 * Architecture and layout are detected from tensor names and shapes.
 * Layouts: "ldm" is the original single-file layout (model.diffusion_model.*,
 * first_stage_model.*, cond_stage_model.*, conditioner.embedders.*);
 * "diffusers" is the per-component layout (down_blocks.*, mid_block.*,
 * up_blocks.*), in one file either bare (one component) or with the
 * component prefixes unet., vae., text_encoder., text_encoder_2.
 *
 * Name maps are built from the blocks' structure rules, never by turning
 * '_' back into '.': the forward map goes from the base model's real keys to
 * every LoRA spelling of them.
 *
 * STATUS: contract written before the implementation (issue 4). The
 * implementation lives in libmerge/keymap/.
 */
#ifndef LIBMERGE_KEYMAP_H
#define LIBMERGE_KEYMAP_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_arch {
    LM_ARCH_UNKNOWN = 0,
    LM_ARCH_SD1,      /* SD1.x: context 768, 8 heads */
    LM_ARCH_SD2,      /* SD2.x: context 1024, 64-wide heads */
    LM_ARCH_SDXL,     /* SDXL base: context 2048, two text encoders */
    LM_ARCH_SSD1B     /* Segmind SSD-1B: SDXL with blocks removed */
} lm_arch;

typedef enum lm_layout {
    LM_LAYOUT_UNKNOWN = 0,
    LM_LAYOUT_LDM,
    LM_LAYOUT_DIFFUSERS
} lm_layout;

typedef struct lm_model_info {
    lm_arch arch;
    lm_layout layout;
    int has_unet, has_vae, has_te, has_te2;
    int64_t context_dim;      /* cross-attention width (768, 1024, 2048), 0 if no UNet */
    int64_t model_channels;   /* UNet base channels (320), 0 if no UNet */
    char reason[160];         /* why it was classified so, or why "unknown" */
} lm_model_info;

const char *lm_arch_name(lm_arch a);        /* "sd1", "sd2", "sdxl", "ssd-1b", "unknown" */
const char *lm_layout_name(lm_layout l);    /* "ldm", "diffusers", "unknown" */

/* Classifies a full checkpoint (or a single component) from names and
 * shapes. Never fails: unsure gives LM_ARCH_UNKNOWN with a reason. */
void lm_model_detect(const lm_source *s, lm_model_info *out);

/* Converts one tensor name between layouts for arch (UNet, VAE, text
 * encoders). Writes the converted name to out (n bytes). Returns 0, or
 * LM_EINPUT when name is not a tensor of that architecture's layout.
 * Shape changes that go with a layout change (VAE attention conv 1×1 ↔
 * linear) are reported through *reshape = 1 (caller squeezes/unsqueezes). */
int lm_layout_convert_name(lm_arch arch, lm_layout from, lm_layout to, const char *name,
                           char *out, size_t n, int *reshape);

/* Where a LoRA module's ΔW goes. */
typedef struct lm_target {
    int64_t tensor;    /* index of the base weight tensor in the base source */
    int64_t bias;      /* index of the base bias tensor (for .diff_b), -1 if none */
    int64_t row0;      /* first row updated (q/k/v slice of a packed in_proj_weight) */
    int64_t rows;      /* rows updated (= shape[0] of the base tensor unless packed) */
} lm_target;

typedef struct lm_keymap lm_keymap;

/* Builds the map of every LoRA spelling (kohya, diffusers, attention
 * processor, PEFT) of every weight in base to its tensor index. */
int lm_keymap_build(lm_keymap **out, const lm_source *base, lm_err *err);
void lm_keymap_free(lm_keymap *m);
const lm_model_info *lm_keymap_info(const lm_keymap *m);

/* Resolves every module of lora onto base: targets[i] for module i
 * (targets has lm_lora_count(lora) slots). Unmatched modules get
 * tensor = -1; with allow_unmatched = 0 any unmatched module is an
 * LM_EMISMATCH error listing the first 20 names and the count. A module
 * whose ΔW cannot fit its target (an SD1.5 LoRA on an SDXL base) is an
 * LM_EMISMATCH error naming both shapes and the likely cause.
 * *n_unmatched (may be NULL) receives the count. */
int lm_keymap_resolve(const lm_keymap *m, const lm_lora *lora, int allow_unmatched,
                      lm_target *targets, size_t *n_unmatched, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
