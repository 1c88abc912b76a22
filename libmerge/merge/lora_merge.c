/* lm_lora_merge: one LoRA whose ΔW is Σ λ_i ΔW_i (merge.h).
 *
 * Exact: the ranks are concatenated. With c_i = λ_i · alpha_i / rank_i,
 *   up = [c_1·up_1 | c_2·up_2 | …]  [out, Σr],   down = [down_1; down_2; …]  [Σr, in·kh·kw],
 *   alpha = Σr (scale 1), so up·down = Σ c_i up_i down_i = Σ λ_i ΔW_i.
 * The sign of λ goes into up once; nothing is square-rooted, and each input keeps its own
 * alpha/rank (a merger that scales both factors by √λ gets λ's sign wrong for λ < 0, and
 * one that keeps the first input's alpha rescales every other input).
 * SVD (rank R): the same concatenation is re-factorised exactly through its thin QR
 * (svd.c) and truncated to R; modules that are not plain up·down (LoHa, LoKr, Tucker,
 * full) are summed densely and go through sgesdd. */
#include "merge_impl.h"
#include "lora_write.h"
#include "meta.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cblas.h>

/* ---- grouping ------------------------------------------------------------------ */

typedef struct part { size_t in, mod; } part;

typedef struct entry {
    char key[544];
    part p;
} entry;

typedef struct group {
    const char *key;
    part *parts;
    size_t np;
    lmm_outmod om;
    lm_lmerge_module rep;
    int dropped;       /* Σ λ·ΔW is zero within rounding: not written */
} group;

typedef struct job {
    lm_lora **loras;
    const lm_weighted *in;
    group *g;
    size_t ng;
    int rank;
} job;

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c) return c;
    return x->p.in < y->p.in ? -1 : x->p.in > y->p.in;
}

static void shape_str(const int64_t *s, int nd, char *out, size_t n)
{
    size_t len = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < nd && len < n; d++) len += (size_t)snprintf(out + len, n - len, "%s%lld", d ? ", " : "", (long long)s[d]);
    if (len < n) snprintf(out + len, n - len, "]");
}

static int64_t numel(const int64_t *s, int nd)
{
    int64_t p = 1;
    for (int d = 0; d < nd; d++) p *= s[d];
    return p;
}

/* Shape of the group's ΔW (4-D when any input has it 4-D) and agreement of all inputs. */
static int group_shape(job *J, group *g, lm_err *err)
{
    const lm_lora_module *f = lm_lora_module_at(J->loras[g->parts[0].in], g->parts[0].mod);
    g->om.ndim = f->ndim;
    memcpy(g->om.shape, f->shape, sizeof g->om.shape);
    for (size_t k = 1; k < g->np; k++) {
        const lm_lora_module *m = lm_lora_module_at(J->loras[g->parts[k].in], g->parts[k].mod);
        if (m->shape[0] != f->shape[0] || numel(m->shape, m->ndim) != numel(f->shape, f->ndim)) {
            char a[96], b[96];
            shape_str(f->shape, f->ndim, a, sizeof a);
            shape_str(m->shape, m->ndim, b, sizeof b);
            return lm_err_set(err, LM_EMISMATCH, J->in[g->parts[k].in].path, m->name, LM_ERR_NO_OFFSET,
                              "ΔW %s, but %s has %s for the same module: LoRAs for different architectures?",
                              b, J->in[g->parts[0].in].path, a);
        }
        if (m->ndim > g->om.ndim) { g->om.ndim = m->ndim; memcpy(g->om.shape, m->shape, sizeof g->om.shape); }
    }
    return 0;
}

static int plain(const lm_lora_module *m)
{
    return m->kind == LM_MOD_LORA && !m->has_dora && !m->has_bias;
}

/* Reads factor f of module i as fp32, expecting cnt elements. */
static int read_factor(const lm_lora *l, size_t i, lm_lora_factor f, float *dst, int64_t cnt, const char *path, lm_err *err)
{
    int64_t e = lm_lora_factor_entry(l, i, f);
    const lm_source *s = lm_lora_source(l);
    if (e < 0 || lm_source_entry(s, (size_t)e)->numel != cnt)
        return lm_err_set(err, LM_EINPUT, path, lm_lora_module_at(l, i)->name, LM_ERR_NO_OFFSET,
                          "%s factor missing or of the wrong size", f == LM_FAC_UP ? "up" : "down");
    return lm_source_read_f32(s, (size_t)e, dst, err);
}

/* Finite inputs whose re-factorisation still overflows fp32 (|values| near 3.4e38):
 * bad input, named by the first input of the group. */
static int check_factors(job *J, group *g, lm_err *err)
{
    int64_t out = g->om.shape[0], N = numel(g->om.shape, g->om.ndim) / out;
    if (lmm_count_nonfinite(g->om.up, LM_DT_F32, (size_t)(out * g->om.k)) ||
        lmm_count_nonfinite(g->om.down, LM_DT_F32, (size_t)(g->om.k * N)))
        return lm_err_set(err, LM_EINPUT, J->in[g->parts[0].in].path, g->key, LM_ERR_NO_OFFSET,
                          "the factorised ΔW overflows fp32 (λ or alpha/rank too large)");
    return 0;
}

/* After a rank-R factorisation: ‖ΔW‖_F = ‖up‖_F / √energy (up = U_R·Σ_R, energy = kept / total
 * of Σ σ²). A ΔW that small next to the inputs it came from (ref = Σ ‖λ_i ΔW_i‖_F or a bound
 * of it) is rounding noise of a cancellation (X and X:-1, every λ 0): its "factors" would be
 * noise and its error and energy meaningless, so the module is dropped. 1e-5 is ~100 fp32
 * ulps: a real difference of the inputs is far above it. */
static void drop_if_zero(group *g, int64_t out, int64_t N, double ref)
{
    (void)N;
    double up = g->om.k ? (double)cblas_snrm2((int)(out * g->om.k), g->om.up, 1) : 0;
    double norm = g->rep.energy > 0 ? up / sqrt(g->rep.energy) : up;
    if (norm <= 1e-5 * ref) {
        g->dropped = 1;
        g->om.k = 0;
        g->rep.rank = 0;
        g->rep.rel_error = 0;
        g->rep.energy = 1;
    }
}

static int compute_group(job *J, group *g, lm_err *err)
{
    int rc = group_shape(J, g, err);
    if (rc) return rc;
    int64_t out = g->om.shape[0], N = numel(g->om.shape, g->om.ndim) / out, R = 0;
    int all_plain = 1;
    for (size_t k = 0; k < g->np; k++) {
        const lm_lora_module *m = lm_lora_module_at(J->loras[g->parts[k].in], g->parts[k].mod);
        if (m->has_dora)
            return lm_err_set(err, LM_EUNSUPPORTED, J->in[g->parts[k].in].path, m->name, LM_ERR_NO_OFFSET,
                              "DoRA module: not linear in λ, cannot be merged into a LoRA (bake it instead)");
        if (m->has_bias)
            return lm_err_set(err, LM_EUNSUPPORTED, J->in[g->parts[k].in].path, m->name, LM_ERR_NO_OFFSET,
                              "bias update (diff_b) cannot be stored in an up/down LoRA");
        if (!plain(m)) {
            all_plain = 0;
            if (J->rank == 0)
                return lm_err_set(err, LM_EUNSUPPORTED, J->in[g->parts[k].in].path, m->name, LM_ERR_NO_OFFSET,
                                  "%s module: --exact concatenates plain up/down modules only; use --rank R",
                                  lm_module_kind_name(m->kind));
        }
        R += m->rank;
    }
    g->rep.out = out;
    g->rep.in = g->om.ndim == 4 ? g->om.shape[1] : N;
    g->rep.kh = g->om.ndim == 4 ? (int)g->om.shape[2] : 1;
    g->rep.kw = g->om.ndim == 4 ? (int)g->om.shape[3] : 1;
    g->rep.sources = (int)g->np;
    if (all_plain) {
        float *U = malloc((size_t)(out * R) * sizeof *U), *D = malloc((size_t)(R * N) * sizeof *D);
        if (!U || !D) { free(U); free(D); return lm_err_set(err, LM_ENOMEM, NULL, g->key, LM_ERR_NO_OFFSET, "out of memory"); }
        int64_t off = 0;
        double ref = 0;    /* Σ ‖c_i·up_i‖_F·‖down_i‖_F ≥ Σ ‖λ_i ΔW_i‖_F */
        for (size_t k = 0; k < g->np && !rc; k++) {
            const lm_lora *l = J->loras[g->parts[k].in];
            const lm_lora_module *m = lm_lora_module_at(l, g->parts[k].mod);
            int64_t r = m->rank;
            float *up = malloc((size_t)(out * r) * sizeof *up);
            if (!up) { rc = lm_err_set(err, LM_ENOMEM, NULL, g->key, LM_ERR_NO_OFFSET, "out of memory"); break; }
            rc = read_factor(l, g->parts[k].mod, LM_FAC_UP, up, out * r, J->in[g->parts[k].in].path, err);
            if (!rc) rc = read_factor(l, g->parts[k].mod, LM_FAC_DOWN, D + off * N, r * N, J->in[g->parts[k].in].path, err);
            float c = (float)(J->in[g->parts[k].in].lambda * (double)m->scale);
            for (int64_t i = 0; !rc && i < out; i++)
                for (int64_t j = 0; j < r; j++) U[i * R + off + j] = c * up[i * r + j];
            if (!rc) ref += fabs((double)c) * (double)cblas_snrm2((int)(out * r), up, 1) * (double)cblas_snrm2((int)(r * N), D + off * N, 1);
            free(up);
            /* the inputs are finite (checked when opened): a non-finite folded factor is
             * λ·alpha/rank·up beyond fp32, bad input rather than a factorisation failure */
            for (int64_t i = 0; !rc && i < out; i++)
                if (lmm_count_nonfinite(U + i * R + off, LM_DT_F32, (size_t)r))
                    rc = lm_err_set(err, LM_EINPUT, J->in[g->parts[k].in].path, m->name, LM_ERR_NO_OFFSET,
                                    "λ·alpha/rank·up overflows fp32 (λ = %g, alpha/rank = %g)",
                                    J->in[g->parts[k].in].lambda, (double)m->scale);
            off += r;
        }
        if (!rc && J->rank == 0) {
            g->om.up = U;
            g->om.down = D;
            g->om.k = (int)R;
            g->rep.rank = (int)R;
            g->rep.rel_error = 0;
            g->rep.energy = 1;
            return 0;
        }
        if (!rc) {
            int kmax = (int)(J->rank < R ? J->rank : R);
            g->om.up = malloc((size_t)(out * (kmax ? kmax : 1)) * sizeof *g->om.up);
            g->om.down = malloc((size_t)((kmax ? kmax : 1) * N) * sizeof *g->om.down);
            if (!g->om.up || !g->om.down) rc = lm_err_set(err, LM_ENOMEM, NULL, g->key, LM_ERR_NO_OFFSET, "out of memory");
            else rc = lmm_svd_lowrank(U, D, out, N, R, J->rank, g->om.up, g->om.down, &g->om.k,
                                      &g->rep.rel_error, &g->rep.energy, err);
        }
        if (!rc) drop_if_zero(g, out, N, ref);
        free(U);
        free(D);
        g->rep.rank = g->om.k;
        if (!rc) rc = check_factors(J, g, err);
        return rc;
    }
    /* dense: Σ λ ΔW, then sgesdd */
    float *A = calloc((size_t)(out * N), sizeof *A), *d = malloc((size_t)(out * N) * sizeof *d);
    int64_t p = out < N ? out : N;
    int kmax = (int)(J->rank < p ? J->rank : p);
    g->om.up = malloc((size_t)(out * kmax) * sizeof *g->om.up);
    g->om.down = malloc((size_t)(kmax * N) * sizeof *g->om.down);
    if (!A || !d || !g->om.up || !g->om.down) { free(A); free(d); return lm_err_set(err, LM_ENOMEM, NULL, g->key, LM_ERR_NO_OFFSET, "out of memory"); }
    double ref = 0;
    for (size_t k = 0; k < g->np && !rc; k++) {
        const lm_lora *l = J->loras[g->parts[k].in];
        rc = lm_lora_delta(l, g->parts[k].mod, d, err);
        if (rc) { lm_err_file(err, J->in[g->parts[k].in].path); break; }
        ref += fabs(J->in[g->parts[k].in].lambda) * (double)cblas_snrm2((int)(out * N), d, 1);
        cblas_saxpy((int)(out * N), (float)J->in[g->parts[k].in].lambda, d, 1, A, 1);
    }
    if (!rc && lmm_count_nonfinite(A, LM_DT_F32, (size_t)(out * N)))
        rc = lm_err_set(err, LM_EINPUT, J->in[g->parts[0].in].path, g->key, LM_ERR_NO_OFFSET,
                        "Σ λ·ΔW overflows fp32 (λ or alpha/rank too large)");
    if (!rc) rc = lmm_svd_auto(A, out, N, J->rank, g->om.up, g->om.down, &g->om.k, &g->rep.rel_error, &g->rep.energy, err);
    if (!rc) drop_if_zero(g, out, N, ref);
    g->rep.rank = g->om.k;
    free(A);
    free(d);
    if (!rc) rc = check_factors(J, g, err);
    return rc;
}

static int group_task(void *ctx, size_t i, lm_err *err)
{
    job *J = ctx;
    return compute_group(J, &J->g[i], err);
}

static const char *group_key(void *ctx, size_t i)
{
    return ((job *)ctx)->g[i].key;
}

static lm_dtype widest_dtype(lm_lora **loras, size_t n)
{
    int f16 = 0, bf16 = 0, f32 = 0;
    for (size_t i = 0; i < n; i++) {
        const lm_source *s = lm_lora_source(loras[i]);
        for (size_t t = 0; t < lm_source_count(s); t++) {
            lm_dtype d = lm_source_entry(s, t)->dtype;
            f16 |= d == LM_DT_F16;
            bf16 |= d == LM_DT_BF16;
            f32 |= d == LM_DT_F32 || d == LM_DT_F64;
        }
    }
    if (f32 || (f16 && bf16)) return LM_DT_F32;
    return bf16 ? LM_DT_BF16 : f16 ? LM_DT_F16 : LM_DT_F32;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void summarise(lm_lmerge_report *rep)
{
    double sum = 0;
    rep->max_rel_error = 0;
    rep->min_energy = 1;
    for (size_t i = 0; i < rep->n_modules; i++) {
        const lm_lmerge_module *m = &rep->modules[i];
        sum += m->rel_error;
        if (m->rel_error > rep->max_rel_error) rep->max_rel_error = m->rel_error;
        if (m->energy < rep->min_energy) rep->min_energy = m->energy;
    }
    rep->mean_rel_error = rep->n_modules ? sum / (double)rep->n_modules : 0;
}

/* Metadata of a LoRA output: the first input's (its kohya ss_* training metadata), with
 * the values this merge changed, and without the PEFT alpha config it would contradict. */
int lmm_lora_meta(lmm_meta *meta, const lm_source *first, const lm_recipe *recipe, const char *const *paths,
                  lm_arch arch, const char *title, int uniform_rank)
{
    char (*lh)[9] = calloc(recipe->n_inputs ? recipe->n_inputs : 1, sizeof *lh);
    const char **legacy = calloc(recipe->n_inputs ? recipe->n_inputs : 1, sizeof *legacy);
    if (!lh || !legacy) { free(lh); free(legacy); return LM_ENOMEM; }
    for (size_t i = 0; i < recipe->n_inputs; i++) {
        lmm_legacy_hash(paths[i], lh[i]);
        legacy[i] = lh[i];
    }
    int rc = lmm_build_meta(meta, first, recipe, legacy, arch, 1, title);
    free(lh);
    free(legacy);
    char buf[32];
    if (uniform_rank > 0) snprintf(buf, sizeof buf, "%d", uniform_rank);
    else snprintf(buf, sizeof buf, "dynamic");
    if (!rc) rc = lmm_meta_set(meta, "ss_network_dim", buf);
    if (!rc) rc = lmm_meta_set(meta, "ss_network_alpha", buf);
    if (!rc && !lmm_meta_get(meta, "ss_network_module")) rc = lmm_meta_set(meta, "ss_network_module", "networks.lora");
    for (size_t i = 0; !rc && i < meta->n; i++)
        if (!strcmp(meta->keys[i], "lora_adapter_metadata") || !strcmp(meta->keys[i], "lora_alpha")) {
            free(meta->keys[i]); free(meta->values[i]);
            meta->keys[i] = meta->keys[meta->n - 1];
            meta->values[i] = meta->values[meta->n - 1];
            meta->n--;
            i--;
        }
    return rc;
}

int lm_lora_merge(const lm_weighted *inputs, size_t n, const char *out,
                  const lm_lmerge_opts *opts, lm_lmerge_report *report, lm_err *err)
{
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    if (opts) o = *opts;
    lm_lmerge_report rl, *rep = report ? report : &rl;
    memset(rep, 0, sizeof *rep);
    double t0 = now();
    if (n == 0) return lm_err_set(err, LM_EUSAGE, out, NULL, LM_ERR_NO_OFFSET, "no input LoRA");
    if (o.rank < 0) return lm_err_set(err, LM_EUSAGE, out, NULL, LM_ERR_NO_OFFSET, "rank must be positive");
    const char **paths = calloc(n + 1, sizeof *paths);
    job J;
    memset(&J, 0, sizeof J);
    J.in = inputs;
    J.rank = o.rank;
    J.loras = calloc(n, sizeof *J.loras);
    entry *ents = NULL;
    size_t ne = 0;
    lm_source *bsrc = NULL;
    lm_keymap *km = NULL;
    lmm_outmod *om = NULL;
    lmm_meta meta = { 0 };
    lm_recipe recipe = { 0 };
    lm_arch arch = LM_ARCH_UNKNOWN;
    int rc = 0;
    if (!paths || !J.loras) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    for (size_t i = 0; i < n; i++) paths[i] = inputs[i].path;
    if (o.base) paths[n] = o.base;
    if ((rc = lmm_check_output(out, paths, n + (o.base != NULL), err))) goto done;
    rep->input_sha256 = calloc(n, sizeof *rep->input_sha256);
    rep->n_inputs = n;
    if (!rep->input_sha256) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if ((rc = lm_lora_open(&J.loras[i], inputs[i].path, NULL, err))) { lm_err_file(err, inputs[i].path); goto done; }
        if ((rc = lmm_lora_check_finite(J.loras[i], inputs[i].path, err))) goto done;
        if ((rc = lmm_sha256_file(inputs[i].path, rep->input_sha256[i], NULL, err))) goto done;
        total += lm_lora_count(J.loras[i]);
    }
    if (o.base) {
        if ((rc = lm_source_open(&bsrc, o.base, NULL, err))) goto done;
        if ((rc = lm_keymap_build(&km, bsrc, err))) { lm_err_file(err, o.base); goto done; }
        const lm_model_info *info = lm_keymap_info(km);
        arch = info ? info->arch : LM_ARCH_UNKNOWN;
    }
    ents = calloc(total ? total : 1, sizeof *ents);
    if (!ents) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    int te1 = 0, te2 = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nm = lm_lora_count(J.loras[i]);
        lm_target *tg = NULL;
        if (km) {
            tg = calloc(nm ? nm : 1, sizeof *tg);
            if (!tg) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
            if ((rc = lm_keymap_resolve(km, J.loras[i], 0, tg, NULL, err))) { lm_err_file(err, inputs[i].path); free(tg); goto done; }
        }
        for (size_t m = 0; m < nm; m++) {
            const lm_lora_module *mod = lm_lora_module_at(J.loras[i], m);
            te1 |= !strncmp(mod->name, "lora_te1_", 9);
            te2 |= mod->component == LM_COMP_TE2;
            entry *e = &ents[ne++];
            e->p = (part){ i, m };
            if (tg) snprintf(e->key, sizeof e->key, "t%012lld:%012lld", (long long)tg[m].tensor, (long long)tg[m].row0);
            else if (lmm_norm_module_name(mod, e->key, sizeof e->key)) {
                rc = lm_err_set(err, LM_EINPUT, inputs[i].path, mod->name, LM_ERR_NO_OFFSET, "module name too long");
                free(tg);
                goto done;
            }
        }
        free(tg);
    }
    qsort(ents, ne, sizeof *ents, cmp_entry);
    J.g = calloc(ne ? ne : 1, sizeof *J.g);
    part *parts = malloc((ne ? ne : 1) * sizeof *parts);
    if (!J.g || !parts) { free(parts); rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    for (size_t i = 0; i < ne; i++) {
        parts[i] = ents[i].p;
        if (i == 0 || strcmp(ents[i].key, ents[i - 1].key)) {
            J.g[J.ng].key = ents[i].key;
            J.g[J.ng].parts = &parts[i];
            J.ng++;
        } else if (ents[i].p.in == ents[i - 1].p.in) {
            free(parts);
            rc = lm_err_set(err, LM_EINPUT, inputs[ents[i].p.in].path, lm_lora_module_at(J.loras[ents[i].p.in], ents[i].p.mod)->name,
                            LM_ERR_NO_OFFSET, "two modules of this file update the same weight");
            goto done;
        }
        J.g[J.ng - 1].np++;
    }
    rc = lmm_run_tasks(J.ng, o.threads, group_task, group_key, &J, o.progress, o.progress_ctx, err);
    if (rc) { free(parts); goto done; }
    /* names, report */
    const char *te_prefix = (te1 || te2) ? "lora_te1_" : "lora_te_";
    om = calloc(J.ng ? J.ng : 1, sizeof *om);
    rep->modules = calloc(J.ng ? J.ng : 1, sizeof *rep->modules);
    rep->dropped = calloc(J.ng ? J.ng : 1, sizeof *rep->dropped);
    size_t nw = 0;
    int uniform = -1;
    for (size_t i = 0; om && rep->modules && rep->dropped && i < J.ng; i++) {
        group *g = &J.g[i];
        char norm[544];
        const lm_lora_module *m0 = lm_lora_module_at(J.loras[g->parts[0].in], g->parts[0].mod);
        lmm_norm_module_name(m0, norm, sizeof norm);
        g->om.kohya_name = lmm_kohya_name(norm, te_prefix);
        const lm_lora_module *pm[64];
        size_t npm = 0;
        for (size_t k = 0; k < g->np && npm < 64; k++) pm[npm++] = lm_lora_module_at(J.loras[g->parts[k].in], g->parts[k].mod);
        g->om.peft_name = lmm_peft_name(pm, npm);
        if (!g->om.peft_name && km) g->om.peft_name = lmm_peft_from_base(bsrc, lm_keymap_info(km), g->key);
        const char *wname = o.format == LM_LFMT_PEFT && g->om.peft_name ? g->om.peft_name : g->om.kohya_name;
        if (g->dropped) {
            if (!(rep->dropped[rep->n_dropped++] = strdup(wname ? wname : g->key))) { free(parts); rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
            continue;
        }
        om[nw] = g->om;
        rep->modules[nw] = g->rep;
        rep->modules[nw].name = strdup(wname);
        rep->n_modules = ++nw;
        uniform = uniform == -1 ? g->om.k : uniform == g->om.k ? uniform : 0;
    }
    free(parts);
    if (!om || !rep->modules || !rep->dropped) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    summarise(rep);
    /* recipe + metadata */
    recipe.tool = "lora-merge";
    recipe.tool_version = LM_TOOL_VERSION;
    recipe.operation = o.rank ? "lora-merge-svd" : "lora-merge-exact";
    lm_dtype dt = o.out_dtype != LM_DT_INVALID ? o.out_dtype : widest_dtype(J.loras, n);
    recipe.dtype = (char *)lm_dtype_name(dt);
    recipe.rank = o.rank;
    recipe.format = o.format == LM_LFMT_PEFT ? "peft" : "kohya";
    recipe.inputs = calloc(n, sizeof *recipe.inputs);
    if (!recipe.inputs) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    recipe.n_inputs = n;
    for (size_t i = 0; i < n; i++) {
        recipe.inputs[i] = (lm_recipe_input){ (char *)lmm_basename(inputs[i].path), "", lm_source_file_size(lm_lora_source(J.loras[i])),
                                              inputs[i].lambda, (char *)(inputs[i].role ? inputs[i].role : "lora") };
        memcpy(recipe.inputs[i].sha256, rep->input_sha256[i], 65);
    }
    char title[256];
    lmm_title(out, title, sizeof title);
    if (arch == LM_ARCH_UNKNOWN) arch = lmm_guess_arch(J.loras, n);
    if (lmm_lora_meta(&meta, lm_lora_source(J.loras[0]), &recipe, paths, arch, title, uniform > 0 ? uniform : 0)) {
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        goto done;
    }
    rc = lmm_write_lora(out, om, nw, o.format, dt, &meta, paths, n + (o.base != NULL), &rep->bytes_written, err);
done:
    for (size_t i = 0; J.g && i < J.ng; i++) {
        free(J.g[i].om.up); free(J.g[i].om.down); free(J.g[i].om.kohya_name); free(J.g[i].om.peft_name);
    }
    free(J.g);
    free(om);
    free(ents);
    for (size_t i = 0; J.loras && i < n; i++) lm_lora_close(J.loras[i]);
    free(J.loras);
    lm_keymap_free(km);
    lm_source_close(bsrc);
    lmm_meta_free(&meta);
    free(recipe.inputs);
    free(paths);
    rep->seconds_total = now() - t0;
    if (rc || !report) lm_lmerge_report_free(rep);
    return rc;
}

void lm_lmerge_report_free(lm_lmerge_report *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_modules; i++) free(r->modules[i].name);
    free(r->modules);
    free(r->input_sha256);
    for (size_t i = 0; i < r->n_dropped; i++) free(r->dropped[i]);
    free(r->dropped);
    memset(r, 0, sizeof *r);
}
