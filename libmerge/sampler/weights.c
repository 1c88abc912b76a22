/* Weight sets: canonical-name lookup across layouts, fp32 load, LoRAs at load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler/weights.h"

typedef struct {
    const lm_lora *lora;
    float lambda;
    lm_target *targets;     /* one per module */
} w_lora;

struct lm_weights {
    const lm_source *src;
    char component[32];
    lm_arch arch;
    lm_keymap *km;
    w_lora *loras;
    size_t n_loras;
};

static lm_component comp_of(const char *component)
{
    if (!strcmp(component, "text_encoder")) return LM_COMP_TE;
    if (!strcmp(component, "text_encoder_2")) return LM_COMP_TE2;
    return LM_COMP_UNET;
}

int lm_weights_open(lm_weights **out, const lm_source *src, const char *component,
                    const lm_lora *const *loras, const float *lambdas, size_t n_loras,
                    lm_err *err)
{
    *out = NULL;
    lm_weights *w = calloc(1, sizeof *w);
    if (!w) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    w->src = src;
    snprintf(w->component, sizeof w->component, "%s", component);
    lm_model_info info;
    lm_model_detect(src, &info);
    w->arch = info.arch != LM_ARCH_UNKNOWN ? info.arch : LM_ARCH_SD1;
    int rc = 0;
    /* Only a LoRA with modules of this component needs the key map: a UNet-only
     * LoRA must not require a separate text encoder's architecture to be known
     * (a bare CLIP file carries no UNet to detect it from), nor the reverse. */
    size_t own = 0;
    for (size_t i = 0; i < n_loras; i++)
        for (size_t m = 0; m < lm_lora_count(loras[i]); m++)
            if (lm_lora_module_at(loras[i], m)->component == comp_of(component)) own++;
    if (!own) n_loras = 0;
    if (n_loras) {
        w->loras = calloc(n_loras, sizeof *w->loras);
        if (!w->loras) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto fail; }
        if ((rc = lm_keymap_build(&w->km, src, err))) goto fail;
        for (size_t i = 0; i < n_loras; i++) {
            size_t n = lm_lora_count(loras[i]);
            w_lora *L = &w->loras[i];
            L->lora = loras[i];
            L->lambda = lambdas[i];
            L->targets = calloc(n ? n : 1, sizeof *L->targets);
            w->n_loras = i + 1;
            if (!L->targets) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto fail; }
            size_t unmatched = 0;
            if ((rc = lm_keymap_resolve(w->km, loras[i], 1, L->targets, &unmatched, err))) goto fail;
            for (size_t m = 0; m < n; m++) {
                const lm_lora_module *mod = lm_lora_module_at(loras[i], m);
                if (L->targets[m].tensor < 0 && mod->component == comp_of(component)) {
                    const char *lp = lm_source_path(lm_lora_source(loras[i]));
                    rc = lm_err_set(err, LM_EMISMATCH, lp, mod->name, LM_ERR_NO_OFFSET,
                                    "LoRA module matches no %s tensor of %s", component,
                                    lm_source_path(src));
                    goto fail;
                }
            }
        }
    }
    *out = w;
    return 0;
fail:
    lm_weights_close(w);
    return rc;
}

void lm_weights_close(lm_weights *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_loras; i++) free(w->loras[i].targets);
    free(w->loras);
    lm_keymap_free(w->km);
    free(w);
}

lm_arch lm_weights_arch(const lm_weights *w) { return w->arch; }

/* Index of the source entry for canonical name, and the reshape it needs. */
static int64_t find_index(const lm_weights *w, const char *name, int *reshape)
{
    char buf[512];
    *reshape = LM_RESHAPE_NONE;
    int64_t i = lm_source_find(w->src, name);
    if (i >= 0) return i;
    snprintf(buf, sizeof buf, "%s.%s", w->component, name);
    if ((i = lm_source_find(w->src, buf)) >= 0) return i;
    char ldm[512];
    if (lm_layout_convert_name(w->arch, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, buf, ldm, sizeof ldm, reshape))
        return -1;
    if ((i = lm_source_find(w->src, ldm)) >= 0) return i;
    /* a standalone LDM VAE (vae-ft-mse-840000, sdxl_vae) names its tensors without
     * the checkpoint's "first_stage_model." prefix */
    static const char vae_prefix[] = "first_stage_model.";
    if (strncmp(ldm, vae_prefix, sizeof vae_prefix - 1)) return -1;
    return lm_source_find(w->src, ldm + sizeof vae_prefix - 1);
}

const lm_entry *lm_weights_find(const lm_weights *w, const char *name)
{
    int reshape;
    int64_t i = find_index(w, name, &reshape);
    return i < 0 ? NULL : lm_source_entry(w->src, (size_t)i);
}

/* shapes agree up to trailing 1s (conv 1×1 [o,i,1,1] vs linear [o,i]) */
static int shape_ok(const lm_entry *e, int ndim, int64_t *shape)
{
    int nd = e->ndim;
    while (nd > ndim && e->shape[nd - 1] == 1) nd--;
    int want = ndim;
    while (want > nd && shape[want - 1] == 1) want--;
    if (nd != want) return 0;
    for (int d = 0; d < nd; d++)
        if (shape[d] >= 0 && shape[d] != e->shape[d]) return 0;
    for (int d = 0; d < ndim; d++) if (shape[d] < 0) shape[d] = d < nd ? e->shape[d] : 1;
    return 1;
}

static void fmt_shape(char *b, size_t n, int ndim, const int64_t *s)
{
    size_t k = (size_t)snprintf(b, n, "[");
    for (int d = 0; d < ndim && k < n; d++) k += (size_t)snprintf(b + k, n - k, d ? ",%lld" : "%lld", (long long)s[d]);
    if (k < n) snprintf(b + k, n - k, "]");
}

int lm_weights_load(lm_weights *w, const char *name, int ndim, int64_t *shape, float **out,
                    lm_err *err)
{
    *out = NULL;
    int reshape;
    int64_t idx = find_index(w, name, &reshape);
    if (idx < 0)
        return lm_err_set(err, LM_EINPUT, lm_source_path(w->src), name, LM_ERR_NO_OFFSET,
                          "%s tensor missing", w->component);
    const lm_entry *e = lm_source_entry(w->src, (size_t)idx);
    int64_t want[LM_MAX_DIMS];
    for (int d = 0; d < ndim; d++) want[d] = shape[d];
    if (reshape == LM_RESHAPE_TRANSPOSE && e->ndim == 2 && ndim == 2) {
        int64_t t = want[0]; want[0] = want[1]; want[1] = t;
    }
    if (!shape_ok(e, ndim, want)) {
        char a[96], b[96];
        fmt_shape(a, sizeof a, e->ndim, e->shape);
        fmt_shape(b, sizeof b, ndim, shape);
        return lm_err_set(err, LM_EINPUT, lm_source_path(w->src), e->name, LM_ERR_NO_OFFSET,
                          "shape %s, expected %s", a, b);
    }
    float *p = malloc((size_t)(e->numel ? e->numel : 1) * sizeof *p);
    if (!p)
        return lm_err_set(err, LM_ENOMEM, lm_source_path(w->src), e->name, LM_ERR_NO_OFFSET,
                          "out of memory for %lld floats", (long long)e->numel);
    int rc = lm_source_read_f32(w->src, (size_t)idx, p, err);
    if (rc) { free(p); lm_err_key(err, e->name); return rc; }
    /* LoRAs: ΔW onto weights, Δb onto biases, in the stored orientation */
    for (size_t l = 0; l < w->n_loras && !rc; l++) {
        const w_lora *L = &w->loras[l];
        size_t n = lm_lora_count(L->lora);
        for (size_t m = 0; m < n && !rc; m++) {
            const lm_target *t = &L->targets[m];
            if (t->tensor == idx) {
                rc = lm_lora_apply(L->lora, m, L->lambda, p, e->shape, e->ndim, t->row0, t->rows, err);
            } else if (t->bias == idx && lm_lora_module_at(L->lora, m)->has_bias) {
                float *db = malloc((size_t)e->numel * sizeof *db);
                if (!db) { rc = lm_err_set(err, LM_ENOMEM, NULL, e->name, LM_ERR_NO_OFFSET, "out of memory"); break; }
                rc = lm_lora_delta_bias(L->lora, m, db, err);
                for (int64_t k = 0; !rc && k < e->numel; k++) p[k] += L->lambda * db[k];
                free(db);
            }
        }
    }
    if (rc) { free(p); return rc; }
    if (reshape == LM_RESHAPE_TRANSPOSE && e->ndim == 2) {
        int64_t r = e->shape[0], c = e->shape[1];
        float *q = malloc((size_t)e->numel * sizeof *q);
        if (!q) { free(p); return lm_err_set(err, LM_ENOMEM, NULL, e->name, LM_ERR_NO_OFFSET, "out of memory"); }
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < c; j++) q[j * r + i] = p[i * c + j];
        free(p);
        p = q;
        for (int d = 0; d < ndim; d++) if (shape[d] < 0) shape[d] = want[1 - d];
    } else {
        for (int d = 0; d < ndim; d++) shape[d] = want[d];
    }
    *out = p;
    return 0;
}
