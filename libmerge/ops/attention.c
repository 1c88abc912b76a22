/* Multi-head scaled dot-product attention on sgemm, in blocks of queries.
 *
 * The per-head products are thin (K = dh = 40 for SD1.5's first level in
 * QKᵀ, N = dh in PV), shapes OpenBLAS splits badly over its threads: at
 * 512 px it ran slower on 2 threads than on 1. So the (head, query block)
 * pairs are spread over our own threads instead, each calling a
 * single-threaded sgemm on its own score block (lm_parallel). */
#include <math.h>
#include <cblas.h>

#include "libmerge/ops.h"
#include "ops/vmath.h"
#include "ops/prof.h"
#include "ops/parallel.h"

/* Scores per block of queries and thread: at most 1 Mi floats (4 MiB; 256
 * queries at Tk = 4096). Measured single-threaded at 512 px, level 0
 * (Tk 4096, dh 40): smaller blocks cost more (256 Ki floats: +20% CPU time),
 * larger ones gain nothing; each call repacks the head's keys. */
#define SCORE_FLOATS ((int64_t)1 << 20)

typedef struct {
    const float *q, *k, *v;
    int ldq, ldk, ldv, ldo, dh, causal;
    int64_t Tq, Tk, bq, nblk;
    float scale, *out, *S;      /* S: per thread, bq·Tk scores + bq inverse row sums */
} attn_job;

/* item = head · nblk + query block */
static void attn_block(void *p, int64_t item, int tid)
{
    const attn_job *j = p;
    int h = (int)(item / j->nblk);
    int64_t q0 = (item % j->nblk) * j->bq, Tk = j->Tk;
    int64_t n = j->bq < j->Tq - q0 ? j->bq : j->Tq - q0;
    int dh = j->dh;
    float *S = j->S + (size_t)tid * (size_t)(j->bq * Tk + j->bq);
    float *inv = S + j->bq * Tk;   /* 1 / row sums: softmax's division is applied to
                                      the dh-wide output rows, not the Tk-wide scores */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)Tk, dh, j->scale,
                j->q + q0 * j->ldq + (size_t)h * dh, j->ldq, j->k + (size_t)h * dh, j->ldk, 0.0f, S,
                (int)Tk);
    if (j->causal)
        for (int64_t i = 0; i < n; i++)
            for (int64_t c = q0 + i + 1; c < Tk; c++) S[i * Tk + c] = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        float *row = S + i * Tk;
        inv[i] = 1.0f / lm_vexp_sub_sum(row, (size_t)Tk, lm_vmax(row, (size_t)Tk));
    }
    float *o = j->out + q0 * j->ldo + (size_t)h * dh;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, dh, (int)Tk, 1.0f, S, (int)Tk,
                j->v + (size_t)h * dh, j->ldv, 0.0f, o, j->ldo);
    for (int64_t i = 0; i < n; i++)
        for (int d = 0; d < dh; d++) o[i * j->ldo + d] *= inv[i];
}

int lm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                 int64_t Tq, int64_t Tk, int heads, int dh, float scale, int causal,
                 float *out, int ldo, lm_work *work)
{
    int64_t bq = SCORE_FLOATS / (Tk > 0 ? Tk : 1);
    if (bq < 1) bq = 1;
    if (bq > Tq) bq = Tq;
    int64_t nblk = (Tq + bq - 1) / bq, items = nblk * heads;
    int nth = lm_par_threads();
    if (nth > items) nth = (int)(items > 0 ? items : 1);
    float *S = lm_work_get(work, (size_t)nth * (size_t)(bq * Tk + bq));
    if (!S) return LM_ENOMEM;
    double t0 = lm_prof_t0();
    attn_job j = { q, k, v, ldq, ldk, ldv, ldo, dh, causal, Tq, Tk, bq, nblk, scale, out, S };
    lm_parallel(items, nth, attn_block, &j);
    lm_prof_end_fl(LM_PROF_ATTN, t0, 4.0 * (double)Tq * (double)Tk * heads * dh);
    return 0;
}
