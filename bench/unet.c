/* bench/unet.c — one UNet evaluation of a full-size model, batch 1, at the
 * latent sizes given (default 64 and 32): seconds, GFLOP/s, and the ratio to
 * cblas_sgemm's GFLOP/s measured in the same run on a UNet-typical shape
 * (a level-0 3×3 convolution at 512 px: M 320, N 4096, K 2880), and for the
 * second pass the wall-clock seconds per op class (lm_ops_profile).
 *
 *   unet MODEL [SIZE...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <cblas.h>

#include "libmerge/err.h"
#include "libmerge/ops.h"
#include "libmerge/source.h"
#include "libmerge/unet.h"

char *openblas_get_corename(void);
int openblas_get_num_threads(void);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double sgemm_gflops(void)
{
    int M = 320, N = 4096, K = 2880;
    float *a = malloc((size_t)M * K * 4), *b = malloc((size_t)K * N * 4), *c = malloc((size_t)M * N * 4);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
        double t = now() - t0;
        if (t < best) best = t;
    }
    free(a); free(b); free(c);
    return 2.0 * M * N * K / best / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: unet MODEL [LATENT_SIZE...]\n"); return 2; }
    lm_err err;
    lm_source *src = NULL;
    lm_unet *u = NULL;
    double t0 = now();
    if (lm_source_open(&src, argv[1], NULL, &err) || lm_unet_load(&u, src, NULL, NULL, NULL, 0, &err)) {
        char b[1400];
        fprintf(stderr, "unet: %s\n", lm_err_format(&err, b, sizeof b));
        return 3;
    }
    double tl = now() - t0;
    lm_source_close(src);
    const lm_unet_config *c = lm_unet_config_of(u);
    printf("openblas core: %s, threads: %d\n", openblas_get_corename(), openblas_get_num_threads());
    printf("model: %s (levels %d, channels %d, context %d), loaded in %.1f s\n", argv[1], c->levels,
           c->channels[0], c->context_dim, tl);
    double peak = sgemm_gflops();
    printf("sgemm 320x4096x2880: %.1f GFLOP/s\n", peak);
    int sizes[8] = { 64, 32 }, ns = 2;
    if (argc > 2) {
        ns = 0;
        for (int i = 2; i < argc && ns < 8; i++) sizes[ns++] = atoi(argv[i]);
    }
    for (int k = 0; k < ns; k++) {
        int s = sizes[k];
        size_t n = (size_t)c->in_channels * s * s;
        float *x = malloc(n * sizeof *x), *e = malloc(n * sizeof *e);
        float *ctx = malloc((size_t)77 * c->context_dim * sizeof *ctx), t = 999;
        for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
        for (size_t i = 0; i < (size_t)77 * c->context_dim; i++) ctx[i] = (float)((i * 40503u) % 1000) / 500.0f - 1.0f;
        double fl = lm_unet_flops(u, s, s, 77);
        for (int pass = 0; pass < 2; pass++) {   /* first pass allocates; later steps reuse */
            lm_ops_profile(pass == 1);
            double t1 = now(), c1 = cpu_now();
            int rc = lm_unet_forward(u, x, 1, s, s, &t, ctx, 77, NULL, e, &err);
            double dt = now() - t1, dc = cpu_now() - c1;
            if (rc) { fprintf(stderr, "forward failed\n"); return 5; }
            printf("latent %dx%d (%d px), %s: %.2f s, %.0f GFLOP, %.1f GFLOP/s, %.0f%% of sgemm\n", s, s,
                   8 * s, pass ? "next step" : "first step", dt, fl / 1e9, fl / dt / 1e9,
                   100.0 * fl / dt / 1e9 / peak);
            if (pass == 1) {
                /* CPU seconds count every thread (OpenBLAS's spinning ones too):
                 * wall < CPU where work ran in parallel */
                double sum = 0.0, csum = 0.0, cs, cf;
                printf("  %-20s %7s %6s %7s %7s %8s %9s\n", "op class", "wall s", "wall%", "CPU s", "GFLOP",
                       "GFLOP/s", "GFLOP/CPUs");
                for (int cls = 0; cls < LM_PROF_N; cls++) {
                    const char *nm;
                    double sec = lm_ops_profile_seconds(cls, &nm, &cs, &cf);
                    if (nm[0] != ' ') { sum += sec; csum += cs; }
                    printf("  %-20s %7.2f %5.1f%% %7.2f", nm, sec, 100.0 * sec / dt, cs);
                    if (cf > 0) printf(" %7.1f %8.1f %9.1f", cf / 1e9, cf / 1e9 / sec, cf / 1e9 / cs);
                    printf("\n");
                }
                printf("  %-20s %7.2f %5.1f%% %7.2f\n", "outside ops", dt - sum, 100.0 * (dt - sum) / dt,
                       dc - csum);
                printf("  %-20s %7.2f %5.1f%% %7.2f\n", "total", dt, 100.0, dc);
            }
        }
        lm_ops_profile(0);
        free(x); free(e); free(ctx);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS: %.2f GiB\n", (double)ru.ru_maxrss / (1024.0 * 1024.0));
    lm_unet_free(u);
    return 0;
}
