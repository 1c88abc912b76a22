/* Sampler weights: base tensors read as fp32 with LoRA modules applied at
 * read time. See include/libmerge/weights.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/keymap.h"
#include "libmerge/weights.h"

typedef struct {
    const lm_lora *lora;
    size_t module;
    float lambda;
    lm_target target;
} pending;

struct lm_weights {
    const lm_source *base;
    lm_keymap *km;          /* built on the first LoRA */
    pending *mods;
    size_t n, cap;
};

int lm_weights_open(lm_weights **out, const lm_source *base, lm_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    (*out)->base = base;
    return 0;
}

void lm_weights_free(lm_weights *w)
{
    if (!w) return;
    lm_keymap_free(w->km);
    free(w->mods);
    free(w);
}

const lm_source *lm_weights_source(const lm_weights *w) { return w->base; }
size_t lm_weights_lora_modules(const lm_weights *w) { return w->n; }

int lm_weights_has(const lm_weights *w, const char *name) { return lm_source_find(w->base, name) >= 0; }

int lm_weights_add_lora(lm_weights *w, const lm_lora *lora, float lambda, int allow_unmatched,
                        size_t *n_unmatched, lm_err *err)
{
    int rc;
    if (!w->km && (rc = lm_keymap_build(&w->km, w->base, err))) return rc;
    size_t n = lm_lora_count(lora);
    lm_target *t = calloc(n ? n : 1, sizeof *t);
    if (!t) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    if ((rc = lm_keymap_resolve(w->km, lora, allow_unmatched, t, n_unmatched, err))) { free(t); return rc; }
    for (size_t i = 0; i < n; i++) {
        if (t[i].tensor < 0) continue;
        if (w->n == w->cap) {
            size_t nc = w->cap ? w->cap * 2 : 256;
            pending *p = realloc(w->mods, nc * sizeof *p);
            if (!p) { free(t); return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
            w->mods = p;
            w->cap = nc;
        }
        w->mods[w->n++] = (pending){ lora, i, lambda, t[i] };
    }
    free(t);
    return 0;
}

static void shape_str(char *b, size_t n, int ndim, const int64_t *s)
{
    size_t o = (size_t)snprintf(b, n, "[");
    for (int i = 0; i < ndim && o < n; i++) o += (size_t)snprintf(b + o, n - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < n) snprintf(b + o, n - o, "]");
}

int lm_weights_get(const lm_weights *w, const char *name, int ndim, const int64_t *shape,
                   float **out, lm_err *err)
{
    const char *path = lm_source_path(w->base);
    *out = NULL;
    int64_t idx = lm_source_find(w->base, name);
    if (idx < 0) return lm_err_set(err, LM_EINPUT, path, name, LM_ERR_NO_OFFSET, "tensor missing");
    const lm_entry *e = lm_source_entry(w->base, (size_t)idx);
    if (ndim > 0) {
        int64_t want = 1;
        for (int i = 0; i < ndim; i++) want *= shape[i];
        if (want != e->numel || e->ndim < 1 || e->shape[0] != shape[0]) {
            char a[96], b[96];
            shape_str(a, sizeof a, e->ndim, e->shape);
            shape_str(b, sizeof b, ndim, shape);
            return lm_err_set(err, LM_EINPUT, path, name, LM_ERR_NO_OFFSET, "shape %s, expected %s", a, b);
        }
    }
    float *buf = malloc((size_t)(e->numel ? e->numel : 1) * sizeof *buf);
    if (!buf) return lm_err_set(err, LM_ENOMEM, path, name, LM_ERR_NO_OFFSET, "out of memory (%lld floats)", (long long)e->numel);
    int rc = lm_source_read_f32(w->base, (size_t)idx, buf, err);
    for (size_t i = 0; !rc && i < w->n; i++) {
        const pending *p = &w->mods[i];
        if (p->target.tensor == idx) {
            rc = lm_lora_apply(p->lora, p->module, p->lambda, buf, e->shape, e->ndim, p->target.row0, p->target.rows, err);
        } else if (p->target.bias == idx && lm_lora_module_at(p->lora, p->module)->has_bias) {
            /* .diff_b: b += λ·Δb */
            float *db = malloc((size_t)e->numel * sizeof *db);
            if (!db) { rc = lm_err_set(err, LM_ENOMEM, path, name, LM_ERR_NO_OFFSET, "out of memory"); break; }
            rc = lm_lora_delta_bias(p->lora, p->module, db, err);
            for (int64_t j = 0; !rc && j < e->numel; j++) buf[j] += p->lambda * db[j];
            free(db);
        }
    }
    if (rc) { free(buf); lm_err_file(err, path); lm_err_key(err, name); return rc; }
    *out = buf;
    return 0;
}
