/* Internal: writing an up/down LoRA (lora_write.c). */
#ifndef LIBMERGE_MERGE_LORA_WRITE_H
#define LIBMERGE_MERGE_LORA_WRITE_H

#include "merge_impl.h"

typedef struct lmm_outmod {
    char *kohya_name;      /* lora_unet_… */
    char *peft_name;       /* unet.<dotted path>, or NULL when unknown */
    int ndim;              /* 2 or 4: ΔW's shape */
    int64_t shape[4];      /* [out, in] or [out, in, kh, kw] */
    int k;                 /* rank written */
    float *up;             /* [out, k] */
    float *down;           /* [k, in·kh·kw] */
} lmm_outmod;

/* Writes mods as a LoRA at out (safetensors, temp + rename) with factors stored as dt
 * and alpha = k (scale 1). A value overflowing dt is an error (LM_EINPUT). */
int lmm_write_lora(const char *out, const lmm_outmod *mods, size_t n, lm_lora_format fmt, lm_dtype dt,
                   const lmm_meta *meta, const char *const *inputs, size_t n_inputs, uint64_t *bytes, lm_err *err);

#endif
