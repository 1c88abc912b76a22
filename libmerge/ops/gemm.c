/* cblas_sgemm split into blocks of the output over the ops' own threads.
 *
 * Why not OpenBLAS's threads: on 2 cores shared with other work its threads
 * spin while they wait for each other (the UNet at 256 px burnt 4.3 CPU
 * seconds on 2 threads against 2.6 on 1 for the same work), and between two
 * GEMMs the element-wise ops ran on one core. Our blocks need no
 * synchronisation until the end (pthread_join sleeps). */
#include <cblas.h>

#include "ops/gemm.h"
#include "ops/parallel.h"

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, by_cols, blk;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gemm_job;

static void gemm_block(void *p, int64_t item, int tid)
{
    const gemm_job *j = p;
    int lo = (int)item * j->blk, n = j->by_cols ? j->N : j->M;
    int len = j->blk < n - lo ? j->blk : n - lo;
    const float *A = j->A, *B = j->B;
    float *C = j->C;
    int M = j->M, N = j->N;
    if (j->by_cols) {
        B += j->tb ? (size_t)lo * j->ldb : (size_t)lo;
        C += lo;
        N = len;
    } else {
        A += j->ta ? (size_t)lo : (size_t)lo * j->lda;
        C += (size_t)lo * j->ldc;
        M = len;
    }
    cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans, j->tb ? CblasTrans : CblasNoTrans,
                M, N, j->K, j->alpha, A, j->lda, B, j->ldb, j->beta, C, j->ldc);
}

/* Blocks at least this wide (columns) or tall (rows) keep the single-threaded
 * kernel near its full speed; below 2 blocks the product runs as one call. */
#define MIN_COLS 256
#define MIN_ROWS 64

void lm_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc)
{
    int nth = lm_par_threads();
    gemm_job j = { ta, tb, M, N, K, lda, ldb, ldc, 0, 0, alpha, beta, A, B, C };
    double work = 2.0 * M * N * K;
    int n = 0, min = 0;
    if (nth > 1 && work >= 4e6) {
        if (N >= 2 * MIN_COLS) { j.by_cols = 1; n = N; min = MIN_COLS; }
        else if (M >= 2 * MIN_ROWS) { n = M; min = MIN_ROWS; }
    }
    if (!n) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* two blocks per thread when they stay wide enough: a thread that gets
     * less of the CPU takes fewer blocks */
    int blocks = 2 * nth;
    if (n / blocks < min) blocks = nth;
    if (n / blocks < min) blocks = n / min;
    int blk = (n + blocks - 1) / blocks;
    blk = (blk + 15) / 16 * 16;   /* whole kernel tiles */
    j.blk = blk;
    lm_parallel((n + blk - 1) / blk, nth, gemm_block, &j);
}
