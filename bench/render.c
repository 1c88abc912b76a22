/* bench/render.c — the stages of text to image on a full-size model, one
 * stage per process so peak RSS is the stage's own:
 *
 *   render text MODEL            tokenizer + CLIP text encoder load + encode
 *   render unet MODEL SIZE STEPS UNet load + STEPS LCM steps at SIZE px
 *   render vae MODEL SIZE [TILE] VAE load + decode of a SIZE px image (TILE,
 *                                or env RENDER_VAE_TILE: lm_vae_decode_opts.tile,
 *                                N > 0 exact bands of N latent rows, -1 untiled)
 *
 * Prints one line "stage size seconds(load) seconds(run) (CPU seconds of the
 * run: on a shared machine wall time overstates) GFLOP/s sgemm-ratio
 * peak-RSS-MiB"; the sgemm ratio is the stage's GFLOP/s over cblas_sgemm's
 * on a decoder-typical shape (M 256, N 16384, K 2304) in the same process.
 * RENDER_PROFILE=1 adds, for the vae stage, wall / CPU seconds and GFLOP per
 * op class (lm_ops_profile) on stderr. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "libmerge/clip.h"
#include "libmerge/ops.h"
#include "libmerge/pipeline.h"
#include "libmerge/rng.h"
#include "libmerge/scheduler.h"
#include "libmerge/source.h"
#include "libmerge/tokenizer.h"
#include "libmerge/unet.h"
#include "libmerge/vae.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double sgemm_gflops(void)
{
    const int M = 256, N = 16384, K = 2304;
    float *a = calloc((size_t)M * K, 4), *b = calloc((size_t)K * N, 4), *c = calloc((size_t)M * N, 4);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
    double t0 = now();
    for (int r = 0; r < 3; r++) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
    double g = 3 * 2.0 * M * N * K / (now() - t0) / 1e9;
    free(a); free(b); free(c);
    return g;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

static double peak_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

/* per-op-class table (lm_ops_profile) of a run of dt wall / dc CPU seconds */
static void print_profile(double dt, double dc)
{
    double sum = 0.0, csum = 0.0, cs, cf;
    fprintf(stderr, "  %-20s %7s %6s %7s %7s %8s\n", "op class", "wall s", "wall%", "CPU s", "GFLOP", "GFLOP/s");
    for (int cls = 0; cls < LM_PROF_N; cls++) {
        const char *nm;
        double sec = lm_ops_profile_seconds(cls, &nm, &cs, &cf);
        if (nm[0] != ' ') { sum += sec; csum += cs; }
        fprintf(stderr, "  %-20s %7.2f %5.1f%% %7.2f", nm, sec, 100.0 * sec / dt, cs);
        if (cf > 0) fprintf(stderr, " %7.1f %8.1f", cf / 1e9, cf / 1e9 / sec);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "  %-20s %7.2f %5.1f%% %7.2f\n", "outside ops", dt - sum, 100.0 * (dt - sum) / dt, dc - csum);
}

static int fail(const lm_err *e)
{
    char b[1400];
    fprintf(stderr, "render bench: %s\n", lm_err_format(e, b, sizeof b));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: render text|unet|vae MODEL [SIZE [STEPS|TILE]]\n"); return 2; }
    const char *stage = argv[1], *model = argv[2];
    int size = argc > 3 ? atoi(argv[3]) : 512, extra = argc > 4 ? atoi(argv[4]) : 0;
    lm_err e;
    lm_source *s = NULL;
    if (lm_source_open(&s, model, NULL, &e)) return fail(&e);
    double t0 = now(), tl = 0, tr = 0, flops = 0, c0 = 0, cr = 0;
    if (!strcmp(stage, "text")) {
        char vocab[4096];
        lm_tokenizer *tok = NULL;
        lm_clip *c = NULL;
        int32_t ids[77];
        if (lm_tokenizer_default_vocab(vocab, sizeof vocab, &e) || lm_tokenizer_open(&tok, vocab, &e) ||
            lm_tokenizer_encode(tok, "a photo of an astronaut riding a horse on mars", LM_CLIP_PAD_SD15, ids, NULL, &e) ||
            lm_clip_load_source(&c, s, NULL, NULL, 0, &e))
            return fail(&e);
        tl = now() - t0;
        const lm_clip_config *cf = lm_clip_config_of(c);
        float *out = malloc((size_t)77 * cf->hidden * sizeof *out);
        t0 = now();
        c0 = cpu_seconds();
        if (lm_clip_encode(c, ids, 77, 1, 1, out, &e)) return fail(&e);
        tr = now() - t0;
        cr = cpu_seconds() - c0;
        double C = cf->hidden, Im = cf->intermediate;
        flops = cf->layers * (2 * 77 * (4 * C * C + 2 * C * Im) + 4 * 77 * 77 * C);
        free(out);
        lm_clip_free(c);
        lm_tokenizer_free(tok);
    } else if (!strcmp(stage, "unet")) {
        int steps = extra > 0 ? extra : 4, h = size / 8;
        lm_unet *u = NULL;
        if (lm_unet_load(&u, s, NULL, NULL, NULL, 0, &e)) return fail(&e);
        tl = now() - t0;
        const lm_unet_config *cf = lm_unet_config_of(u);
        size_t n = (size_t)4 * h * h;
        float *x = malloc(n * 4), *eps = malloc(n * 4), *nz = malloc(n * 4);
        float *ctx = malloc((size_t)77 * cf->context_dim * 4);
        lm_rng r;
        lm_rng_seed(&r, 1);
        lm_rng_randn(&r, x, n);
        lm_rng_randn(&r, ctx, (size_t)77 * cf->context_dim);
        lm_lcm sch;
        lm_lcm_init(&sch);
        if (lm_lcm_set_timesteps(&sch, steps, 0, 1.0, &e)) return fail(&e);
        t0 = now();
        c0 = cpu_seconds();
        for (int i = 0; i < steps; i++) {
            float t = (float)sch.timesteps[i];
            if (lm_unet_forward(u, x, 1, h, h, &t, ctx, 77, NULL, eps, &e)) return fail(&e);
            lm_rng_randn(&r, nz, n);
            if (lm_lcm_step(&sch, i, x, eps, nz, n, NULL, x, &e)) return fail(&e);
        }
        tr = (now() - t0) / steps;   /* per step */
        cr = (cpu_seconds() - c0) / steps;
        flops = lm_unet_flops(u, h, h, 77);
        free(x); free(eps); free(nz); free(ctx);
        lm_unet_free(u);
    } else if (!strcmp(stage, "vae")) {
        int h = size / 8;
        lm_vae *v = NULL;
        if (lm_vae_load_source(&v, s, &e)) return fail(&e);
        tl = now() - t0;
        float *z = malloc((size_t)4 * h * h * 4), *img = malloc((size_t)3 * size * size * 4);
        lm_rng r;
        lm_rng_seed(&r, 2);
        lm_rng_randn(&r, z, (size_t)4 * h * h);
        lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
        o.tile = extra ? extra : 0;
        const char *vt = getenv("RENDER_VAE_TILE");   /* forces a mode: N > 0 bands of N latent rows, -1 untiled */
        if (vt && *vt) o.tile = atoi(vt);
        fprintf(stderr, "vae decode: %s", o.tile < 0 ? "untiled\n" : o.tile == 0 ? "automatic (untiled up to 512 px, else bands)\n" : "");
        if (o.tile > 0) fprintf(stderr, "banded, bands of %d latent rows\n", o.tile);
        const char *prof = getenv("RENDER_PROFILE");
        if (prof && !strcmp(prof, "1")) lm_ops_profile(1);
        t0 = now();
        c0 = cpu_seconds();
        if (lm_vae_decode(v, z, h, h, &o, img, &e)) return fail(&e);
        tr = now() - t0;
        cr = cpu_seconds() - c0;
        if (prof && !strcmp(prof, "1")) { print_profile(tr, cr); lm_ops_profile(0); }
        flops = lm_vae_flops(v, h, h);
        free(z); free(img);
        lm_vae_free(v);
    } else {
        fprintf(stderr, "unknown stage %s\n", stage);
        return 2;
    }
    lm_source_close(s);
    double g = flops / tr / 1e9, peak = sgemm_gflops();
    printf("%-5s %5d px  load %6.2f s  %s %7.2f s (CPU %7.2f s)  %7.1f GFLOP/s  sgemm %6.1f GFLOP/s  ratio %.2f  "
           "peak RSS %6.0f MiB\n", stage, !strcmp(stage, "text") ? 77 : size, tl,
           !strcmp(stage, "unet") ? "per step" : "run     ", tr, cr, g, peak, g / peak, peak_mib());
    return 0;
}
