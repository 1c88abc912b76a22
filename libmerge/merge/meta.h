/* Internal: metadata of merge outputs (meta.c). */
#ifndef LIBMERGE_MERGE_META_H
#define LIBMERGE_MERGE_META_H

#include "merge_impl.h"

/* Fills m with keep's metadata (may be NULL), then the ModelSpec keys for arch
 * (is_lora: "<arch>/lora"), sd_merge_recipe / sd_merge_models and the recipe r.
 * legacy[i] is the A1111 legacy hash of r->inputs[i] (lmm_legacy_hash; "" if unknown),
 * computed by the caller while the input is open: rebuilding the metadata after the bake
 * must not read the inputs again (one deleted meanwhile would change the header length).
 * Returns 0 or LM_ENOMEM. */
int lmm_build_meta(lmm_meta *m, const lm_source *keep, const lm_recipe *r, const char *const *legacy,
                   lm_arch arch, int is_lora, const char *title);

/* As lmm_build_meta for a LoRA output (first: the first input, whose kohya ss_* training
 * metadata is kept), then ss_network_dim/ss_network_alpha set to uniform_rank ("dynamic"
 * when 0), and the PEFT alpha configuration (lora_adapter_metadata, lora_alpha) dropped:
 * every output module has scale 1. paths[i]: the file of recipe->inputs[i], for the legacy
 * hashes (read here: called once, after the merge). Returns 0 or LM_ENOMEM. */
int lmm_lora_meta(lmm_meta *meta, const lm_source *first, const lm_recipe *recipe, const char *const *paths,
                  lm_arch arch, const char *title, int uniform_rank);

#endif
