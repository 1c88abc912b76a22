/* Multi-head scaled dot-product attention on sgemm, in blocks of queries. */
#include <math.h>
#include <cblas.h>

#include "libmerge/ops.h"

/* Scores per block of queries: at most 1 Mi floats (4 MiB). */
#define SCORE_FLOATS ((int64_t)1 << 20)

int lm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                 int64_t Tq, int64_t Tk, int heads, int dh, float scale, int causal,
                 float *out, int ldo, lm_work *work)
{
    int64_t bq = SCORE_FLOATS / (Tk > 0 ? Tk : 1);
    if (bq < 1) bq = 1;
    if (bq > Tq) bq = Tq;
    float *S = lm_work_get(work, (size_t)(bq * Tk));
    if (!S) return LM_ENOMEM;
    for (int h = 0; h < heads; h++) {
        for (int64_t q0 = 0; q0 < Tq; q0 += bq) {
            int64_t n = bq < Tq - q0 ? bq : Tq - q0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)Tk, dh, scale,
                        q + q0 * ldq + (size_t)h * dh, ldq, k + (size_t)h * dh, ldk, 0.0f, S, (int)Tk);
            if (causal)
                for (int64_t i = 0; i < n; i++)
                    for (int64_t j = q0 + i + 1; j < Tk; j++) S[i * Tk + j] = -INFINITY;
            lm_softmax_rows(S, n, Tk);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, dh, (int)Tk, 1.0f,
                        S, (int)Tk, v + (size_t)h * dh, ldv, 0.0f, out + q0 * ldo + (size_t)h * dh, ldo);
        }
    }
    return 0;
}
