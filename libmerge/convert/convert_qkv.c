/* model-convert: OpenCLIP text encoders' packed attention (see convert_impl.h). */
#include "convert_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- OpenCLIP's packed attention, and buffers with no counterpart ----------
 *
 * OpenCLIP text encoders (SD2.x's, SDXL's second) keep q, k and v of each
 * layer as row blocks, in that order, of one nn.MultiheadAttention
 * in_proj_weight [3d, d] / in_proj_bias [3d]; transformers' CLIPAttention
 * (the diffusers layout) has q_proj, k_proj, v_proj [d, d] / [d]. Going to
 * diffusers, a packed tensor becomes three items that each read one row
 * block of it; going to LDM, the three become one item that reads q, k and v
 * in turn (diffusers' convert_open_clip_checkpoint, and the concatenation in
 * scripts/convert_diffusers_to_original_sdxl.py). Either way data streams
 * from the input as for any other tensor. Names come from the layout map:
 * the layer's out_proj, named ".out_proj.weight/.bias" in both layouts,
 * carries the prefix and the layer number across. */

static int ends(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static void shape_str(const lm_entry *e, char *b, size_t n)
{
    size_t o = (size_t)snprintf(b, n, "[");
    for (int k = 0; k < e->ndim && o < n; k++) o += (size_t)snprintf(b + o, n - o, "%s%lld", k ? ", " : "", (long long)e->shape[k]);
    if (o < n) snprintf(b + o, n - o, "]");
}

/* name ends with leaf; converts "<stem>sib" and puts to_leaf in place of the
 * converted name's sib. */
static int qkv_name(conv *c, const char *name, const char *leaf, const char *sib, const char *to_leaf,
                    char *out, size_t n, lm_err *err)
{
    char in[512];
    int stem = (int)(strlen(name) - strlen(leaf)), reshape;
    if (snprintf(in, sizeof in, "%.*s%s", stem, name, sib) >= (int)sizeof in ||
        lm_layout_convert_name(c->arch, c->from, c->to, in, out, n, &reshape) || !ends(out, sib) ||
        strlen(out) - strlen(sib) + strlen(to_leaf) >= n)
        return lm_err_set(err, LM_EINTERNAL, lm_source_path(c->s), name, LM_ERR_NO_OFFSET,
                          "no %s name for this layer's attention (tried %s)", lm_layout_name(c->to), in);
    strcpy(out + strlen(out) - strlen(sib), to_leaf);
    return 0;
}

static const char *const QKV[3] = { "q_proj.", "k_proj.", "v_proj." };

/* LDM → diffusers: in_proj_weight [3d, d] or in_proj_bias [3d] → q, k, v items. */
static int split_packed(conv *c, const plan_item *it, int bias, plan_item *out, size_t *w, lm_err *err)
{
    const lm_entry *e = lm_source_entry(c->s, it->src[0]);
    int64_t d = bias ? (e->ndim == 1 ? e->shape[0] / 3 : 0) : (e->ndim == 2 ? e->shape[1] : 0);
    if (d <= 0 || e->shape[0] != 3 * d) {
        char sh[96];
        shape_str(e, sh, sizeof sh);
        return lm_err_set(err, LM_EINPUT, lm_source_path(c->s), e->name, LM_ERR_NO_OFFSET,
                          "packed q/k/v %s is %s, expected %s", bias ? "bias" : "weight", sh, bias ? "[3d]" : "[3d, d]");
    }
    for (int k = 0; k < 3; k++) {
        char leaf[32], name[512];
        snprintf(leaf, sizeof leaf, "%s%s", QKV[k], bias ? "bias" : "weight");
        int rc = qkv_name(c, it->name, bias ? "in_proj_bias" : "in_proj_weight", bias ? "out_proj.bias" : "out_proj.weight",
                          leaf, name, sizeof name, err);
        if (rc) return rc;
        plan_item *q = &out[*w];
        *q = *it;
        if (!(q->name = strdup(name))) return lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), e->name, LM_ERR_NO_OFFSET, "out of memory");
        q->row0 = k * d;
        q->rows = d;
        q->shape[0] = d;
        q->numel = e->numel / 3;
        (*w)++;
    }
    return 0;
}

/* diffusers → LDM: the q_proj item it (k = 0) becomes in_proj_* reading q, k, v;
 * the k and v items (k = 1, 2) are taken by their q's. */
static int merge_qkv(conv *c, const plan_item *it, int k, int bias, plan_item *out, size_t *w, lm_err *err)
{
    const char *path = lm_source_path(c->s), *leaf = bias ? "bias" : "weight";
    int stem = (int)(strlen(it->name) - strlen(QKV[k]) - strlen(leaf));
    char names[3][512];
    int64_t idx[3];
    for (int j = 0; j < 3; j++) {
        snprintf(names[j], sizeof names[j], "%.*s%s%s", stem, it->name, QKV[j], leaf);
        idx[j] = j == k ? (int64_t)it->src[0] : lm_source_find(c->s, names[j]);
    }
    for (int j = 0; j < 3; j++)
        if (idx[j] < 0)
            return lm_err_set(err, LM_EINPUT, path, names[j], LM_ERR_NO_OFFSET,
                              "missing: the q/k/v set of %.*s is incomplete (an OpenCLIP encoder packs q, k and v into one in_proj_%s)",
                              stem - 1, it->name, leaf);
    if (k) return 0;   /* written as part of its q's in_proj */
    const lm_entry *q = lm_source_entry(c->s, it->src[0]);
    for (int j = 0; j < 3; j++) {
        const lm_entry *x = lm_source_entry(c->s, (size_t)idx[j]);
        int bad = x->ndim != (bias ? 1 : 2) || x->shape[0] <= 0 || (!bias && x->shape[1] != x->shape[0]);
        if (bad || x->ndim != q->ndim || memcmp(x->shape, q->shape, sizeof(int64_t) * (size_t)q->ndim) || x->dtype != q->dtype) {
            char sh[96], shq[96];
            shape_str(x, sh, sizeof sh);
            shape_str(q, shq, sizeof shq);
            if (bad)
                return lm_err_set(err, LM_EINPUT, path, x->name, LM_ERR_NO_OFFSET,
                                  "is %s, expected %s to pack q, k and v into in_proj_%s", sh, bias ? "[d]" : "[d, d]", leaf);
            return lm_err_set(err, LM_EINPUT, path, x->name, LM_ERR_NO_OFFSET,
                              "%s %s does not match %s's %s %s: q, k and v must agree to be packed into in_proj_%s",
                              lm_dtype_name(x->dtype), sh, names[0], lm_dtype_name(q->dtype), shq, leaf);
        }
    }
    char name[512];
    int rc = qkv_name(c, it->name, bias ? "q_proj.bias" : "q_proj.weight", bias ? "out_proj.bias" : "out_proj.weight",
                      bias ? "in_proj_bias" : "in_proj_weight", name, sizeof name, err);
    if (rc) return rc;
    plan_item *p = &out[*w];
    *p = *it;
    if (!(p->name = strdup(name))) return lm_err_set(err, LM_ENOMEM, path, it->name, LM_ERR_NO_OFFSET, "out of memory");
    p->n_src = 3;
    for (int j = 0; j < 3; j++) p->src[j] = (size_t)idx[j];
    p->shape[0] = 3 * q->shape[0];
    p->numel = 3 * q->numel;
    (*w)++;
    return 0;
}

/* A tensor lm_layout_convert_name has no single name for: split, merge, drop
 * (counted as unmapped, reported through on_drop), or refuse. */
int lmc_openclip_item(conv *c, const plan_item *it, plan_item *out, size_t *w, lm_err *err)
{
    const char *n = it->name;
    if (c->to == LM_LAYOUT_DIFFUSERS) {
        if (ends(n, ".attn.in_proj_weight")) return split_packed(c, it, 0, out, w, err);
        if (ends(n, ".attn.in_proj_bias")) return split_packed(c, it, 1, out, w, err);
        if (ends(n, "logit_scale")) {
            c->r->n_unmapped++;
            lmc_drop(c->o, n, "OpenCLIP's logit_scale (CLIP's contrastive temperature, unused by Stable Diffusion): "
                          "transformers' text encoders have none; diffusers' converter drops it too");
            return 0;
        }
    } else {
        for (int bias = 0; bias < 2; bias++)
            for (int k = 0; k < 3; k++) {
                char suf[48];
                snprintf(suf, sizeof suf, ".self_attn.%s%s", QKV[k], bias ? "bias" : "weight");
                if (ends(n, suf)) return merge_qkv(c, it, k, bias, out, w, err);
            }
        if (ends(n, "position_ids")) {
            c->r->n_unmapped++;
            lmc_drop(c->o, n, "transformers' position_ids (a constant 0, 1, 2, ... buffer): OpenCLIP stores none");
            return 0;
        }
    }
    return lm_err_set(err, LM_EUNSUPPORTED, lm_source_path(c->s), n, LM_ERR_NO_OFFSET,
                      "no %s name for this tensor", lm_layout_name(c->to));
}

