/* PNG writer/reader, A1111 "parameters" text, comparison grid. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libmerge/png.h"
#include "test.h"

static int contains(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(hay + i, needle, k)) return 1;
    return 0;
}

static void roundtrip(const char *value, const char *chunk)
{
    enum { W = 37, H = 23 };
    uint8_t img[W * H * 3];
    uint32_t x = 12345;
    for (int i = 0; i < W * H * 3; i++) { x = x * 1103515245u + 12345u; img[i] = (uint8_t)(x >> 24); }
    char path[] = "/tmp/lm_test_png_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    lm_err e;
    lm_png_text t[1] = { { "parameters", value } };
    CHECK_OK(lm_png_write(path, img, W, H, t, 1, &e), &e);
    uint8_t *back = NULL;
    int w = 0, h = 0;
    char *params = NULL;
    int rc = lm_png_read(path, &back, &w, &h, &params, &e);
    size_t n = 0;
    char *raw = t_slurp(path, &n);
    unlink(path);
    CHECK_OK(rc, &e);
    int same = w == W && h == H && !memcmp(back, img, sizeof img);
    int ok_chunk = raw && contains(raw, n, chunk);
    int ok_text = params && !strcmp(params, value);
    free(back); free(params); free(raw);
    CHECK_MSG(same, "pixels differ after a round trip");
    CHECK_MSG(ok_chunk, "no %s chunk", chunk);
    CHECK_MSG(ok_text, "parameters text differs after a round trip");
}

/* Latin-1 text goes into tEXt (bytes Latin-1), as PIL's add_text writes it. */
static void test_png_roundtrip_text(void) { roundtrip("caf\xc3\xa9, Steps: 4", "tEXtparameters"); }
/* Anything else into iTXt (UTF-8). */
static void test_png_roundtrip_itxt(void) { roundtrip("cat \xf0\x9f\x90\xb1", "iTXtparameters"); }

static void test_png_a1111_parameters(void)
{
    const char *names[2] = { "lcm-lora-sdv1-5", "style" };
    const float lambdas[2] = { 1.0f, 0.8f };
    const char *hashes[2] = { "3d2d2c1fd5d5", "0123456789ab" };
    lm_gen_params p = { "a photo of a cat", "blurry", 4, "LCM", 1.5, 42, 512, 768, "6ce0161689",
                        "v1-5-pruned-emaonly", 2, 2, names, lambdas, hashes, "libmerge 0.1.0" };
    char *s = lm_png_a1111_parameters(&p);
    CHECK_EQ_STR(s, "a photo of a cat <lora:lcm-lora-sdv1-5:1> <lora:style:0.8>\n"
                    "Negative prompt: blurry\n"
                    "Steps: 4, Sampler: LCM, CFG scale: 1.5, Seed: 42, Size: 512x768, Model hash: 6ce0161689, "
                    "Model: v1-5-pruned-emaonly, Clip skip: 2, "
                    "Lora hashes: \"lcm-lora-sdv1-5: 3d2d2c1fd5d5, style: 0123456789ab\", Version: libmerge 0.1.0");
    free(s);
    lm_gen_params q = { "x", NULL, 1, "LCM", 1, 7, 64, 64, NULL, "a:b", 1, 0, NULL, NULL, NULL, NULL };
    s = lm_png_a1111_parameters(&q);
    CHECK_EQ_STR(s, "x\nSteps: 1, Sampler: LCM, CFG scale: 1, Seed: 7, Size: 64x64, Model: \"a:b\"");
    free(s);
}

static void test_png_grid(void)
{
    enum { w = 8, h = 6 };
    uint8_t a[w * h * 3], b[w * h * 3];
    memset(a, 10, sizeof a);
    memset(b, 200, sizeof b);
    const uint8_t *imgs[4] = { a, b, NULL, a };
    const char *rl[2] = { "L=0.5", "1" }, *cl[2] = { "A", "B" };
    uint8_t *out = NULL;
    int W = 0, H = 0;
    lm_err e;
    CHECK_OK(lm_png_grid(imgs, 2, 2, w, h, rl, cl, &out, &W, &H, &e), &e);
    /* scale 1: left margin = 5 glyphs * 6 + 2*2 pad = 34; top = 7 + 4 = 11; gaps 4 */
    CHECK_EQ_INT(W, 34 + 2 * w + 3 * 4);
    CHECK_EQ_INT(H, 11 + 2 * h + 3 * 4);
    int x0 = 34 + 4, y0 = 11 + 4;
    CHECK_EQ_INT(out[((size_t)y0 * W + x0) * 3], 10);                          /* cell (0,0) */
    CHECK_EQ_INT(out[((size_t)y0 * W + x0 + w + 4) * 3], 200);                 /* cell (0,1) */
    CHECK_EQ_INT(out[((size_t)(y0 + h + 4) * W + x0) * 3], 128);               /* empty cell */
    int ink = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < 34; x++) ink += out[((size_t)y * W + x) * 3] == 0;
    CHECK(ink > 20);                                                          /* row labels drawn */
    free(out);
    CHECK(lm_png_grid(imgs, 0, 2, w, h, NULL, NULL, &out, &W, &H, &e) == LM_EUSAGE);
}

static void test_png_no_partial_output(void)
{
    uint8_t px[3] = { 1, 2, 3 };
    lm_err e;
    CHECK_EQ_INT(lm_png_write("/nonexistent-dir/x.png", px, 1, 1, NULL, 0, &e), LM_EIO);
    struct stat st;
    CHECK(stat("/nonexistent-dir/x.png", &st) != 0);
    CHECK_EQ_INT(lm_png_write("/tmp/lm_test_png_bad.png", px, 0, 1, NULL, 0, &e), LM_EUSAGE);
    uint8_t *rgb;
    int w, h;
    CHECK_EQ_INT(lm_png_read(FIXTURE("golden/clip/README.md"), &rgb, &w, &h, NULL, &e), LM_EINPUT);
}

/* test_png samepixels A.png B.png: exit 0 when both decode to the same RGB
 * pixels (text chunks ignored). Used by tests/cli. */
static int samepixels_main(char **argv)
{
    uint8_t *a = NULL, *b = NULL;
    int wa = 0, ha = 0, wb = 0, hb = 0;
    lm_err e;
    int ra = lm_png_read(argv[2], &a, &wa, &ha, NULL, &e), rb = lm_png_read(argv[3], &b, &wb, &hb, NULL, &e);
    int same = !ra && !rb && wa == wb && ha == hb && !memcmp(a, b, (size_t)wa * ha * 3);
    free(a);
    free(b);
    return same ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "samepixels")) return samepixels_main(argv);
    RUN(test_png_roundtrip_text);
    RUN(test_png_roundtrip_itxt);
    RUN(test_png_a1111_parameters);
    RUN(test_png_grid);
    RUN(test_png_no_partial_output);
    TEST_EXIT();
}
