/* ΔW of one LoRA module in fp32 on cblas_sgemm, scale folded in.
 * See include/libmerge/lora.h; factor shapes are checked in lora_parse.c,
 * which also bounds every factor and ΔW to at most INT_MAX elements so the
 * BLAS int dimensions below cannot overflow.
 *
 * Formulas (r = rank, s = scale, S = kh·kw):
 *   LoRA    ΔW[o, i·S] = s · Σ_a up[o,a] down[a, i·S]            (Hu et al. 2021)
 *   Tucker  ΔW[o,i,kh,kw] = s · Σ_{a,b} up[o,a] mid[a,b,kh,kw] down[b,i]
 *           (LyCORIS locon "cp"/use_tucker; ComfyUI tucker_weight_from_conv)
 *   LoHa    ΔW = s · (w1a·w1b) ⊙ (w2a·w2b); Tucker halves
 *           W[p,q,kh,kw] = Σ_{i,j} t[i,j,kh,kw] a[i,p] b[j,q]  (LyCORIS rebuild_tucker)
 *   LoKr    ΔW = s · w1 ⊗ w2, w1 [a,b] unsqueezed to [a,b,1,1] when w2 is 4-D
 *           (torch.kron semantics, as LyCORIS make_kron and ComfyUI)
 *   full    ΔW = diff
 */
#include "lora_impl.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static int too_big(const lm_lora *l, const char *name, int64_t n, lm_err *err)
{
    return lm_err_set(err, LM_EINPUT, lm_source_path(l->src), name, LM_ERR_NO_OFFSET,
                      "intermediate of %lld elements is too large", (long long)n);
}

/* C[M,N] = alpha · A[M,K] · B[K,N], all row-major and contiguous. */
static void mm(int M, int N, int K, float alpha, const float *A, const float *B, float *C)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, A, K, B, N, 0.0f, C, N);
}

/* out[p, q, s] = alpha · Σ_{i,j} t[i, j, s] · A'[i, p] · B[j, q]
 * with t [r1, r2, S], B [r2, Q], and A' = A stored as [r1, P] (a_pr = 0,
 * LoHa/LoKr) or as [P, r1] (a_pr = 1, LoCon's up). out is [P, Q, S]. */
static int tucker(const lm_lora *l, const char *name, const float *t, int r1, int r2, int S,
                  const float *A, int a_pr, int P, const float *B, int Q, float alpha,
                  float *out, lm_err *err)
{
    int64_t n1 = (int64_t)P * r2 * S;
    if (n1 > INT_MAX) return too_big(l, name, n1, err);
    float *t1 = malloc((size_t)(n1 ? n1 : 1) * sizeof *t1);
    if (!t1) return lm_err_set(err, LM_ENOMEM, lm_source_path(l->src), name, LM_ERR_NO_OFFSET, "out of memory");
    /* t1[p, j·S] = Σ_i A'[i, p] t[i, j·S] */
    cblas_sgemm(CblasRowMajor, a_pr ? CblasNoTrans : CblasTrans, CblasNoTrans, P, r2 * S, r1, 1.0f,
                A, a_pr ? r1 : P, t, r2 * S, 0.0f, t1, r2 * S);
    /* out[p] [Q, S] = Bᵀ [Q, r2] · t1[p] [r2, S] */
    for (int p = 0; p < P; p++)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Q, S, r2, alpha,
                    B, Q, t1 + (size_t)p * r2 * S, S, 0.0f, out + (size_t)p * Q * S, S);
    free(t1);
    return 0;
}

typedef struct bufs { float *f[LM_FAC_COUNT]; } bufs;

static void bufs_free(bufs *b)
{
    for (int f = 0; f < LM_FAC_COUNT; f++) free(b->f[f]);
}

/* Reads every weight factor of m (not alpha/scale/DoRA/diff_b). */
static int read_all(const lm_lora *l, const lm_lora_mod *m, bufs *b, lm_err *err)
{
    memset(b, 0, sizeof *b);
    for (int f = 0; f < LM_FAC_COUNT; f++) {
        if (f == LM_FAC_ALPHA || f == LM_FAC_SCALE || f == LM_FAC_DORA || f == LM_FAC_DIFF_B || m->fac[f] < 0) continue;
        int rc = lm_lora_read_factor(l, m->fac[f], &b->f[f], err);
        if (rc) { bufs_free(b); return rc; }
    }
    return 0;
}

static const lm_entry *E(const lm_lora *l, const lm_lora_mod *m, lm_lora_factor f)
{
    return m->fac[f] >= 0 ? lm_source_entry(l->src, (size_t)m->fac[f]) : NULL;
}

/* One LoHa half / LoKr w2 from a [P, r]·b [r, …] or Tucker t, a [r1, P], b [r2, Q]
 * into out (P·rest floats), times alpha. */
static int half(const lm_lora *l, const lm_lora_mod *m, const bufs *b, lm_lora_factor fa,
                lm_lora_factor fb, lm_lora_factor ft, float alpha, float *out, lm_err *err)
{
    const lm_entry *ea = E(l, m, fa), *eb = E(l, m, fb);
    if (ft != LM_FAC_COUNT && m->fac[ft] >= 0) {
        const lm_entry *et = E(l, m, ft);
        return tucker(l, m->pub.name, b->f[ft], (int)et->shape[0], (int)et->shape[1],
                      (int)(et->shape[2] * et->shape[3]), b->f[fa], 0, (int)ea->shape[1],
                      b->f[fb], (int)eb->shape[1], alpha, out, err);
    }
    mm((int)ea->shape[0], (int)(eb->numel / eb->shape[0]), (int)ea->shape[1], alpha, b->f[fa], b->f[fb], out);
    return 0;
}

static int64_t numel_of(const lm_lora_module *p)
{
    int64_t n = 1;
    for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
    return n;
}

static int delta_loha(const lm_lora *l, const lm_lora_mod *m, const bufs *b, float *dst, lm_err *err)
{
    int64_t n = numel_of(&m->pub);
    float *h2 = malloc((size_t)(n ? n : 1) * sizeof *h2);
    if (!h2) return lm_err_set(err, LM_ENOMEM, lm_source_path(l->src), m->pub.name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = half(l, m, b, LM_FAC_HADA_W1A, LM_FAC_HADA_W1B, LM_FAC_HADA_T1, m->pub.scale, dst, err);
    if (!rc) rc = half(l, m, b, LM_FAC_HADA_W2A, LM_FAC_HADA_W2B, LM_FAC_HADA_T2, 1.0f, h2, err);
    if (!rc) for (int64_t k = 0; k < n; k++) dst[k] *= h2[k];
    free(h2);
    return rc;
}

static int delta_lokr(const lm_lora *l, const lm_lora_mod *m, const bufs *b, float *dst, lm_err *err)
{
    const lm_lora_module *p = &m->pub;
    float *w1 = NULL, *w2 = NULL, *own1 = NULL, *own2 = NULL;
    int64_t A, B, C, D, S;   /* w1 [A, B], w2 [C, D, S] */
    int rc = 0;
    if (m->fac[LM_FAC_LOKR_W1] >= 0) {
        const lm_entry *e = E(l, m, LM_FAC_LOKR_W1);
        A = e->shape[0]; B = e->shape[1];
        w1 = b->f[LM_FAC_LOKR_W1];
    } else {
        const lm_entry *ea = E(l, m, LM_FAC_LOKR_W1A), *eb = E(l, m, LM_FAC_LOKR_W1B);
        A = ea->shape[0]; B = eb->shape[1];
        if (A * B > INT_MAX) return too_big(l, p->name, A * B, err);
        if (!(w1 = own1 = malloc((size_t)(A * B + 1) * sizeof *w1))) goto nomem;
        mm((int)A, (int)B, (int)ea->shape[1], 1.0f, b->f[LM_FAC_LOKR_W1A], b->f[LM_FAC_LOKR_W1B], w1);
    }
    C = p->shape[0] / A;
    D = p->shape[1] / B;
    S = p->ndim == 4 ? p->shape[2] * p->shape[3] : 1;
    if (m->fac[LM_FAC_LOKR_W2] >= 0) {
        w2 = b->f[LM_FAC_LOKR_W2];
    } else {
        if (!(w2 = own2 = malloc((size_t)(C * D * S + 1) * sizeof *w2))) goto nomem;
        rc = half(l, m, b, LM_FAC_LOKR_W2A, LM_FAC_LOKR_W2B, LM_FAC_LOKR_T2, 1.0f, w2, err);
        if (rc) goto done;
    }
    /* Kronecker product: row i·C + k, column j·D + q, spatial s */
    for (int64_t i = 0; i < A; i++)
        for (int64_t k = 0; k < C; k++) {
            float *row = dst + ((i * C + k) * B * D) * S;
            for (int64_t j = 0; j < B; j++) {
                float v = p->scale * w1[i * B + j];
                const float *src = w2 + k * D * S;
                float *o = row + j * D * S;
                for (int64_t q = 0; q < D * S; q++) o[q] = v * src[q];
            }
        }
    goto done;
nomem:
    rc = lm_err_set(err, LM_ENOMEM, lm_source_path(l->src), p->name, LM_ERR_NO_OFFSET, "out of memory");
done:
    free(own1);
    free(own2);
    return rc;
}

int lm_lora_delta(const lm_lora *l, size_t i, float *dst, lm_err *err)
{
    if (!l || i >= l->n_mods)
        return lm_err_set(err, LM_EUSAGE, l ? lm_source_path(l->src) : NULL, NULL, LM_ERR_NO_OFFSET, "module index %zu out of range", i);
    const lm_lora_mod *m = &l->mods[i];
    const lm_lora_module *p = &m->pub;
    int64_t n = numel_of(p);
    if (p->kind == LM_MOD_FULL) {
        int rc = lm_source_read_f32(l->src, (size_t)m->fac[LM_FAC_DIFF], dst, err);
        if (rc) { lm_err_key(err, p->name); return rc; }
        if (p->scale != 1.0f) cblas_sscal((int)n, p->scale, dst, 1);
        return 0;
    }
    bufs b;
    int rc = read_all(l, m, &b, err);
    if (rc) return rc;
    switch (p->kind) {
    case LM_MOD_LORA: {
        const lm_entry *eu = E(l, m, LM_FAC_UP);
        mm((int)p->shape[0], (int)(n / p->shape[0]), (int)eu->shape[1], p->scale, b.f[LM_FAC_UP], b.f[LM_FAC_DOWN], dst);
        break;
    }
    case LM_MOD_TUCKER: {
        const lm_entry *et = E(l, m, LM_FAC_MID);
        rc = tucker(l, p->name, b.f[LM_FAC_MID], (int)et->shape[0], (int)et->shape[1], (int)(et->shape[2] * et->shape[3]),
                    b.f[LM_FAC_UP], 1, (int)p->shape[0], b.f[LM_FAC_DOWN], (int)p->shape[1], p->scale, dst, err);
        break;
    }
    case LM_MOD_LOHA: rc = delta_loha(l, m, &b, dst, err); break;
    case LM_MOD_LOKR: rc = delta_lokr(l, m, &b, dst, err); break;
    default:
        rc = lm_err_set(err, LM_EINTERNAL, lm_source_path(l->src), p->name, LM_ERR_NO_OFFSET, "unknown module kind %d", (int)p->kind);
    }
    bufs_free(&b);
    return rc;
}

int lm_lora_delta_bias(const lm_lora *l, size_t i, float *dst, lm_err *err)
{
    if (!l || i >= l->n_mods)
        return lm_err_set(err, LM_EUSAGE, l ? lm_source_path(l->src) : NULL, NULL, LM_ERR_NO_OFFSET, "module index %zu out of range", i);
    const lm_lora_mod *m = &l->mods[i];
    if (!m->pub.has_bias)
        return lm_err_set(err, LM_EUSAGE, lm_source_path(l->src), m->pub.name, LM_ERR_NO_OFFSET, "module has no diff_b bias update");
    int rc = lm_source_read_f32(l->src, (size_t)m->fac[LM_FAC_DIFF_B], dst, err);
    if (rc) lm_err_key(err, m->pub.name);
    return rc;
}
