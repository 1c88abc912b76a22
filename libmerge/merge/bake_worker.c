/* lm_bake's workers: each computes an updated tensor (W as fp32, + λ·ΔW per module, DoRA
 * last, one rounding) into the output ring, in file order, a bounded distance ahead of the
 * writer. OpenBLAS is single-threaded inside them (lm_bake sets it). */
#include "bake_impl.h"

#include <stdlib.h>
#include <string.h>
#include <cblas.h>

/* ---- workers ------------------------------------------------------------------- */

/* Per-worker buffers, grown as needed and kept, so the steady state allocates nothing
 * (no page faults on fresh memory per tensor): W (the whole tensor as fp32, only for
 * tensors the blocked path does not take), ΔW (modules that are not plain up·down), the
 * factors, and the blocked path's block and factors. */
typedef struct wbuf {
    float *W, *dw, *up, *down, *blk, *fac;
    size_t Wcap, dwcap, upcap, downcap, blkcap, faccap;
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

/* ---- blocked updates ------------------------------------------------------------ */

/* A plain module's factors as fp32, ready for W[row0 .. row0+rows) += alpha·up·down. */
typedef struct plainf {
    const float *up, *down;   /* [rows, r], [r, per] */
    int64_t row0, rows, r;
    float alpha;
} plainf;

/* Reads the factors of every update of tensor t into wb->fac when all of them are plain
 * up·down modules (no DoRA, no bias, factors that flatten to [rows, r] and [r, per]).
 * Returns the count, 0 when some update is not plain (then the whole-tensor path runs),
 * or the error (an LM_E* code, negative) with *err set. */
static int plain_factors(bake *b, size_t t, int64_t per, wbuf *wb, plainf *pf, int maxpf, lm_err *err)
{
    size_t nu = b->uoff[t + 1] - b->uoff[t], need = 0;
    if (nu > (size_t)maxpf) return 0;
    for (size_t k = 0; k < nu; k++) {
        const upd *u = &b->upds[b->uoff[t] + k];
        const lm_lora *l = b->loras[u->lora];
        const lm_lora_module *m = lm_lora_module_at(l, u->mod);
        if (u->dora || u->bias || m->kind != LM_MOD_LORA || m->has_dora || m->rank <= 0) return 0;
        const lm_source *ls = lm_lora_source(l);
        int64_t eu = lm_lora_factor_entry(l, u->mod, LM_FAC_UP), ed = lm_lora_factor_entry(l, u->mod, LM_FAC_DOWN);
        if (eu < 0 || ed < 0 || lm_source_entry(ls, (size_t)eu)->numel != u->rows * m->rank ||
            lm_source_entry(ls, (size_t)ed)->numel != m->rank * per)
            return 0;
        need += (size_t)(m->rank * (u->rows + per));
    }
    if (grow(&wb->fac, &wb->faccap, need))
        return lm_err_set(err, LM_ENOMEM, NULL, lm_source_entry(b->src, t)->name, LM_ERR_NO_OFFSET, "out of memory");
    float *p = wb->fac;
    for (size_t k = 0; k < nu; k++) {
        const upd *u = &b->upds[b->uoff[t] + k];
        const lm_lora *l = b->loras[u->lora];
        const lm_lora_module *m = lm_lora_module_at(l, u->mod);
        const lm_source *ls = lm_lora_source(l);
        int64_t r = m->rank;
        pf[k] = (plainf){ p, p + u->rows * r, u->row0, u->rows, r, (float)b->in[u->lora].lambda * m->scale };
        int rc = read_factor(ls, lm_lora_factor_entry(l, u->mod, LM_FAC_UP), p, err);
        if (!rc) rc = read_factor(ls, lm_lora_factor_entry(l, u->mod, LM_FAC_DOWN), p + u->rows * r, err);
        if (rc) {
            lm_err_file(err, b->in[u->lora].path);
            lm_err_key(err, m->name);
            return rc;
        }
        p += r * (u->rows + per);
    }
    return (int)nu;
}

/* A block is at least 256 rows (OpenBLAS packs the whole down factor for every call, so a
 * block of rb rows does 2·rb products per packed element: at 64 rows the packing cost a
 * fifth of the sgemm time) and about 1 MiB of fp32 (a core's L2) when the rows are short. */
#define BLOCK_ROWS_MIN 256
#define BLOCK_FLOATS ((int64_t)1 << 18)

/* Tensor t when every update is a plain module and the base is mapped as F16, BF16 or
 * F32: W is converted, updated (one sgemm per module, beta 1), scanned and rounded one
 * block of rows at a time, so its fp32 copy stays in cache instead of crossing memory
 * three times (converted, updated, rounded). The same products and the same single
 * rounding as the whole-tensor path, but not always the same bits: OpenBLAS picks its
 * kernel by the call's size (0.3.21 on Skylake-X/Cooper Lake: a small-matrix kernel when
 * M·N·K ≤ 10⁶, which rounds α·ΣAB + C differently), so a block may round some element
 * of any of its rows one fp32 rounding apart from the whole-tensor call (SD1.5 + the
 * LCM-LoRA: 12 of 1.07·10⁹ fp16 values one ulp apart). The block size depends only on
 * the shape, so the output is the same for any thread count. Returns 1 when t does not
 * qualify. */
static int compute_blocked(bake *b, size_t t, wbuf *wb, void *out, result *r)
{
    const lm_entry *e = lm_source_entry(b->src, t);
    const uint8_t *raw = lm_source_raw(b->src, t);
    lm_dtype idt = e->dtype, odt = b->odt[t];
    if (!raw || e->ndim < 2 || (idt != LM_DT_F16 && idt != LM_DT_BF16 && idt != LM_DT_F32) ||
        (odt != LM_DT_F16 && odt != LM_DT_BF16 && odt != LM_DT_F32))
        return 1;
    /* LIBMERGE_BAKE_BLOCK_ROWS: rows per block (tests use a few to cross block edges
     * on small tensors); 0 turns the blocked path off */
    const char *env = getenv("LIBMERGE_BAKE_BLOCK_ROWS");
    const int64_t forced = env ? atoll(env) : -1;
    if (forced == 0) return 1;
    const int64_t rows = e->shape[0], per = e->numel / rows;
    plainf pf[8];
    int np = plain_factors(b, t, per, wb, pf, 8, &r->err);
    if (np < 0) return np;       /* the LM_E* code, not -1 (LM_EUSAGE) */
    if (np == 0) return 1;
    int64_t rb = BLOCK_FLOATS / per;
    rb = rb < BLOCK_ROWS_MIN ? BLOCK_ROWS_MIN : rb;
    if (forced > 0) rb = forced;
    rb = rb > rows ? rows : rb;
    if (grow(&wb->blk, &wb->blkcap, (size_t)(rb * per)))
        return lm_err_set(&r->err, LM_ENOMEM, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "out of memory");
    const size_t isz = lm_dtype_size(idt), osz = lm_dtype_size(odt);
    uint8_t *o = out;
    float *B = wb->blk;
    int64_t nf = 0, ov = 0;
    for (int64_t a = 0; a < rows; a += rb) {
        const int64_t m = rows - a < rb ? rows - a : rb;
        const size_t n = (size_t)(m * per);
        lm_convert(B, LM_DT_F32, raw + (size_t)(a * per) * isz, idt, n);
        release_pages(raw + (size_t)(a * per) * isz, n * isz);   /* read once: out of RSS */
        for (int k = 0; k < np; k++) {
            const plainf *p = &pf[k];
            int64_t i0 = p->row0 > a ? p->row0 : a, i1 = p->row0 + p->rows < a + m ? p->row0 + p->rows : a + m;
            if (i1 <= i0) continue;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(i1 - i0), (int)per, (int)p->r, p->alpha,
                        p->up + (i0 - p->row0) * p->r, (int)p->r, p->down, (int)per, 1.0f, B + (i0 - a) * per, (int)per);
        }
        nf += lmm_count_nonfinite(B, LM_DT_F32, n);
        int64_t c = lm_convert_from_f32(o + (size_t)(a * per) * osz, odt, B, n);
        if (c < 0) return lm_err_set(&r->err, (int)c, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                                     "cannot store %s", lm_dtype_name(odt));
        ov += c;
    }
    if (nf) {   /* leave out values that were already NaN/±Inf in the base */
        int64_t had = lmm_count_nonfinite(raw, idt, (size_t)e->numel);
        nf = nf > had ? nf - had : 0;
    }
    r->nonfinite = nf;
    r->buf = out;
    r->nbytes = (size_t)e->numel * osz;
    r->overflow = ov;
    return 0;
}

static int compute_whole(bake *b, size_t t, wbuf *wb, void *out, result *r);

/* Computes updated tensor t into out (b->odt[t] elements): blocked when it can be, else
 * whole; the base's pages leave RSS once read. */
static int compute(bake *b, size_t t, wbuf *wb, void *out, result *r)
{
    int rc = compute_blocked(b, t, wb, out, r);
    if (rc != 1) return rc;
    rc = compute_whole(b, t, wb, out, r);
    const void *raw = lm_source_raw(b->src, t);
    if (raw) release_pages(raw, lm_source_entry(b->src, t)->nbytes);   /* read: out of RSS */
    return rc;
}

/* The whole-tensor path (b->odt[t] elements into out): W read as fp32; plain modules
 * added as W[rows] += λ·scale·up·down (sgemm, beta 1); other kinds through lm_lora_delta
 * and saxpy; bias updates; then the DoRA modules one at a time through lm_lora_apply;
 * then one rounding. */
static int compute_whole(bake *b, size_t t, wbuf *wb, void *out, result *r)
{
    int rc;
    const lm_entry *e = lm_source_entry(b->src, t);
    size_t n = (size_t)e->numel;
    if (grow(&wb->W, &wb->Wcap, n))
        return lm_err_set(&r->err, LM_ENOMEM, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "out of memory");
    float *W = wb->W;
    rc = lm_source_read_f32(b->src, t, W, &r->err);
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
    wbuf wb;
    memset(&wb, 0, sizeof wb);
    pthread_mutex_lock(&b->mu);
    for (;;) {
        if (b->stop || b->next_job >= b->njobs) break;
        size_t j = b->next_job;
        /* the oldest job whose region is in use: not yet hashed, or not yet written (a
         * tensor the worker writes itself never waits for the in-order writer loop) */
        size_t low = b->freed < b->hashed ? b->freed : b->hashed;
        const lm_entry *je = lm_source_entry(b->src, b->jobs[j]);
        const uint64_t A = LM_WRITER_DIRECT_ALIGN, R = b->ring_size;
        uint64_t need = ((uint64_t)je->numel * lm_dtype_size(b->odt[b->jobs[j]]) + A - 1) / A * A + A;
        uint64_t at = b->ring_head;
        if (at % R + need > R) at = (at / R + 1) * R;                  /* no region wraps */
        if (low < j && at + need - b->voff[low] > R) {                 /* the ring is full */
            pthread_cond_wait(&b->cv_space, &b->mu);
            continue;
        }
        b->voff[j] = at;
        b->ring_head = at + need;
        b->next_job++;
        lm_writer *w = b->w;
        pthread_mutex_unlock(&b->mu);
        result r;
        memset(&r, 0, sizeof r);
        uint8_t *out = b->ring ? b->ring + b->voff[j] % b->ring_size : NULL;
        if (!out)
            r.rc = lm_err_set(&r.err, LM_ENOMEM, lm_source_path(b->src), NULL, LM_ERR_NO_OFFSET, "out of memory");
        else
            r.rc = compute(b, b->jobs[j], &wb, w ? out + lm_writer_direct_shift(w, b->out_off[b->jobs[j]]) : out, &r);
        /* published as ready first (the output hash may read the buffer: it does not wait
         * for the disk), then written here, on every worker at once (the writer loop only
         * steps over it): the whole blocks with O_DIRECT, the rest into the page cache */
        pthread_mutex_lock(&b->mu);
        if (!w) w = b->w;
        b->res[j] = r;
        b->res[j].ready = 1;
        int write_here = !r.rc && w && !(r.overflow || r.nonfinite);
        if (!write_here) b->res[j].done = 1;
        pthread_cond_broadcast(&b->cv_done);
        if (write_here) {
            pthread_mutex_unlock(&b->mu);
            r.rc = lm_writer_pwrite(w, b->out_off[b->jobs[j]], r.buf, r.nbytes, &r.err);
            pthread_mutex_lock(&b->mu);
            b->res[j].rc = r.rc;
            if (r.rc) b->res[j].err = r.err;
            b->res[j].written = !r.rc;
            b->res[j].done = 1;
            lmb_advance_freed(b);
            pthread_cond_broadcast(&b->cv_done);
            pthread_cond_broadcast(&b->cv_space);
        }
    }
    pthread_mutex_unlock(&b->mu);
    free(wb.W);
    free(wb.dw);
    free(wb.up);
    free(wb.down);
    free(wb.blk);
    free(wb.fac);
    return NULL;
}

