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

#include <cJSON.h>
#include <limits.h>
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

/* Longer suffixes that end another one come first (".lokr_w1_a" before ".lokr_w1"
 * never collide since ends-with is exact, but ".lora_magnitude_vector.weight"
 * must win over nothing shorter; order is for reading). */
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

static const char *FAC_NAMES[LM_FAC_COUNT] = {
    "up", "down", "lora_mid", "alpha", "scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "DoRA magnitude", "diff", "diff_b",
};

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

static void fmt_shape(const lm_entry *e, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "%s[", lm_dtype_name(e->dtype));
    for (int d = 0; d < e->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)e->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static const lm_entry *fent(const lm_lora *l, const lm_lora_mod *m, lm_lora_factor f)
{
    return f < LM_FAC_COUNT && m->fac[f] >= 0 ? lm_source_entry(l->src, (size_t)m->fac[f]) : NULL;
}

static int bad(lm_err *err, const lm_lora *l, const lm_lora_mod *m, lm_lora_factor f,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* LM_EINPUT naming the factor's key (or the module name) and the reason. */
static int bad(lm_err *err, const lm_lora *l, const lm_lora_mod *m, lm_lora_factor f,
               const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const lm_entry *e = fent(l, m, f);
    return lm_err_set(err, LM_EINPUT, lm_source_path(l->src), e ? e->name : m->pub.name,
                      LM_ERR_NO_OFFSET, "%s", msg);
}

/* Factor f must be a float tensor with lo..hi dimensions. */
static int need(lm_err *err, const lm_lora *l, const lm_lora_mod *m, lm_lora_factor f, int lo, int hi)
{
    const lm_entry *e = fent(l, m, f);
    char sh[128];
    fmt_shape(e, sh, sizeof sh);
    if (!lm_dtype_is_float(e->dtype))
        return bad(err, l, m, f, "%s must be a float tensor, got %s", FAC_NAMES[f], sh);
    if (e->ndim < lo || e->ndim > hi) {
        if (lo == hi) return bad(err, l, m, f, "%s must have %d dimensions, got %s", FAC_NAMES[f], lo, sh);
        return bad(err, l, m, f, "%s must have %d to %d dimensions, got %s", FAC_NAMES[f], lo, hi, sh);
    }
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] == 0) return bad(err, l, m, f, "%s has an empty dimension: %s", FAC_NAMES[f], sh);
    return 0;
}

/* The partner of f (a and b of a pair) must be present. */
static int pair(lm_err *err, const lm_lora *l, const lm_lora_mod *m, lm_lora_factor a, lm_lora_factor b)
{
    if (m->fac[a] >= 0 && m->fac[b] < 0)
        return bad(err, l, m, a, "%s factor has no matching %s factor", FAC_NAMES[a], FAC_NAMES[b]);
    if (m->fac[b] >= 0 && m->fac[a] < 0)
        return bad(err, l, m, b, "%s factor has no matching %s factor", FAC_NAMES[b], FAC_NAMES[a]);
    return 0;
}

static int read_scalar(lm_err *err, const lm_lora *l, const lm_lora_mod *m, lm_lora_factor f, float *v)
{
    const lm_entry *e = fent(l, m, f);
    char sh[128];
    fmt_shape(e, sh, sizeof sh);
    if (!lm_dtype_is_float(e->dtype) || e->numel != 1)
        return bad(err, l, m, f, "%s must be a float scalar (0-dim or one element), got %s", FAC_NAMES[f], sh);
    float x;
    int rc = lm_source_read_f32(l->src, (size_t)m->fac[f], &x, err);
    if (rc) return rc;
    if (!isfinite(x)) return bad(err, l, m, f, "%s is not finite (%g)", FAC_NAMES[f], (double)x);
    *v = x;
    return 0;
}

#define DIM(f, k) (fent(l, m, (f))->shape[(k)])
#define NDIM(f) (fent(l, m, (f))->ndim)
#define HAS(f) (m->fac[(f)] >= 0)
#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

static int rank_mismatch(lm_err *err, const lm_lora *l, const lm_lora_mod *m,
                         lm_lora_factor a, int da, lm_lora_factor b, int db)
{
    char sa[128], sb[128];
    fmt_shape(fent(l, m, a), sa, sizeof sa);
    fmt_shape(fent(l, m, b), sb, sizeof sb);
    return bad(err, l, m, a, "rank mismatch: %s %s dim %d is %lld but %s %s dim %d is %lld",
               FAC_NAMES[a], sa, da, (long long)DIM(a, da), FAC_NAMES[b], sb, db, (long long)DIM(b, db));
}

/* up·down: up [out, r(,1,1)], down [r, in(, kh, kw)]. */
static int check_lora(lm_err *err, const lm_lora *l, lm_lora_mod *m)
{
    lm_lora_module *p = &m->pub;
    TRY(pair(err, l, m, LM_FAC_UP, LM_FAC_DOWN));
    TRY(need(err, l, m, LM_FAC_UP, 2, 4));
    TRY(need(err, l, m, LM_FAC_DOWN, 2, 4));
    if (NDIM(LM_FAC_UP) == 3 || NDIM(LM_FAC_DOWN) == 3)
        return bad(err, l, m, NDIM(LM_FAC_UP) == 3 ? LM_FAC_UP : LM_FAC_DOWN, "3-dimensional (conv1d) factors are not supported");
    if (DIM(LM_FAC_UP, 1) != DIM(LM_FAC_DOWN, 0)) return rank_mismatch(err, l, m, LM_FAC_UP, 1, LM_FAC_DOWN, 0);
    if (NDIM(LM_FAC_UP) == 4 && (DIM(LM_FAC_UP, 2) != 1 || DIM(LM_FAC_UP, 3) != 1))
        return bad(err, l, m, LM_FAC_UP, "up factor of a conv LoRA must be 1x1, got %lldx%lld",
                   (long long)DIM(LM_FAC_UP, 2), (long long)DIM(LM_FAC_UP, 3));
    p->kind = LM_MOD_LORA;
    p->rank = (int)DIM(LM_FAC_DOWN, 0);
    p->shape[0] = DIM(LM_FAC_UP, 0);
    p->shape[1] = DIM(LM_FAC_DOWN, 1);
    if (NDIM(LM_FAC_UP) == 4 || NDIM(LM_FAC_DOWN) == 4) {
        p->ndim = 4;
        p->shape[2] = NDIM(LM_FAC_DOWN) == 4 ? DIM(LM_FAC_DOWN, 2) : 1;
        p->shape[3] = NDIM(LM_FAC_DOWN) == 4 ? DIM(LM_FAC_DOWN, 3) : 1;
    } else {
        p->ndim = 2;
    }
    return 0;
}

/* LoCon Tucker: up [out, r1(,1,1)], mid [r1, r2, kh, kw], down [r2, in(,1,1)]. */
static int check_tucker(lm_err *err, const lm_lora *l, lm_lora_mod *m)
{
    lm_lora_module *p = &m->pub;
    if (!HAS(LM_FAC_UP) || !HAS(LM_FAC_DOWN)) {
        lm_lora_factor missing = HAS(LM_FAC_UP) ? LM_FAC_DOWN : LM_FAC_UP;
        return bad(err, l, m, LM_FAC_MID, "lora_mid factor without its %s factor", FAC_NAMES[missing]);
    }
    TRY(need(err, l, m, LM_FAC_UP, 2, 4));
    TRY(need(err, l, m, LM_FAC_DOWN, 2, 4));
    TRY(need(err, l, m, LM_FAC_MID, 4, 4));
    for (lm_lora_factor f = LM_FAC_UP; f <= LM_FAC_DOWN; f++)
        if (NDIM(f) == 3 || (NDIM(f) == 4 && (DIM(f, 2) != 1 || DIM(f, 3) != 1)))
            return bad(err, l, m, f, "%s factor of a Tucker LoCon must be 2-D or 1x1", FAC_NAMES[f]);
    if (DIM(LM_FAC_UP, 1) != DIM(LM_FAC_MID, 0)) return rank_mismatch(err, l, m, LM_FAC_UP, 1, LM_FAC_MID, 0);
    if (DIM(LM_FAC_MID, 1) != DIM(LM_FAC_DOWN, 0)) return rank_mismatch(err, l, m, LM_FAC_MID, 1, LM_FAC_DOWN, 0);
    p->kind = LM_MOD_TUCKER;
    p->rank = (int)DIM(LM_FAC_DOWN, 0);
    p->ndim = 4;
    p->shape[0] = DIM(LM_FAC_UP, 0);
    p->shape[1] = DIM(LM_FAC_DOWN, 1);
    p->shape[2] = DIM(LM_FAC_MID, 2);
    p->shape[3] = DIM(LM_FAC_MID, 3);
    return 0;
}

/* One Hadamard/Kronecker factor's product shape: either a·b with
 * a [P, r], b [r, …] (b 2-D or 4-D), or the Tucker form t [r1, r2, kh, kw],
 * a [r1, P], b [r2, Q] → [P, Q, kh, kw]. */
static int product_shape(lm_err *err, const lm_lora *l, const lm_lora_mod *m, lm_lora_factor a,
                         lm_lora_factor b, lm_lora_factor t, int *ndim, int64_t shape[4])
{
    TRY(pair(err, l, m, a, b));
    TRY(need(err, l, m, a, 2, 2));
    if (t != LM_FAC_COUNT && HAS(t)) {
        TRY(need(err, l, m, b, 2, 2));
        TRY(need(err, l, m, t, 4, 4));
        if (DIM(t, 0) != DIM(a, 0)) return rank_mismatch(err, l, m, t, 0, a, 0);
        if (DIM(t, 1) != DIM(b, 0)) return rank_mismatch(err, l, m, t, 1, b, 0);
        *ndim = 4;
        shape[0] = DIM(a, 1);
        shape[1] = DIM(b, 1);
        shape[2] = DIM(t, 2);
        shape[3] = DIM(t, 3);
        return 0;
    }
    TRY(need(err, l, m, b, 2, 4));
    if (NDIM(b) == 3) return bad(err, l, m, b, "3-dimensional (conv1d) factors are not supported");
    if (DIM(a, 1) != DIM(b, 0)) return rank_mismatch(err, l, m, a, 1, b, 0);
    *ndim = NDIM(b);
    shape[0] = DIM(a, 0);
    for (int d = 1; d < NDIM(b); d++) shape[d] = DIM(b, d);
    return 0;
}

static int same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb) return 0;
    for (int d = 0; d < na; d++) if (a[d] != b[d]) return 0;
    return 1;
}

static void shape_str(int nd, const int64_t *s, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < nd && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)s[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* LoHa: (w1a·w1b) ⊙ (w2a·w2b), or the Tucker form with hada_t1/hada_t2
 * (LyCORIS modules/loha.py: t1 [r, r, kh, kw], w1a [r, out], w1b [r, in]). */
static int check_loha(lm_err *err, const lm_lora *l, lm_lora_mod *m)
{
    lm_lora_module *p = &m->pub;
    int n1, n2;
    int64_t s1[4], s2[4];
    if (!HAS(LM_FAC_HADA_W1A) && !HAS(LM_FAC_HADA_W1B))
        return bad(err, l, m, HAS(LM_FAC_HADA_W2A) ? LM_FAC_HADA_W2A : LM_FAC_HADA_W2B, "LoHa module has no hada_w1_a/hada_w1_b pair");
    if (!HAS(LM_FAC_HADA_W2A) && !HAS(LM_FAC_HADA_W2B))
        return bad(err, l, m, HAS(LM_FAC_HADA_W1A) ? LM_FAC_HADA_W1A : LM_FAC_HADA_W1B, "LoHa module has no hada_w2_a/hada_w2_b pair");
    if (HAS(LM_FAC_HADA_T1) != HAS(LM_FAC_HADA_T2))
        return bad(err, l, m, HAS(LM_FAC_HADA_T1) ? LM_FAC_HADA_T1 : LM_FAC_HADA_T2, "hada_t1 and hada_t2 must come together");
    TRY(product_shape(err, l, m, LM_FAC_HADA_W1A, LM_FAC_HADA_W1B, LM_FAC_HADA_T1, &n1, s1));
    TRY(product_shape(err, l, m, LM_FAC_HADA_W2A, LM_FAC_HADA_W2B, LM_FAC_HADA_T2, &n2, s2));
    if (!same_shape(n1, s1, n2, s2)) {
        char a[96], b[96];
        shape_str(n1, s1, a, sizeof a);
        shape_str(n2, s2, b, sizeof b);
        return bad(err, l, m, LM_FAC_HADA_W2A, "LoHa halves disagree: w1 product is %s, w2 product is %s", a, b);
    }
    p->kind = LM_MOD_LOHA;
    p->rank = (int)DIM(LM_FAC_HADA_W1B, 0);
    p->ndim = n1;
    memcpy(p->shape, s1, sizeof s1);
    return 0;
}

/* LoKr: w1 ⊗ w2 (LyCORIS modules/lokr.py, ComfyUI weight_adapter/lokr.py).
 * w1 [a, b] or w1_a [a, r]·w1_b [r, b]; w2 [c, d(, kh, kw)] or
 * w2_a [c, r]·w2_b [r, d…] or Tucker t2 [r, r, kh, kw], w2_a [r, c], w2_b [r, d]. */
static int check_lokr(lm_err *err, const lm_lora *l, lm_lora_mod *m)
{
    lm_lora_module *p = &m->pub;
    int n1, n2;
    int64_t s1[4] = {0}, s2[4] = {0};
    int low1 = 0, low2 = 0;
    if (HAS(LM_FAC_LOKR_W1)) {
        if (HAS(LM_FAC_LOKR_W1A) || HAS(LM_FAC_LOKR_W1B))
            return bad(err, l, m, LM_FAC_LOKR_W1, "LoKr module has both lokr_w1 and lokr_w1_a/lokr_w1_b");
        TRY(need(err, l, m, LM_FAC_LOKR_W1, 2, 2));
        n1 = 2; s1[0] = DIM(LM_FAC_LOKR_W1, 0); s1[1] = DIM(LM_FAC_LOKR_W1, 1);
    } else if (HAS(LM_FAC_LOKR_W1A) || HAS(LM_FAC_LOKR_W1B)) {
        TRY(product_shape(err, l, m, LM_FAC_LOKR_W1A, LM_FAC_LOKR_W1B, LM_FAC_COUNT, &n1, s1));
        if (n1 != 2) return bad(err, l, m, LM_FAC_LOKR_W1B, "lokr_w1_b must be 2-D");
        low1 = 1;
    } else {
        return bad(err, l, m, LM_FAC_COUNT, "LoKr module has neither lokr_w1 nor lokr_w1_a/lokr_w1_b");
    }
    if (HAS(LM_FAC_LOKR_W2)) {
        if (HAS(LM_FAC_LOKR_W2A) || HAS(LM_FAC_LOKR_W2B) || HAS(LM_FAC_LOKR_T2))
            return bad(err, l, m, LM_FAC_LOKR_W2, "LoKr module has both lokr_w2 and lokr_w2_a/lokr_w2_b");
        TRY(need(err, l, m, LM_FAC_LOKR_W2, 2, 4));
        if (NDIM(LM_FAC_LOKR_W2) == 3) return bad(err, l, m, LM_FAC_LOKR_W2, "3-dimensional (conv1d) factors are not supported");
        n2 = NDIM(LM_FAC_LOKR_W2);
        for (int d = 0; d < n2; d++) s2[d] = DIM(LM_FAC_LOKR_W2, d);
    } else if (HAS(LM_FAC_LOKR_W2A) || HAS(LM_FAC_LOKR_W2B)) {
        TRY(product_shape(err, l, m, LM_FAC_LOKR_W2A, LM_FAC_LOKR_W2B, LM_FAC_LOKR_T2, &n2, s2));
        low2 = 1;
    } else {
        return bad(err, l, m, HAS(LM_FAC_LOKR_T2) ? LM_FAC_LOKR_T2 : LM_FAC_COUNT,
                   "LoKr module has neither lokr_w2 nor lokr_w2_a/lokr_w2_b");
    }
    p->kind = LM_MOD_LOKR;
    p->rank = low2 ? (int)DIM(LM_FAC_LOKR_W2B, 0) : low1 ? (int)DIM(LM_FAC_LOKR_W1B, 0) : 0;
    p->ndim = n2;
    if (__builtin_mul_overflow(s1[0], s2[0], &p->shape[0]) || __builtin_mul_overflow(s1[1], s2[1], &p->shape[1]))
        return bad(err, l, m, LM_FAC_COUNT, "LoKr ΔW shape overflows");
    if (n2 == 4) { p->shape[2] = s2[2]; p->shape[3] = s2[3]; }
    return 0;
}

/* LyCORIS full: diff is ΔW itself; diff_b the bias update. */
static int check_full(lm_err *err, const lm_lora *l, lm_lora_mod *m)
{
    lm_lora_module *p = &m->pub;
    if (!HAS(LM_FAC_DIFF)) return bad(err, l, m, LM_FAC_DIFF_B, "diff_b factor has no matching diff factor");
    TRY(need(err, l, m, LM_FAC_DIFF, 1, 4));
    p->kind = LM_MOD_FULL;
    p->rank = 0;
    p->ndim = NDIM(LM_FAC_DIFF);
    for (int d = 0; d < p->ndim; d++) p->shape[d] = DIM(LM_FAC_DIFF, d);
    if (HAS(LM_FAC_DIFF_B)) {
        TRY(need(err, l, m, LM_FAC_DIFF_B, 1, 1));
        if (DIM(LM_FAC_DIFF_B, 0) != p->shape[0])
            return bad(err, l, m, LM_FAC_DIFF_B, "diff_b has %lld elements but diff has %lld output rows",
                       (long long)DIM(LM_FAC_DIFF_B, 0), (long long)p->shape[0]);
        p->has_bias = 1;
    }
    return 0;
}

/* DoRA magnitude: [out] / [out, 1, …] (PEFT, newer LyCORIS: per output row)
 * or [1, in, …] (older LyCORIS: per input column). */
static int check_dora(lm_err *err, const lm_lora *l, lm_lora_mod *m)
{
    TRY(need(err, l, m, LM_FAC_DORA, 1, 4));
    const lm_entry *e = fent(l, m, LM_FAC_DORA);
    int row = e->numel == m->pub.shape[0] && (e->ndim == 1 || e->shape[0] == m->pub.shape[0]);
    int col = e->ndim >= 2 && e->shape[0] == 1;
    if (!row && !col) {
        char a[128], b[96];
        fmt_shape(e, a, sizeof a);
        shape_str(m->pub.ndim, m->pub.shape, b, sizeof b);
        return bad(err, l, m, LM_FAC_DORA, "DoRA magnitude %s fits neither the output rows nor the input columns of ΔW %s", a, b);
    }
    m->pub.has_dora = 1;
    return 0;
}

/* ---- PEFT alpha from metadata ------------------------------------------ */

typedef struct peft_meta {
    cJSON *root;               /* parsed lora_adapter_metadata, or NULL */
    int have_plain;            /* a plain "lora_alpha" metadata string */
    float plain;
} peft_meta;

static const char *comp_prefix(const char *name, const char **rest)
{
    static const char *P[] = { "text_encoder_2", "text_encoder", "unet", "transformer" };
    for (size_t i = 0; i < sizeof P / sizeof P[0]; i++) {
        size_t n = strlen(P[i]);
        if (strncmp(name, P[i], n) == 0 && name[n] == '.') { *rest = name + n + 1; return P[i]; }
    }
    *rest = starts(name, "base_model.model.") ? name + strlen("base_model.model.") : name;
    return NULL;
}

/* root["<prefix>.<key>"], root[prefix][key], or root[key]. */
static const cJSON *meta_item(const cJSON *root, const char *prefix, const char *key)
{
    if (prefix) {
        char k[128];
        snprintf(k, sizeof k, "%s.%s", prefix, key);
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, k);
        if (it) return it;
        const cJSON *sub = cJSON_GetObjectItemCaseSensitive(root, prefix);
        if (cJSON_IsObject(sub) && (it = cJSON_GetObjectItemCaseSensitive(sub, key))) return it;
    }
    return cJSON_GetObjectItemCaseSensitive(root, key);
}

/* Alpha for a PEFT/diffusers module without an alpha tensor; 0 if none known. */
static int meta_alpha(const peft_meta *pm, const char *name, float *alpha, int *rslora)
{
    *rslora = 0;
    if (pm->root) {
        const char *rest;
        const char *prefix = comp_prefix(name, &rest);
        const cJSON *rs = meta_item(pm->root, prefix, "use_rslora");
        *rslora = cJSON_IsTrue(rs);
        const cJSON *pat = meta_item(pm->root, prefix, "alpha_pattern");
        if (cJSON_IsObject(pat)) {
            const cJSON *it;
            size_t rl = strlen(rest);
            cJSON_ArrayForEach(it, pat) {
                size_t kl = strlen(it->string);
                if (!cJSON_IsNumber(it) || kl > rl) continue;
                if (strcmp(rest + rl - kl, it->string) == 0 && (kl == rl || rest[rl - kl - 1] == '.')) {
                    *alpha = (float)it->valuedouble;
                    return 1;
                }
            }
        }
        const cJSON *a = meta_item(pm->root, prefix, "lora_alpha");
        if (cJSON_IsNumber(a)) { *alpha = (float)a->valuedouble; return 1; }
    }
    if (pm->have_plain) { *alpha = pm->plain; return 1; }
    return 0;
}

static void peft_meta_load(peft_meta *pm, const lm_source *s)
{
    memset(pm, 0, sizeof *pm);
    const char *js = lm_source_meta_get(s, "lora_adapter_metadata");
    if (js) {
        pm->root = cJSON_Parse(js);
        if (pm->root && !cJSON_IsObject(pm->root)) { cJSON_Delete(pm->root); pm->root = NULL; }
    }
    const char *plain = lm_source_meta_get(s, "lora_alpha");
    if (plain) {
        char *end;
        double v = strtod(plain, &end);
        if (end != plain && isfinite(v)) { pm->have_plain = 1; pm->plain = (float)v; }
    }
}

/* ---- module assembly ---------------------------------------------------- */

static int has_any(const lm_lora_mod *m, lm_lora_factor lo, lm_lora_factor hi)
{
    for (int f = (int)lo; f <= (int)hi; f++) if (m->fac[f] >= 0) return 1;
    return 0;
}

/* Classifies and validates module m, sets kind, rank, shape, alpha, scale.
 * Returns 1 when m has no factors (only alpha/scale): the caller ignores it. */
static int finish_module(lm_err *err, const lm_lora *l, lm_lora_mod *m, const peft_meta *pm)
{
    lm_lora_module *p = &m->pub;
    int fam_lora = has_any(m, LM_FAC_UP, LM_FAC_MID);
    int fam_hada = has_any(m, LM_FAC_HADA_W1A, LM_FAC_HADA_T2);
    int fam_lokr = has_any(m, LM_FAC_LOKR_W1, LM_FAC_LOKR_T2);
    int fam_full = has_any(m, LM_FAC_DIFF, LM_FAC_DIFF_B);
    if (fam_lora + fam_hada + fam_lokr + fam_full > 1)
        return bad(err, l, m, LM_FAC_COUNT, "module mixes factors of different kinds (%s%s%s%s)",
                   fam_lora ? "lora " : "", fam_hada ? "loha " : "", fam_lokr ? "lokr " : "", fam_full ? "full" : "");
    if (fam_lora) TRY(HAS(LM_FAC_MID) ? check_tucker(err, l, m) : check_lora(err, l, m));
    else if (fam_hada) TRY(check_loha(err, l, m));
    else if (fam_lokr) TRY(check_lokr(err, l, m));
    else if (fam_full) TRY(check_full(err, l, m));
    else if (HAS(LM_FAC_DORA)) return bad(err, l, m, LM_FAC_DORA, "DoRA magnitude without LoRA factors");
    else return 1;
    /* ΔW and every factor fit BLAS int dimensions (lora_delta.c relies on it) */
    for (int f = 0; f < LM_FAC_COUNT; f++)
        if (HAS(f) && fent(l, m, f)->numel > INT_MAX)
            return bad(err, l, m, f, "%s has %lld elements, more than supported (%d)", FAC_NAMES[f],
                       (long long)fent(l, m, f)->numel, INT_MAX);
    int64_t numel = 1;
    for (int d = 0; d < p->ndim; d++)
        if (__builtin_mul_overflow(numel, p->shape[d], &numel) || numel > INT_MAX)
            return bad(err, l, m, LM_FAC_COUNT, "ΔW would have more than %d elements", INT_MAX);
    if (HAS(LM_FAC_DORA)) TRY(check_dora(err, l, m));

    float alpha = 0, scale = 0;
    int have_alpha = HAS(LM_FAC_ALPHA), rslora = 0;
    if (have_alpha) TRY(read_scalar(err, l, m, LM_FAC_ALPHA, &alpha));
    else if ((p->convention == LM_LORA_PEFT || p->convention == LM_LORA_DIFFUSERS) && p->rank > 0)
        have_alpha = meta_alpha(pm, p->name, &alpha, &rslora);
    if (HAS(LM_FAC_SCALE)) {
        TRY(read_scalar(err, l, m, LM_FAC_SCALE, &scale));
        if (!have_alpha) alpha = (float)p->rank;
    } else if (p->rank == 0) {
        scale = 1.0f;           /* full diff, LoKr with both factors full */
        if (!have_alpha) alpha = 0.0f;
    } else if (have_alpha && alpha != 0.0f) {
        scale = rslora ? alpha / sqrtf((float)p->rank) : alpha / (float)p->rank;
    } else {
        scale = 1.0f;           /* no alpha, or alpha 0 (kohya, LyCORIS: alpha = lora_dim) */
        if (!have_alpha) alpha = (float)p->rank;
    }
    p->alpha = alpha;
    p->scale = scale;
    return 0;
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
    peft_meta pm;
    peft_meta_load(&pm, s);
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
                                FAC_NAMES[recs[k].fac], m->pub.name,
                                lm_source_entry(s, (size_t)m->fac[recs[k].fac])->name);
                break;
            }
            m->fac[recs[k].fac] = (int64_t)recs[k].entry;
            if (m->pub.convention == LM_LORA_UNKNOWN) m->pub.convention = recs[k].conv;
        }
        if (rc) break;
        if (m->pub.convention == LM_LORA_UNKNOWN) m->pub.convention = l->convention;
        m->pub.component = component_of(m->pub.name);
        int r = finish_module(err, l, m, &pm);
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
    cJSON_Delete(pm.root);
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
