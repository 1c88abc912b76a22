/* Validating a LoRA module's factors: which kind they form, their shapes,
 * rank, alpha and scale. See the suffix and alpha tables in lora_parse.c and
 * the formulas in lora_delta.c; every refusal is LM_EINPUT naming the key. */
#include "lora_impl.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *FAC_NAMES[LM_FAC_COUNT] = {
    "up", "down", "lora_mid", "alpha", "scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "DoRA magnitude", "diff", "diff_b",
};

const char *lm_lora_fac_name(lm_lora_factor f)
{
    return (int)f >= 0 && f < LM_FAC_COUNT ? FAC_NAMES[f] : "factor";
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

static int has_any(const lm_lora_mod *m, lm_lora_factor lo, lm_lora_factor hi)
{
    for (int f = (int)lo; f <= (int)hi; f++) if (m->fac[f] >= 0) return 1;
    return 0;
}

int lm_lora_check_module(lm_err *err, const lm_lora *l, lm_lora_mod *m, const lm_lora_meta *pm)
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
        have_alpha = lm_lora_meta_alpha(pm, p->name, &alpha, &rslora);
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
