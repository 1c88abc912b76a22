/* Internal: cblas_sgemm split over the ops' own threads (parallel.h). */
#ifndef LIBMERGE_OPS_GEMM_H
#define LIBMERGE_OPS_GEMM_H

/* Row-major C [M, N] = alpha · op(A) · op(B) + beta · C, op(A) [M, K],
 * op(B) [K, N], as cblas_sgemm(CblasRowMajor, …) with ta/tb = 1 for
 * CblasTrans. The output is cut into blocks of columns (or of rows when N
 * is narrow), each computed by a single-threaded sgemm on whichever of
 * lm_par_threads() threads is free; small products run as one call. Results
 * equal one sgemm call's up to the summation order inside OpenBLAS's
 * kernels (K is never split, so each output element sums in the same
 * blocks of K). */
void lm_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

#endif
