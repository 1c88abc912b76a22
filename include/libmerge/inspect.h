/* libmerge/inspect.h — a summary of a model file for model-inspect(1):
 * counts, a dtype histogram, sizes, and what the file is (a LoRA and its
 * naming convention, a full checkpoint and its architecture and layout, or
 * "unknown"). Detection uses lm_lora_detect / lm_lora_from_source
 * (libmerge/lora.h) and lm_model_detect (libmerge/keymap.h), from tensor
 * names and shapes only; it never guesses from the file name. */
#ifndef LIBMERGE_INSPECT_H
#define LIBMERGE_INSPECT_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"
#include "libmerge/keymap.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_kind {
    LM_KIND_UNKNOWN = 0,
    LM_KIND_LORA,         /* LoRA / LyCORIS adapter */
    LM_KIND_CHECKPOINT    /* full model or one component (UNet, VAE, text encoder) */
} lm_kind;

const char *lm_kind_name(lm_kind k);   /* "unknown", "lora", "checkpoint" */

typedef struct lm_dtype_count {
    int64_t tensors;
    int64_t params;       /* elements */
    uint64_t bytes;
} lm_dtype_count;

typedef struct lm_inspect {
    lm_format format;
    size_t tensors;
    int64_t params;                      /* Σ numel over all tensors */
    uint64_t file_bytes;                 /* size of the file */
    uint64_t header_bytes;               /* safetensors: the JSON header length N; 0 otherwise */
    uint64_t data_bytes;                 /* Σ nbytes over all tensors */
    lm_dtype_count by_dtype[LM_DT_COUNT];
    lm_kind kind;
    /* LoRA (kind == LM_KIND_LORA) */
    lm_lora_convention convention;
    char algo[16];                       /* lm_lora_algo_name, "" when modules could not be built */
    size_t modules;
    size_t modules_by_component[3];      /* indexed by lm_component */
    int rank_min, rank_max;              /* over modules with a rank; 0 if none */
    size_t ignored;                      /* tensors that belong to no module */
    /* checkpoint (kind == LM_KIND_CHECKPOINT), or the detector's verdict */
    lm_model_info model;
    char reason[256];                    /* why the kind was chosen, or why "unknown" */
} lm_inspect;

/* Fills out for an open source. Never fails on content it cannot classify
 * (kind "unknown" with a reason); errors: LM_ENOMEM only. */
int lm_inspect_source(const lm_source *s, lm_inspect *out, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
