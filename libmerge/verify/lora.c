/* lm_verify_lora: a merged LoRA against its sources, module by module (verify.h).
 * Modules are matched by the normalised name lora-merge uses (merge.h); ΔW of both sides
 * comes from lm_lora_delta, Σ λ_i ΔW_i is summed here in fp32. */
#include "verify_impl.h"
#include "../merge/merge_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct key {
    char name[544];
    size_t src;          /* input index, or SIZE_MAX for the merged file */
    size_t mod;
} key;

static int oom(lm_err *err) { return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_key(const void *a, const void *b)
{
    const key *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return x->src < y->src ? -1 : x->src > y->src;
}

static int64_t mod_numel(const lm_lora_module *m)
{
    int64_t n = 1;
    for (int d = 0; d < m->ndim; d++) n *= m->shape[d];
    return n;
}

/* ‖up[o,:]‖ into rn[out] and ‖down[:,c]‖ into cn[per] for a plain module; 0 when the
 * module is of another kind (the caller then bounds with max |ΔW|). */
static int factor_norms(const lm_lora *l, size_t i, float *rn, float *cn, int64_t out, int64_t per, lm_err *err)
{
    const lm_lora_module *m = lm_lora_module_at(l, i);
    int64_t eu = lm_lora_factor_entry(l, i, LM_FAC_UP), ed = lm_lora_factor_entry(l, i, LM_FAC_DOWN);
    if (m->kind != LM_MOD_LORA || eu < 0 || ed < 0 || m->rank <= 0) return 0;
    const lm_source *s = lm_lora_source(l);
    const lm_entry *ue = lm_source_entry(s, (size_t)eu), *de = lm_source_entry(s, (size_t)ed);
    int64_t r = m->rank;
    if (ue->numel != out * r || de->numel != r * per) return 0;
    float *u = malloc(sizeof *u * (size_t)ue->numel), *d = malloc(sizeof *d * (size_t)de->numel);
    int rc = (u && d) ? lm_source_read_f32(s, (size_t)eu, u, err) : oom(err);
    if (!rc) rc = lm_source_read_f32(s, (size_t)ed, d, err);
    for (int64_t o = 0; !rc && o < out; o++) {
        double q = 0;
        for (int64_t k = 0; k < r; k++) q += (double)u[o * r + k] * u[o * r + k];
        rn[o] = (float)sqrt(q);
    }
    for (int64_t c = 0; !rc && c < per; c++) {
        double q = 0;
        for (int64_t k = 0; k < r; k++) q += (double)d[k * per + c] * d[k * per + c];
        cn[c] = (float)sqrt(q);
    }
    free(u);
    free(d);
    return rc ? rc : 1;
}

typedef struct lctx {
    lm_verify_report *rep;
    lm_lora *merged;
    lm_lora **src;
    const double *lambdas;
    int svd;
    int recipe_rank;
    lm_err *err;
} lctx;

/* One module present in the merged file and in sources ks[0..nk). */
static int check_module(lctx *c, const key *km, const key *ks, size_t nk)
{
    const lm_lora_module *mm = lm_lora_module_at(c->merged, km->mod);
    int64_t n = mod_numel(mm), out = mm->shape[0], per = n / (out ? out : 1);
    lm_verify_module *vm = realloc(c->rep->m, (c->rep->n_m + 1) * sizeof *vm);
    if (!vm) return oom(c->err);
    c->rep->m = vm;
    vm += c->rep->n_m;
    memset(vm, 0, sizeof *vm);
    if (!(vm->name = strdup(km->name))) return oom(c->err);
    c->rep->n_m++;
    vm->rank = mm->rank;
    vm->sources = (int)nk;
    vm->ok = 1;
    for (size_t k = 0; k < nk; k++)
        if (mod_numel(lm_lora_module_at(c->src[ks[k].src], ks[k].mod)) != n) {
            vm->ok = 0;
            c->rep->failed++;
            return lmv_problem(c->rep, "shape", km->name, "ΔW has %lld elements in the merged LoRA, %lld in %s", (long long)n,
                               (long long)mod_numel(lm_lora_module_at(c->src[ks[k].src], ks[k].mod)),
                               c->rep->inputs[ks[k].src].path) ? oom(c->err) : 0;
        }
    float *E = calloc((size_t)n, sizeof *E), *M = malloc(sizeof *M * (size_t)n), *T = malloc(sizeof *T * (size_t)n);
    float *B = calloc((size_t)n, sizeof *B), *rn = malloc(sizeof *rn * (size_t)out), *cn = malloc(sizeof *cn * (size_t)per);
    int rc = (E && M && T && B && rn && cn) ? 0 : oom(c->err);
    if (!rc) rc = lm_lora_delta(c->merged, km->mod, M, c->err);
    const lm_source *ms = lm_lora_source(c->merged);
    int64_t eup = lm_lora_factor_entry(c->merged, km->mod, LM_FAC_UP);
    lm_dtype odt = eup >= 0 ? lm_source_entry(ms, (size_t)eup)->dtype : LM_DT_F32;
    double u = lm_verify_unit_roundoff(LM_DT_F32), uo = lm_verify_unit_roundoff(odt);
    if (uo < u) uo = u;
    double coef = 2 * (2 * uo + (mm->rank + 4) * u);
    for (size_t k = 0; !rc && k < nk; k++) {
        const lm_lora *l = c->src[ks[k].src];
        const lm_lora_module *sm = lm_lora_module_at(l, ks[k].mod);
        float lam = (float)c->lambdas[ks[k].src];
        if ((rc = lm_lora_delta(l, ks[k].mod, T, c->err))) { lm_err_file(c->err, c->rep->inputs[ks[k].src].path); break; }
        for (int64_t i = 0; i < n; i++) E[i] += lam * T[i];
        rc = factor_norms(l, ks[k].mod, rn, cn, out, per, c->err);
        if (rc < 0) break;
        if (rc == 1) {
            double s = coef * fabs((double)lam * sm->scale);
            for (int64_t o = 0; o < out; o++)
                for (int64_t j = 0; j < per; j++) B[o * per + j] += (float)(s * rn[o] * cn[j]);
        } else {
            float mx = 0;
            for (int64_t i = 0; i < n; i++) if (fabsf(T[i]) > mx) mx = fabsf(T[i]);
            for (int64_t i = 0; i < n; i++) B[i] += (float)(coef * fabs((double)lam) * mx);
        }
        rc = 0;
    }
    double ee = 0, eE = 0;
    for (int64_t i = 0; !rc && i < n; i++) {
        double e = fabs((double)M[i] - E[i]);
        if (!(e <= vm->max_abs)) vm->max_abs = e;           /* NaN propagates */
        ee += e * e;
        eE += (double)E[i] * E[i];
        if (!c->svd) {
            double r = B[i] > 0 ? e / B[i] : (e > 0 ? INFINITY : 0);
            if (!(r <= vm->ratio)) vm->ratio = r;
            if (B[i] > vm->tol) vm->tol = B[i];
        }
    }
    if (!rc) {
        vm->rel = eE > 0 ? sqrt(ee / eE) : (ee > 0 ? INFINITY : 0);
        if (c->svd) {
            /* the best any rank-R factorisation can do (Eckart–Young), from Σ λ ΔW's singular values */
            int kk = 0;
            double energy = 1;
            float *up = malloc(sizeof *up * (size_t)(out * (mm->rank ? mm->rank : 1)));
            float *dn = malloc(sizeof *dn * (size_t)(per * (mm->rank ? mm->rank : 1)));
            memcpy(T, E, sizeof *T * (size_t)n);
            rc = (up && dn) ? lm_svd_truncate(T, out, per, mm->rank > 0 ? mm->rank : 1, up, dn, &kk, &vm->optimum, &energy, c->err) : oom(c->err);
            free(up);
            free(dn);
            int64_t big = out > per ? out : per;
            double slack = (2 + 2 * sqrt((double)mm->rank)) * uo + 16.0 * (double)big * u;
            vm->tol = vm->optimum + slack;
            /* the share of the rounding allowance used beyond the optimum: ≤ 1 passes */
            vm->ratio = vm->rel > vm->optimum ? (vm->rel - vm->optimum) / slack : 0;
            if (!rc && c->recipe_rank > 0 && mm->rank > c->recipe_rank)
                rc = lmv_problem(c->rep, "module", km->name, "rank %d is above the recipe's %d", mm->rank, c->recipe_rank) ? oom(c->err) : 0;
        }
    }
    if (!rc && !(vm->ratio <= 1)) {
        vm->ok = 0;
        c->rep->failed++;
        rc = (c->svd ? lmv_problem(c->rep, "module", km->name,
                                   "relative error %.4g over %.4g (rank-%d optimum %.4g): not the truncated SVD of Σ λ·ΔW",
                                   vm->rel, vm->tol, mm->rank, vm->optimum)
                     : lmv_problem(c->rep, "module", km->name,
                                   "ΔW differs from Σ λ·ΔW of its %zu source%s: max |error| %.3g, %.3g × bound, relative %.3g",
                                   nk, nk == 1 ? "" : "s", vm->max_abs, vm->ratio, vm->rel)) ? oom(c->err) : 0;
    }
    if (vm->ratio > c->rep->worst_ratio) c->rep->worst_ratio = vm->ratio;
    free(E); free(M); free(T); free(B); free(rn); free(cn);
    return rc;
}

static int gather(const char *merged, const lm_verify_opts *o, const lm_recipe *rec, int have, lm_verify_report *rep, lm_err *err)
{
    char path[4096];
    if (o->n_loras) {
        snprintf(rep->inputs_from, sizeof rep->inputs_from, "command line");
        for (size_t i = 0; i < o->n_loras; i++)
            if (!lmv_add_input(rep, o->loras[i].path, "source", o->loras[i].lambda)) return oom(err);
        if (have && rec->n_inputs != o->n_loras)
            lmv_problem(rep, "recipe", merged, "the recipe lists %zu source%s, the command line %zu", rec->n_inputs,
                        rec->n_inputs == 1 ? "" : "s", o->n_loras);
        for (size_t i = 0; have && i < o->n_loras && i < rec->n_inputs; i++)
            if (rec->inputs[i].lambda != o->loras[i].lambda)
                lmv_problem(rep, "recipe", o->loras[i].path, "λ %.9g on the command line, %.9g in the recipe",
                            o->loras[i].lambda, rec->inputs[i].lambda);
        return 0;
    }
    if (!have)
        return lm_err_set(err, LM_EINPUT, merged, LM_RECIPE_KEY, LM_ERR_NO_OFFSET, "no recipe in the metadata: give --from");
    snprintf(rep->inputs_from, sizeof rep->inputs_from, "recipe");
    for (size_t i = 0; i < rec->n_inputs; i++) {
        if (!lmv_find_input(merged, rec->inputs[i].name, o->search, o->n_search, path, sizeof path))
            return lm_err_set(err, LM_EINPUT, merged, LM_RECIPE_KEY, LM_ERR_NO_OFFSET,
                              "recipe input %s not found next to the merged LoRA, in --search directories or in .; give --from",
                              rec->inputs[i].name ? rec->inputs[i].name : "?");
        if (!lmv_add_input(rep, path, "source", rec->inputs[i].lambda)) return oom(err);
    }
    return 0;
}

int lm_verify_lora(const char *merged, const lm_verify_opts *opts, lm_verify_report *rep, lm_err *err)
{
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    if (opts) o = *opts;
    memset(rep, 0, sizeof *rep);
    double t0 = now();
    rep->ok = 1;
    if (!(rep->out_path = strdup(merged))) return oom(err);
    lm_source *ms = NULL;
    lm_lora *ml = NULL, **src = NULL;
    double *lambdas = NULL;
    key *keys = NULL;
    lm_recipe rec;
    memset(&rec, 0, sizeof rec);
    int have = 0, rc = lm_source_open(&ms, merged, NULL, err);
    if (!rc) {
        const char *json = lm_source_meta_get(ms, LM_RECIPE_KEY);
        lm_recipe r0;
        if (json && !lm_recipe_parse(json, &r0, NULL)) {
            if (strncmp(r0.operation, "lora-merge", 10))
                rc = lm_err_set(err, LM_EINPUT, merged, LM_RECIPE_KEY, LM_ERR_NO_OFFSET,
                                "the recipe's operation is %s, not a LoRA merge", r0.operation);
            lm_recipe_free(&r0);
            if (rc) goto done;
        }
        rc = lm_lora_from_source(&ml, ms, err);
    }
    if (rc == LM_ETRUNCATED && !ms) {
        /* cut short: a verification failure; otherwise unreadable, or not a LoRA: bad input */
        char buf[1400];
        lm_err_format(err, buf, sizeof buf);
        lm_err_clear(err);
        rc = lmv_problem(rep, "output", merged, "cannot be read as a LoRA: %s", buf) ? oom(err) : 0;
        goto done;
    }
    if (rc) goto done;
    lm_err e2;
    lm_err_clear(&e2);
    if (lmv_read_recipe(ms, &rec, &have, &e2)) {
        char buf[1400];
        if (lmv_problem(rep, "recipe", merged, "unreadable recipe: %s", lm_err_format(&e2, buf, sizeof buf))) { rc = oom(err); goto done; }
    }
    rep->has_recipe = have;
    if (have && strncmp(rec.operation, "lora-merge", 10)) {
        rc = lm_err_set(err, LM_EINPUT, merged, LM_RECIPE_KEY, LM_ERR_NO_OFFSET,
                        "the recipe's operation is %s, not a LoRA merge", rec.operation);
        goto done;
    }
    int svd = o.mode == 2 || (o.mode == 0 && have && !strcmp(rec.operation, "lora-merge-svd"));
    rep->operation = strdup(svd ? "lora-merge-svd" : "lora-merge-exact");
    if (!rep->operation) { rc = oom(err); goto done; }
    if ((rc = gather(merged, &o, &rec, have, rep, err))) goto done;
    if ((rc = lmv_hash_inputs(rep, &rec, have, 0, o.no_hash, err))) goto done;
    size_t ns = rep->n_inputs, nk = lm_lora_count(ml);
    src = calloc(ns ? ns : 1, sizeof *src);
    lambdas = calloc(ns ? ns : 1, sizeof *lambdas);
    if (!src || !lambdas) { rc = oom(err); goto done; }
    for (size_t i = 0; i < ns; i++) {
        lambdas[i] = rep->inputs[i].lambda;
        if ((rc = lm_lora_open(&src[i], rep->inputs[i].path, NULL, err))) { lm_err_file(err, rep->inputs[i].path); goto done; }
        rep->inputs[i].convention = lm_lora_convention_name(lm_lora_convention_of(src[i]));
        rep->inputs[i].modules = lm_lora_count(src[i]);
        nk += lm_lora_count(src[i]);
    }
    keys = calloc(nk ? nk : 1, sizeof *keys);
    if (!keys) { rc = oom(err); goto done; }
    size_t k = 0;
    for (size_t i = 0; i < lm_lora_count(ml); i++, k++) {
        keys[k] = (key){ "", SIZE_MAX, i };
        if (lmm_norm_module_name(lm_lora_module_at(ml, i), keys[k].name, sizeof keys[k].name)) { rc = lm_err_set(err, LM_EINPUT, merged, lm_lora_module_at(ml, i)->name, LM_ERR_NO_OFFSET, "module name too long"); goto done; }
    }
    for (size_t s = 0; s < ns; s++)
        for (size_t i = 0; i < lm_lora_count(src[s]); i++, k++) {
            keys[k] = (key){ "", s, i };
            if (lmm_norm_module_name(lm_lora_module_at(src[s], i), keys[k].name, sizeof keys[k].name)) { rc = lm_err_set(err, LM_EINPUT, rep->inputs[s].path, lm_lora_module_at(src[s], i)->name, LM_ERR_NO_OFFSET, "module name too long"); goto done; }
        }
    qsort(keys, nk, sizeof *keys, cmp_key);   /* sources first (index order), the merged module last */
    lctx c = { rep, ml, src, lambdas, svd, have ? rec.rank : 0, err };
    for (size_t a = 0; a < nk && !rc;) {
        size_t b = a;
        while (b < nk && !strcmp(keys[b].name, keys[a].name)) b++;
        const key *km = keys[b - 1].src == SIZE_MAX ? &keys[b - 1] : NULL;
        size_t nsrc = km ? b - a - 1 : b - a;
        if (!km) {
            rep->failed++;
            rc = lmv_problem(rep, "missing", keys[a].name, "module of %s (%zu source%s) is not in the merged LoRA",
                             rep->inputs[keys[a].src].path, nsrc, nsrc == 1 ? "" : "s") ? oom(err) : 0;
        } else if (!nsrc) {
            rep->failed++;
            rc = lmv_problem(rep, "extra", km->name, "module of the merged LoRA is in none of its sources") ? oom(err) : 0;
        } else {
            for (size_t i = 0; i < nsrc; i++) rep->inputs[keys[a + i].src].matched++;
            rc = check_module(&c, km, &keys[a], nsrc);
        }
        if (o.progress) o.progress(o.progress_ctx, "verify", b, nk);
        a = b;
    }
    for (size_t s = 0; s < ns; s++) rep->inputs[s].unmatched = rep->inputs[s].modules - rep->inputs[s].matched;
done:
    for (size_t i = 0; src && i < rep->n_inputs; i++) lm_lora_close(src[i]);
    free(src);
    free(lambdas);
    free(keys);
    lm_lora_close(ml);
    lm_source_close(ms);
    lm_recipe_free(&rec);
    if (!rep->operation) rep->operation = strdup("lora");
    rep->seconds = now() - t0;
    if (rc) rep->ok = 0;
    return rc;
}
