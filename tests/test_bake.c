/* lm_bake: values against the numpy reference (fixtures/bake/make_fixtures.py), the λ = −1
 * round trip, bake of two LoRAs = bake of their exact merge, every refusal, metadata. */
#include <dirent.h>
#include <math.h>
#include <string.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cJSON.h>
#include "support/data_sha256.h"
#include "test.h"
#include "libmerge/merge.h"
#include "libmerge/source.h"
#include "libmerge/writer.h"
#include "libmerge/keymap.h"
#include "libmerge/dtype.h"

/* internal to libmerge/merge (util.c): the non-finite scan of every updated tensor */
int64_t lmm_count_nonfinite(const void *p, lm_dtype dt, size_t n);

#define BASE FIXTURE("golden/sd15/unet_ldm.safetensors")
#define BASE_SHA "ff843e57ff8836dd1f20372184179c1147a591e508a6df3abf92317ae5ca8663"
#define LA FIXTURE("bake/lora_a_kohya.safetensors")
#define LB FIXTURE("bake/lora_b_diffusers.safetensors")

static char dir[64];

static const char *tmp(const char *name)
{
    static char buf[8][320];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Entries of dir other than . and .. whose name contains `part`. */
static int count_in_dir(const char *part)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, part)) n++;
    if (d) closedir(d);
    return n;
}

static float *read_f32(const lm_source *s, const char *name)
{
    int64_t i = lm_source_find(s, name);
    if (i < 0) return NULL;
    float *v = malloc((size_t)lm_source_entry(s, (size_t)i)->numel * sizeof *v);
    if (v && lm_source_read_f32(s, (size_t)i, v, NULL)) { free(v); return NULL; }
    return v;
}

/* Distance in fp16 units in the last place (ordered bit patterns). */
static int f16_ulps(uint16_t a, uint16_t b)
{
    int x = (a & 0x8000) ? -(int)(a & 0x7fff) : (int)a, y = (b & 0x8000) ? -(int)(b & 0x7fff) : (int)b;
    return abs(x - y);
}

static int bake2(const char *out, lm_dtype dt, double la, double lb, lm_bake_report *rep, lm_err *err)
{
    lm_weighted in[2] = { { LA, la, NULL }, { LB, lb, NULL } };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = dt;
    return lm_bake(BASE, in, 2, out, &o, rep, err);
}

static void test_bake_matches_numpy_f32(void)
{
    lm_err err;
    lm_bake_report rep;
    const char *out = tmp("f32.safetensors");
    CHECK_OK(bake2(out, LM_DT_INVALID, 0.8, -0.5, &rep, &err), &err);
    CHECK_EQ_INT(rep.touched, 7);
    CHECK_EQ_INT(rep.copied, 677);
    CHECK_EQ_INT(rep.loras[0].matched, 6);
    CHECK_EQ_INT(rep.loras[1].matched, 4);
    lm_bake_report_free(&rep);
    lm_source *o = NULL, *r = NULL, *b = NULL;
    CHECK_OK(lm_source_open(&o, out, NULL, &err), &err);
    CHECK_OK(lm_source_open(&r, FIXTURE("bake/ref_bake_f32.safetensors"), NULL, &err), &err);
    CHECK_OK(lm_source_open(&b, BASE, NULL, &err), &err);
    double worst = 0;
    for (size_t i = 0; i < lm_source_count(r); i++) {
        const lm_entry *e = lm_source_entry(r, i);
        float *x = read_f32(o, e->name), *y = read_f32(r, e->name);
        CHECK(x && y);
        for (int64_t k = 0; k < e->numel; k++) worst = fmax(worst, fabs((double)x[k] - y[k]));
        free(x);
        free(y);
    }
    /* the reference rounds the float64 result once; fp32 sgemm sums differ by a few ulp of |W| ≤ 1 */
    CHECK_NEAR(worst, 0, 5e-7);
    for (size_t i = 0; i < lm_source_count(b); i++) {
        const lm_entry *e = lm_source_entry(b, i);
        if (lm_source_find(r, e->name) >= 0) continue;
        int64_t j = lm_source_find(o, e->name);
        CHECK(j >= 0);
        CHECK_MSG(!memcmp(lm_source_raw(b, i), lm_source_raw(o, (size_t)j), e->nbytes), "%s not copied byte for byte", e->name);
    }
    lm_source_close(o); lm_source_close(r); lm_source_close(b);
}

static void test_bake_matches_numpy_f16(void)
{
    lm_err err;
    lm_bake_report rep;
    const char *out = tmp("f16.safetensors");
    CHECK_OK(bake2(out, LM_DT_F16, 0.8, -0.5, &rep, &err), &err);
    CHECK_EQ_INT(rep.converted, 677);
    lm_bake_report_free(&rep);
    lm_source *o = NULL, *r = NULL, *b = NULL;
    CHECK_OK(lm_source_open(&o, out, NULL, &err), &err);
    CHECK_OK(lm_source_open(&r, FIXTURE("bake/ref_bake_f16.safetensors"), NULL, &err), &err);
    CHECK_OK(lm_source_open(&b, BASE, NULL, &err), &err);
    int worst = 0;
    for (size_t i = 0; i < lm_source_count(o); i++) {
        const lm_entry *e = lm_source_entry(o, i);
        CHECK_EQ_INT(e->dtype, LM_DT_F16);
        const uint8_t *x = lm_source_raw(o, i);
        int64_t j = lm_source_find(r, e->name);
        if (j >= 0) {      /* touched: the numpy float64 result rounded once; ours fp32 then once */
            const uint8_t *y = lm_source_raw(r, (size_t)j);
            for (int64_t k = 0; k < e->numel; k++) {
                uint16_t a, c;
                memcpy(&a, x + 2 * k, 2);
                memcpy(&c, y + 2 * k, 2);
                if (f16_ulps(a, c) > worst) worst = f16_ulps(a, c);
            }
        } else {           /* untouched: exactly round-to-nearest-even of the base */
            float *w = read_f32(b, e->name);
            CHECK(w);
            for (int64_t k = 0; k < e->numel; k++) {
                uint16_t a;
                memcpy(&a, x + 2 * k, 2);
                if (a != lm_f32_to_f16(w[k])) { free(w); FAILF("%s[%lld] not RNE of the base", e->name, (long long)k); }
            }
            free(w);
        }
    }
    CHECK(worst <= 1);
    lm_source_close(o); lm_source_close(r); lm_source_close(b);
}

/* The workers update a tensor in blocks of rows (bake_worker.c: converted, updated,
 * rounded per block, so the fp32 copy stays in cache). Forced to 3 rows (blocks end
 * inside every module, the last one partial) and turned off (0: the whole-tensor path),
 * both must still match the numpy reference. */
static void test_bake_blocked_and_whole_paths_match_reference(void)
{
    setenv("LIBMERGE_BAKE_BLOCK_ROWS", "3", 1);
    test_bake_matches_numpy_f32();
    test_bake_matches_numpy_f16();
    setenv("LIBMERGE_BAKE_BLOCK_ROWS", "0", 1);
    test_bake_matches_numpy_f32();
    test_bake_matches_numpy_f16();
    unsetenv("LIBMERGE_BAKE_BLOCK_ROWS");
}

/* One fp16 ulp at magnitude m (normal range; 2^-24 below it). */
static double ulp16(double m)
{
    if (m < 6.103515625e-05) return 5.9604644775390625e-08;
    return ldexp(1.0, ilogb(m) - 10);
}

/* Bake +λ, then −λ, both rounding to fp16: each element comes back within one fp16 ulp —
 * the ulp of the larger of |W| and |W + λΔW| (X = rne(W + λΔW) carries half an ulp of its
 * own magnitude, rne(X − λΔW) adds half an ulp of the result's). */
static void test_bake_minus_lambda_returns_base(void)
{
    lm_err err;
    const char *b16 = tmp("base16.safetensors"), *x = tmp("plus.safetensors"), *y = tmp("minus.safetensors");
    lm_weighted zero = { LA, 0.0, NULL };
    lm_weighted plus[2] = { { LA, 1.0, NULL }, { LB, 0.7, NULL } }, minus[2] = { { LA, -1.0, NULL }, { LB, -0.7, NULL } };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = LM_DT_F16;
    CHECK_OK(lm_bake(BASE, &zero, 1, b16, &o, NULL, &err), &err);   /* an fp16 base: rne(W + 0) */
    o.out_dtype = LM_DT_INVALID;
    CHECK_OK(lm_bake(b16, plus, 2, x, &o, NULL, &err), &err);
    CHECK_OK(lm_bake(x, minus, 2, y, &o, NULL, &err), &err);
    lm_source *b = NULL, *p = NULL, *r = NULL;
    CHECK_OK(lm_source_open(&b, b16, NULL, &err), &err);
    CHECK_OK(lm_source_open(&p, x, NULL, &err), &err);
    CHECK_OK(lm_source_open(&r, y, NULL, &err), &err);
    CHECK_EQ_INT(lm_source_count(r), lm_source_count(b));
    int64_t changed = 0, bad = 0, exact_back = 0;
    for (size_t i = 0; i < lm_source_count(b); i++) {
        const lm_entry *e = lm_source_entry(b, i);
        CHECK_EQ_INT(e->dtype, LM_DT_F16);
        float *w = read_f32(b, e->name), *xv = read_f32(p, e->name), *yv = read_f32(r, e->name);
        CHECK(w && xv && yv);
        for (int64_t k = 0; k < e->numel; k++) {
            double m = fmax(fabs(w[k]), fabs(xv[k]));
            if (fabs((double)yv[k] - w[k]) > ulp16(m)) bad++;
            if (xv[k] != w[k]) { changed++; exact_back += yv[k] == w[k]; }
        }
        free(w); free(xv); free(yv);
    }
    CHECK_MSG(bad == 0, "%lld elements more than one fp16 ulp from the base", (long long)bad);
    CHECK(changed > 1000);            /* the LoRAs did change the weights */
    CHECK(exact_back > changed / 2);  /* and most came back bit for bit */
    lm_source_close(b); lm_source_close(p); lm_source_close(r);
}

static void test_bake_equals_bake_of_exact_merge(void)
{
    lm_err err;
    const char *m = tmp("merged.safetensors"), *p = tmp("viamerge.safetensors"), *q = tmp("direct.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts mo = LM_LMERGE_OPTS_INIT;
    mo.out_dtype = LM_DT_F32;
    CHECK_OK(lm_lora_merge(in, 2, m, &mo, NULL, &err), &err);
    lm_weighted one = { m, 1.0, NULL };
    CHECK_OK(lm_bake(BASE, &one, 1, p, NULL, NULL, &err), &err);
    CHECK_OK(bake2(q, LM_DT_INVALID, 0.8, -0.5, NULL, &err), &err);
    lm_source *a = NULL, *b = NULL;
    CHECK_OK(lm_source_open(&a, p, NULL, &err), &err);
    CHECK_OK(lm_source_open(&b, q, NULL, &err), &err);
    double worst = 0;
    for (size_t i = 0; i < lm_source_count(a); i++) {
        const lm_entry *e = lm_source_entry(a, i);
        float *x = read_f32(a, e->name), *y = read_f32(b, e->name);
        CHECK(x && y);
        for (int64_t k = 0; k < e->numel; k++) worst = fmax(worst, fabs((double)x[k] - y[k]));
        free(x);
        free(y);
    }
    CHECK_NEAR(worst, 0, 5e-7);   /* fp32 rounding before the final cast, |W| < 1 */
    lm_source_close(a);
    lm_source_close(b);
}

/* A PyTorch .ckpt base (fixtures/bake/unet_tiny_fp16.ckpt: the tiny UNet cast to fp16 by
 * torch, {"state_dict": …}) bakes to the same tensors as the same weights in safetensors. */
static void test_bake_from_torch_checkpoint(void)
{
    lm_err err;
    const char *st16 = tmp("st16.safetensors"), *a = tmp("from_ckpt.safetensors"), *b = tmp("from_st.safetensors");
    lm_weighted zero = { LA, 0.0, NULL };
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = LM_DT_F16;
    CHECK_OK(lm_bake(BASE, &zero, 1, st16, &o, NULL, &err), &err);
    lm_bake_report rep;
    CHECK_OK(lm_bake(FIXTURE("bake/unet_tiny_fp16.ckpt"), in, 2, a, NULL, &rep, &err), &err);
    CHECK_EQ_STR(rep.arch, "sd1");
    CHECK_EQ_INT(rep.touched, 7);
    lm_bake_report_free(&rep);
    CHECK_OK(lm_bake(st16, in, 2, b, NULL, NULL, &err), &err);
    lm_source *x = NULL, *y = NULL;
    CHECK_OK(lm_source_open(&x, a, NULL, &err), &err);
    CHECK_OK(lm_source_open(&y, b, NULL, &err), &err);
    CHECK_EQ_INT(lm_source_count(x), 684);
    CHECK_EQ_INT(lm_source_count(y), 684);
    for (size_t i = 0; i < lm_source_count(x); i++) {
        const lm_entry *e = lm_source_entry(x, i);
        int64_t j = lm_source_find(y, e->name);
        CHECK(j >= 0);
        CHECK_EQ_INT(e->dtype, LM_DT_F16);
        CHECK_MSG(!memcmp(lm_source_raw(x, i), lm_source_raw(y, (size_t)j), e->nbytes), "%s differs", e->name);
    }
    lm_source_close(x);
    lm_source_close(y);
}

/* DoRA is not linear in λ: plain modules first (whatever the command-line order), then
 * W' = m ⊙ V/‖V‖_row with V = W + 0.8ΔW_A + 0.5ΔW_D, against numpy. */
static void test_bake_dora_after_plain_modules(void)
{
    lm_err err;
    const char *out = tmp("dora.safetensors");
    lm_weighted in[2] = { { FIXTURE("bake/lora_dora.safetensors"), 0.5, NULL }, { LA, 0.8, NULL } };
    lm_bake_report rep;
    CHECK_OK(lm_bake(BASE, in, 2, out, NULL, &rep, &err), &err);
    CHECK_EQ_INT(rep.loras[0].dora, 1);
    lm_bake_report_free(&rep);
    lm_source *o = NULL, *r = NULL;
    CHECK_OK(lm_source_open(&o, out, NULL, &err), &err);
    CHECK_OK(lm_source_open(&r, FIXTURE("bake/ref_bake_dora_f32.safetensors"), NULL, &err), &err);
    const lm_entry *e = lm_source_entry(r, 0);
    float *x = read_f32(o, e->name), *y = read_f32(r, e->name);
    CHECK(x && y);
    double worst = 0;
    for (int64_t k = 0; k < e->numel; k++) worst = fmax(worst, fabs((double)x[k] - y[k]));
    free(x);
    free(y);
    CHECK_NEAR(worst, 0, 1e-6);
    lm_source_close(o);
    lm_source_close(r);
}

/* The same UNet in diffusers layout (golden/sd15/unet_diffusers.safetensors) gets the same
 * updates: LoRA modules land on the diffusers names through the key map. */
static void test_bake_diffusers_layout_base(void)
{
    lm_err err;
    const char *out = tmp("dif.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_bake_report rep;
    CHECK_OK(lm_bake(FIXTURE("golden/sd15/unet_diffusers.safetensors"), in, 2, out, NULL, &rep, &err), &err);
    CHECK_EQ_STR(rep.layout, "diffusers");
    CHECK_EQ_INT(rep.touched, 7);
    lm_bake_report_free(&rep);
    lm_source *o = NULL, *r = NULL;
    CHECK_OK(lm_source_open(&o, out, NULL, &err), &err);
    CHECK_OK(lm_source_open(&r, FIXTURE("bake/ref_bake_f32.safetensors"), NULL, &err), &err);
    for (size_t i = 0; i < lm_source_count(r); i++) {
        const lm_entry *e = lm_source_entry(r, i);
        char dn[512];
        int reshape = 0;
        CHECK_OK(lm_layout_convert_name(LM_ARCH_SD1, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, e->name, dn, sizeof dn, &reshape), &err);
        const char *bare = strncmp(dn, "unet.", 5) ? dn : dn + 5;
        float *x = read_f32(o, bare), *y = read_f32(r, e->name);
        CHECK_MSG(x && y, "%s (%s) missing", bare, e->name);
        double worst = 0;
        for (int64_t k = 0; k < e->numel; k++) worst = fmax(worst, fabs((double)x[k] - y[k]));
        free(x);
        free(y);
        CHECK_NEAR(worst, 0, 5e-7);
    }
    lm_source_close(o);
    lm_source_close(r);
}

static void test_bake_threads_give_identical_files(void)
{
    lm_err err;
    const char *a = tmp("t1.safetensors"), *b = tmp("t2.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = LM_DT_F16;
    o.title = "same";
    o.threads = 1;
    CHECK_OK(lm_bake(BASE, in, 2, a, &o, NULL, &err), &err);
    o.threads = 3;
    CHECK_OK(lm_bake(BASE, in, 2, b, &o, NULL, &err), &err);
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    CHECK(fa && fb);
    int same = 1, ca, cb;
    do { ca = fgetc(fa); cb = fgetc(fb); if (ca != cb) same = 0; } while (same && ca != EOF);
    fclose(fa);
    fclose(fb);
    CHECK(same);
}

static void test_bake_refuses_unmatched_keys(void)
{
    lm_err err;
    const char *out = tmp("unmatched.safetensors");
    lm_weighted in = { FIXTURE("bake/lora_unmatched.safetensors"), 1.0, NULL };
    CHECK_EQ_INT(lm_bake(BASE, &in, 1, out, NULL, NULL, &err), LM_EMISMATCH);
    CHECK(strstr(err.msg, "to_zz") || strstr(err.key, "to_zz"));
    CHECK(!exists(out));
    CHECK_EQ_INT(count_in_dir("unmatched"), 0);
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.allow_unmatched = 1;
    lm_bake_report rep;
    CHECK_OK(lm_bake(BASE, &in, 1, out, &o, &rep, &err), &err);
    CHECK_EQ_INT(rep.loras[0].unmatched, 1);
    CHECK_EQ_INT(rep.loras[0].matched, 1);
    CHECK_EQ_INT(rep.touched, 1);
    lm_bake_report_free(&rep);
}

static void test_bake_refuses_shape_mismatch(void)
{
    lm_err err;
    const char *out = tmp("badshape.safetensors");
    lm_weighted in[2] = { { LA, 1.0, NULL }, { FIXTURE("bake/lora_badshape.safetensors"), 1.0, NULL } };
    CHECK_EQ_INT(lm_bake(BASE, in, 2, out, NULL, NULL, &err), LM_EMISMATCH);
    CHECK(!exists(out));
    CHECK_EQ_INT(count_in_dir("badshape"), 0);
}

static void test_bake_refuses_other_architecture(void)
{
    lm_err err;
    const char *out = tmp("otherarch.safetensors");
    /* an SD1-shaped LoRA on a (tiny) SDXL UNet */
    lm_weighted in = { LA, 1.0, NULL };
    int rc = lm_bake(FIXTURE("golden/sdxl/unet_tiny_sdxl_original.safetensors"), &in, 1, out, NULL, NULL, &err);
    CHECK_EQ_INT(rc, LM_EMISMATCH);
    CHECK(!exists(out));
    /* a real SD2.x-shaped LoRA (cross-attention 1024) on an SD1.x UNet */
    lm_weighted sd2 = { FIXTURE("real/sd15_lora_diffusers_bf16.safetensors"), 1.0, NULL };
    CHECK_EQ_INT(lm_bake(BASE, &sd2, 1, out, NULL, NULL, &err), LM_EMISMATCH);
    CHECK(!exists(out));
    CHECK_EQ_INT(count_in_dir("otherarch"), 0);
}

static void test_bake_refuses_output_equal_to_input(void)
{
    lm_err err;
    const char *copy = tmp("base_copy.safetensors");
    FILE *in = fopen(BASE, "rb"), *out = fopen(copy, "wb");
    CHECK(in && out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    struct stat before, after;
    stat(copy, &before);
    lm_weighted l = { LA, 1.0, NULL };
    CHECK_EQ_INT(lm_bake(copy, &l, 1, copy, NULL, NULL, &err), LM_EUSAGE);
    stat(copy, &after);
    CHECK_EQ_INT(after.st_size, before.st_size);
    CHECK_EQ_INT(after.st_ino, before.st_ino);
    /* the same file through another path */
    char other[400];
    snprintf(other, sizeof other, "%s/./base_copy.safetensors", dir);
    CHECK_EQ_INT(lm_bake(copy, &l, 1, other, NULL, NULL, &err), LM_EUSAGE);
    /* a LoRA as the output */
    const char *lcopy = tmp("lora_copy.safetensors");
    CHECK_OK(lm_bake(copy, &l, 1, tmp("ok.safetensors"), NULL, NULL, &err), &err);
    if (link(LA, lcopy) != 0) {  /* different filesystem: copy instead */
        FILE *a = fopen(LA, "rb"), *b = fopen(lcopy, "wb");
        while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
        fclose(a); fclose(b);
    }
    lm_weighted l2 = { lcopy, 1.0, NULL };
    CHECK_EQ_INT(lm_bake(copy, &l2, 1, lcopy, NULL, NULL, &err), LM_EUSAGE);
}

static void test_bake_disk_full_leaves_no_file(void)
{
    const char *out = tmp("full.safetensors");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = { 1 << 20, 1 << 20 };      /* output is ~13 MB */
        setrlimit(RLIMIT_FSIZE, &rl);
        lm_err err;
        lm_weighted in = { LA, 1.0, NULL };
        int rc = lm_bake(BASE, &in, 1, out, NULL, NULL, &err);
        _exit(rc == LM_EIO ? 0 : 10 + (rc < 0 ? -rc : rc));
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
    CHECK(!exists(out));
    CHECK_EQ_INT(count_in_dir("full"), 0);   /* no temporary file left either */
}

/* Writes every tensor of s into path in the order given (idx), with its own bytes, or zeros
 * when zero is set (same header, other data). */
static int write_reordered(const lm_source *s, const size_t *idx, size_t n, const char *path, int zero, lm_err *err)
{
    lm_wtensor *wt = calloc(n, sizeof *wt);
    if (!wt) return LM_ENOMEM;
    for (size_t k = 0; k < n; k++) {
        const lm_entry *e = lm_source_entry(s, idx[k]);
        wt[k].name = e->name;
        wt[k].dtype = e->dtype;
        wt[k].ndim = e->ndim;
        memcpy(wt[k].shape, e->shape, sizeof wt[k].shape);
    }
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    lm_writer *w = NULL;
    int rc = lm_writer_open(&w, path, wt, n, NULL, 0, &wo, err);
    free(wt);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t t = lm_writer_tensor_index(w, k);
        const lm_entry *e = lm_source_entry(s, idx[t]);
        void *z = zero ? calloc(1, e->nbytes ? e->nbytes : 1) : NULL;
        rc = zero && !z ? LM_ENOMEM : lm_writer_write(w, zero ? z : lm_source_raw(s, idx[t]), e->nbytes, err);
        free(z);
    }
    if (rc) { lm_writer_abort(w); return rc; }
    return lm_writer_commit(w, err);
}

typedef struct swap_ctx { const char *from, *to; int done; } swap_ctx;

static void swap_on_first_bake_step(void *ctx, const char *what, size_t done, size_t total)
{
    swap_ctx *c = ctx;
    (void)total;
    if (!c->done && !strcmp(what, "bake") && done == 1) c->done = rename(c->from, c->to) == 0 ? 1 : -1;
}

/* The base replaced under its name once the bake has started (after planning, before the
 * first untouched tensor is copied): the untouched tensors still come from the file that
 * was opened and hashed, not from the new one (the copies once reopened the base by name
 * and mixed the two files). The first tensor in the base is an updated one. */
static void test_bake_base_replaced_midway_is_not_mixed_in(void)
{
    lm_err err;
    lm_source *s = NULL, *r = NULL;
    CHECK_OK(lm_source_open(&s, BASE, NULL, &err), &err);
    CHECK_OK(lm_source_open(&r, FIXTURE("bake/ref_bake_f32.safetensors"), NULL, &err), &err);
    if (!s || !r) { lm_source_close(s); lm_source_close(r); return; }
    size_t n = lm_source_count(s), *idx = calloc(n, sizeof *idx), k = 0;
    int64_t first = lm_source_find(s, lm_source_entry(r, 0)->name);   /* a tensor LA updates */
    CHECK(idx && first >= 0);
    if (!idx || first < 0) { free(idx); lm_source_close(s); lm_source_close(r); return; }
    idx[k++] = (size_t)first;
    for (size_t t = 0; t < n; t++) if (t != (size_t)first) idx[k++] = t;
    const char *base = tmp("swapbase.safetensors"), *other = tmp("swapother.safetensors");
    const char *ref = tmp("swapref.safetensors"), *out = tmp("swapout.safetensors");
    CHECK_OK(write_reordered(s, idx, n, base, 0, &err), &err);
    CHECK_OK(write_reordered(s, idx, n, other, 1, &err), &err);
    free(idx);
    lm_source_close(s);
    lm_source_close(r);
    lm_weighted in = { LA, 0.8, NULL };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.title = "swap";
    CHECK_OK(lm_bake(base, &in, 1, ref, &o, NULL, &err), &err);
    swap_ctx c = { other, base, 0 };
    o.progress = swap_on_first_bake_step;
    o.progress_ctx = &c;
    CHECK_OK(lm_bake(base, &in, 1, out, &o, NULL, &err), &err);
    CHECK_EQ_INT(c.done, 1);                 /* the name did lead elsewhere mid-bake */
    FILE *fa = fopen(ref, "rb"), *fb = fopen(out, "rb");
    CHECK(fa && fb);
    int same = fa && fb, ca, cb;
    long at = 0;
    while (same) { ca = fgetc(fa); cb = fgetc(fb); if (ca != cb) same = 0; else if (ca == EOF) break; at++; }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    CHECK_MSG(same, "output differs from the undisturbed bake at byte %ld", at);
}

static void test_bake_overflow_counted_and_refused(void)
{
    lm_err err;
    const char *out = tmp("overflow.safetensors");
    lm_weighted in = { FIXTURE("bake/lora_overflow.safetensors"), 1.0, NULL };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = LM_DT_F16;
    lm_bake_report rep;
    CHECK_OK(lm_bake(BASE, &in, 1, out, &o, &rep, &err), &err);
    CHECK_EQ_INT(rep.n_overflows, 1);
    CHECK_EQ_STR(rep.overflows[0].name, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight");
    CHECK(rep.overflows[0].count > 0 && rep.overflows[0].count <= 32 * 32);
    CHECK_EQ_INT(rep.overflow_total, rep.overflows[0].count);
    lm_bake_report_free(&rep);
    unlink(out);
    o.fail_on_overflow = 1;
    CHECK_EQ_INT(lm_bake(BASE, &in, 1, out, &o, &rep, &err), LM_EINPUT);
    CHECK(!exists(out));
    CHECK_EQ_INT(count_in_dir("overflow"), 0);
    lm_bake_report_free(&rep);
}

static void test_bake_recipe_and_metadata(void)
{
    lm_err err;
    const char *out = tmp("meta.safetensors");
    lm_weighted in[2] = { { LA, 0.8, "lora" }, { LB, -0.5, "lcm" } };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.hash_output = 1;
    lm_bake_report rep;
    CHECK_OK(lm_bake(BASE, in, 2, out, &o, &rep, &err), &err);
    CHECK_EQ_STR(rep.base_sha256, BASE_SHA);
    char data_sha[65];
    memcpy(data_sha, rep.out_sha256, 65);
    lm_bake_report_free(&rep);
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, out, NULL, &err), &err);
    lm_recipe r;
    const char *js = lm_source_meta_get(s, LM_RECIPE_KEY);
    CHECK(js);
    CHECK_OK(lm_recipe_parse(js, &r, &err), &err);
    CHECK_EQ_STR(r.operation, "bake");
    CHECK_EQ_STR(r.tool, "lcm-bake");
    CHECK_EQ_STR(r.tool_version, LM_TOOL_VERSION);
    CHECK_EQ_INT(r.n_inputs, 3);
    CHECK_EQ_STR(r.inputs[0].role, "base");
    CHECK_EQ_STR(r.inputs[0].sha256, BASE_SHA);
    CHECK_EQ_INT(r.inputs[0].bytes, 12981240);
    struct stat sa, sb;   /* each LoRA's size is recorded too (it was 0) */
    CHECK(stat(LA, &sa) == 0 && stat(LB, &sb) == 0);
    CHECK_EQ_INT(r.inputs[1].bytes, sa.st_size);
    CHECK_EQ_INT(r.inputs[2].bytes, sb.st_size);
    CHECK(r.inputs[1].lambda == 0.8 && r.inputs[2].lambda == -0.5);   /* exact round trip */
    CHECK_EQ_STR(r.inputs[2].role, "lcm");
    CHECK_EQ_STR(r.inputs[1].name, "lora_a_kohya.safetensors");
    lm_recipe_free(&r);
    CHECK_EQ_STR(lm_source_meta_get(s, "modelspec.sai_model_spec"), "1.0.0");
    CHECK_EQ_STR(lm_source_meta_get(s, "modelspec.architecture"), "stable-diffusion-v1");
    CHECK_EQ_STR(lm_source_meta_get(s, "modelspec.title"), "meta");
    const char *mm = lm_source_meta_get(s, "sd_merge_models");
    CHECK(mm && strstr(mm, BASE_SHA));
    cJSON *a = cJSON_Parse(lm_source_meta_get(s, "sd_merge_recipe"));
    CHECK(a);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(a, "primary_model_hash")), BASE_SHA);
    cJSON_Delete(a);
    /* modelspec.hash_sha256 = SHA-256 of the data area, recomputed here */
    const char *h = lm_source_meta_get(s, "modelspec.hash_sha256");
    CHECK(h && !strncmp(h, "0x", 2) && !strcmp(h + 2, data_sha));
    char hex[65];
    CHECK(t_sha256_from(out, lm_source_data_start(s), hex) == 0);
    CHECK_EQ_STR(h + 2, hex);
    lm_source_close(s);
}

static void cleanup(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[400];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { snprintf(p, sizeof p, "%s/%s", dir, e->d_name); unlink(p); }
    if (d) closedir(d);
    rmdir(dir);
}

/* The vectorised detection must see a NaN or Inf in any lane and in the scalar tail, and
 * count exactly; finite extremes (max, denormals, -0) are not counted. */
static void test_count_nonfinite_lanes_and_tail(void)
{
    enum { N = 37 };
    float f[N];
    uint16_t h[N], bh[N];
    for (int i = 0; i < N; i++) {
        f[i] = i % 3 ? 3.4e38f : -1e-45f;
        h[i] = lm_f32_to_f16(i % 2 ? 65504.0f : -0.0f);
        bh[i] = lm_f32_to_bf16(i % 3 ? 3.0e38f : -1e-45f);
    }
    CHECK_EQ_INT(lmm_count_nonfinite(f, LM_DT_F32, N), 0);
    CHECK_EQ_INT(lmm_count_nonfinite(h, LM_DT_F16, N), 0);
    CHECK_EQ_INT(lmm_count_nonfinite(bh, LM_DT_BF16, N), 0);
    for (int pos = 0; pos < N; pos++) {
        float g[N];
        uint16_t k[N], kb[N];
        memcpy(g, f, sizeof g);
        memcpy(k, h, sizeof k);
        memcpy(kb, bh, sizeof kb);
        g[pos] = pos % 2 ? NAN : -INFINITY;
        k[pos] = pos % 2 ? 0x7e00 : 0xfc00;
        kb[pos] = pos % 2 ? 0x7fc0 : 0xff80;
        CHECK_EQ_INT(lmm_count_nonfinite(g, LM_DT_F32, N), 1);
        CHECK_EQ_INT(lmm_count_nonfinite(k, LM_DT_F16, N), 1);
        CHECK_EQ_INT(lmm_count_nonfinite(kb, LM_DT_BF16, N), 1);
        g[N - 1 - pos] = INFINITY;
        CHECK_EQ_INT(lmm_count_nonfinite(g, LM_DT_F32, N), pos == N - 1 - pos ? 1 : 2);
    }
}

/* The bake's workers write updated tensors in place (lm_writer_pwrite) while the writer
 * thread steps over them (lm_writer_skip): a file written so, out of order, must equal
 * the same tensors appended in order; a pwrite past the data is refused. */
static void test_writer_pwrite_skip_equals_sequential(void)
{
    float a[3] = { 1, 2, 3 }, b[5] = { 4, 5, 6, 7, 8 }, c[2] = { 9, 10 };
    lm_wtensor wt[3] = { { "a", LM_DT_F32, 1, { 3 } }, { "b", LM_DT_F32, 1, { 5 } }, { "c", LM_DT_F32, 1, { 2 } } };
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    lm_writer *w = NULL;
    lm_err err;
    lm_err_clear(&err);
    CHECK_OK(lm_writer_open(&w, tmp("seq.safetensors"), wt, 3, NULL, 0, &wo, &err), &err);
    CHECK_OK(lm_writer_write(w, a, sizeof a, &err), &err);
    CHECK_OK(lm_writer_write(w, b, sizeof b, &err), &err);
    CHECK_OK(lm_writer_write(w, c, sizeof c, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    CHECK_OK(lm_writer_open(&w, tmp("par.safetensors"), wt, 3, NULL, 0, &wo, &err), &err);
    CHECK_EQ_INT(lm_writer_pwrite(w, 32, c, sizeof c + 4, &err), LM_EUSAGE);
    CHECK_OK(lm_writer_pwrite(w, 32, c, sizeof c, &err), &err);      /* c first, then b */
    CHECK_OK(lm_writer_pwrite(w, 12, b, sizeof b, &err), &err);
    CHECK_OK(lm_writer_write(w, a, sizeof a, &err), &err);
    CHECK_OK(lm_writer_skip(w, sizeof b, &err), &err);
    CHECK_OK(lm_writer_skip(w, sizeof c, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    FILE *f1 = fopen(tmp("seq.safetensors"), "rb"), *f2 = fopen(tmp("par.safetensors"), "rb");
    CHECK(f1 && f2);
    if (!f1 || !f2) { if (f1) fclose(f1); if (f2) fclose(f2); return; }
    char x[512], y[512];
    size_t n1 = fread(x, 1, sizeof x, f1), n2 = fread(y, 1, sizeof y, f2);
    fclose(f1);
    fclose(f2);
    CHECK_EQ_INT((long long)n1, (long long)n2);
    CHECK(n1 == n2 && n1 > 40 && memcmp(x, y, n1) == 0);
}

int main(void)
{
    /* outside tests/run.sh (which points XDG_CACHE_HOME at a temp dir), no SHA-256 cache:
     * a test never writes into the real home */
    if (!getenv("XDG_CACHE_HOME")) setenv("LIBMERGE_HASH_CACHE", "0", 1);
    snprintf(dir, sizeof dir, "/tmp/lm_test_bake_XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    lm_atomic_install_signal_handlers();
    RUN(test_bake_matches_numpy_f32);
    RUN(test_bake_matches_numpy_f16);
    RUN(test_bake_blocked_and_whole_paths_match_reference);
    RUN(test_bake_minus_lambda_returns_base);
    RUN(test_bake_equals_bake_of_exact_merge);
    RUN(test_bake_from_torch_checkpoint);
    RUN(test_bake_dora_after_plain_modules);
    RUN(test_bake_diffusers_layout_base);
    RUN(test_bake_threads_give_identical_files);
    RUN(test_bake_refuses_unmatched_keys);
    RUN(test_bake_refuses_shape_mismatch);
    RUN(test_bake_refuses_other_architecture);
    RUN(test_bake_refuses_output_equal_to_input);
    RUN(test_bake_disk_full_leaves_no_file);
    RUN(test_bake_base_replaced_midway_is_not_mixed_in);
    RUN(test_bake_overflow_counted_and_refused);
    RUN(test_bake_recipe_and_metadata);
    RUN(test_count_nonfinite_lanes_and_tail);
    RUN(test_writer_pwrite_skip_equals_sequential);
    cleanup();
    TEST_EXIT();
}
