/* Per-op-class wall-clock accounting (lm_ops_profile). */
#include <time.h>

#include "ops/prof.h"

int lm_prof_on;
static double acc[LM_PROF_N], acc_cpu[LM_PROF_N], acc_fl[LM_PROF_N];
static const char *const names[LM_PROF_N] = {
    "conv 3x3", "  of which im2col", "conv 1x1 / proj", "linear", "attention",
    "group norm", "layer norm", "activations", "other ops",
};

/* The CPU clock of the start goes in a stack indexed by the wall clock of
 * the start (ops nest at most two deep: im2col inside conv2d). */
static struct { double wall, cpu; } open_[8];
static int n_open;

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double lm_prof_start(void)
{
    double w = clock_s(CLOCK_MONOTONIC);
    if (n_open < 8) {
        open_[n_open].wall = w;
        open_[n_open++].cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    }
    return w;
}

void lm_prof_add(int cls, double t0, double flops)
{
    acc_fl[cls] += flops;
    double c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    acc[cls] += clock_s(CLOCK_MONOTONIC) - t0;
    for (int i = n_open - 1; i >= 0; i--)
        if (open_[i].wall == t0) {
            acc_cpu[cls] += c - open_[i].cpu;
            n_open = i;
            break;
        }
}

void lm_ops_profile(int on)
{
    lm_prof_on = on;
    n_open = 0;
    for (int i = 0; i < LM_PROF_N; i++) acc[i] = acc_cpu[i] = acc_fl[i] = 0.0;
}

double lm_ops_profile_seconds(int cls, const char **name, double *cpu, double *flops)
{
    if (cls < 0 || cls >= LM_PROF_N) return 0.0;
    if (flops) *flops = acc_fl[cls];
    if (name) *name = names[cls];
    if (cpu) *cpu = acc_cpu[cls];
    return acc[cls];
}
