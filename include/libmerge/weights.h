/* libmerge/weights.h — model weights for the sampler: a base tensor source
 * with LoRAs applied when a tensor is read ("LoRAs applied at load").
 *
 * A tensor read through lm_weights_get is converted to fp32 and, for every
 * LoRA module the key map resolves onto it, updated in place with
 * W += λ·ΔW (lm_lora_apply; DoRA modules as lora.h describes), so the
 * sampler computes with the same W' = W + Σ λ·ΔW a bake would write, without
 * writing it. Memory: one tensor at a time beyond what the caller keeps.
 */
#ifndef LIBMERGE_WEIGHTS_H
#define LIBMERGE_WEIGHTS_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_weights lm_weights;

/* Wraps base (not owned: it must outlive the lm_weights). Errors: LM_ENOMEM. */
int lm_weights_open(lm_weights **out, const lm_source *base, lm_err *err);
void lm_weights_free(lm_weights *w);
const lm_source *lm_weights_source(const lm_weights *w);

/* Adds a LoRA with weight λ: every module is resolved onto base through the
 * key map (lm_keymap_build / lm_keymap_resolve). lora is not owned and must
 * outlive w. Modules that match nothing are an LM_EMISMATCH error unless
 * allow_unmatched (then *n_unmatched, which may be NULL, counts them).
 * Errors: those of lm_keymap_build / lm_keymap_resolve, LM_ENOMEM. */
int lm_weights_add_lora(lm_weights *w, const lm_lora *lora, float lambda, int allow_unmatched,
                        size_t *n_unmatched, lm_err *err);

/* Number of LoRA modules that will be applied (summed over the LoRAs). */
size_t lm_weights_lora_modules(const lm_weights *w);

/* 1 when base has a tensor named name. */
int lm_weights_has(const lm_weights *w, const char *name);

/* Reads tensor name as fp32 into a new malloc'd buffer *out (caller frees),
 * LoRA updates applied. When ndim > 0 the element count must equal the
 * product of shape[0..ndim-1] and the leading dimension must agree (so a
 * [C, C, 1, 1] 1×1 conv is accepted where [C, C] is asked, and the reverse).
 * Errors: LM_EINPUT (missing tensor, naming it; shape mismatch, giving both
 * shapes; non-float dtype), LM_EIO, LM_ENOMEM, errors of lm_lora_apply. */
int lm_weights_get(const lm_weights *w, const char *name, int ndim, const int64_t *shape,
                   float **out, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
