/* lm_verify_bake: OUT = round_out(BASE + Σ λ_k·ΔW_k), checked tensor by tensor in file
 * order with Σ λ_k·ΔW_k recomputed here (verify.h gives the bound and its derivation).
 * Inputs come from the command line or the recipe in OUT's metadata. */
#include "verify_impl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cblas.h>

enum { CHUNK = 1 << 13 };

typedef struct vupd {
    size_t lora, mod;
    int64_t row0, rows;
    int bias, dora;
} vupd;

typedef struct vctx {
    const char *out;
    lm_verify_report *rep;
    const lm_verify_opts *o;
    lm_source *os, *bs;
    lm_lora **loras;
    const double *lambdas;
    size_t nl;
    size_t *uoff;          /* per base tensor: updates [uoff[t], uoff[t+1]) */
    vupd *upds;
    float *D, *S, *tmp, *fa, *fb;  /* fa/fb: factor scratch */
    size_t cap, fcap_a, fcap_b;
    lm_err *err;
} vctx;

static int oom(lm_err *err) { return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int grow(float **p, size_t *cap, size_t n)
{
    if (n <= *cap) return 0;
    float *q = realloc(*p, (n ? n : 1) * sizeof *q);
    if (!q) return LM_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* ---- chunked fp32 view of a tensor (mapping when there is one, else one read) ---- */

typedef struct chunker {
    const void *raw;
    void *own;
    lm_dtype dt;
    size_t esz, nbytes;
} chunker;

static int chunk_open(chunker *c, const lm_source *s, size_t i, lm_err *err)
{
    const lm_entry *e = lm_source_entry(s, i);
    memset(c, 0, sizeof *c);
    c->dt = e->dtype;
    c->esz = lm_dtype_size(e->dtype);
    c->nbytes = e->nbytes;
    c->raw = lm_source_raw(s, i);
    if (c->raw) return 0;
    if (!(c->own = malloc(e->nbytes ? e->nbytes : 1))) return oom(err);
    int rc = lm_source_read(s, i, c->own, err);
    if (rc) { free(c->own); c->own = NULL; return rc; }
    c->raw = c->own;
    return 0;
}

static void chunk_get(const chunker *c, size_t off, size_t n, float *dst)
{
    lm_convert_to_f32(dst, (const char *)c->raw + off * c->esz, c->dt, n);
}

static void chunk_close(chunker *c)
{
    if (c->own) free(c->own);
    else lmv_release(c->raw, c->nbytes);
    c->own = NULL;
}

/* ---- ½ ulp of a stored value, from its bits (lm_verify_ulp, without libm calls) ---- */

static void ulp_params(lm_dtype dt, int *mant, int *emin)
{
    switch (dt) {
    case LM_DT_F16: *mant = 10; *emin = -14; break;
    case LM_DT_BF16: *mant = 7; *emin = -126; break;
    case LM_DT_F64: *mant = 52; *emin = -126; break;   /* values are read as fp32 */
    default: *mant = 23; *emin = -126; break;
    }
}

/* x finite (it was stored in the dtype and read as fp32, exactly): ½·2^(max(e, emin) − mant),
 * e the binary exponent of |x|, built as the bits of a double. */
static inline double half_ulp(float x, int mant, int emin)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    int e = (int)((b >> 23) & 0xff) - 127;
    if (e < emin) e = emin;
    uint64_t d = (uint64_t)(e - mant - 1 + 1023) << 52;
    double r;
    memcpy(&r, &d, sizeof r);
    return r;
}

/* ---- inputs -------------------------------------------------------------------- */

static int find_or_fail(vctx *v, const lm_recipe_input *ri, char *path, size_t n)
{
    if (lmv_find_input(v->out, ri->name, v->o->search, v->o->n_search, path, n)) return 0;
    return lm_err_set(v->err, LM_EINPUT, v->out, LM_RECIPE_KEY, LM_ERR_NO_OFFSET,
                      "recipe input %s (%s) not found next to the output, in --search directories or in .; give it on the command line",
                      ri->name ? ri->name : "?", ri->role ? ri->role : "lora");
}

/* Fills rep->inputs (base first) from opts or the recipe. */
static int gather_inputs(vctx *v, const lm_recipe *rec, int have)
{
    lm_verify_report *rep = v->rep;
    const lm_verify_opts *o = v->o;
    char path[4096];
    int rc;
    if (have && strcmp(rec->operation, "bake"))
        return lm_err_set(v->err, LM_EINPUT, v->out, LM_RECIPE_KEY, LM_ERR_NO_OFFSET,
                          "the recipe's operation is %s, not bake (a merged LoRA: use lcm-verify lora)", rec->operation);
    if (!o->base && !have)
        return lm_err_set(v->err, LM_EINPUT, v->out, LM_RECIPE_KEY, LM_ERR_NO_OFFSET,
                          "no recipe in the metadata: give --base and -l");
    if (have && (rec->n_inputs < 1 || !rec->inputs[0].role || strcmp(rec->inputs[0].role, "base")))
        return lm_err_set(v->err, LM_EINPUT, v->out, LM_RECIPE_KEY, LM_ERR_NO_OFFSET, "the recipe's first input is not the base");
    const char *base = o->base;
    if (!base) {
        if ((rc = find_or_fail(v, &rec->inputs[0], path, sizeof path))) return rc;
        base = path;
    }
    if (!lmv_add_input(rep, base, "base", 1.0)) return oom(v->err);
    if (o->n_loras || o->base) {
        snprintf(rep->inputs_from, sizeof rep->inputs_from, "command line");
        for (size_t i = 0; i < o->n_loras; i++)
            if (!lmv_add_input(rep, o->loras[i].path, o->loras[i].role ? o->loras[i].role : "lora", o->loras[i].lambda))
                return oom(v->err);
        if (have && !o->n_loras)   /* --base alone: the recipe's LoRAs */
            goto from_recipe;
        if (have) {
            if (rec->n_inputs != o->n_loras + 1)
                lmv_problem(rep, "recipe", v->out, "the recipe lists %zu LoRA%s, the command line %zu",
                            rec->n_inputs - 1, rec->n_inputs == 2 ? "" : "s", o->n_loras);
            for (size_t i = 0; i < o->n_loras && i + 1 < rec->n_inputs; i++)
                if (rec->inputs[i + 1].lambda != o->loras[i].lambda)
                    lmv_problem(rep, "recipe", o->loras[i].path, "λ %.9g on the command line, %.9g in the recipe",
                                o->loras[i].lambda, rec->inputs[i + 1].lambda);
        }
        return 0;
    }
    snprintf(rep->inputs_from, sizeof rep->inputs_from, "recipe");
from_recipe:
    for (size_t i = 1; i < rec->n_inputs; i++) {
        if ((rc = find_or_fail(v, &rec->inputs[i], path, sizeof path))) return rc;
        if (!lmv_add_input(rep, path, rec->inputs[i].role, rec->inputs[i].lambda)) return oom(v->err);
    }
    return 0;
}

/* Resolves every LoRA onto the base and builds the per-tensor update lists. */
static int plan(vctx *v, lm_keymap *km)
{
    lm_verify_report *rep = v->rep;
    size_t nt = lm_source_count(v->bs), n = 0, cap = 0;
    vupd *all = NULL;
    size_t *tgt = NULL;
    int rc = 0;
    for (size_t j = 0; j < v->nl && !rc; j++) {
        lm_lora *l = v->loras[j];
        lm_verify_input *in = &rep->inputs[j + 1];
        size_t nm = lm_lora_count(l), nun = 0;
        lm_target *t = calloc(nm ? nm : 1, sizeof *t);
        if (!t) { rc = oom(v->err); break; }
        if ((rc = lm_keymap_resolve(km, l, 1, t, &nun, v->err))) { lm_err_file(v->err, in->path); free(t); break; }
        in->convention = lm_lora_convention_name(lm_lora_convention_of(l));
        in->modules = nm;
        in->unmatched = nun;
        in->matched = nm - nun;
        size_t listed = 0;
        for (size_t i = 0; i < nm && !rc; i++) {
            const lm_lora_module *m = lm_lora_module_at(l, i);
            if (t[i].tensor < 0) {
                if (!v->o->allow_unmatched && listed++ < 20)
                    lmv_problem(rep, "unmatched", m->name, "module of %s matched no tensor of the base: its ΔW is in no output tensor", in->path);
                continue;
            }
            for (int pass = 0; pass < 1 + (m->has_bias != 0); pass++) {
                if (pass && t[i].bias < 0) continue;   /* the resolver refuses this unless allowed */
                if (n == cap) {
                    cap = cap ? 2 * cap : 64;
                    vupd *na = realloc(all, cap * sizeof *na);
                    size_t *nt2 = realloc(tgt, cap * sizeof *nt2);
                    if (na) all = na;
                    if (nt2) tgt = nt2;
                    if (!na || !nt2) { rc = oom(v->err); break; }
                }
                all[n] = (vupd){ j, i, t[i].row0, t[i].rows, pass, m->has_dora && !pass };
                tgt[n++] = (size_t)(pass ? t[i].bias : t[i].tensor);
            }
        }
        if (!v->o->allow_unmatched && nun > 20)
            lmv_problem(rep, "unmatched", in->path, "%zu more unmatched modules", nun - 20);
        free(t);
    }
    if (!rc) {
        v->uoff = calloc(nt + 1, sizeof *v->uoff);
        v->upds = malloc((n ? n : 1) * sizeof *v->upds);
        size_t *fill = calloc(nt ? nt : 1, sizeof *fill);
        if (!v->uoff || !v->upds || !fill) rc = oom(v->err);
        else {
            for (size_t k = 0; k < n; k++) v->uoff[tgt[k] + 1]++;
            for (size_t t = 0; t < nt; t++) v->uoff[t + 1] += v->uoff[t];
            for (size_t k = 0; k < n; k++) v->upds[v->uoff[tgt[k]] + fill[tgt[k]]++] = all[k];
        }
        free(fill);
    }
    free(all);
    free(tgt);
    return rc;
}

/* ---- one touched tensor ------------------------------------------------------------ */

/* P_k bound of module (l, i) added into S (rows × per floats from the row0 offset):
 * coef·scale·‖up[o,:]‖·‖down[:,c]‖ for plain LoRA; coef·max|ΔW| otherwise. */
static int add_product_bound(vctx *v, const lm_lora *l, size_t i, float *S, int64_t per, int64_t rows, double coef,
                             const float *dw)
{
    const lm_lora_module *m = lm_lora_module_at(l, i);
    int64_t eu = lm_lora_factor_entry(l, i, LM_FAC_UP), ed = lm_lora_factor_entry(l, i, LM_FAC_DOWN);
    int64_t n = rows * per;
    if (m->kind == LM_MOD_LORA && eu >= 0 && ed >= 0 && m->rank > 0) {
        const lm_source *s = lm_lora_source(l);
        const lm_entry *ue = lm_source_entry(s, (size_t)eu), *de = lm_source_entry(s, (size_t)ed);
        int64_t r = m->rank;
        if (ue->numel != rows * r || de->numel != r * per) goto fallback;
        if (grow(&v->fa, &v->fcap_a, (size_t)ue->numel) || grow(&v->fb, &v->fcap_b, (size_t)de->numel)) return oom(v->err);
        int rc = lm_source_read_f32(s, (size_t)eu, v->fa, v->err);
        if (!rc) rc = lm_source_read_f32(s, (size_t)ed, v->fb, v->err);
        if (rc) return rc;
        /* column norms of down into fb[0..per), row norms of up into fa[0..rows) */
        for (int64_t c = 0; c < per; c++) {
            double q = 0;
            for (int64_t k = 0; k < r; k++) q += (double)v->fb[k * per + c] * v->fb[k * per + c];
            v->fb[c] = (float)sqrt(q);
        }
        for (int64_t o = 0; o < rows; o++) {
            double q = 0;
            for (int64_t k = 0; k < r; k++) q += (double)v->fa[o * r + k] * v->fa[o * r + k];
            v->fa[o] = (float)sqrt(q);
        }
        double c0 = coef * fabs((double)m->scale);
        for (int64_t o = 0; o < rows; o++)
            for (int64_t c = 0; c < per; c++) S[o * per + c] += (float)(c0 * v->fa[o] * v->fb[c]);
        return 0;
    }
fallback:;
    float mx = 0;
    for (int64_t k = 0; k < n; k++) if (fabsf(dw[k]) > mx) mx = fabsf(dw[k]);
    for (int64_t k = 0; k < n; k++) S[k] += (float)(coef * mx);
    return 0;
}

/* Says what the error of a failed tensor looks like: e projected on each module's ΔW. */
static void diagnose(vctx *v, size_t bt, lm_verify_tensor *vt, const double *e, size_t n)
{
    const lm_entry *be = lm_source_entry(v->bs, bt);
    int64_t per = be->ndim > 1 ? be->numel / be->shape[0] : 1;
    double ee = 0;
    for (size_t i = 0; i < n; i++) ee += e[i] * e[i];
    double best = 0;
    for (size_t k = v->uoff[bt]; k < v->uoff[bt + 1]; k++) {
        const vupd *u = &v->upds[k];
        if (u->dora) continue;
        const lm_lora_module *m = lm_lora_module_at(v->loras[u->lora], u->mod);
        int rc = u->bias ? lm_lora_delta_bias(v->loras[u->lora], u->mod, v->tmp, NULL)
                         : lm_lora_delta(v->loras[u->lora], u->mod, v->tmp, NULL);
        if (rc) continue;
        double ed = 0, dd = 0;
        size_t base = (size_t)(u->row0 * per), len = (size_t)(u->rows * per);
        for (size_t i = 0; i < len; i++) { ed += e[base + i] * v->tmp[i]; dd += (double)v->tmp[i] * v->tmp[i]; }
        if (dd == 0) continue;
        double c = ed / dd, explained = ee > 0 ? c * c * dd / ee : 0;
        if (explained < 0.9 || explained < best) continue;
        best = explained;
        double lam = v->lambdas[u->lora], eff = lam + c;
        const char *what = fabs(eff) <= 0.05 * fabs(lam) ? "ΔW missing"
                         : fabs(eff - 2 * lam) <= 0.05 * fabs(lam) ? "λ applied twice"
                         : "wrong λ";
        snprintf(vt->diagnosis, sizeof vt->diagnosis, "%s: %s of %s has effective λ %.4g, expected %.4g",
                 what, m->name, v->rep->inputs[u->lora + 1].path, eff, lam);
    }
    if (!vt->diagnosis[0])
        snprintf(vt->diagnosis, sizeof vt->diagnosis, "the error is no multiple of any module's ΔW: a transposed, misplaced or foreign ΔW?");
}

/* Σ λ ΔW of tensor bt into v->D and the fp32 slack magnitudes into v->S. */
static int build_delta(vctx *v, size_t bt)
{
    const lm_entry *be = lm_source_entry(v->bs, bt);
    size_t n = (size_t)be->numel, K = v->uoff[bt + 1] - v->uoff[bt];
    int64_t per = be->ndim > 1 ? be->numel / be->shape[0] : 1;
    int has_dora = 0;
    memset(v->D, 0, n * sizeof *v->D);
    memset(v->S, 0, n * sizeof *v->S);
    for (size_t k = v->uoff[bt]; k < v->uoff[bt + 1]; k++) {
        const vupd *u = &v->upds[k];
        const lm_lora *l = v->loras[u->lora];
        const lm_lora_module *m = lm_lora_module_at(l, u->mod);
        const char *lpath = v->rep->inputs[u->lora + 1].path;
        if (u->dora) { has_dora = 1; continue; }
        int64_t len = u->rows * per;
        if (u->row0 < 0 || u->row0 + u->rows > be->shape[0] ||
            (!u->bias && m->shape[0] != u->rows))
            return lm_err_set(v->err, LM_EMISMATCH, lpath, m->name, LM_ERR_NO_OFFSET,
                              "ΔW with %lld rows does not fit rows %lld..%lld of %s", (long long)m->shape[0],
                              (long long)u->row0, (long long)(u->row0 + u->rows), be->name);
        int64_t mn = 1;
        for (int d = 0; d < m->ndim; d++) mn *= m->shape[d];
        if (!u->bias && mn != len)
            return lm_err_set(v->err, LM_EMISMATCH, lpath, m->name, LM_ERR_NO_OFFSET,
                              "ΔW has %lld elements, its target %s rows %lld elements", (long long)mn, be->name, (long long)len);
        int rc = u->bias ? lm_lora_delta_bias(l, u->mod, v->tmp, v->err) : lm_lora_delta(l, u->mod, v->tmp, v->err);
        if (rc) { lm_err_file(v->err, lpath); lm_err_key(v->err, m->name); return rc; }
        float lam = (float)v->lambdas[u->lora];
        float *D = v->D + u->row0 * per, *S = v->S + u->row0 * per;
        for (int64_t i = 0; i < len; i++) {
            float d = lam * v->tmp[i];
            D[i] += d;
            S[i] += (float)(K + 1) * fabsf(d);
        }
        if (!u->bias && (rc = add_product_bound(v, l, u->mod, S, per, u->rows, (double)(m->rank + 2) * fabs((double)lam), v->tmp)))
            return rc;
    }
    if (!has_dora) return 0;
    /* DoRA is not linear in λ: W' = m ⊙ V/‖V‖ applied after the plain modules, as the bake does */
    float *W = malloc(n * sizeof *W), *E = malloc(n * sizeof *E);
    int rc = (W && E) ? lm_source_read_f32(v->bs, bt, W, v->err) : oom(v->err);
    for (size_t i = 0; !rc && i < n; i++) E[i] = W[i] + v->D[i];
    for (size_t k = v->uoff[bt]; !rc && k < v->uoff[bt + 1]; k++) {
        const vupd *u = &v->upds[k];
        if (!u->dora) continue;
        rc = lm_lora_apply(v->loras[u->lora], u->mod, (float)v->lambdas[u->lora], E, be->shape, be->ndim, u->row0, u->rows, v->err);
    }
    for (size_t i = 0; !rc && i < n; i++) {
        v->D[i] = E[i] - W[i];
        v->S[i] += (float)(K + 1) * (fabsf(E[i]) + fabsf(v->D[i]));
    }
    free(W);
    free(E);
    return rc;
}

static lm_verify_tensor *add_tensor(lm_verify_report *rep, const char *name, lm_dtype dt, int modules)
{
    lm_verify_tensor *t = realloc(rep->t, (rep->n_t + 1) * sizeof *t);
    if (!t) return NULL;
    rep->t = t;
    t += rep->n_t;
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return NULL;
    t->dtype = dt;
    t->modules = modules;
    t->ok = 1;
    rep->n_t++;
    return t;
}

static int check_touched(vctx *v, size_t ot, size_t bt)
{
    const lm_entry *oe = lm_source_entry(v->os, ot);
    size_t n = (size_t)oe->numel, K = v->uoff[bt + 1] - v->uoff[bt];
    if (!lm_dtype_is_float(oe->dtype))
        return lmv_problem(v->rep, "tensor", oe->name, "updated tensor stored as %s, not a float", lm_dtype_name(oe->dtype)) ? oom(v->err) : 0;
    int rc = build_delta(v, bt);
    if (rc) return rc;
    lm_verify_tensor *vt = add_tensor(v->rep, oe->name, oe->dtype, (int)K);
    if (!vt) return oom(v->err);
    chunker co, cb;
    if ((rc = chunk_open(&co, v->os, ot, v->err))) return rc;
    if ((rc = chunk_open(&cb, v->bs, bt, v->err))) { chunk_close(&co); return rc; }
    double u = lm_verify_unit_roundoff(LM_DT_F32), ee = 0, dd = 0;
    int mant, emin;
    ulp_params(oe->dtype, &mant, &emin);
    float ob[CHUNK], wb[CHUNK];
    double *e = NULL;    /* signed errors, kept only to diagnose a failure */
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        chunk_get(&co, off, m, ob);
        chunk_get(&cb, off, m, wb);
        for (size_t i = 0; i < m; i++) {
            double o = ob[i], w = wb[i], d = v->D[off + i];
            if (!isfinite(w) || !isfinite(d)) continue;   /* non-finite base values are the base's */
            if (isnan(o)) { vt->nan++; continue; }
            if (isinf(o)) {
                vt->inf++;
                if (isfinite((float)(w + d))) vt->overflow++;   /* the fp32 sum was finite */
                continue;
            }
            double err = fabs(o - w - d);
            double b = half_ulp(ob[i], mant, emin) + 2 * u * ((double)v->S[off + i] + (double)(K + 1) * fabs(w));
            if (err > vt->max_abs) vt->max_abs = err;
            if (b > vt->bound_max) vt->bound_max = b;
            if (err > vt->ratio * b) vt->ratio = err / b;   /* b > 0: a division only when the worst grows */
            if (err > b) vt->over++;
            ee += err * err;
            dd += d * d;
        }
    }
    vt->rel = dd > 0 ? sqrt(ee / dd) : 0;
    if (vt->over && !vt->overflow) {
        e = malloc(n * sizeof *e);
        for (size_t off = 0; e && off < n; off += CHUNK) {
            size_t m = n - off < CHUNK ? n - off : CHUNK;
            chunk_get(&co, off, m, ob);
            chunk_get(&cb, off, m, wb);
            for (size_t i = 0; i < m; i++) {
                double x = (double)ob[i] - wb[i] - v->D[off + i];
                e[off + i] = isfinite(x) ? x : 0;
            }
        }
        if (e) diagnose(v, bt, vt, e, n);
        free(e);
    }
    chunk_close(&co);
    chunk_close(&cb);
    lm_verify_report *rep = v->rep;
    rep->nan += vt->nan;
    rep->inf += vt->inf;
    rep->overflow += vt->overflow;
    if (vt->ratio > rep->worst_ratio) rep->worst_ratio = vt->ratio;
    int bad = 0;
    if (vt->overflow)
        bad |= lmv_problem(rep, "overflow", oe->name, "%lld finite values became ±Inf in %s", (long long)vt->overflow, lm_dtype_name(oe->dtype));
    if (vt->nan || vt->inf > vt->overflow)
        bad |= lmv_problem(rep, "nonfinite", oe->name, "%lld NaN and %lld Inf where the base is finite",
                           (long long)vt->nan, (long long)(vt->inf - vt->overflow));
    if (vt->over)
        bad |= lmv_problem(rep, "tensor", oe->name, "%lld element%s over the rounding bound (max |error| %.3g, %.3g × bound): %s",
                           (long long)vt->over, vt->over == 1 ? "" : "s", vt->max_abs, vt->ratio, vt->diagnosis);
    if (vt->overflow || vt->nan || vt->inf || vt->over) { vt->ok = 0; rep->failed++; }
    return bad ? oom(v->err) : 0;
}

/* An untouched tensor: OUT's bytes must be the base's (converted once when the dtype changed). */
static int check_untouched(vctx *v, size_t ot, size_t bt)
{
    const lm_entry *oe = lm_source_entry(v->os, ot), *be = lm_source_entry(v->bs, bt);
    chunker co, cb;
    int rc;
    if ((rc = chunk_open(&co, v->os, ot, v->err))) return rc;
    if ((rc = chunk_open(&cb, v->bs, bt, v->err))) { chunk_close(&co); return rc; }
    int same = 0;
    size_t n = (size_t)oe->numel;
    if (oe->dtype == be->dtype) same = !memcmp(co.raw, cb.raw, oe->nbytes);
    else if (lm_dtype_is_float(oe->dtype) && lm_dtype_is_float(be->dtype)) {
        unsigned char buf[CHUNK * 8];
        same = 1;
        for (size_t off = 0; same && off < n; off += CHUNK) {
            size_t m = n - off < CHUNK ? n - off : CHUNK;
            lm_convert(buf, oe->dtype, (const char *)cb.raw + off * cb.esz, be->dtype, m);
            same = !memcmp(buf, (const char *)co.raw + off * co.esz, m * co.esz);
        }
    }
    lm_verify_report *rep = v->rep;
    int bad = 0;
    if (same) rep->identical++;
    else {
        lm_verify_tensor *vt = add_tensor(rep, oe->name, oe->dtype, 0);
        if (!vt) { chunk_close(&co); chunk_close(&cb); return oom(v->err); }
        vt->ok = 0;
        rep->failed++;
        if (lm_dtype_is_float(oe->dtype) && lm_dtype_is_float(be->dtype)) {
            float ob[CHUNK], wb[CHUNK];
            for (size_t off = 0; off < n; off += CHUNK) {
                size_t m = n - off < CHUNK ? n - off : CHUNK;
                chunk_get(&co, off, m, ob);
                chunk_get(&cb, off, m, wb);
                for (size_t i = 0; i < m; i++) {
                    double x = fabs((double)ob[i] - wb[i]);
                    if (isnan(ob[i]) && !isnan(wb[i])) vt->nan++;
                    else if (isinf(ob[i]) && !isinf(wb[i])) vt->inf++;
                    else if (x > vt->max_abs) vt->max_abs = x;
                    if (ob[i] != wb[i] && !(isnan(ob[i]) && isnan(wb[i]))) vt->over++;
                }
            }
            rep->nan += vt->nan;
            rep->inf += vt->inf;
        }
        snprintf(vt->diagnosis, sizeof vt->diagnosis, "no LoRA module targets it, yet its bytes differ from the base's");
        bad = lmv_problem(rep, "copy", oe->name, "untouched tensor differs from the base (%lld element%s, max |difference| %.3g)",
                          (long long)vt->over, vt->over == 1 ? "" : "s", vt->max_abs);
    }
    chunk_close(&co);
    chunk_close(&cb);
    return bad ? oom(v->err) : 0;
}

static int same_shape(const lm_entry *a, const lm_entry *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++) if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

static int check_tensors(vctx *v)
{
    lm_verify_report *rep = v->rep;
    size_t no = lm_source_count(v->os), nb = lm_source_count(v->bs), maxn = 0;
    for (size_t t = 0; t < nb; t++) {
        const lm_entry *e = lm_source_entry(v->bs, t);
        if (v->uoff[t + 1] > v->uoff[t] && (size_t)e->numel > maxn) maxn = (size_t)e->numel;
        if (lm_source_find(v->os, e->name) < 0 && lmv_problem(rep, "missing", e->name, "base tensor absent from the output"))
            return oom(v->err);
    }
    size_t c1 = 0, c2 = 0, c3 = 0;
    if (grow(&v->D, &c1, maxn) || grow(&v->S, &c2, maxn) || grow(&v->tmp, &c3, maxn)) return oom(v->err);
    rep->tensors = no;
    for (size_t ot = 0; ot < no; ot++) {
        const lm_entry *oe = lm_source_entry(v->os, ot);
        int64_t bt = lm_source_find(v->bs, oe->name);
        int rc = 0;
        if (bt < 0) rc = lmv_problem(rep, "extra", oe->name, "output tensor not in the base") ? oom(v->err) : 0;
        else if (!same_shape(oe, lm_source_entry(v->bs, (size_t)bt)))
            rc = lmv_problem(rep, "shape", oe->name, "shape differs from the base's") ? oom(v->err) : 0;
        else if (v->uoff[bt + 1] > v->uoff[bt]) { rep->touched++; rc = check_touched(v, ot, (size_t)bt); }
        else { rep->untouched++; rc = check_untouched(v, ot, (size_t)bt); }
        if (rc) return rc;
        if (v->o->progress) v->o->progress(v->o->progress_ctx, "verify", ot + 1, no);
    }
    return 0;
}

int lm_verify_bake(const char *out, const lm_verify_opts *opts, lm_verify_report *rep, lm_err *err)
{
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    if (opts) o = *opts;
    memset(rep, 0, sizeof *rep);
    double t0 = now();
    rep->ok = 1;
    rep->out_path = strdup(out);
    rep->operation = strdup("bake");
    if (!rep->out_path || !rep->operation) return oom(err);
    vctx v;
    memset(&v, 0, sizeof v);
    v.out = out;
    v.rep = rep;
    v.o = &o;
    v.err = err;
    lm_recipe rec;
    memset(&rec, 0, sizeof rec);
    lm_keymap *km = NULL;
    double *lambdas = NULL;
    int have = 0, rc = lm_source_open(&v.os, out, NULL, err);
    if (rc == LM_ETRUNCATED) {
        /* a safetensors output cut short (a bake interrupted, a copy that stopped): the
         * verification's answer. Anything else unreadable is bad input (rc stands). */
        char buf[1400];
        lm_err_format(err, buf, sizeof buf);
        lm_err_clear(err);
        rc = lmv_problem(rep, "output", out, "cannot be read as a model: %s", buf) ? oom(err) : 0;
        goto done;
    }
    if (rc) goto done;
    lm_err e2;
    lm_err_clear(&e2);
    if (lmv_read_recipe(v.os, &rec, &have, &e2)) {
        char buf[1400];
        if ((rc = lmv_problem(rep, "recipe", out, "unreadable recipe: %s", lm_err_format(&e2, buf, sizeof buf)) ? oom(err) : 0)) goto done;
    }
    rep->has_recipe = have;
    if ((rc = gather_inputs(&v, &rec, have))) goto done;
    v.nl = rep->n_inputs - 1;
    if ((rc = lmv_hash_inputs(rep, &rec, have, 0, o.no_hash, err))) goto done;
    if ((rc = lm_source_open(&v.bs, rep->inputs[0].path, NULL, err))) goto done;
    if ((rc = lm_keymap_build(&km, v.bs, err))) { lm_err_file(err, rep->inputs[0].path); goto done; }
    v.loras = calloc(v.nl ? v.nl : 1, sizeof *v.loras);
    lambdas = calloc(v.nl ? v.nl : 1, sizeof *lambdas);
    if (!v.loras || !lambdas) { rc = oom(err); goto done; }
    for (size_t i = 0; i < v.nl; i++) {
        lambdas[i] = rep->inputs[i + 1].lambda;
        if ((rc = lm_lora_open(&v.loras[i], rep->inputs[i + 1].path, NULL, err))) { lm_err_file(err, rep->inputs[i + 1].path); goto done; }
    }
    v.lambdas = lambdas;
    if ((rc = plan(&v, km))) goto done;
    /* ΔW products are a small share of the work: one BLAS thread, no spinning helpers */
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    rc = check_tensors(&v);
    openblas_set_num_threads(blas_threads);
done:
    for (size_t i = 0; v.loras && i < v.nl; i++) lm_lora_close(v.loras[i]);
    free(v.loras);
    free(lambdas);
    free(v.uoff); free(v.upds); free(v.D); free(v.S); free(v.tmp); free(v.fa); free(v.fb);
    lm_keymap_free(km);
    lm_source_close(v.bs);
    lm_source_close(v.os);
    lm_recipe_free(&rec);
    rep->seconds = now() - t0;
    if (rc) rep->ok = 0;
    return rc;
}
