/* Internal: metadata of merge outputs (meta.c). */
#ifndef LIBMERGE_MERGE_META_H
#define LIBMERGE_MERGE_META_H

#include "merge_impl.h"

/* Fills m with keep's metadata (may be NULL), then the ModelSpec keys for arch
 * (is_lora: "<arch>/lora"), sd_merge_recipe / sd_merge_models and the recipe r.
 * paths[i] is the file of r->inputs[i] (for A1111's legacy hash).
 * Returns 0 or LM_ENOMEM. */
int lmm_build_meta(lmm_meta *m, const lm_source *keep, const lm_recipe *r, const char *const *paths,
                   lm_arch arch, int is_lora, const char *title);

#endif
