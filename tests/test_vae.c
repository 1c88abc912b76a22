/* VAE decoder against fixtures/golden/sd15/vae_io.safetensors (diffusers
 * AutoencoderKL.decode, float32; README: max-abs 1e-4 for an independent
 * float32 implementation), both layouts; tiled vs untiled; post-processing
 * to uint8 against lcm_pipeline.safetensors. */
#include <stdint.h>

#include "libmerge/source.h"
#include "libmerge/vae.h"
#include "sampler/weights.h"
#include "test.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() RUNNING_ON_VALGRIND
#else
#define UNDER_VALGRIND() 0
#endif

#define TOL 1e-4

static float *read_f32(const char *path, const char *name, int64_t numel)
{
    lm_err e;
    lm_source *s = NULL;
    if (lm_source_open(&s, path, NULL, &e)) return NULL;
    int64_t i = lm_source_find(s, name);
    float *b = NULL;
    if (i >= 0 && lm_source_entry(s, (size_t)i)->numel == numel) {
        b = malloc((size_t)numel * sizeof *b);
        if (b && lm_source_read_f32(s, (size_t)i, b, &e)) { free(b); b = NULL; }
    }
    lm_source_close(s);
    return b;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d != d ? INFINITY : d;
    }
    return m;
}

typedef struct { lm_source *s; lm_weights *w; lm_vae *v; } model;

static int open_model(model *m, const char *path, lm_err *e)
{
    memset(m, 0, sizeof *m);
    int rc = lm_source_open(&m->s, path, NULL, e);
    if (!rc) rc = lm_weights_open(&m->w, m->s, "vae", NULL, NULL, 0, e);
    if (!rc) rc = lm_vae_load(&m->v, m->w, path, e);
    return rc;
}

static void close_model(model *m)
{
    lm_vae_free(m->v);
    lm_weights_close(m->w);
    lm_source_close(m->s);
}

static void check_layout(const char *path, int want_ldm)
{
    lm_err e;
    model m;
    int rc = open_model(&m, path, &e);
    if (rc) { close_model(&m); CHECK_OK(rc, &e); }
    const lm_vae_config *c = lm_vae_config_of(m.v);
    int cfg_ok = c->ldm == want_ldm && c->levels == 4 && c->resnets == 3 && c->latent_channels == 4 &&
                 c->ch[0] == 32 && c->ch[1] == 64 && c->ch[3] == 64;
    const char *io = FIXTURE("golden/sd15/vae_io.safetensors");
    float *z = read_f32(io, "z", 4 * 64);
    float *want = read_f32(io, "decode.decoded", 3 * 64 * 64);
    float *want_s = read_f32(io, "decode_scaled.decoded", 3 * 64 * 64);
    float *got = malloc(3 * 64 * 64 * sizeof *got);
    double d1 = INFINITY, d2 = INFINITY;
    lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
    if (z && want && want_s && got) {
        o.scaled = 0;
        if (!lm_vae_decode(m.v, z, 8, 8, &o, got, &e)) d1 = max_abs_diff(got, want, 3 * 64 * 64);
        o.scaled = 1;
        if (!lm_vae_decode(m.v, z, 8, 8, &o, got, &e)) d2 = max_abs_diff(got, want_s, 3 * 64 * 64);
    }
    free(z); free(want); free(want_s); free(got);
    close_model(&m);
    CHECK_MSG(cfg_ok, "config read from shapes is wrong");
    CHECK_MSG(d1 <= TOL, "decode max |diff| %.3g > %g", d1, TOL);
    CHECK_MSG(d2 <= TOL, "decode of z/0.18215 max |diff| %.3g > %g", d2, TOL);
    printf("# %s: decode %.3g, scaled decode %.3g\n", path, d1, d2);
}

static void test_vae_diffusers_layout(void) { check_layout(FIXTURE("golden/sd15/vae_diffusers.safetensors"), 0); }
static void test_vae_ldm_layout(void) { check_layout(FIXTURE("golden/sd15/vae_ldm.safetensors"), 1); }

/* Tiled decoding of a 20×20 latent (tiles of 16, overlap 8) against the
 * untiled decode. Each tile is decoded as an image of its own (as in
 * diffusers' tiled_decode): every GroupNorm uses the tile's mean and
 * variance, the mid block's attention sees the tile only, convolutions see
 * zero padding at inner tile edges. So the two are not equal: on this random
 * tiny VAE the measured difference is mean 0.106, max 0.74 (outputs span
 * about ±3; a misplaced tile gives a mean near 1; smaller tiles differ more:
 * 12/8 on 16×16 gives mean 0.2). Decoding conv_in and the mid block untiled
 * (tried) only brought the mean to 0.094: the up blocks' per-tile statistics
 * dominate, and exact global statistics would cost the whole activation's
 * memory or a recomputation pass per GroupNorm (lm_vae_decode in vae.h). The
 * bounds below catch a broken tiling (misplaced tiles, bad blend weights),
 * not a slightly different one. A tile covering the whole latent must give
 * the untiled result exactly. */
static void test_vae_tiled_matches_untiled(void)
{
    lm_err e;
    model m;
    int rc = open_model(&m, FIXTURE("golden/sd15/vae_diffusers.safetensors"), &e);
    if (rc) { close_model(&m); CHECK_OK(rc, &e); }
    enum { h = 20, w = 20, N = 3 * h * 8 * w * 8 };
    float *z = malloc(4 * h * w * sizeof *z), *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    /* a smooth latent (what a sampler produces is spatially correlated) */
    for (int c = 0; c < 4; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                z[(c * h + y) * w + x] = 0.8f * sinf(0.31f * x + 0.7f * c) * cosf(0.23f * y - 0.4f * c) + 0.1f * c;
    lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
    o.tile = -1;
    int r1 = lm_vae_decode(m.v, z, h, w, &o, a, &e);
    o.tile = 16;
    o.overlap = 8;
    int r2 = r1 ? r1 : lm_vae_decode(m.v, z, h, w, &o, b, &e);
    o.tile = 20;
    float *c2 = malloc(N * sizeof *c2);
    int r3 = r2 ? r2 : lm_vae_decode(m.v, z, h, w, &o, c2, &e);
    int same = r3 == 0 && memcmp(a, c2, N * sizeof *a) == 0;
    free(c2);
    double mx = 0, mean = 0;
    for (int i = 0; i < N; i++) { double d = fabs((double)a[i] - b[i]); mean += d; if (!(d <= mx)) mx = d; }
    mean /= N;
    free(z); free(a); free(b);
    close_model(&m);
    CHECK_OK(r2, &e);
    CHECK_MSG(same, "one tile covering the latent differs from the untiled decode");
    printf("# tiled vs untiled: max |diff| %.3g, mean |diff| %.3g\n", mx, mean);
    CHECK_MSG(mean <= 0.15 && mx <= 1.0, "tiled vs untiled: mean %.3g max %.3g", mean, mx);
}

/* uint8 post-processing of the stored raw images equals the stored pixels. */
static void test_vae_image_to_u8(void)
{
    const char *p = FIXTURE("golden/sd15/lcm_pipeline.safetensors");
    lm_err e;
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, p, NULL, &e), &e);
    int bad = 0, total = 0;
    static const int steps[4] = { 1, 2, 4, 8 };
    for (int k = 0; k < 4; k++) {
        char n[64];
        snprintf(n, sizeof n, "s%d.image", steps[k]);
        float *img = read_f32(p, n, 3 * 64 * 64);
        snprintf(n, sizeof n, "s%d.image_uint8", steps[k]);
        int64_t i = lm_source_find(s, n);
        uint8_t want[64 * 64 * 3], got[64 * 64 * 3];
        if (!img || i < 0 || lm_source_read(s, (size_t)i, want, &e)) { free(img); bad = -1; break; }
        lm_vae_image_to_u8(img, 64, 64, got);
        for (int q = 0; q < 64 * 64 * 3; q++) bad += got[q] != want[q];
        total += 64 * 64 * 3;
        free(img);
    }
    lm_source_close(s);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(total, 4 * 64 * 64 * 3);
}

/* The whole decoder with Winograd convolutions everywhere (the tiny VAE's
 * 32/64 channels are below the automatic threshold of 256). */
static void test_vae_winograd_goldens(void)
{
    setenv("LIBMERGE_VAE_CONV", "winograd", 1);
    check_layout(FIXTURE("golden/sd15/vae_ldm.safetensors"), 1);
    unsetenv("LIBMERGE_VAE_CONV");
}

static void test_vae_errors(void)
{
    lm_err e;
    model m;
    int rc = open_model(&m, FIXTURE("golden/clip/clip_tiny.safetensors"), &e);
    close_model(&m);
    CHECK_EQ_INT(rc, LM_EINPUT);
    CHECK(strstr(e.msg, "no VAE decoder"));
}

int main(void)
{
    if (!UNDER_VALGRIND()) RUN(test_vae_diffusers_layout);   /* same path as LDM but the names */
    RUN(test_vae_ldm_layout);
    if (!UNDER_VALGRIND()) RUN(test_vae_tiled_matches_untiled);   /* minutes under valgrind */
    RUN(test_vae_image_to_u8);
    if (!UNDER_VALGRIND()) RUN(test_vae_winograd_goldens);   /* test_ops test_conv3x3_winograd covers the op there */
    RUN(test_vae_errors);
    TEST_EXIT();
}
