/* Internal: per-op-class wall-clock accounting for benchmarks (see
 * lm_ops_profile in ops.h). Costs one predictable branch per op when off. */
#ifndef LIBMERGE_OPS_PROF_H
#define LIBMERGE_OPS_PROF_H

#include "libmerge/ops.h"

extern int lm_prof_on;
double lm_prof_start(void);
void lm_prof_add(int cls, double t0, double flops);

/* start of a timed op: 0 when profiling is off */
static inline double lm_prof_t0(void) { return lm_prof_on ? lm_prof_start() : 0.0; }
/* end of a timed op started at t0 */
static inline void lm_prof_end(int cls, double t0) { if (t0 != 0.0) lm_prof_add(cls, t0, 0.0); }
/* the same for an op of `flops` floating-point operations (2 per multiply-add) */
static inline void lm_prof_end_fl(int cls, double t0, double flops)
{
    if (t0 != 0.0) lm_prof_add(cls, t0, flops);
}

#endif
