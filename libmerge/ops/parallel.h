/* Internal: the ops' own parallel loop, for work OpenBLAS cannot split well
 * (attention on thin per-head shapes) or does not do at all (norms,
 * activations, im2col). OpenBLAS runs single-threaded inside the loop and
 * gets its thread count back after it, so BLAS threads and ours never run
 * at once. */
#ifndef LIBMERGE_OPS_PARALLEL_H
#define LIBMERGE_OPS_PARALLEL_H

#include <stdint.h>

/* Threads the ops use: OpenBLAS's thread count (OPENBLAS_NUM_THREADS or the
 * cores), at least 1 and at most LM_PAR_MAX. */
#define LM_PAR_MAX 64
int lm_par_threads(void);

/* Calls fn(ctx, i, tid) once for every item i in [0, n), on up to nth
 * threads (the caller's is tid 0; tid < nth), items handed out in order to
 * whichever thread is free. With nth ≤ 1, n ≤ 1 or when no thread can be
 * started, everything runs on the caller's thread. */
void lm_parallel(int64_t n, int nth, void (*fn)(void *ctx, int64_t i, int tid), void *ctx);

#endif
