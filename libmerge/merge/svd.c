/* Truncated SVD for lora-merge --rank and --extract.
 *
 * Dense: LAPACKE_sgesdd (divide and conquer) of the whole ΔW as [out, in·kh·kw].
 * Low-rank: when ΔW = Uc·Dc is already a product of thin factors (a sum of LoRAs
 * concatenated, Uc [m, r], Dc [r, n], r ≤ min(m, n)), the SVD is that of the r×r core:
 * Uc = Q1·R1, Dcᵀ = Q2·R2 (Householder QR), R1·R2ᵀ = Um·S·Vmᵀ, so ΔW = (Q1·Um)·S·(Q2·Vm)ᵀ
 * exactly, at O((m + n)·r²) instead of O(m·n·min(m, n)) (Golub & Van Loan, §5.4).
 * Either way the best rank-k approximation is the first k singular triplets
 * (Eckart–Young), and the error follows from the singular values:
 *   ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = sqrt(Σ_{j≥k} σ_j² / Σ_j σ_j²),  energy = Σ_{j<k} σ_j² / Σ_j σ_j². */
#include "merge_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include <lapacke.h>

static void spectrum(const float *s, int64_t p, int k, double *rel, double *energy)
{
    double tot = 0, tail = 0;
    for (int64_t j = 0; j < p; j++) tot += (double)s[j] * s[j];
    for (int64_t j = k; j < p; j++) tail += (double)s[j] * s[j];
    if (tot <= 0) { *rel = 0; *energy = 1; return; }
    *rel = sqrt(tail / tot);
    *energy = (tot - tail) / tot;
}

int lm_svd_truncate(float *A, int64_t m, int64_t n, int rank, float *up, float *down,
                    int *k_out, double *rel_error, double *energy, lm_err *err)
{
    int64_t p = m < n ? m : n;
    int k = rank < p ? rank : (int)p;
    if (m <= 0 || n <= 0 || rank <= 0 || m > INT32_MAX || n > INT32_MAX)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "bad SVD size %lld x %lld rank %d",
                          (long long)m, (long long)n, rank);
    float *s = malloc((size_t)p * sizeof *s);
    float *U = malloc((size_t)(m * p) * sizeof *U);
    float *VT = malloc((size_t)(p * n) * sizeof *VT);
    if (!s || !U || !VT) {
        free(s); free(U); free(VT);
        return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory for a %lld x %lld SVD",
                          (long long)m, (long long)n);
    }
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, A, (lapack_int)n,
                                     s, U, (lapack_int)p, VT, (lapack_int)n);
    if (info != 0) {
        free(s); free(U); free(VT);
        return lm_err_set(err, info < 0 ? LM_EINTERNAL : LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET,
                          "sgesdd failed (info %d)", (int)info);
    }
    for (int64_t i = 0; i < m; i++)
        for (int j = 0; j < k; j++) up[i * k + j] = U[i * p + j] * s[j];
    memcpy(down, VT, (size_t)k * (size_t)n * sizeof *down);
    spectrum(s, p, k, rel_error, energy);
    *k_out = k;
    free(s); free(U); free(VT);
    return 0;
}

/* Thin QR of a row-major [m, r] matrix in place: A becomes Q, R (r×r, row-major) is
 * written to R. */
static int thin_qr(float *A, int64_t m, int64_t r, float *R)
{
    float *tau = malloc((size_t)r * sizeof *tau);
    if (!tau) return LM_ENOMEM;
    lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)r, A, (lapack_int)r, tau);
    if (!info) {
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < r; j++) R[i * r + j] = j >= i ? A[i * r + j] : 0.0f;
        info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (lapack_int)m, (lapack_int)r, (lapack_int)r, A, (lapack_int)r, tau);
    }
    free(tau);
    return info ? LM_EINTERNAL : 0;
}

int lmm_svd_lowrank(const float *Uc, const float *Dc, int64_t m, int64_t n, int64_t r, int rank,
                    float *up, float *down, int *k_out, double *rel_error, double *energy, lm_err *err)
{
    if (r > m || r > n || r <= 0) {          /* no thin factors to exploit: go dense */
        float *A = malloc((size_t)(m * n) * sizeof *A);
        if (!A) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        if (r > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0f, Uc, (int)r, Dc, (int)n,
                        0.0f, A, (int)n);
        else
            memset(A, 0, (size_t)(m * n) * sizeof *A);
        int rc = lm_svd_truncate(A, m, n, rank, up, down, k_out, rel_error, energy, err);
        free(A);
        return rc;
    }
    int k = rank < r ? rank : (int)r;
    float *Q1 = malloc((size_t)(m * r) * sizeof *Q1), *Q2 = malloc((size_t)(n * r) * sizeof *Q2);
    float *R1 = malloc((size_t)(r * r) * sizeof *R1), *R2 = malloc((size_t)(r * r) * sizeof *R2);
    float *M = malloc((size_t)(r * r) * sizeof *M), *Um = malloc((size_t)(r * r) * sizeof *Um);
    float *VmT = malloc((size_t)(r * r) * sizeof *VmT), *s = malloc((size_t)r * sizeof *s);
    float *T = malloc((size_t)(m * k) * sizeof *T);
    int rc = 0;
    if (!Q1 || !Q2 || !R1 || !R2 || !M || !Um || !VmT || !s || !T) {
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        goto out;
    }
    memcpy(Q1, Uc, (size_t)(m * r) * sizeof *Q1);
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < n; j++) Q2[j * r + i] = Dc[i * n + j];
    if (thin_qr(Q1, m, r, R1) || thin_qr(Q2, n, r, R2)) {
        rc = lm_err_set(err, LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET, "QR factorisation failed");
        goto out;
    }
    /* M = R1 · R2ᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r, (int)r, (int)r, 1.0f, R1, (int)r, R2, (int)r, 0.0f, M, (int)r);
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'A', (lapack_int)r, (lapack_int)r, M, (lapack_int)r, s, Um,
                                     (lapack_int)r, VmT, (lapack_int)r);
    if (info) { rc = lm_err_set(err, LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET, "sgesdd failed (info %d)", (int)info); goto out; }
    /* up = Q1 · Um[:, :k] · S_k  (Um's first k columns: lda r, k columns) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, k, (int)r, 1.0f, Q1, (int)r, Um, (int)r, 0.0f, T, k);
    for (int64_t i = 0; i < m; i++)
        for (int j = 0; j < k; j++) up[i * k + j] = T[i * k + j] * s[j];
    /* down = VmT[:k, :] · Q2ᵀ  ([k, r] · [r, n]) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, k, (int)n, (int)r, 1.0f, VmT, (int)r, Q2, (int)r, 0.0f, down, (int)n);
    spectrum(s, r, k, rel_error, energy);
    *k_out = k;
out:
    free(Q1); free(Q2); free(R1); free(R2); free(M); free(Um); free(VmT); free(s); free(T);
    return rc;
}

/* ---- randomised SVD ------------------------------------------------------------ */

static uint64_t mix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Orthonormal basis of the columns of a row-major [m, l] matrix, in place (thin QR). */
static int orth(float *Y, int64_t m, int64_t l, float *R)
{
    return thin_qr(Y, m, l, R);
}

int lmm_svd_randomized(const float *A, int64_t m, int64_t n, int rank, float *up, float *down,
                       int *k_out, double *rel_error, double *energy, lm_err *err)
{
    int64_t p = m < n ? m : n;
    int k = rank < p ? rank : (int)p;
    int64_t l = k + LMM_SVD_OVERSAMPLE;
    if (l > p) l = p;
    float *Om = malloc((size_t)(n * l) * sizeof *Om), *Y = malloc((size_t)(m * l) * sizeof *Y);
    float *Z = malloc((size_t)(n * l) * sizeof *Z), *R = malloc((size_t)(l * l) * sizeof *R);
    float *B = malloc((size_t)(l * n) * sizeof *B), *s = malloc((size_t)l * sizeof *s);
    float *Ub = malloc((size_t)(l * l) * sizeof *Ub), *VbT = malloc((size_t)(l * n) * sizeof *VbT);
    float *T = malloc((size_t)(m * k) * sizeof *T);
    int rc = 0;
    if (!Om || !Y || !Z || !R || !B || !s || !Ub || !VbT || !T) {
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        goto out;
    }
    /* Gaussian test matrix from a fixed seed: the same input gives the same factors */
    uint64_t st = 0x6c6d5f737664ULL ^ (uint64_t)(m * 1000003 + n);
    for (int64_t i = 0; i < n * l; i += 2) {
        double u1 = ((mix64(&st) >> 11) + 1.0) * (1.0 / 9007199254740993.0), u2 = (mix64(&st) >> 11) * (1.0 / 9007199254740992.0);
        double r = sqrt(-2.0 * log(u1));
        Om[i] = (float)(r * cos(6.283185307179586 * u2));
        if (i + 1 < n * l) Om[i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
    /* range finder with LMM_SVD_POWER subspace iterations (Halko, Martinsson & Tropp 2011,
     * algorithm 4.4), re-orthonormalising after every product */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f, A, (int)n, Om, (int)l, 0.0f, Y, (int)l);
    for (int it = 0; it < LMM_SVD_POWER && !rc; it++) {
        if (orth(Y, m, l, R)) { rc = LM_EINTERNAL; break; }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0f, A, (int)n, Y, (int)l, 0.0f, Z, (int)l);
        if (orth(Z, n, l, R)) { rc = LM_EINTERNAL; break; }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f, A, (int)n, Z, (int)l, 0.0f, Y, (int)l);
    }
    if (!rc && orth(Y, m, l, R)) rc = LM_EINTERNAL;
    if (rc) { rc = lm_err_set(err, LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET, "QR factorisation failed"); goto out; }
    /* B = Qᵀ A [l, n], its SVD, and the factors */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l, (int)n, (int)m, 1.0f, Y, (int)l, A, (int)n, 0.0f, B, (int)n);
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)l, (lapack_int)n, B, (lapack_int)n, s, Ub,
                                     (lapack_int)l, VbT, (lapack_int)n);
    if (info) { rc = lm_err_set(err, LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET, "sgesdd failed (info %d)", (int)info); goto out; }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, k, (int)l, 1.0f, Y, (int)l, Ub, (int)l, 0.0f, T, k);
    for (int64_t i = 0; i < m; i++)
        for (int j = 0; j < k; j++) up[i * k + j] = T[i * k + j] * s[j];
    memcpy(down, VbT, (size_t)k * (size_t)n * sizeof *down);
    /* A_k = P·A with P the projection onto span(Q·Ub_k), so ‖A − A_k‖² = ‖A‖² − Σ_{j<k} σ_j² */
    double tot = 0, kept = 0;
    for (int64_t i = 0; i < m * n; i++) tot += (double)A[i] * A[i];
    for (int j = 0; j < k; j++) kept += (double)s[j] * s[j];
    if (tot <= 0) { *rel_error = 0; *energy = 1; }
    else { *rel_error = sqrt(fmax(0.0, tot - kept) / tot); *energy = fmin(1.0, kept / tot); }
    *k_out = k;
out:
    free(Om); free(Y); free(Z); free(R); free(B); free(s); free(Ub); free(VbT); free(T);
    return rc;
}

int lmm_svd_auto(float *A, int64_t m, int64_t n, int rank, float *up, float *down,
                 int *k_out, double *rel_error, double *energy, lm_err *err)
{
    int64_t p = m < n ? m : n;
    if ((int64_t)rank + LMM_SVD_OVERSAMPLE <= p / 4)
        return lmm_svd_randomized(A, m, n, rank, up, down, k_out, rel_error, energy, err);
    return lm_svd_truncate(A, m, n, rank, up, down, k_out, rel_error, energy, err);
}
