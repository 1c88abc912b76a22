/* Internal to model-convert (convert.c): the plan's items and state, shared with the
 * OpenCLIP packed-attention split and merge (convert_qkv.c). */
#ifndef LIBMERGE_CONVERT_IMPL_H
#define LIBMERGE_CONVERT_IMPL_H

#include "libmerge/convert.h"
#include "libmerge/keymap.h"
#include "libmerge/source.h"

typedef struct plan_item {
    size_t src[3];           /* entries whose data is written, one after the other */
    int n_src;               /* 1, or 3: q, k, v concatenated into a packed OpenCLIP in_proj */
    int64_t row0, rows;      /* rows > 0: only rows [row0, row0 + rows) of src[0] (one of q, k, v
                                split from a packed in_proj); 0: whole tensors */
    char *name;              /* output name */
    lm_dtype dtype;          /* output dtype */
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    int64_t numel;           /* output elements */
    int transpose;           /* 2-D transpose on the way (OpenCLIP projection) */
} plan_item;

typedef struct conv {
    const lm_convert_opts *o;
    lm_convert_report *r;
    lm_source *s;
    plan_item *items;
    size_t n;
    lm_arch arch;
    lm_layout from, to;
} conv;

/* Reports a tensor left out (o->on_drop). */
static inline void lmc_drop(const lm_convert_opts *o, const char *name, const char *why)
{
    if (o->on_drop) o->on_drop(o->ctx, name, why);
}

/* A tensor lm_layout_convert_name has no single name for (OpenCLIP's packed q/k/v,
 * logit_scale, position_ids): appends the items it becomes to out at *w (three for a
 * split, one for a merge, none for a drop), or refuses. Errors: LM_EINPUT (an
 * incomplete or disagreeing q/k/v set, named), LM_EUNSUPPORTED (no counterpart),
 * LM_ENOMEM. */
int lmc_openclip_item(conv *c, const plan_item *it, plan_item *out, size_t *w, lm_err *err);

#endif
