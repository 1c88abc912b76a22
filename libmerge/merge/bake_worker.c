/* lm_bake's workers: each computes an updated tensor (W as fp32, + λ·ΔW per module, DoRA
 * last, one rounding) into a pool buffer, in file order, a bounded window ahead of the
 * writer. OpenBLAS is single-threaded inside them (lm_bake sets it). */
#include "bake_impl.h"

#include <stdlib.h>
#include <string.h>
#include <cblas.h>

/* ---- workers ------------------------------------------------------------------- */

/* Per-worker buffers: W sized once for the largest updated tensor; ΔW (only for modules
 * that are not plain up·down) and the factors grow as needed and are kept, so the steady
 * state allocates nothing (no page faults on fresh memory per tensor). */
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
    /* NaN/±Inf made by the update (fp32 overflow, Inf − Inf): one scan of W; the base is
     * scanned only when W has some, to leave out values that were already there */
    int64_t nf = lmm_count_nonfinite(W, LM_DT_F32, n);
    if (nf) {
        const void *raw = lm_source_raw(b->src, t);
        int64_t had = -1;
        if (raw) had = lmm_count_nonfinite(raw, e->dtype, n);
        else if (!grow(&wb->dw, &wb->dwcap, n) && !lm_source_read_f32(b->src, t, wb->dw, NULL))
            had = lmm_count_nonfinite(wb->dw, LM_DT_F32, n);
        nf = had < 0 ? nf : nf > had ? nf - had : 0;
    }
    r->nonfinite = nf;
    int64_t ov = lm_convert_from_f32(out, b->odt[t], W, n);
    if (ov < 0) return lm_err_set(&r->err, (int)ov, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                                  "cannot store %s", lm_dtype_name(b->odt[t]));
    r->buf = out;
    r->nbytes = n * lm_dtype_size(b->odt[t]);
    r->overflow = ov;
    return 0;
}

void *lmb_worker(void *arg)
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
        /* the kernel's copy into the page cache is the writer thread's largest cost: done
         * here, it runs on every worker at once (the writer then only steps over it) */
        pthread_mutex_lock(&b->mu);
        lm_writer *w = b->w;
        pthread_mutex_unlock(&b->mu);
        if (!r.rc && w && !(r.overflow || r.nonfinite)) {
            r.rc = lm_writer_pwrite(w, b->out_off[b->jobs[j]], r.buf, r.nbytes, &r.err);
            r.written = !r.rc;
        }
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

