/* lm_bake's planning: every LoRA resolved onto the base through the key map, every ΔW
 * checked against its target's shape, and the update list of each base tensor. Nothing
 * is written before this has succeeded. */
#include "bake_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- planning ------------------------------------------------------------------ */

static int cmp_upd(const void *a, const void *b)
{
    const upd *x = a, *y = b;
    if (x->dora != y->dora) return x->dora - y->dora;
    if (x->lora != y->lora) return x->lora - y->lora;
    return x->mod < y->mod ? -1 : x->mod > y->mod;
}

static int64_t prod_from(const int64_t *s, int from, int n)
{
    int64_t p = 1;
    for (int d = from; d < n; d++) p *= s[d];
    return p;
}

static void shape_str(const int64_t *s, int n, char *out, size_t cap)
{
    size_t len = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < n && len < cap; d++) len += (size_t)snprintf(out + len, cap - len, "%s%lld", d ? ", " : "", (long long)s[d]);
    if (len < cap) snprintf(out + len, cap - len, "]");
}

/* Checks that module m's ΔW fits rows × prod(wshape[1:]) of its target. */
static int check_fit(const lm_lora_module *m, const lm_entry *e, const lm_target *t, const char *lpath, lm_err *err)
{
    if (!lm_dtype_is_float(e->dtype))
        return lm_err_set(err, LM_EMISMATCH, lpath, m->name, LM_ERR_NO_OFFSET,
                          "target %s has dtype %s, not a float", e->name, lm_dtype_name(e->dtype));
    int64_t need = t->rows * (e->ndim > 1 ? prod_from(e->shape, 1, e->ndim) : 1);
    int64_t have = prod_from(m->shape, 0, m->ndim);
    if (t->row0 < 0 || t->rows <= 0 || e->ndim < 1 || t->row0 + t->rows > e->shape[0] || need != have) {
        char a[96], b[96];
        shape_str(m->shape, m->ndim, a, sizeof a);
        shape_str(e->shape, e->ndim, b, sizeof b);
        return lm_err_set(err, LM_EMISMATCH, lpath, m->name, LM_ERR_NO_OFFSET,
                          "ΔW %s does not fit %s %s (rows %lld..%lld): a LoRA for another architecture?",
                          a, e->name, b, (long long)t->row0, (long long)(t->row0 + t->rows));
    }
    return 0;
}

int lmb_plan(bake *b, const lm_keymap *km, const lm_bake_opts *o, lm_bake_report *rep, lm_err *err)
{
    size_t cap = 0, n = 0;
    upd *all = NULL;
    size_t *tgt = NULL;          /* tensor of each update */
    int rc = 0;
    for (size_t j = 0; j < b->nl && !rc; j++) {
        lm_lora *l = b->loras[j];
        const char *lpath = b->in[j].path;
        size_t nm = lm_lora_count(l), nun = 0;
        lm_target *targets = calloc(nm ? nm : 1, sizeof *targets);
        if (!targets) { rc = lm_err_set(err, LM_ENOMEM, lpath, NULL, LM_ERR_NO_OFFSET, "out of memory"); break; }
        rc = lm_keymap_resolve(km, l, o->allow_unmatched, targets, &nun, err);
        if (rc) { lm_err_file(err, lpath); free(targets); break; }
        lm_bake_lora_report *lr = &rep->loras[j];
        lr->modules = nm;
        lr->unmatched = nun;
        lr->convention = lm_lora_convention_name(lm_lora_convention_of(l));
        for (size_t i = 0; i < nm && !rc; i++) {
            const lm_lora_module *m = lm_lora_module_at(l, i);
            if (targets[i].tensor < 0) continue;
            lr->matched++;
            if (m->has_dora) lr->dora++;
            const lm_entry *e = lm_source_entry(b->src, (size_t)targets[i].tensor);
            if ((rc = check_fit(m, e, &targets[i], lpath, err))) break;
            for (int pass = 0; pass < 1 + (m->has_bias != 0); pass++) {
                size_t t = (size_t)targets[i].tensor;
                if (pass == 1) {
                    if (targets[i].bias < 0) {
                        if (o->allow_unmatched) continue;
                        rc = lm_err_set(err, LM_EMISMATCH, lpath, m->name, LM_ERR_NO_OFFSET,
                                        "module has a bias update (diff_b) but %s has no bias", e->name);
                        break;
                    }
                    t = (size_t)targets[i].bias;
                    const lm_entry *be = lm_source_entry(b->src, t);
                    if (!lm_dtype_is_float(be->dtype) || be->numel != targets[i].rows * (int64_t)(be->numel / be->shape[0])) {
                        rc = lm_err_set(err, LM_EMISMATCH, lpath, m->name, LM_ERR_NO_OFFSET,
                                        "bias update does not fit %s", be->name);
                        break;
                    }
                }
                if (n == cap) {
                    cap = cap ? 2 * cap : 256;
                    upd *na = realloc(all, cap * sizeof *na);
                    size_t *nt = realloc(tgt, cap * sizeof *nt);
                    if (na) all = na;
                    if (nt) tgt = nt;
                    if (!na || !nt) { rc = lm_err_set(err, LM_ENOMEM, lpath, NULL, LM_ERR_NO_OFFSET, "out of memory"); break; }
                }
                all[n] = (upd){ (int)j, i, targets[i].row0, targets[i].rows, pass == 1, m->has_dora && pass == 0 };
                tgt[n++] = t;
            }
        }
        free(targets);
    }
    if (!rc) {
        b->uoff = calloc(b->nt + 1, sizeof *b->uoff);
        b->upds = malloc((n ? n : 1) * sizeof *b->upds);
        if (!b->uoff || !b->upds) rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    if (!rc) {
        for (size_t k = 0; k < n; k++) b->uoff[tgt[k] + 1]++;
        for (size_t t = 0; t < b->nt; t++) b->uoff[t + 1] += b->uoff[t];
        size_t *fill = calloc(b->nt ? b->nt : 1, sizeof *fill);
        if (!fill) rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        for (size_t k = 0; !rc && k < n; k++) b->upds[b->uoff[tgt[k]] + fill[tgt[k]]++] = all[k];
        free(fill);
        for (size_t t = 0; !rc && t < b->nt; t++)
            qsort(b->upds + b->uoff[t], b->uoff[t + 1] - b->uoff[t], sizeof *b->upds, cmp_upd);
    }
    free(all);
    free(tgt);
    return rc;
}

