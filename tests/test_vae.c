/* VAE decoder against fixtures/golden/sd15/vae_io.safetensors (diffusers
 * AutoencoderKL.decode, float32; README: max-abs 1e-4 for an independent
 * float32 implementation), both layouts; banded vs untiled; post-processing
 * to uint8 against lcm_pipeline.safetensors. */
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdint.h>
#include <unistd.h>

#include "libmerge/source.h"
#include "libmerge/vae.h"
#include "sampler/vae_impl.h"
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

/* Banded decoding (opts.tile > 0: bands of `tile` latent rows, statistics
 * of every GroupNorm gathered over the whole activation, activations in
 * temporary files) against the untiled decode of the same latent: the same
 * numbers up to float rounding (Winograd tiles and double sums in another
 * order). Band heights 1, 2, 3, 7 and one covering the latent, on a 20×20
 * and an odd 13×9 latent; outputs span about ±3. The old per-tile decode
 * (diffusers' tiled_decode) differed by mean 0.106, max 0.74 here.
 * Measured max |diff| (im2col / Winograd everywhere): see the "#" lines.
 * Run in a private TMPDIR that must be empty afterwards. */
static void check_banded(const char *conv)
{
    if (conv) setenv("LIBMERGE_VAE_CONV", conv, 1);   /* read at load */
    lm_err e;
    model m;
    int rc = open_model(&m, FIXTURE("golden/sd15/vae_diffusers.safetensors"), &e);
    if (conv) unsetenv("LIBMERGE_VAE_CONV");
    if (rc) { close_model(&m); CHECK_OK(rc, &e); }
    char dir[] = "/tmp/test_vae_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("TMPDIR", dir, 1);
    static const int sizes[2][2] = { { 20, 20 }, { 13, 9 } };
    static const int tiles[5] = { 1, 2, 3, 7, 32 };
    double worst = 0;
    int fails = 0, left = 0;
    for (int k = 0; k < 2 && !fails; k++) {
        const int h = sizes[k][0], w = sizes[k][1], N = 3 * h * 8 * w * 8;
        float *z = malloc((size_t)4 * h * w * sizeof *z), *a = malloc((size_t)N * sizeof *a),
              *b = malloc((size_t)N * sizeof *b);
        /* a smooth latent (what a sampler produces is spatially correlated) */
        for (int c = 0; c < 4; c++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    z[(c * h + y) * w + x] = 0.8f * sinf(0.31f * x + 0.7f * c) * cosf(0.23f * y - 0.4f * c) + 0.1f * c;
        lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
        o.tile = -1;
        if ((rc = lm_vae_decode(m.v, z, h, w, &o, a, &e))) fails++;
        for (int t = 0; t < 5 && !fails; t++) {
            o.tile = tiles[t];
            o.overlap = 3;   /* ignored */
            if ((rc = lm_vae_decode(m.v, z, h, w, &o, b, &e))) { fails++; break; }
            double mx = 0, mean = 0;
            for (int i = 0; i < N; i++) { double d = fabs((double)a[i] - b[i]); mean += d; if (!(d <= mx)) mx = d; }
            mean /= N;
            printf("# %s %dx%d bands of %d: max |diff| %.3g, mean %.3g\n", conv ? conv : "default", h, w, tiles[t], mx, mean);
            if (!(mx <= worst)) worst = mx;
        }
        free(z); free(a); free(b);
    }
    DIR *dd = opendir(dir);
    for (struct dirent *de; dd && (de = readdir(dd));) left += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (dd) closedir(dd);
    rmdir(dir);
    if (saved) setenv("TMPDIR", saved, 1); else unsetenv("TMPDIR");
    free(saved);
    close_model(&m);
    CHECK_OK(rc, &e);
    CHECK_EQ_INT(left, 0);
    CHECK_MSG(worst <= 1e-4, "banded vs untiled: max |diff| %.3g > 1e-4", worst);
}

static void test_vae_banded_matches_untiled(void) { check_banded(NULL); }
/* Winograd at every width: the band path's Winograd convs and fused up2 */
static void test_vae_banded_winograd(void) { check_banded("winograd"); }

/* Automatic mode (tile 0) above 64×64 latents decodes in bands (of equal
 * height, from the memory budget: 3 at level 3 here) and still equals the
 * untiled decode. */
static void test_vae_auto_banded(void)
{
    lm_err e;
    model m;
    int rc = open_model(&m, FIXTURE("golden/sd15/vae_diffusers.safetensors"), &e);
    if (rc) { close_model(&m); CHECK_OK(rc, &e); }
    enum { h = 66, w = 65, N = 3 * h * 8 * w * 8 };
    float *z = malloc(4 * h * w * sizeof *z), *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    for (int i = 0; i < 4 * h * w; i++) z[i] = 0.7f * sinf(0.37f * (float)(i % w) + 0.11f * (float)(i / w));
    lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
    o.tile = -1;
    int r1 = lm_vae_decode(m.v, z, h, w, &o, a, &e);
    o.tile = 0;
    int r2 = r1 ? r1 : lm_vae_decode(m.v, z, h, w, &o, b, &e);
    double mx = r2 ? INFINITY : max_abs_diff(a, b, N);
    free(z); free(a); free(b);
    close_model(&m);
    CHECK_OK(r2, &e);
    printf("# automatic bands %dx%d: max |diff| %.3g\n", h, w, mx);
    CHECK_MSG(mx <= 1e-4, "automatic bands vs untiled: max |diff| %.3g", mx);
}

/* Automatic bands of any height: tile > 0 gives bands of tile·2^i rows, so
 * an upsampler's output band always starts at an even row there; automatic
 * bands (tile 0) have whatever height the budget allows (SD1.5 at 1024 px:
 * 41 rows), so an upsampler band starting at an odd row Y0 reads source rows
 * from ⌊(Y0−1)/2⌋ and drops one more computed row. Small budgets give bands
 * of 2, 3, 5, 7, 13 and 21 rows on a 13×9 latent (odd starts at every up
 * level), with im2col and with Winograd everywhere: equal to untiled. */
static void check_budget_bands(const char *conv)
{
    if (conv) setenv("LIBMERGE_VAE_CONV", conv, 1);   /* read at load */
    lm_err e;
    model m;
    int rc = open_model(&m, FIXTURE("golden/sd15/vae_ldm.safetensors"), &e);
    if (conv) unsetenv("LIBMERGE_VAE_CONV");
    if (rc) { close_model(&m); CHECK_OK(rc, &e); }
    enum { h = 13, w = 9, N = 3 * h * 8 * w * 8 };
    static const size_t budgets[] = { 1, 20000, 50000, 150000 };
    float *z = malloc(4 * h * w * sizeof *z), *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    for (int i = 0; i < 4 * h * w; i++) z[i] = 0.9f * sinf(0.37f * (float)i);
    lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
    o.scaled = 0;
    o.tile = -1;
    rc = lm_vae_decode(m.v, z, h, w, &o, a, &e);
    double worst = 0;
    for (size_t k = 0; k < sizeof budgets / sizeof *budgets && !rc; k++) {
        if ((rc = lm_vae_decode_banded(m.v, z, h, w, 0, budgets[k], b, &e))) break;
        double d = max_abs_diff(a, b, N);
        printf("# %s budget %zu floats: max |diff| %.3g\n", conv ? conv : "default", budgets[k], d);
        if (!(d <= worst)) worst = d;
    }
    free(z); free(a); free(b);
    close_model(&m);
    CHECK_OK(rc, &e);
    CHECK_MSG(worst <= 1e-4, "bands of any height vs untiled: max |diff| %.3g", worst);
}

static void test_vae_budget_bands_any_height(void) { check_budget_bands(NULL); }
static void test_vae_budget_bands_winograd(void) { check_budget_bands("winograd"); }

/* A temporary directory that cannot be used, files that cannot grow:
 * LM_EIO naming the directory and the reason, no crash; automatic mode
 * needs the directory only above 64×64 latents (that is when it bands). */
static void test_vae_banded_tmpdir_error(void)
{
    lm_err e;
    model m;
    int rc = open_model(&m, FIXTURE("golden/sd15/vae_diffusers.safetensors"), &e);
    if (rc) { close_model(&m); CHECK_OK(rc, &e); }
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("TMPDIR", "/nonexistent/libmerge-test", 1);
    float z[4 * 4 * 4] = { 0 }, img[3 * 32 * 32];
    lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
    o.tile = 2;
    rc = lm_vae_decode(m.v, z, 4, 4, &o, img, &e);
    /* automatic: untiled (no file) up to 64×64 latents, bands above */
    lm_err e3;
    o.tile = 0;
    int rc_small = lm_vae_decode(m.v, z, 4, 4, &o, img, &e3);
    float *zb = calloc(4 * 65 * 65, sizeof *zb), *ib = malloc(3 * 520 * 520 * sizeof *ib);
    int rc_big = zb && ib ? lm_vae_decode(m.v, zb, 65, 65, &o, ib, &e3) : -1;
    free(zb); free(ib);
    o.tile = 2;
    if (saved) setenv("TMPDIR", saved, 1); else unsetenv("TMPDIR");
    free(saved);
    /* files that cannot grow (RLIMIT_FSIZE 4 KiB: the reservation fails
     * with EFBIG, as a full disk would with ENOSPC) */
    lm_err e2;
    struct rlimit rl0, lim;
    int rc2 = 0;
    if (getrlimit(RLIMIT_FSIZE, &rl0) == 0) {
        void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
        lim = rl0;
        lim.rlim_cur = 4096;
        setrlimit(RLIMIT_FSIZE, &lim);
        rc2 = lm_vae_decode(m.v, z, 4, 4, &o, img, &e2);
        setrlimit(RLIMIT_FSIZE, &rl0);
        signal(SIGXFSZ, prev);
    }
    close_model(&m);
    CHECK_EQ_INT(rc, LM_EIO);
    CHECK(strstr(e.file, "/nonexistent/libmerge-test") != NULL);
    CHECK(strstr(e.msg, "temporary") != NULL);
    CHECK_EQ_INT(rc_small, 0);
    CHECK_EQ_INT(rc_big, LM_EIO);
    CHECK_EQ_INT(rc2, LM_EIO);
    CHECK(strstr(e2.msg, "temporary activations") != NULL);
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
    if (!UNDER_VALGRIND()) RUN(test_vae_banded_matches_untiled);   /* minutes under valgrind */
    if (!UNDER_VALGRIND()) RUN(test_vae_banded_winograd);
    if (!UNDER_VALGRIND()) RUN(test_vae_auto_banded);
    if (!UNDER_VALGRIND()) RUN(test_vae_budget_bands_any_height);
    if (!UNDER_VALGRIND()) RUN(test_vae_budget_bands_winograd);
    RUN(test_vae_banded_tmpdir_error);
    RUN(test_vae_image_to_u8);
    if (!UNDER_VALGRIND()) RUN(test_vae_winograd_goldens);   /* test_ops test_conv3x3_winograd covers the op there */
    RUN(test_vae_errors);
    TEST_EXIT();
}
