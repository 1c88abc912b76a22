/* Multi-head scaled dot-product attention on sgemm, in blocks of queries. */
#include <math.h>
#include <cblas.h>

#include "libmerge/ops.h"
#include "ops/vmath.h"

/* Scores per block of queries: at most 1 Mi floats (4 MiB). */
#define SCORE_FLOATS ((int64_t)1 << 20)

int lm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                 int64_t Tq, int64_t Tk, int heads, int dh, float scale, int causal,
                 float *out, int ldo, lm_work *work)
{
    int64_t bq = SCORE_FLOATS / (Tk > 0 ? Tk : 1);
    if (bq < 1) bq = 1;
    if (bq > Tq) bq = Tq;
    float *S = lm_work_get(work, (size_t)(bq * Tk + bq));
    if (!S) return LM_ENOMEM;
    float *inv = S + bq * Tk;     /* 1 / row sums: softmax's division is applied to
                                     the dh-wide output rows, not the Tk-wide scores */
    for (int h = 0; h < heads; h++) {
        for (int64_t q0 = 0; q0 < Tq; q0 += bq) {
            int64_t n = bq < Tq - q0 ? bq : Tq - q0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)Tk, dh, scale,
                        q + q0 * ldq + (size_t)h * dh, ldq, k + (size_t)h * dh, ldk, 0.0f, S, (int)Tk);
            if (causal)
                for (int64_t i = 0; i < n; i++)
                    for (int64_t j = q0 + i + 1; j < Tk; j++) S[i * Tk + j] = -INFINITY;
            for (int64_t i = 0; i < n; i++) {
                float *row = S + i * Tk;
                inv[i] = 1.0f / lm_vexp_sub_sum(row, (size_t)Tk, lm_vmax(row, (size_t)Tk));
            }
            float *o = out + q0 * ldo + (size_t)h * dh;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, dh, (int)Tk, 1.0f,
                        S, (int)Tk, v + (size_t)h * dh, ldv, 0.0f, o, ldo);
            for (int64_t i = 0; i < n; i++)
                for (int d = 0; d < dh; d++) o[i * ldo + d] *= inv[i];
        }
    }
    return 0;
}
