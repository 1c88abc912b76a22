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
 * Implementation: libmerge/keymap/ (detect.c, layout*.c, keymap.c).
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
 * shapes: layout from the name prefixes above, architecture from the
 * cross-attention width (attn2.to_k in-features 768 SD1, 1024 SD2, 2048
 * SDXL; SSD-1B by its mid block without attention), the levels, SDXL's
 * label_emb and the text encoders' widths: the rules of ComfyUI's model
 * detection and stable-diffusion.cpp's version check (libmerge/keymap/detect.c). Never fails: unsure gives LM_ARCH_UNKNOWN with
 * a reason. */
void lm_model_detect(const lm_source *s, lm_model_info *out);

/* What lm_layout_convert_name reports through *reshape. */
enum {
    LM_RESHAPE_NONE = 0,
    LM_RESHAPE_CONV1X1 = 1,   /* VAE mid attention q/k/v/proj_out: [C,C,1,1] conv (LDM) ↔ [C,C] linear
                                 (diffusers): squeeze/unsqueeze the trailing 1×1 */
    LM_RESHAPE_TRANSPOSE = 2  /* OpenCLIP text_projection [d,p] (used as x @ P) ↔ transformers'
                                 text_projection.weight [p,d]: transpose */
};

/* Converts one tensor name between layouts for arch (UNet, VAE, text
 * encoders). Writes the converted name to out (n bytes). Returns 0, or
 * LM_EINPUT when name is not a tensor of that architecture's layout.
 * Shape changes that go with a layout change (VAE attention conv 1×1 ↔
 * linear) are reported through *reshape = 1 (caller squeezes/unsqueezes).
 *
 * Diffusers-layout names come out with their component prefix ("unet.",
 * "vae.", "text_encoder.", "text_encoder_2."); as input they may carry it or
 * be bare component names ("down_blocks.…", "encoder.…", "text_model.…";
 * a bare "text_model.…" is the first text encoder). LDM names are whole
 * ("model.diffusion_model.…", "first_stage_model.…", "cond_stage_model.…",
 * "conditioner.embedders.N.…"), except that a standalone VAE file's bare
 * LDM names ("encoder.down.0.block.0.…") are read as its VAE going to
 * diffusers (lm_model_detect calls such a file LDM). from == to copies name
 * unchanged.
 * *reshape (may be NULL) gets an LM_RESHAPE_* value.
 * Errors: LM_EINPUT (not a name of that architecture and layout: the rules
 * are the block structure, e.g. SDXL has no down_blocks.0.attentions),
 * LM_EUNSUPPORTED for real tensors no single name expresses: the packed
 * OpenCLIP attn.in_proj_weight/in_proj_bias (SD2.x text encoder, SDXL's
 * second encoder in the LDM layout) and self_attn.{q,k,v}_proj going the
 * other way, logit_scale, position_ids of an OpenCLIP encoder — the
 * caller handles them (lm_model_convert splits/concatenates q, k, v and
 * leaves the other two out); LM_EUSAGE when
 * out is too small or from/to is LM_LAYOUT_UNKNOWN.
 * Rules: diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint /
 * convert_open_clip_checkpoint and scripts/convert_diffusers_to_original_*.py. */
int lm_layout_convert_name(lm_arch arch, lm_layout from, lm_layout to, const char *name,
                           char *out, size_t n, int *reshape);

/* The component a tensor name belongs to. */
typedef enum lm_part {
    LM_PART_NONE = 0,
    LM_PART_UNET,
    LM_PART_VAE,
    LM_PART_TE,      /* SD1.x/SD2.x text encoder, SDXL's first */
    LM_PART_TE2      /* SDXL's second text encoder */
} lm_part;

const char *lm_part_name(lm_part p);   /* "unet", "vae", "text_encoder", "text_encoder_2", "none" */

/* Component of a diffusers-layout name, prefixed or bare (see
 * lm_layout_convert_name); *inner (may be NULL) points into name after the
 * component prefix. LM_PART_NONE when the name is of no known component. */
lm_part lm_diffusers_part(const char *name, const char **inner);

/* Component of an LDM-layout name (by prefix); LM_PART_NONE otherwise. */
lm_part lm_ldm_part(const char *name);

/* Where a LoRA module's ΔW goes. */
typedef struct lm_target {
    int64_t tensor;    /* index of the base weight tensor in the base source */
    int64_t bias;      /* index of the base bias tensor (for .diff_b), -1 if none */
    int64_t row0;      /* first row updated (q/k/v slice of a packed in_proj_weight) */
    int64_t rows;      /* rows updated (= shape[0] of the base tensor unless packed) */
} lm_target;

typedef struct lm_keymap lm_keymap;

/* Builds the map of every LoRA spelling (kohya, diffusers, attention
 * processor, PEFT, LyCORIS, LDM-path) of every UNet and text-encoder weight
 * in base to its tensor index (spellings listed in libmerge/keymap/keymap.c;
 * the VAE is not mapped). An OpenCLIP in_proj_weight [3d,d] in the LDM
 * layout gets q/k/v_proj targets with row0 = 0, d, 2d and rows = d; its
 * in_proj_bias is the target's bias (a .diff_b then updates elements
 * [row0, row0+rows) of it). Errors: LM_EUNSUPPORTED when lm_model_detect
 * cannot name the architecture or layout (message carries its reason),
 * LM_ENOMEM. The map refers to base, which must outlive it. */
int lm_keymap_build(lm_keymap **out, const lm_source *base, lm_err *err);
/* Frees the map (not the base source); safe on NULL. */
void lm_keymap_free(lm_keymap *m);
/* lm_model_detect's verdict on the base, owned by the map. */
const lm_model_info *lm_keymap_info(const lm_keymap *m);

/* Resolves every module of lora onto base: targets[i] for module i
 * (targets has lm_lora_count(lora) slots). Unmatched modules get
 * tensor = -1, bias = -1; with allow_unmatched = 0 any unmatched module
 * is an LM_EMISMATCH error giving the count and the first names (as many
 * as fit the message; lm_keymap_format_unmatched lists 20). A module whose
 * ΔW cannot fit its target (an SD1.5 LoRA on an SDXL base), or a .diff_b
 * without a base bias, is an LM_EMISMATCH error naming both shapes and the
 * likely cause; it is reported before unmatched modules, even with
 * allow_unmatched. *n_unmatched (may be NULL) receives the count. */
int lm_keymap_resolve(const lm_keymap *m, const lm_lora *lora, int allow_unmatched,
                      lm_target *targets, size_t *n_unmatched, lm_err *err);

/* Looks up one module name (spelled as lm_lora_module.name: a LoRA tensor
 * key without its factor suffix, e.g. "lora_unet_down_blocks_0_attentions_0_proj_in",
 * "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
 * "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora",
 * "base_model.model.down_blocks.1.resnets.0.conv1"). comp is the component
 * the LoRA parser assigned; it only decides where a bare "text_model.…" name
 * goes (LM_COMP_TE2: the second encoder). Returns the base tensor index and
 * fills *t (may be NULL), or -1 when no base weight has that spelling. */
int64_t lm_keymap_find(const lm_keymap *m, const char *module_name, lm_component comp, lm_target *t);

/* Checks that a ΔW of shape [ndim] fits target t: same leading dimension as
 * t->rows and the same element count as rows × the target's other
 * dimensions (so linear [o,i] fits conv [o,i,1,1] and LoKr's [o, i·kh·kw]
 * fits [o,i,kh,kw]). Returns 0, or LM_EMISMATCH naming module (as the key),
 * both shapes and the likely cause ("an SD1.x LoRA on an SDXL base?"); the
 * error's file is left empty for the caller to add the LoRA's path
 * (lm_keymap_resolve does). */
int lm_keymap_check_fit(const lm_keymap *m, const char *module_name, const lm_target *t,
                        int ndim, const int64_t *shape, lm_err *err);

/* Writes the names of the first `max` unmatched modules (targets[i].tensor
 * < 0 after lm_keymap_resolve), one per line, into buf (n bytes, always
 * NUL-terminated; names that do not fit are left out). Returns the number of
 * unmatched modules in all. lm_keymap_resolve's error message holds the
 * count and as many names as fit its 512 bytes; commands print the full
 * first-20 list with this. */
size_t lm_keymap_format_unmatched(const lm_lora *lora, const lm_target *targets, size_t max,
                                  char *buf, size_t n);

/* Number of distinct LoRA spellings in the map. */
size_t lm_keymap_size(const lm_keymap *m);

#ifdef __cplusplus
}
#endif
#endif
