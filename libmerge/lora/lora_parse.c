/* LoRA files: naming conventions, grouping tensors into modules, alpha and
 * rank. See include/libmerge/lora.h.
 *
 * Key suffixes, per convention (module name = key with the suffix removed,
 * the prefix kept as in the file):
 *
 *   kohya / LyCORIS (kohya-ss/sd-scripts networks/lora.py, LyCORIS lycoris/modules)
 *     lora_unet_… lora_te_… lora_te1_… lora_te2_…
 *     .lora_down.weight  down [r, in] | [r, in, kh, kw]
 *     .lora_up.weight    up   [out, r] | [out, r, 1, 1]
 *     .lora_mid.weight   Tucker core [r, r, kh, kw] (LoCon use_tucker / "cp")
 *     .alpha .scale      scalars
 *     .hada_w1_a .hada_w1_b .hada_w2_a .hada_w2_b .hada_t1 .hada_t2        (LoHa)
 *     .lokr_w1 .lokr_w1_a .lokr_w1_b .lokr_w2 .lokr_w2_a .lokr_w2_b .lokr_t2 (LoKr)
 *     .dora_scale        DoRA magnitude ([out, 1, …] newer LyCORIS, [1, in, …] older)
 *     .diff .diff_b      full ΔW and bias update (LyCORIS "full")
 *   diffusers (LoRACompatibleLinear era; unet. / text_encoder. / text_encoder_2. or no prefix)
 *     .lora.down.weight .lora.up.weight
 *     .lora_linear_layer.down.weight .lora_linear_layer.up.weight (text encoder patch)
 *   diffusers attention processor (diffusers ≤ 0.20, "…processor.to_q_lora")
 *     _lora.down.weight _lora.up.weight — only ".down.weight"/".up.weight" is
 *     removed, so the name keeps "…processor.to_q_lora"
 *   PEFT (base_model.model. or unet. / text_encoder. prefix)
 *     .lora_A.weight (down) .lora_B.weight (up)
 *     .lora_magnitude_vector .lora_magnitude_vector.weight  DoRA magnitude [out]
 *   any convention: .alpha, .scale
 *
 * Alpha and scale (the conventions agree on ΔW = up·down·alpha/r):
 *   - alpha is a float scalar (any float dtype, 0-dim or one element);
 *   - no alpha → alpha = rank, scale 1 (diffusers, PEFT default);
 *   - alpha 0 → treated as rank, scale 1 (kohya-ss networks/lora.py and
 *     LyCORIS both replace a zero alpha by lora_dim);
 *   - a `.scale` tensor overrides alpha/r;
 *   - rank r is the inner dimension of the low-rank factor: down's dim 0
 *     (LoRA, LoCon, Tucker), hada_w1_b's dim 0 (LoHa), for LoKr lokr_w2_b's
 *     dim 0, else lokr_w1_b's (ComfyUI comfy/weight_adapter/lokr.py);
 *     LoKr with both factors full has scale 1 (LyCORIS modules/lokr.py);
 *   - PEFT files carry no alpha tensor: diffusers writes the LoraConfig as
 *     JSON into the safetensors metadata key "lora_adapter_metadata" (keys
 *     "lora_alpha", "alpha_pattern", "use_rslora", prefixed "unet." /
 *     "text_encoder." when saved by a pipeline); we read lora_alpha from
 *     there (alpha_pattern entries match a module name suffix at a '.'),
 *     else from a plain "lora_alpha" metadata string, else alpha = rank.
 *     use_rslora gives scale alpha/√r (PEFT tuners/lora/layer.py).
 */
#include "lora_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct suffix_rule {
    const char *suffix;
    lm_lora_factor fac;
    lm_lora_convention conv;   /* LM_LORA_UNKNOWN: any convention (alpha, scale) */
    size_t keep;               /* characters of the suffix kept in the name (attnproc "_lora") */
} suffix_rule;

/* A key takes the longest suffix it ends with, so the order here is only
 * for reading (".lora.down.weight" and "_lora.down.weight" differ in the
 * character before "lora", and no suffix ends another one). */
static const suffix_rule RULES[] = {
    { ".lora_down.weight", LM_FAC_DOWN, LM_LORA_KOHYA, 0 },
    { ".lora_up.weight", LM_FAC_UP, LM_LORA_KOHYA, 0 },
    { ".lora_mid.weight", LM_FAC_MID, LM_LORA_KOHYA, 0 },
    { ".hada_w1_a", LM_FAC_HADA_W1A, LM_LORA_KOHYA, 0 },
    { ".hada_w1_b", LM_FAC_HADA_W1B, LM_LORA_KOHYA, 0 },
    { ".hada_w2_a", LM_FAC_HADA_W2A, LM_LORA_KOHYA, 0 },
    { ".hada_w2_b", LM_FAC_HADA_W2B, LM_LORA_KOHYA, 0 },
    { ".hada_t1", LM_FAC_HADA_T1, LM_LORA_KOHYA, 0 },
    { ".hada_t2", LM_FAC_HADA_T2, LM_LORA_KOHYA, 0 },
    { ".lokr_w1", LM_FAC_LOKR_W1, LM_LORA_KOHYA, 0 },
    { ".lokr_w1_a", LM_FAC_LOKR_W1A, LM_LORA_KOHYA, 0 },
    { ".lokr_w1_b", LM_FAC_LOKR_W1B, LM_LORA_KOHYA, 0 },
    { ".lokr_w2", LM_FAC_LOKR_W2, LM_LORA_KOHYA, 0 },
    { ".lokr_w2_a", LM_FAC_LOKR_W2A, LM_LORA_KOHYA, 0 },
    { ".lokr_w2_b", LM_FAC_LOKR_W2B, LM_LORA_KOHYA, 0 },
    { ".lokr_t2", LM_FAC_LOKR_T2, LM_LORA_KOHYA, 0 },
    { ".dora_scale", LM_FAC_DORA, LM_LORA_KOHYA, 0 },
    { ".diff", LM_FAC_DIFF, LM_LORA_KOHYA, 0 },
    { ".diff_b", LM_FAC_DIFF_B, LM_LORA_KOHYA, 0 },
    { ".lora.down.weight", LM_FAC_DOWN, LM_LORA_DIFFUSERS, 0 },
    { ".lora.up.weight", LM_FAC_UP, LM_LORA_DIFFUSERS, 0 },
    { ".lora_linear_layer.down.weight", LM_FAC_DOWN, LM_LORA_DIFFUSERS, 0 },
    { ".lora_linear_layer.up.weight", LM_FAC_UP, LM_LORA_DIFFUSERS, 0 },
    { "_lora.down.weight", LM_FAC_DOWN, LM_LORA_DIFFUSERS_ATTNPROC, 5 },
    { "_lora.up.weight", LM_FAC_UP, LM_LORA_DIFFUSERS_ATTNPROC, 5 },
    { ".lora_A.weight", LM_FAC_DOWN, LM_LORA_PEFT, 0 },
    { ".lora_B.weight", LM_FAC_UP, LM_LORA_PEFT, 0 },
    { ".lora_magnitude_vector", LM_FAC_DORA, LM_LORA_PEFT, 0 },
    { ".lora_magnitude_vector.weight", LM_FAC_DORA, LM_LORA_PEFT, 0 },
    { ".alpha", LM_FAC_ALPHA, LM_LORA_UNKNOWN, 0 },
    { ".scale", LM_FAC_SCALE, LM_LORA_UNKNOWN, 0 },
};
#define N_RULES (sizeof RULES / sizeof RULES[0])


/* Matches key against the rule table; returns the rule or NULL. */
static const suffix_rule *match_key(const char *key, size_t *name_len)
{
    size_t n = strlen(key);
    const suffix_rule *best = NULL;
    size_t best_len = 0;
    for (size_t r = 0; r < N_RULES; r++) {
        size_t sl = strlen(RULES[r].suffix);
        if (sl < n && sl > best_len && memcmp(key + n - sl, RULES[r].suffix, sl) == 0) {
            best = &RULES[r];
            best_len = sl;
        }
    }
    if (best) *name_len = n - best_len + best->keep;
    return best;
}

const char *lm_lora_convention_name(lm_lora_convention c)
{
    switch (c) {
    case LM_LORA_KOHYA: return "kohya";
    case LM_LORA_DIFFUSERS: return "diffusers";
    case LM_LORA_DIFFUSERS_ATTNPROC: return "diffusers-attnproc";
    case LM_LORA_PEFT: return "peft";
    default: return "unknown";
    }
}

const char *lm_module_kind_name(lm_module_kind k)
{
    switch (k) {
    case LM_MOD_LORA: return "lora";
    case LM_MOD_TUCKER: return "tucker";
    case LM_MOD_LOHA: return "loha";
    case LM_MOD_LOKR: return "lokr";
    case LM_MOD_FULL: return "full";
    default: return "unknown";
    }
}

const char *lm_component_name(lm_component c)
{
    switch (c) {
    case LM_COMP_TE: return "te";
    case LM_COMP_TE2: return "te2";
    default: return "unet";
    }
}

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Component from the name's prefix; a name without one is a UNet module
 * (attention-processor files have no prefix and cover the UNet only). */
static lm_component component_of(const char *name)
{
    if (starts(name, "lora_te2_") || starts(name, "text_encoder_2.")) return LM_COMP_TE2;
    if (starts(name, "lora_te1_") || starts(name, "lora_te_") || starts(name, "text_encoder.")) return LM_COMP_TE;
    if (starts(name, "base_model.model.")) {
        const char *rest = name + strlen("base_model.model.");
        if (starts(rest, "text_model.") || starts(rest, "text_encoder.")) return LM_COMP_TE;
        if (starts(rest, "text_encoder_2.")) return LM_COMP_TE2;
    }
    return LM_COMP_UNET;
}

/* Majority vote of the keys' conventions; ties go to the earlier enum value. */
static lm_lora_convention vote(const lm_source *s)
{
    size_t votes[LM_LORA_PEFT + 1] = {0};
    for (size_t i = 0; i < lm_source_count(s); i++) {
        size_t nl;
        const suffix_rule *r = match_key(lm_source_entry(s, i)->name, &nl);
        if (r && r->conv != LM_LORA_UNKNOWN) votes[r->conv]++;
    }
    lm_lora_convention best = LM_LORA_UNKNOWN;
    for (int c = LM_LORA_KOHYA; c <= LM_LORA_PEFT; c++)
        if (votes[c] > votes[best]) best = (lm_lora_convention)c;
    return best;
}

lm_lora_convention lm_lora_detect(const lm_source *s)
{
    return s ? vote(s) : LM_LORA_UNKNOWN;
}

/* ---- grouping ---------------------------------------------------------- */

typedef struct rec {
    char *name;
    lm_lora_factor fac;
    lm_lora_convention conv;
    size_t entry;
} rec;

static int cmp_rec(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return x->entry < y->entry ? -1 : x->entry > y->entry;
}

static void free_mods(lm_lora *l)
{
    for (size_t i = 0; i < l->n_mods; i++) free(l->mods[i].name_buf);
    free(l->mods);
    for (size_t i = 0; i < l->n_ignored; i++) free(l->ignored[i]);
    free(l->ignored);
}

void lm_lora_close(lm_lora *l)
{
    if (!l) return;
    free_mods(l);
    lm_source_close(l->owned);
    free(l);
}

static int oom(lm_err *err, const lm_source *s)
{
    return lm_err_set(err, LM_ENOMEM, lm_source_path(s), NULL, LM_ERR_NO_OFFSET, "out of memory");
}

static int add_ignored(lm_lora *l, const char *key, size_t *cap, lm_err *err)
{
    if (l->n_ignored == *cap) {
        size_t nc = *cap ? 2 * *cap : 16;
        char **p = realloc(l->ignored, nc * sizeof *p);
        if (!p) return oom(err, l->src);
        l->ignored = p;
        *cap = nc;
    }
    if (!(l->ignored[l->n_ignored] = strdup(key))) return oom(err, l->src);
    l->n_ignored++;
    return 0;
}

static int build(lm_lora *l, lm_err *err)
{
    const lm_source *s = l->src;
    size_t n = lm_source_count(s), nrec = 0, cap_ign = 0;
    int rc = 0;
    rec *recs = calloc(n ? n : 1, sizeof *recs);
    l->mods = calloc(n ? n : 1, sizeof *l->mods);
    if (!recs || !l->mods) { free(recs); return oom(err, s); }
    lm_lora_meta pm;
    lm_lora_meta_load(&pm, s);
    l->convention = vote(s);

    for (size_t i = 0; i < n && !rc; i++) {
        const char *key = lm_source_entry(s, i)->name;
        size_t nl;
        const suffix_rule *r = match_key(key, &nl);
        if (!r) { rc = add_ignored(l, key, &cap_ign, err); continue; }
        rec *c = &recs[nrec];
        if (!(c->name = strndup(key, nl))) { rc = oom(err, s); break; }
        c->fac = r->fac;
        c->conv = r->conv;
        c->entry = i;
        nrec++;
    }
    if (!rc) qsort(recs, nrec, sizeof *recs, cmp_rec);

    for (size_t a = 0; a < nrec && !rc;) {
        size_t b = a;
        while (b < nrec && strcmp(recs[a].name, recs[b].name) == 0) b++;
        lm_lora_mod *m = &l->mods[l->n_mods];
        memset(m, 0, sizeof *m);
        for (int f = 0; f < LM_FAC_COUNT; f++) m->fac[f] = -1;
        m->name_buf = recs[a].name;
        recs[a].name = NULL;
        m->pub.name = m->name_buf;
        m->pub.convention = LM_LORA_UNKNOWN;
        l->n_mods++;
        for (size_t k = a; k < b && !rc; k++) {
            if (m->fac[recs[k].fac] >= 0) {
                rc = lm_err_set(err, LM_EINPUT, lm_source_path(s), lm_source_entry(s, recs[k].entry)->name,
                                LM_ERR_NO_OFFSET, "second %s factor for module %s (first: %s)",
                                lm_lora_fac_name(recs[k].fac), m->pub.name,
                                lm_source_entry(s, (size_t)m->fac[recs[k].fac])->name);
                break;
            }
            m->fac[recs[k].fac] = (int64_t)recs[k].entry;
            if (m->pub.convention == LM_LORA_UNKNOWN) m->pub.convention = recs[k].conv;
        }
        if (rc) break;
        if (m->pub.convention == LM_LORA_UNKNOWN) m->pub.convention = l->convention;
        m->pub.component = component_of(m->pub.name);
        int r = lm_lora_check_module(err, l, m, &pm);
        if (r < 0) { rc = r; break; }
        if (r == 1) {   /* only alpha/scale: not a module */
            for (int f = 0; f < LM_FAC_COUNT && !rc; f++)
                if (m->fac[f] >= 0) rc = add_ignored(l, lm_source_entry(s, (size_t)m->fac[f])->name, &cap_ign, err);
            free(m->name_buf);
            l->n_mods--;
        }
        a = b;
    }
    for (size_t k = 0; k < nrec; k++) free(recs[k].name);
    free(recs);
    lm_lora_meta_free(&pm);
    if (!rc && l->n_mods == 0)
        rc = lm_err_set(err, LM_EINPUT, lm_source_path(s), NULL, LM_ERR_NO_OFFSET,
                        "no LoRA modules: none of the %zu tensors has a LoRA key suffix "
                        "(lora_down/lora_up, lora.down/lora.up, lora_A/lora_B, hada_*, lokr_*, diff)", n);
    return rc;
}

int lm_lora_from_source(lm_lora **out, const lm_source *src, lm_err *err)
{
    *out = NULL;
    lm_lora *l = calloc(1, sizeof *l);
    if (!l) return oom(err, src);
    l->src = src;
    int rc = build(l, err);
    if (rc) { lm_lora_close(l); return rc; }
    *out = l;
    return 0;
}

int lm_lora_open(lm_lora **out, const char *path, const lm_open_opts *opts, lm_err *err)
{
    lm_source *s;
    *out = NULL;
    int rc = lm_source_open(&s, path, opts, err);
    if (rc) return rc;
    rc = lm_lora_from_source(out, s, err);
    if (rc) { lm_source_close(s); return rc; }
    (*out)->owned = s;
    return 0;
}

lm_lora_convention lm_lora_convention_of(const lm_lora *l) { return l->convention; }
const lm_source *lm_lora_source(const lm_lora *l) { return l->src; }
size_t lm_lora_count(const lm_lora *l) { return l->n_mods; }
const lm_lora_module *lm_lora_module_at(const lm_lora *l, size_t i) { return i < l->n_mods ? &l->mods[i].pub : NULL; }
size_t lm_lora_ignored_count(const lm_lora *l) { return l->n_ignored; }
const char *lm_lora_ignored_at(const lm_lora *l, size_t i) { return i < l->n_ignored ? l->ignored[i] : NULL; }

int64_t lm_lora_factor_entry(const lm_lora *l, size_t i, lm_lora_factor f)
{
    if (i >= l->n_mods || (int)f < 0 || f >= LM_FAC_COUNT) return -1;
    return l->mods[i].fac[f];
}

const char *lm_lora_algo_name(const lm_lora *l)
{
    int seen[LM_MOD_FULL + 1] = {0}, locon = 0;
    for (size_t i = 0; i < l->n_mods; i++) {
        const lm_lora_module *p = &l->mods[i].pub;
        if (p->has_dora) return "dora";
        seen[p->kind] = 1;
        if (p->kind == LM_MOD_TUCKER || (p->kind == LM_MOD_LORA && p->ndim == 4 && (p->shape[2] > 1 || p->shape[3] > 1)))
            locon = 1;
    }
    int kinds = 0;
    for (int k = 0; k <= LM_MOD_FULL; k++) kinds += seen[k];
    if (seen[LM_MOD_TUCKER]) kinds -= seen[LM_MOD_LORA];   /* LoCon = LoRA + Tucker */
    if (kinds > 1) return "mixed";
    if (seen[LM_MOD_LOHA]) return "loha";
    if (seen[LM_MOD_LOKR]) return "lokr";
    if (seen[LM_MOD_FULL]) return "full";
    return locon ? "locon" : "lora";
}

int lm_lora_read_factor(const lm_lora *l, int64_t idx, float **out, lm_err *err)
{
    *out = NULL;
    const lm_entry *e = lm_source_entry(l->src, (size_t)idx);
    if (!e) return lm_err_set(err, LM_EINTERNAL, lm_source_path(l->src), NULL, LM_ERR_NO_OFFSET, "factor index %lld out of range", (long long)idx);
    float *buf = malloc((size_t)(e->numel ? e->numel : 1) * sizeof *buf);
    if (!buf) return lm_err_set(err, LM_ENOMEM, lm_source_path(l->src), e->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_source_read_f32(l->src, (size_t)idx, buf, err);
    if (rc) { free(buf); lm_err_file(err, lm_source_path(l->src)); lm_err_key(err, e->name); return rc; }
    *out = buf;
    return 0;
}
