/* A pool of workers over independent per-module tasks (lora-merge's SVDs,
 * extract's differences). OpenBLAS runs single-threaded inside the workers,
 * so the process never has both OpenBLAS threads and ours on the cores. */
#include "merge_impl.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>

typedef struct pool {
    size_t n, next, done;
    lmm_task_fn fn;
    lmm_task_key_fn key;
    void *ctx;
    lm_progress_fn progress;
    void *progress_ctx;
    pthread_mutex_t mu;
    int rc;
    lm_err err;
} pool;

static void *worker(void *arg)
{
    pool *P = arg;
    for (;;) {
        pthread_mutex_lock(&P->mu);
        size_t i = P->next++;
        int stop = P->rc != 0;
        pthread_mutex_unlock(&P->mu);
        if (stop || i >= P->n) break;
        lm_err e;
        lm_err_clear(&e);
        int rc = P->fn(P->ctx, i, &e);
        pthread_mutex_lock(&P->mu);
        if (rc) {
            if (P->key) lm_err_key(&e, P->key(P->ctx, i));
            if (!P->rc) { P->rc = rc; P->err = e; }
        } else if (P->progress) {
            P->progress(P->progress_ctx, "modules", ++P->done, P->n);
        }
        pthread_mutex_unlock(&P->mu);
    }
    return NULL;
}

int lmm_run_tasks(size_t n, int threads, lmm_task_fn fn, lmm_task_key_fn key, void *ctx,
                  lm_progress_fn progress, void *progress_ctx, lm_err *err)
{
    pool P = { .n = n, .fn = fn, .key = key, .ctx = ctx, .progress = progress, .progress_ctx = progress_ctx };
    int nth = lmm_threads(threads);
    if ((size_t)nth > n) nth = (int)(n ? n : 1);
    pthread_mutex_init(&P.mu, NULL);
    int blas = openblas_get_num_threads();
    openblas_set_num_threads(1);
    pthread_t *th = calloc((size_t)nth, sizeof *th);
    int started = 0;
    for (int i = 0; th && i < nth; i++) {
        if (pthread_create(&th[i], NULL, worker, &P)) break;
        started++;
    }
    if (!started) worker(&P); /* no threads to be had: run the tasks here */
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    openblas_set_num_threads(blas);
    pthread_mutex_destroy(&P.mu);
    if (P.rc) { if (err) *err = P.err; return P.rc; }
    return 0;
}
