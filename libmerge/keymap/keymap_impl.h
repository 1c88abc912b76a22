/* Internal to libmerge/keymap: the block structure of each architecture and
 * the per-component name converters. Not a public header. */
#ifndef LIBMERGE_KEYMAP_IMPL_H
#define LIBMERGE_KEYMAP_IMPL_H

#include <stdarg.h>
#include <stddef.h>
#include "libmerge/keymap.h"

/* UNet block structure (diffusers UNet2DConditionModel configurations):
 * SD1.x/SD2.x: 4 levels, cross-attention on down levels 0..2, mid block
 * resnet/attention/resnet; SDXL: 3 levels, attention on levels 1..2;
 * SSD-1B: SDXL's levels with a mid block of one resnet (README of
 * fixtures/golden/manifests). Up level u mirrors down level levels-1-u and
 * has layers+1 resnets; every level but the last down-samples, every up level
 * but the last up-samples. */
typedef struct km_unet_struct {
    int levels;
    int layers;          /* resnets per down level */
    unsigned attn_down;  /* bit i: down level i has attentions */
    int mid_attn;        /* mid block has attention and a second resnet */
    int label_emb;       /* SDXL's add_embedding / label_emb */
} km_unet_struct;

/* Structure of arch's UNet; NULL for LM_ARCH_UNKNOWN. */
const km_unet_struct *km_unet_struct_of(lm_arch arch);

/* Bounded output string: appends never overflow; over records truncation. */
typedef struct km_buf {
    char *p;
    size_t n, len;
    int over;
} km_buf;
void km_buf_init(km_buf *b, char *p, size_t n);
void km_put(km_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Cursor helpers: km_lit consumes s when the text starts with it; km_num
 * consumes a decimal index followed by '.'. Both return 1 on success and
 * leave *p unchanged on failure. */
int km_lit(const char **p, const char *s);
int km_num(const char **p, int *v);
/* 1 when p is exactly "weight" or "bias". */
int km_is_leaf(const char *p);

/* Component converters: the name within the component (prefix removed).
 * Return 0, LM_EINPUT (not a name of that structure) or LM_EUNSUPPORTED
 * (a real tensor without a name-level counterpart: packed q/k/v, logit_scale). */
int km_unet_to_diffusers(const km_unet_struct *u, const char *r, km_buf *o);
int km_unet_to_ldm(const km_unet_struct *u, const char *r, km_buf *o);
int km_vae_to_diffusers(const char *r, km_buf *o, int *reshape);
int km_vae_to_ldm(const char *r, km_buf *o, int *reshape);
/* Is a bare VAE name (no first_stage_model./vae. prefix) spelled as only the
 * LDM layout spells it (encoder.down.N., decoder.up.N., .mid., .norm_out.)? */
int km_vae_bare_is_ldm(const char *name);
int km_openclip_to_hf(const char *r, km_buf *o, int *reshape);
int km_hf_to_openclip(const char *r, km_buf *o, int *reshape);

#endif
