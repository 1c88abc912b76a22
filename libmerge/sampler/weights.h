/* sampler/weights.h — a model component's weights, read by their canonical
 * diffusers-layout names and converted to fp32, with LoRAs applied.
 *
 * Internal to the library (the UNet, VAE and CLIP loaders share it). A name
 * such as "down_blocks.0.resnets.0.conv1.weight" of component "unet" is
 * found in a source whatever its layout: bare diffusers names, diffusers
 * names with the component prefix ("unet.…"), or the LDM single-file layout
 * (converted through lm_layout_convert_name; the [C,C,1,1] ↔ [C,C] and
 * transposed cases are reshaped). Stored F16/BF16/F32 tensors are converted
 * to fp32 when loaded.
 *
 * LoRAs: every module of every LoRA is resolved onto the source through the
 * key map (lm_keymap_resolve) when the set is opened; loading a tensor then
 * adds λ·ΔW of each module that targets it (lm_lora_apply), and λ·Δb of
 * .diff_b updates to biases, before the caller sees it. No file is written.
 */
#ifndef LIBMERGE_SAMPLER_WEIGHTS_H
#define LIBMERGE_SAMPLER_WEIGHTS_H

#include <stdint.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/keymap.h"
#include "libmerge/lora.h"

typedef struct lm_weights lm_weights;

/* Opens a weight set over src (not owned; must outlive the set) for
 * component "unet", "vae", "text_encoder" or "text_encoder_2", with n_loras
 * LoRAs (not owned) weighted by lambdas[i]. Modules of the LoRAs that belong
 * to this component (lm_lora_module.component: UNet for "unet", TE for
 * "text_encoder", TE2 for "text_encoder_2") and match no tensor of src are
 * an LM_EMISMATCH error naming the module; modules of other components are
 * left for their own loader. The key map is built only when some LoRA has
 * modules of this component, so a UNet-only LoRA opens over a bare text
 * encoder whose architecture cannot be detected. Errors: those of
 * lm_keymap_build (LM_EUNSUPPORTED: architecture unknown, when it is
 * needed)/resolve, LM_ENOMEM. */
int lm_weights_open(lm_weights **out, const lm_source *src, const char *component,
                    const lm_lora *const *loras, const float *lambdas, size_t n_loras,
                    lm_err *err);
void lm_weights_close(lm_weights *w);

/* The architecture the set converts names with (detected; SD1 rules when
 * detection is unsure, e.g. for a tiny test model with SD1.x structure). */
lm_arch lm_weights_arch(const lm_weights *w);

/* The entry holding canonical name (component-relative diffusers name), or
 * NULL when the source has none. */
const lm_entry *lm_weights_find(const lm_weights *w, const char *name);

/* Loads canonical name as fp32 into a new malloc'd buffer *out (caller
 * frees), LoRAs applied. shape [ndim] is what the caller expects (-1 entries
 * match any size and are filled in); a stored shape that differs only by
 * trailing 1×1 (conv vs linear) is accepted. Errors: LM_EINPUT (missing
 * tensor, wrong shape: both named), LM_EIO, LM_ENOMEM, LoRA errors. */
int lm_weights_load(lm_weights *w, const char *name, int ndim, int64_t *shape, float **out,
                    lm_err *err);

/* Loaders over an open weight set, for the library and its tests (the public
 * entry points take a source: lm_clip_load_source, lm_vae_load_source). */
typedef struct lm_clip lm_clip;
/* The text encoder from w (opened for component "text_encoder": any layout,
 * LoRAs applied) as fp32; src (may be NULL) is the file w reads, for its
 * "config" metadata. Errors: as lm_clip_load_source. */
int lm_clip_load(lm_clip **out, lm_weights *w, const lm_source *src, lm_err *err);
typedef struct lm_vae lm_vae;
/* The VAE decoder from w (opened for component "vae": either layout, LoRAs
 * applied) as fp32; path (may be NULL) names the file in errors. Errors: as
 * lm_vae_load_source. */
int lm_vae_load(lm_vae **out, lm_weights *w, const char *path, lm_err *err);

#endif
