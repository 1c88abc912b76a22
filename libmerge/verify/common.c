/* Shared by the verification modules: report bookkeeping, unit roundoff and ulp of the
 * stored dtypes, and finding recipe inputs by name. */
#include "verify_impl.h"

#include <cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int lmv_problem(lm_verify_report *r, const char *kind, const char *where, const char *fmt, ...)
{
    r->ok = 0;
    lm_verify_problem *p = realloc(r->problems, (r->n_problems + 1) * sizeof *p);
    if (!p) return LM_ENOMEM;
    r->problems = p;
    p += r->n_problems;
    memset(p, 0, sizeof *p);
    snprintf(p->kind, sizeof p->kind, "%s", kind);
    p->where = strdup(where ? where : "");
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    p->message = strdup(buf);
    if (!p->where || !p->message) { free(p->where); free(p->message); return LM_ENOMEM; }
    r->n_problems++;
    return 0;
}

lm_verify_input *lmv_add_input(lm_verify_report *r, const char *path, const char *role, double lambda)
{
    lm_verify_input *in = realloc(r->inputs, (r->n_inputs + 1) * sizeof *in);
    if (!in) return NULL;
    r->inputs = in;
    in += r->n_inputs;
    memset(in, 0, sizeof *in);
    if (!(in->path = strdup(path))) return NULL;
    snprintf(in->role, sizeof in->role, "%s", role ? role : "lora");
    in->lambda = lambda;
    in->hash_ok = -1;
    r->n_inputs++;
    return in;
}

void lm_verify_report_free(lm_verify_report *r)
{
    if (!r) return;
    free(r->out_path);
    free(r->operation);
    for (size_t i = 0; i < r->n_inputs; i++) free(r->inputs[i].path);
    free(r->inputs);
    for (size_t i = 0; i < r->n_t; i++) free(r->t[i].name);
    free(r->t);
    for (size_t i = 0; i < r->n_m; i++) free(r->m[i].name);
    free(r->m);
    for (size_t i = 0; i < r->n_problems; i++) { free(r->problems[i].where); free(r->problems[i].message); }
    free(r->problems);
    memset(r, 0, sizeof *r);
}

double lm_verify_unit_roundoff(lm_dtype dt)
{
    switch (dt) {
    case LM_DT_F16: return ldexp(1.0, -11);
    case LM_DT_BF16: return ldexp(1.0, -8);
    case LM_DT_F32: return ldexp(1.0, -24);
    case LM_DT_F64: return ldexp(1.0, -53);
    default: return 0;
    }
}

double lm_verify_ulp(lm_dtype dt, double x)
{
    int mant, emin, emax;   /* stored mantissa bits, smallest and largest normal exponent */
    switch (dt) {
    case LM_DT_F16: mant = 10; emin = -14; emax = 15; break;
    case LM_DT_BF16: mant = 7; emin = -126; emax = 127; break;
    case LM_DT_F32: mant = 23; emin = -126; emax = 127; break;
    case LM_DT_F64: mant = 52; emin = -1022; emax = 1023; break;
    default: return 0;
    }
    x = fabs(x);
    int e;
    if (isinf(x) || isnan(x)) e = emax;
    else if (x == 0) e = emin;
    else {
        frexp(x, &e);        /* x = f·2^e, f in [0.5, 1): the binade is 2^(e-1) */
        e -= 1;
        if (e < emin) e = emin;
        if (e > emax) e = emax;
    }
    return ldexp(1.0, e - mant);
}

/* Looks for name in dir; fills path and returns 1 when it is a regular file. */
static int try_dir(const char *dir, size_t dlen, const char *name, char *path, size_t n)
{
    struct stat st;
    int w = snprintf(path, n, "%.*s%s%s", (int)dlen, dir, dlen ? "/" : "", name);
    return w > 0 && (size_t)w < n && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int lmv_find_input(const char *out, const char *name, const char *const *search, size_t n_search,
                   char *path, size_t n)
{
    if (!name || !*name || strchr(name, '/')) return 0;   /* recipes record bare file names */
    const char *slash = strrchr(out, '/');
    if (try_dir(slash ? out : ".", slash ? (size_t)(slash - out) : 1, name, path, n)) return 1;
    for (size_t i = 0; i < n_search; i++)
        if (try_dir(search[i], strlen(search[i]), name, path, n)) return 1;
    return try_dir(".", 1, name, path, n);
}

void lmv_release(const void *p, size_t n)
{
    static size_t pg;
    if (!p || !n) return;
    if (!pg) pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + pg - 1) & ~(uintptr_t)(pg - 1), z = ((uintptr_t)p + n) & ~(uintptr_t)(pg - 1);
    if (z > a) madvise((void *)a, z - a, MADV_DONTNEED);
}

int lmv_read_recipe(const lm_source *s, lm_recipe *r, int *have, lm_err *err)
{
    *have = 0;
    memset(r, 0, sizeof *r);
    const char *json = lm_source_meta_get(s, LM_RECIPE_KEY);
    if (!json) return 0;
    int rc = lm_recipe_parse(json, r, err);
    if (rc) { lm_err_file(err, lm_source_path(s)); return rc; }
    *have = 1;
    return 0;
}

int lmv_hash_inputs(lm_verify_report *r, const lm_recipe *rec, int have_recipe, size_t first_rec, int no_hash, lm_err *err)
{
    for (size_t i = 0; i < r->n_inputs; i++) {
        lm_verify_input *in = &r->inputs[i];
        size_t k = first_rec + i;
        if (have_recipe && k < rec->n_inputs) memcpy(in->recipe_sha256, rec->inputs[k].sha256, 65);
        if (no_hash) continue;
        lm_file_hashes h;
        int rc = lm_hash_file(in->path, LM_HASH_SHA256, &h, err);
        if (rc) return rc;
        memcpy(in->sha256, h.sha256, 65);
        if (!in->recipe_sha256[0]) continue;
        in->hash_ok = !strcmp(in->sha256, in->recipe_sha256);
        if (!in->hash_ok &&
            (rc = lmv_problem(r, "hash", in->path, "sha256 %s is not the recipe's %s for %s (%s): not the file this output was made from",
                              in->sha256, in->recipe_sha256, rec->inputs[k].name ? rec->inputs[k].name : "?", in->role)))
            return lm_err_set(err, rc, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    return 0;
}
