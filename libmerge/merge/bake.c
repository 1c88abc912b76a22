/* lm_bake: W' = round(W + Σ λ_i ΔW_i) for every tensor of a base, streamed in file order.
 *
 * Pipeline (merge.h): the main thread plans (every input opened and resolved, every shape
 * checked, the output path checked) before the first byte is written; then worker threads
 * compute the tensors that change (read W as fp32, lm_lora_apply each module, round once
 * to the output dtype) up to a bounded window ahead, while the main thread writes in file
 * order, copying untouched tensors straight from the mapping. OpenBLAS runs one thread per
 * call (openblas_set_num_threads(1)) so workers × BLAS threads never exceed the workers.
 * Base pages are released (madvise DONTNEED) once written, so resident memory stays about
 * the window, not the model. The base's SHA-256 for the recipe is computed by its own
 * thread, overlapping the planning and the first updates. */
#include "merge_impl.h"
#include "meta.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <cblas.h>
#include <openssl/evp.h>

typedef struct upd {
    int lora;          /* index into the LoRA list */
    size_t mod;        /* module index in that LoRA */
    int64_t row0, rows;
    int bias;          /* 1: .diff_b onto this (bias) tensor */
    int dora;          /* applied after the plain modules */
} upd;

enum { MODE_COPY = 0, MODE_CONVERT, MODE_UPDATE };

typedef struct result {
    void *buf;
    size_t nbytes;
    int64_t overflow;
    int done, rc;
    lm_err err;
} result;

typedef struct bake {
    const lm_source *src;
    lm_lora **loras;
    const lm_weighted *in;
    size_t nl, nt;
    size_t *uoff;      /* nt + 1: updates of tensor t are upds[uoff[t] .. uoff[t+1]) */
    upd *upds;
    lm_dtype *odt;
    int *mode;
    size_t *jobs, njobs;
    result *res;
    pthread_mutex_t mu;
    pthread_cond_t cv_done, cv_space;
    size_t next_job, consumed, window;
    size_t max_numel;  /* largest updated tensor */
    void **pool;       /* window output buffers, job j uses pool[j % window] */
    int stop;
    EVP_MD_CTX *md;    /* SHA-256 of the output's data area (its own thread), or NULL */
    size_t hashed;     /* update jobs hashed (SIZE_MAX without hashing) */
    int hash_done;     /* the hash thread went through every tensor */
} bake;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

static int plan(bake *b, const lm_keymap *km, const lm_bake_opts *o, lm_bake_report *rep, lm_err *err)
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

/* ---- workers ------------------------------------------------------------------- */

/* Per-worker buffers: W sized once for the largest updated tensor; ΔW (only for modules
 * that are not plain up·down) and the factors grow as needed and are kept, so the steady
 * state allocates nothing (no page faults on fresh memory per tensor). */
#define release_pages lmm_release_pages

typedef struct wbuf {
    float *W, *dw, *up, *down;
    size_t dwcap, upcap, downcap;
} wbuf;

static int grow(float **p, size_t *cap, size_t n)
{
    if (n <= *cap) return 0;
    float *q = realloc(*p, n * sizeof *q);
    if (!q) return LM_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* Reads a LoRA factor as fp32 and releases its pages: each factor is used once. */
static int read_factor(const lm_source *ls, int64_t e, float *dst, lm_err *err)
{
    int rc = lm_source_read_f32(ls, (size_t)e, dst, err);
    const void *raw = lm_source_raw(ls, (size_t)e);
    if (raw) release_pages(raw, lm_source_entry(ls, (size_t)e)->nbytes);
    return rc;
}

/* W[rows] += λ·scale·up·down in one sgemm (beta 1) for a plain up·down module whose
 * factors flatten to [rows, r] and [r, per]; returns 1 when the module is not one. */
static int add_plain(const lm_lora *l, size_t mod, float lam, float *W, int64_t rows, int64_t per, wbuf *wb, lm_err *err)
{
    const lm_lora_module *m = lm_lora_module_at(l, mod);
    if (m->kind != LM_MOD_LORA || m->has_dora || m->rank <= 0) return 1;
    const lm_source *ls = lm_lora_source(l);
    int64_t eu = lm_lora_factor_entry(l, mod, LM_FAC_UP), ed = lm_lora_factor_entry(l, mod, LM_FAC_DOWN);
    if (eu < 0 || ed < 0) return 1;
    int64_t r = m->rank;
    if (lm_source_entry(ls, (size_t)eu)->numel != rows * r || lm_source_entry(ls, (size_t)ed)->numel != r * per) return 1;
    if (grow(&wb->up, &wb->upcap, (size_t)(rows * r)) || grow(&wb->down, &wb->downcap, (size_t)(r * per)))
        return lm_err_set(err, LM_ENOMEM, NULL, m->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = read_factor(ls, eu, wb->up, err);
    if (!rc) rc = read_factor(ls, ed, wb->down, err);
    if (rc) return rc;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)per, (int)r, lam * m->scale,
                wb->up, (int)r, wb->down, (int)per, 1.0f, W, (int)per);
    return 0;
}

/* Computes updated tensor t into out (b->odt[t] elements): W read as fp32; plain modules
 * added as W[rows] += λ·scale·up·down (sgemm, beta 1); other kinds through lm_lora_delta
 * and saxpy; bias updates; then the DoRA modules one at a time through lm_lora_apply;
 * then one rounding. */
static int compute(bake *b, size_t t, wbuf *wb, void *out, result *r)
{
    const lm_entry *e = lm_source_entry(b->src, t);
    size_t n = (size_t)e->numel;
    float *W = wb->W;
    int rc = lm_source_read_f32(b->src, t, W, &r->err);
    if (rc) return rc;
    int64_t per = e->ndim > 1 ? e->numel / e->shape[0] : 1;
    for (size_t k = b->uoff[t]; k < b->uoff[t + 1] && !rc; k++) {
        const upd *u = &b->upds[k];
        const lm_lora *l = b->loras[u->lora];
        float lam = (float)b->in[u->lora].lambda;
        if (u->dora) {
            rc = lm_lora_apply(l, u->mod, lam, W, e->shape, e->ndim, u->row0, u->rows, &r->err);
        } else if (!u->bias && (rc = add_plain(l, u->mod, lam, W + u->row0 * per, u->rows, per, wb, &r->err)) != 1) {
            /* done (rc 0) or failed */
        } else {
            if (grow(&wb->dw, &wb->dwcap, (size_t)(u->rows * per)))
                rc = lm_err_set(&r->err, LM_ENOMEM, NULL, e->name, LM_ERR_NO_OFFSET, "out of memory");
            else
                rc = u->bias ? lm_lora_delta_bias(l, u->mod, wb->dw, &r->err) : lm_lora_delta(l, u->mod, wb->dw, &r->err);
            if (!rc) cblas_saxpy((int)(u->rows * per), lam, wb->dw, 1, W + u->row0 * per, 1);
        }
        if (rc) { lm_err_file(&r->err, b->in[u->lora].path); lm_err_key(&r->err, lm_lora_module_at(l, u->mod)->name); }
    }
    if (rc) return rc;
    int64_t ov = lm_convert_from_f32(out, b->odt[t], W, n);
    if (ov < 0) return lm_err_set(&r->err, (int)ov, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                                  "cannot store %s", lm_dtype_name(b->odt[t]));
    r->buf = out;
    r->nbytes = n * lm_dtype_size(b->odt[t]);
    r->overflow = ov;
    return 0;
}

static void *worker(void *arg)
{
    bake *b = arg;
    wbuf wb = { malloc(b->max_numel * sizeof(float)), NULL, NULL, NULL, 0, 0, 0 };
    pthread_mutex_lock(&b->mu);
    for (;;) {
        if (b->stop || b->next_job >= b->njobs) break;
        size_t j = b->next_job;
        size_t low = b->consumed < b->hashed ? b->consumed : b->hashed;
        if (j >= low + b->window) {               /* bounded lookahead: the output pool */
            pthread_cond_wait(&b->cv_space, &b->mu);
            continue;
        }
        b->next_job++;
        pthread_mutex_unlock(&b->mu);
        result r;
        memset(&r, 0, sizeof r);
        void *out = b->pool[j % b->window];
        if (!wb.W || !out)
            r.rc = lm_err_set(&r.err, LM_ENOMEM, lm_source_path(b->src), NULL, LM_ERR_NO_OFFSET, "out of memory");
        else
            r.rc = compute(b, b->jobs[j], &wb, out, &r);
        pthread_mutex_lock(&b->mu);
        b->res[j] = r;
        b->res[j].done = 1;
        pthread_cond_broadcast(&b->cv_done);
    }
    pthread_mutex_unlock(&b->mu);
    free(wb.W);
    free(wb.dw);
    free(wb.up);
    free(wb.down);
    return NULL;
}

/* ---- base hash thread ------------------------------------------------------------ */

typedef struct hash_job {
    const char *path;
    char hex[65];
    uint64_t bytes;
    int rc;
    lm_err err;
    double seconds;
    volatile int cancel;
} hash_job;

static void *hash_thread(void *arg)
{
    hash_job *h = arg;
    double t0 = now();
    h->rc = lmm_sha256_file_cancel(h->path, h->hex, &h->bytes, &h->cancel, &h->err);
    h->seconds = now() - t0;
    return NULL;
}

/* ---- output hash thread ----------------------------------------------------------- */

/* SHA-256 of the output's data area, in file order, next to the writing: copies are hashed
 * from the base mapping (they never pass through user space otherwise), conversions are
 * redone in a chunk buffer (cheap, deterministic), updates are read from their pool buffer,
 * which is not reused until hashed. */
static void *out_hash_thread(void *arg)
{
    bake *b = arg;
    size_t j = 0, chunk = 1u << 20, tcap = 0;
    uint8_t *cbuf = malloc(chunk * 4), *tmp = NULL;
    int ok = cbuf != NULL;
    for (size_t t = 0; t < b->nt && ok; t++) {
        const lm_entry *e = lm_source_entry(b->src, t);
        if (b->mode[t] == MODE_UPDATE) {
            pthread_mutex_lock(&b->mu);
            while (!b->res[j].done && !b->stop) pthread_cond_wait(&b->cv_done, &b->mu);
            ok = b->res[j].done && !b->res[j].rc && !b->stop;
            const void *buf = b->res[j].buf;
            size_t nb = b->res[j].nbytes;
            pthread_mutex_unlock(&b->mu);
            if (!ok) break;
            EVP_DigestUpdate(b->md, buf, nb);
            pthread_mutex_lock(&b->mu);
            b->hashed = ++j;
            pthread_cond_broadcast(&b->cv_space);
            pthread_mutex_unlock(&b->mu);
            continue;
        }
        if (b->stop) { ok = 0; break; }
        const uint8_t *raw = lm_source_raw(b->src, t);
        if (!raw) {
            if (e->nbytes > tcap) {
                uint8_t *nt = realloc(tmp, e->nbytes);
                if (!nt) { ok = 0; break; }
                tmp = nt;
                tcap = e->nbytes;
            }
            if (lm_source_read(b->src, t, tmp, NULL)) { ok = 0; break; }
            raw = tmp;
        }
        if (b->mode[t] == MODE_COPY) {
            EVP_DigestUpdate(b->md, raw, e->nbytes);
        } else {
            size_t isz = lm_dtype_size(e->dtype), osz = lm_dtype_size(b->odt[t]);
            for (size_t i = 0; i < (size_t)e->numel; i += chunk) {
                size_t m = (size_t)e->numel - i < chunk ? (size_t)e->numel - i : chunk;
                if (lm_convert(cbuf, b->odt[t], raw + i * isz, e->dtype, m) < 0) { ok = 0; break; }
                EVP_DigestUpdate(b->md, cbuf, m * osz);
            }
        }
        if (raw != tmp) release_pages(raw, e->nbytes);
    }
    free(cbuf);
    free(tmp);
    pthread_mutex_lock(&b->mu);
    b->hash_done = ok;
    if (!ok) b->hashed = (size_t)-1;      /* never hold the workers back */
    pthread_cond_broadcast(&b->cv_space);
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* ---- the bake ------------------------------------------------------------------- */

/* Writes bytes of the output data area (the output hash thread reads the same bytes). */
static int emit(bake *b, lm_writer *w, const void *p, size_t n, lm_err *err)
{
    (void)b;
    return lm_writer_write(w, p, n, err);
}

static int write_copy(bake *b, lm_writer *w, size_t t, lm_err *err)
{
    const lm_source *src = b->src;
    const lm_entry *e = lm_source_entry(src, t);
    const void *raw = lm_source_raw(src, t);
    if (raw && lm_source_format(src) == LM_FMT_SAFETENSORS) {
        /* copied by the kernel (copy_file_range), as cp does */
        return lm_writer_copy_from(w, lm_source_path(src), e->offset, e->nbytes, err);
    }
    if (raw) {
        int rc = emit(b, w, raw, e->nbytes, err);
        release_pages(raw, e->nbytes);
        return rc;
    }
    void *tmp = malloc(e->nbytes ? e->nbytes : 1);
    if (!tmp) return lm_err_set(err, LM_ENOMEM, lm_source_path(src), e->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_source_read(src, t, tmp, err);
    if (!rc) rc = emit(b, w, tmp, e->nbytes, err);
    free(tmp);
    return rc;
}

static int add_overflow(lm_bake_report *rep, const char *name, int64_t count);

/* An untouched tensor whose dtype changes: converted in 1 Mi-element chunks here. */
static int write_convert(bake *b, lm_writer *w, size_t t, lm_bake_report *rep, const lm_bake_opts *o, lm_err *err)
{
    const lm_entry *e = lm_source_entry(b->src, t);
    lm_dtype odt = b->odt[t];
    size_t isz = lm_dtype_size(e->dtype), osz = lm_dtype_size(odt), chunk = 1u << 20;
    const uint8_t *raw = lm_source_raw(b->src, t);
    void *tmp = NULL;
    int rc = 0;
    if (!raw) {
        if (!(tmp = malloc(e->nbytes ? e->nbytes : 1))) return lm_err_set(err, LM_ENOMEM, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "out of memory");
        if ((rc = lm_source_read(b->src, t, tmp, err))) { free(tmp); return rc; }
        raw = tmp;
    }
    void *buf = malloc(chunk * osz);
    if (!buf) { free(tmp); return lm_err_set(err, LM_ENOMEM, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "out of memory"); }
    int64_t ov = 0;
    for (size_t i = 0; i < (size_t)e->numel && !rc; i += chunk) {
        size_t m = (size_t)e->numel - i < chunk ? (size_t)e->numel - i : chunk;
        int64_t c = lm_convert(buf, odt, raw + i * isz, e->dtype, m);
        if (c < 0) { rc = lm_err_set(err, (int)c, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "cannot convert %s to %s", lm_dtype_name(e->dtype), lm_dtype_name(odt)); break; }
        ov += c;
        rc = emit(b, w, buf, m * osz, err);
    }
    if (!tmp) release_pages(raw, e->nbytes);
    free(buf);
    free(tmp);
    if (!rc && ov) {
        if (add_overflow(rep, e->name, ov)) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        if (o->fail_on_overflow)
            return lm_err_set(err, LM_EINPUT, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                              "%lld values overflow %s (--fail-on-overflow)", (long long)ov, lm_dtype_name(odt));
    }
    return rc;
}

static int add_overflow(lm_bake_report *rep, const char *name, int64_t count)
{
    lm_bake_overflow *o = realloc(rep->overflows, (rep->n_overflows + 1) * sizeof *o);
    if (!o) return LM_ENOMEM;
    rep->overflows = o;
    o[rep->n_overflows].name = strdup(name);
    o[rep->n_overflows].count = count;
    if (!o[rep->n_overflows].name) return LM_ENOMEM;
    rep->n_overflows++;
    rep->overflow_total += count;
    return 0;
}

static int run_pipeline(bake *b, lm_writer *w, const lm_bake_opts *o, lm_bake_report *rep, lm_err *err)
{
    size_t j = 0;
    int rc = 0;
    for (size_t k = 0; k < b->nt && !rc; k++) {
        size_t t = lm_writer_tensor_index(w, k);
        if (b->mode[t] == MODE_COPY) {
            rc = write_copy(b, w, t, err);
        } else if (b->mode[t] == MODE_CONVERT) {
            rc = write_convert(b, w, t, rep, o, err);
        } else {
            if (b->jobs[j] != t) return lm_err_set(err, LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET, "writer order is not file order");
            pthread_mutex_lock(&b->mu);
            while (!b->res[j].done) pthread_cond_wait(&b->cv_done, &b->mu);
            pthread_mutex_unlock(&b->mu);
            result *r = &b->res[j];
            if (r->rc) { *err = r->err; rc = r->rc; break; }
            const lm_entry *e = lm_source_entry(b->src, t);
            if (r->overflow) {
                if (add_overflow(rep, e->name, r->overflow)) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); break; }
                if (o->fail_on_overflow) {
                    rc = lm_err_set(err, LM_EINPUT, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                                    "%lld values overflow %s (|x| too large for the output dtype; --fail-on-overflow)",
                                    (long long)r->overflow, lm_dtype_name(b->odt[t]));
                    break;
                }
            }
            rc = emit(b, w, r->buf, r->nbytes, err);
            const void *raw = lm_source_raw(b->src, t);
            if (raw) release_pages(raw, e->nbytes);
            /* r->buf is pool[j % window]: reused by job j + window once written and hashed */
            pthread_mutex_lock(&b->mu);
            b->consumed = ++j;
            pthread_cond_broadcast(&b->cv_space);
            pthread_mutex_unlock(&b->mu);
        }
        if (o->progress) o->progress(o->progress_ctx, "bake", k + 1, b->nt);
    }
    return rc;
}

static int fill_recipe(lm_recipe *r, const char *base, const hash_job *hb, const lm_weighted *loras, size_t n,
                       const lm_bake_report *rep, const lm_bake_opts *o, char **paths_store)
{
    r->tool = "lcm-bake";
    r->tool_version = LM_TOOL_VERSION;
    r->operation = "bake";
    r->dtype = o->out_dtype == LM_DT_INVALID ? "keep" : (char *)lm_dtype_name(o->out_dtype);
    r->format = "safetensors";
    r->allow_unmatched = o->allow_unmatched;
    r->n_inputs = n + 1;
    r->inputs = calloc(n + 1, sizeof *r->inputs);
    if (!r->inputs) return LM_ENOMEM;
    r->inputs[0] = (lm_recipe_input){ (char *)lmm_basename(base), "", hb->bytes, 1.0, "base" };
    memcpy(r->inputs[0].sha256, hb->hex, 65);
    paths_store[0] = (char *)base;
    for (size_t i = 0; i < n; i++) {
        r->inputs[i + 1] = (lm_recipe_input){ (char *)lmm_basename(loras[i].path), "", 0, loras[i].lambda,
                                              (char *)(loras[i].role ? loras[i].role : "lora") };
        memcpy(r->inputs[i + 1].sha256, rep->loras[i].sha256, 65);
        paths_store[i + 1] = (char *)loras[i].path;
    }
    return 0;
}

static int build_kv(lmm_meta *meta, lm_kv **kv, const lm_source *src, const lm_recipe *recipe, char **paths,
                    const lm_model_info *info, const char *title, const char *out_hash)
{
    if (lmm_build_meta(meta, src, recipe, (const char *const *)paths, info ? info->arch : LM_ARCH_UNKNOWN, 0, title))
        return LM_ENOMEM;
    if (out_hash && lmm_meta_set(meta, "modelspec.hash_sha256", out_hash)) return LM_ENOMEM;
    return (*kv = lmm_meta_kv(meta)) ? 0 : LM_ENOMEM;
}

int lm_bake(const char *base, const lm_weighted *loras, size_t n, const char *out,
            const lm_bake_opts *opts, lm_bake_report *report, lm_err *err)
{
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    if (opts) o = *opts;
    lm_bake_report rep_local, *rep = report ? report : &rep_local;
    memset(rep, 0, sizeof *rep);
    double t0 = now();
    int rc = 0;
    if (o.out_dtype != LM_DT_INVALID && o.out_dtype != LM_DT_F16 && o.out_dtype != LM_DT_BF16 && o.out_dtype != LM_DT_F32)
        return lm_err_set(err, LM_EUSAGE, out, NULL, LM_ERR_NO_OFFSET, "output dtype must be keep, F16, BF16 or F32");

    /* the output must be none of the inputs: refused before anything is read */
    const char **inputs = calloc(n + 1, sizeof *inputs);
    char **paths = calloc(n + 1, sizeof *paths);
    bake b;
    memset(&b, 0, sizeof b);
    lm_source *src = NULL;
    lm_keymap *km = NULL;
    lm_writer *w = NULL;
    lmm_meta meta = { 0 };
    lm_kv *kv = NULL;
    lm_recipe recipe = { 0 };
    pthread_t *th = NULL, hth, oth;
    int out_hash_started = 0;
    int nth = 0, hash_started = 0, mu_init = 0;
    hash_job hb, hb_final;
    memset(&hb, 0, sizeof hb);
    memset(&hb_final, 0, sizeof hb_final);
    if (!inputs || !paths) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    inputs[0] = base;
    for (size_t i = 0; i < n; i++) inputs[i + 1] = loras[i].path;
    if ((rc = lmm_check_output(out, inputs, n + 1, err))) goto done;

    hb.path = base;
    if (pthread_create(&hth, NULL, hash_thread, &hb) == 0) hash_started = 1;
    else hash_thread(&hb);

    if ((rc = lm_source_open(&src, base, NULL, err))) goto done;
    if ((rc = lm_keymap_build(&km, src, err))) { lm_err_file(err, base); goto done; }
    const lm_model_info *info = lm_keymap_info(km);
    rep->arch = lm_arch_name(info ? info->arch : LM_ARCH_UNKNOWN);
    rep->layout = lm_layout_name(info ? info->layout : LM_LAYOUT_UNKNOWN);

    b.src = src;
    b.in = loras;
    b.nl = n;
    b.nt = lm_source_count(src);
    b.loras = calloc(n ? n : 1, sizeof *b.loras);
    rep->loras = calloc(n ? n : 1, sizeof *rep->loras);
    rep->n_loras = n;
    if (!b.loras || !rep->loras) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    for (size_t i = 0; i < n; i++) {
        rep->loras[i].path = strdup(loras[i].path);
        rep->loras[i].lambda = loras[i].lambda;
        rep->loras[i].role = loras[i].role ? loras[i].role : "lora";
        if (!isfinite(loras[i].lambda)) { rc = lm_err_set(err, LM_EUSAGE, loras[i].path, NULL, LM_ERR_NO_OFFSET, "λ is not finite"); goto done; }
        if ((rc = lm_lora_open(&b.loras[i], loras[i].path, NULL, err))) { lm_err_file(err, loras[i].path); goto done; }
        if ((rc = lmm_sha256_file(loras[i].path, rep->loras[i].sha256, NULL, err))) goto done;
    }
    if ((rc = plan(&b, km, &o, rep, err))) goto done;

    /* output dtypes, modes and the job list */
    b.odt = calloc(b.nt ? b.nt : 1, sizeof *b.odt);
    b.mode = calloc(b.nt ? b.nt : 1, sizeof *b.mode);
    b.jobs = calloc(b.nt ? b.nt : 1, sizeof *b.jobs);
    b.res = calloc(b.nt ? b.nt : 1, sizeof *b.res);
    lm_wtensor *wt = calloc(b.nt ? b.nt : 1, sizeof *wt);
    if (!b.odt || !b.mode || !b.jobs || !b.res || !wt) { free(wt); rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    size_t max_out = 0;
    for (size_t t = 0; t < b.nt; t++) {
        const lm_entry *e = lm_source_entry(src, t);
        b.odt[t] = (o.out_dtype != LM_DT_INVALID && lm_dtype_is_float(e->dtype)) ? o.out_dtype : e->dtype;
        b.mode[t] = b.uoff[t + 1] > b.uoff[t] ? MODE_UPDATE : b.odt[t] != e->dtype ? MODE_CONVERT : MODE_COPY;
        if (b.mode[t] == MODE_UPDATE) rep->touched++;
        else if (b.mode[t] == MODE_CONVERT) rep->converted++;
        else rep->copied++;
        if (b.mode[t] == MODE_UPDATE) {
            b.jobs[b.njobs++] = t;
            if ((size_t)e->numel > b.max_numel) b.max_numel = (size_t)e->numel;
            if ((size_t)e->numel * lm_dtype_size(b.odt[t]) > max_out) max_out = (size_t)e->numel * lm_dtype_size(b.odt[t]);
        }
        wt[t].name = e->name;
        wt[t].dtype = b.odt[t];
        wt[t].ndim = e->ndim;
        memcpy(wt[t].shape, e->shape, sizeof wt[t].shape);
    }
    rep->tensors = b.nt;

    /* workers start now: they overlap the base hash */
    nth = lmm_threads(o.threads);
    if ((size_t)nth > b.njobs) nth = b.njobs ? (int)b.njobs : 0;
    b.hashed = o.hash_output ? 0 : (size_t)-1;
    b.window = (size_t)nth + 1;   /* output buffers: resident memory ≈ window × largest output
                                     + workers × 2 × largest fp32 tensor */
    b.pool = calloc(b.window, sizeof *b.pool);
    for (size_t i = 0; b.pool && i < b.window; i++) b.pool[i] = malloc(max_out ? max_out : 1);
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv_done, NULL);
    pthread_cond_init(&b.cv_space, NULL);
    mu_init = 1;
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    th = calloc(nth ? (size_t)nth : 1, sizeof *th);
    for (int i = 0; th && i < nth; i++)
        if (pthread_create(&th[i], NULL, worker, &b)) { nth = i; break; }
    if (!th || (nth == 0 && b.njobs)) {
        free(wt);
        openblas_set_num_threads(blas_threads);
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "cannot start worker threads");
        goto done;
    }

    /* the header goes out first with placeholders of the same length for the hashes
     * still being computed (base SHA-256, output data SHA-256), rewritten before commit */
    char title[256];
    if (o.title) snprintf(title, sizeof title, "%s", o.title);
    else lmm_title(out, title, sizeof title);
    const char *zeros = "0000000000000000000000000000000000000000000000000000000000000000";
    char zeros0x[67];
    snprintf(zeros0x, sizeof zeros0x, "0x%s", zeros);
    memcpy(hb_final.hex, zeros, 65);
    hb_final.bytes = lm_source_file_size(src);
    if (fill_recipe(&recipe, base, &hb_final, loras, n, rep, &o, paths) ||
        build_kv(&meta, &kv, src, &recipe, paths, info, title, o.hash_output ? zeros0x : NULL)) {
        free(wt);
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        goto stop;
    }
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    wo.inputs = inputs;
    wo.n_inputs = n + 1;
    rc = lm_writer_open(&w, out, wt, b.nt, kv, meta.n, &wo, err);
    free(wt);
    if (rc) goto stop;
    if (o.hash_output) {
        if (!(b.md = EVP_MD_CTX_new())) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto stop; }
        EVP_DigestInit_ex(b.md, EVP_sha256(), NULL);
        if (pthread_create(&oth, NULL, out_hash_thread, &b)) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "cannot start a thread"); goto stop; }
        out_hash_started = 1;
    }
    double tc = now();
    rc = run_pipeline(&b, w, &o, rep, err);
    rep->seconds_compute = now() - tc;
    if (!rc) {
        double th0 = now();
        if (hash_started) { pthread_join(hth, NULL); hash_started = 0; }
        rep->seconds_hash = now() - th0;
        if (hb.rc) { *err = hb.err; rc = hb.rc; goto stop; }
        memcpy(rep->base_sha256, hb.hex, 65);
        char out_hex[2 + 65] = "";
        if (out_hash_started) { pthread_join(oth, NULL); out_hash_started = 0; }
        if (b.md && !b.hash_done) { rc = lm_err_set(err, LM_EIO, base, NULL, LM_ERR_NO_OFFSET, "cannot read the base to hash the output"); goto stop; }
        if (b.md) {
            unsigned char md[32];
            unsigned int mdn = 0;
            EVP_DigestFinal_ex(b.md, md, &mdn);
            strcpy(out_hex, "0x");
            for (int i = 0; i < 32; i++) snprintf(out_hex + 2 + 2 * i, 3, "%02x", md[i]);
            memcpy(rep->out_sha256, out_hex + 2, 65);
        }
        free(kv);
        kv = NULL;
        lmm_meta_free(&meta);
        memcpy(recipe.inputs[0].sha256, hb.hex, 65);
        recipe.inputs[0].bytes = hb.bytes;
        if (build_kv(&meta, &kv, src, &recipe, paths, info, title, b.md ? out_hex : NULL)) {
            rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
            goto stop;
        }
        if ((rc = lm_writer_update_meta(w, kv, meta.n, err))) goto stop;
        rep->bytes_written = lm_writer_data_start(w);
        for (size_t t = 0; t < b.nt; t++)
            rep->bytes_written += (uint64_t)lm_source_entry(src, t)->numel * lm_dtype_size(b.odt[t]);
        rc = lm_writer_commit(w, err);
        w = NULL;
    }
stop:
    pthread_mutex_lock(&b.mu);
    b.stop = 1;
    pthread_cond_broadcast(&b.cv_space);
    pthread_cond_broadcast(&b.cv_done);
    pthread_mutex_unlock(&b.mu);
    if (out_hash_started) pthread_join(oth, NULL);
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    openblas_set_num_threads(blas_threads);
done:
    if (hash_started) { hb.cancel = 1; pthread_join(hth, NULL); }
    lm_writer_abort(w);
    for (size_t i = 0; b.pool && i < b.window; i++) free(b.pool[i]);
    free(b.pool);
    if (mu_init) {
        pthread_mutex_destroy(&b.mu);
        pthread_cond_destroy(&b.cv_done);
        pthread_cond_destroy(&b.cv_space);
    }
    free(th);
    EVP_MD_CTX_free(b.md);
    free(kv);
    lmm_meta_free(&meta);
    free(recipe.inputs);
    for (size_t i = 0; b.loras && i < n; i++) lm_lora_close(b.loras[i]);
    free(b.loras); free(b.uoff); free(b.upds); free(b.odt); free(b.mode); free(b.jobs); free(b.res);
    lm_keymap_free(km);
    lm_source_close(src);
    free(inputs);
    free(paths);
    rep->seconds_total = now() - t0;
    if (rc && !(rc == LM_EINPUT && rep->n_overflows)) { lm_bake_report_free(rep); }
    else if (!report) lm_bake_report_free(rep);
    return rc;
}

void lm_bake_report_free(lm_bake_report *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_overflows; i++) free(r->overflows[i].name);
    free(r->overflows);
    for (size_t i = 0; i < r->n_loras; i++) free(r->loras[i].path);
    free(r->loras);
    memset(r, 0, sizeof *r);
}
