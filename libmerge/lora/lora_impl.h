/* Internal: the body of an lm_lora, shared by lora_parse.c, lora_delta.c
 * and lora_apply.c. Not a public header. */
#ifndef LIBMERGE_LORA_IMPL_H
#define LIBMERGE_LORA_IMPL_H

#include "libmerge/lora.h"

typedef struct lm_lora_mod {
    lm_lora_module pub;            /* pub.name points into name_buf */
    char *name_buf;
    int64_t fac[LM_FAC_COUNT];     /* source entry index per factor, -1 if absent */
} lm_lora_mod;

struct lm_lora {
    const lm_source *src;
    lm_source *owned;              /* set when lm_lora_open opened src itself */
    lm_lora_convention convention;
    lm_lora_mod *mods;
    size_t n_mods;
    char **ignored;                /* keys belonging to no module */
    size_t n_ignored;
};

/* PEFT/diffusers LoraConfig from the metadata (lora_meta.c). */
struct cJSON;
typedef struct lm_lora_meta {
    struct cJSON *root;        /* parsed "lora_adapter_metadata", or NULL */
    int have_plain;            /* a plain "lora_alpha" metadata string */
    float plain;
} lm_lora_meta;
void lm_lora_meta_load(lm_lora_meta *pm, const lm_source *s);
void lm_lora_meta_free(lm_lora_meta *pm);
/* Alpha for module name from the config (alpha_pattern, then lora_alpha,
 * then the plain string); 1 when found, with *rslora set from use_rslora. */
int lm_lora_meta_alpha(const lm_lora_meta *pm, const char *name, float *alpha, int *rslora);

/* Classifies and validates module m (factor indices filled, name,
 * convention and component set): kind, rank, shape, alpha, scale, has_dora,
 * has_bias (lora_check.c). Returns 0, 1 when m has no factors (only
 * alpha/scale: the caller ignores it), or a negative LM_E* code. */
int lm_lora_check_module(lm_err *err, const lm_lora *l, lm_lora_mod *m, const lm_lora_meta *pm);

/* "up", "down", "lora_mid", "alpha", "hada_w1_a", … */
const char *lm_lora_fac_name(lm_lora_factor f);

/* Reads entry idx of l's source as fp32 into a new buffer (*out, caller
 * frees). */
int lm_lora_read_factor(const lm_lora *l, int64_t idx, float **out, lm_err *err);

#endif
