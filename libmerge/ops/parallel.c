/* The ops' parallel loop: short-lived pthreads, items from an atomic counter. */
#include <pthread.h>
#include <stdatomic.h>
#include <cblas.h>

#include "ops/parallel.h"

typedef struct {
    void (*fn)(void *, int64_t, int);
    void *ctx;
    int64_t n;
    atomic_llong next;
} par_job;

typedef struct { par_job *job; int tid; } par_arg;

static void run(par_job *j, int tid)
{
    for (;;) {
        int64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n) return;
        j->fn(j->ctx, i, tid);
    }
}

static void *worker(void *p)
{
    par_arg *a = p;
    run(a->job, a->tid);
    return NULL;
}

int lm_par_threads(void)
{
    int n = openblas_get_num_threads();
    return n < 1 ? 1 : n > LM_PAR_MAX ? LM_PAR_MAX : n;
}

void lm_parallel(int64_t n, int nth, void (*fn)(void *ctx, int64_t i, int tid), void *ctx)
{
    par_job j = { fn, ctx, n, 0 };
    if (nth > LM_PAR_MAX) nth = LM_PAR_MAX;
    if (nth > n) nth = (int)n;
    if (nth <= 1) {
        run(&j, 0);
        return;
    }
    pthread_t th[LM_PAR_MAX];
    par_arg arg[LM_PAR_MAX];
    int blas = openblas_get_num_threads(), started = 0;
    openblas_set_num_threads(1);
    for (int t = 1; t < nth; t++) {
        arg[t] = (par_arg){ &j, t };
        if (pthread_create(&th[t], NULL, worker, &arg[t])) break;
        started = t;
    }
    run(&j, 0);
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
    openblas_set_num_threads(blas);
}
