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

/* Reads entry idx of l's source as fp32 into a new buffer (*out, caller
 * frees). */
int lm_lora_read_factor(const lm_lora *l, int64_t idx, float **out, lm_err *err);

#endif
