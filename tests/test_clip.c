/* CLIP text encoder against fixtures/golden/clip/clip_tiny_goldens.safetensors
 * (HF CLIPTextModel math evaluated in float64 from the F16 weights; the README
 * states max-abs 1e-4 for a float32 implementation). Also the diffusers
 * layout (the same weights renamed to text_model.* through the writer) and
 * tokenizer ids of the three prompts. */
#include <stdint.h>
#include <unistd.h>

#include "libmerge/clip.h"
#include "libmerge/source.h"
#include "libmerge/tokenizer.h"
#include "sampler/weights.h"
#include "libmerge/writer.h"
#include "test.h"

#define TOL 1e-4

static lm_source *g_gold;

static float *read_f32(lm_source *s, const char *name, int64_t want_numel)
{
    int64_t i = lm_source_find(s, name);
    if (i < 0 || lm_source_entry(s, (size_t)i)->numel != want_numel) return NULL;
    float *b = malloc((size_t)want_numel * sizeof *b);
    lm_err e;
    if (b && lm_source_read_f32(s, (size_t)i, b, &e)) { free(b); return NULL; }
    return b;
}

static int read_ids(lm_source *s, int32_t ids[3][77])
{
    int64_t i = lm_source_find(s, "input_ids");
    if (i < 0) return -1;
    int64_t raw[3 * 77];
    lm_err e;
    if (lm_source_read(s, (size_t)i, raw, &e)) return -1;
    for (int r = 0; r < 3; r++)
        for (int t = 0; t < 77; t++) ids[r][t] = (int32_t)raw[r * 77 + t];
    return 0;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) { double d = fabs((double)a[i] - b[i]); if (d > m || d != d) m = d != d ? INFINITY : d; }
    return m;
}

/* Encodes the 3 golden rows with model file `path` and compares every output. */
static void check_model(const char *path)
{
    lm_err e;
    lm_source *s = NULL;
    lm_weights *w = NULL;
    lm_clip *c = NULL;
    CHECK_OK(lm_source_open(&s, path, NULL, &e), &e);
    CHECK_OK(lm_weights_open(&w, s, "text_encoder", NULL, NULL, 0, &e), &e);
    int rc = lm_clip_load(&c, w, s, &e);
    if (rc) { lm_weights_close(w); lm_source_close(s); CHECK_OK(rc, &e); }
    const lm_clip_config *cfg = lm_clip_config_of(c);
    int ok = cfg->hidden == 32 && cfg->layers == 2 && cfg->heads == 4 && cfg->intermediate == 37 && cfg->positions == 77;
    int32_t ids[3][77];
    ok = ok && read_ids(g_gold, ids) == 0;
    const size_t n = 3 * 77 * 32;
    static const struct { const char *name; int skip, ln; } outs[] = {
        { "last_hidden_state", 1, 1 }, { "penultimate_hidden_state", 2, 0 }, { "penultimate_final_ln", 2, 1 } };
    double worst = 0;
    const char *worst_name = "";
    float *got = malloc(n * sizeof *got);
    for (int k = 0; ok && k < 4; k++) {
        const char *name = k < 3 ? outs[k].name : "embeddings_output";
        float *want = read_f32(g_gold, name, (int64_t)n);
        if (!want) { ok = 0; break; }
        for (int r = 0; r < 3 && ok; r++) {
            if (k < 3) ok = lm_clip_encode(c, ids[r], 77, outs[k].skip, outs[k].ln, got + r * 77 * 32, &e) == 0;
            else ok = lm_clip_embed(c, ids[r], 77, got + r * 77 * 32, &e) == 0;
        }
        double d = max_abs_diff(got, want, n);
        if (d > worst) { worst = d; worst_name = name; }
        free(want);
    }
    free(got);
    lm_clip_free(c);
    lm_weights_close(w);
    lm_source_close(s);
    CHECK_MSG(ok, "config or encode failed");
    CHECK_MSG(worst <= TOL, "max |diff| %.3g in %s > %g", worst, worst_name, TOL);
    printf("# %s: max |diff| %.3g\n", path, worst);
}

static void test_clip_ldm_layout(void)
{
    CHECK(g_gold);
    check_model(FIXTURE("golden/clip/clip_tiny.safetensors"));
}

/* The same weights under diffusers names (text_model.*) written to a temp file. */
static void test_clip_diffusers_layout(void)
{
    lm_err e;
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, FIXTURE("golden/clip/clip_tiny.safetensors"), NULL, &e), &e);
    size_t n = lm_source_count(s);
    lm_wtensor *t = calloc(n, sizeof *t);
    char (*names)[200] = calloc(n, sizeof *names);
    const char *pf = "cond_stage_model.transformer.";
    for (size_t i = 0; i < n; i++) {
        const lm_entry *en = lm_source_entry(s, i);
        snprintf(names[i], sizeof names[i], "%s", en->name + strlen(pf));
        t[i].name = names[i];
        t[i].dtype = en->dtype;
        t[i].ndim = en->ndim;
        memcpy(t[i].shape, en->shape, sizeof t[i].shape);
    }
    char path[] = "/tmp/lm_test_clip_XXXXXX.safetensors";
    int fd = mkstemps(path, 12);
    CHECK(fd >= 0);
    close(fd);
    lm_writer *wr = NULL;
    /* keep the "config" metadata: it gives the head count (4), which shapes cannot */
    lm_kv meta[1] = { { "config", lm_source_meta_get(s, "config") } };
    int rc = lm_writer_open(&wr, path, t, n, meta, 1, NULL, &e);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t i = lm_writer_tensor_index(wr, k);
        rc = lm_writer_write(wr, lm_source_raw(s, i), lm_source_entry(s, i)->nbytes, &e);
    }
    if (!rc) rc = lm_writer_commit(wr, &e);
    free(t);
    free(names);
    lm_source_close(s);
    if (rc) { unlink(path); CHECK_OK(rc, &e); }
    check_model(path);
    unlink(path);
}

static void test_clip_tokenizer_ids(void)
{
    lm_err e;
    lm_tokenizer *tok = NULL;
    int32_t ids[3][77];
    CHECK(g_gold && read_ids(g_gold, ids) == 0);
    CHECK_OK(lm_tokenizer_open(&tok, FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz"), &e), &e);
    static const char *const prompts[3] = {
        "a photo of a cat",
        "a cute cat \xf0\x9f\x90\xb1 wearing a \xf0\x9f\x8e\xa9 top hat, (masterpiece:1.2), caf\xc3\xa9 cr\xc3\xa8me",
        "masterpiece, best quality, ultra-detailed, 8k, photorealistic portrait of an elderly fisherman with a "
        "weathered face and a thick grey beard, wearing a yellow raincoat, standing on a wooden pier at dawn, soft "
        "golden light, fog rolling over the harbor, seagulls in the distance, shallow depth of field, 85mm lens, "
        "f/1.4, film grain, kodak portra 400, cinematic color grading, highly detailed skin texture, volumetric "
        "lighting, trending on artstation, award winning photograph" };
    int bad = 0;
    for (int r = 0; r < 3; r++) {
        int32_t got[77];
        if (lm_tokenizer_encode(tok, prompts[r], LM_CLIP_PAD_SD15, got, NULL, &e)) { bad++; continue; }
        if (memcmp(got, ids[r], sizeof got)) bad++;
    }
    lm_tokenizer_free(tok);
    CHECK_EQ_INT(bad, 0);
}

static void test_clip_errors(void)
{
    lm_err e;
    lm_source *s = NULL;
    lm_weights *w = NULL;
    lm_clip *c = NULL;
    CHECK_OK(lm_source_open(&s, FIXTURE("golden/sd15/vae_diffusers.safetensors"), NULL, &e), &e);
    CHECK_OK(lm_weights_open(&w, s, "text_encoder", NULL, NULL, 0, &e), &e);
    int rc = lm_clip_load(&c, w, s, &e);
    lm_weights_close(w);
    lm_source_close(s);
    CHECK_EQ_INT(rc, LM_EINPUT);
    CHECK(c == NULL);
    CHECK_OK(lm_source_open(&s, FIXTURE("golden/clip/clip_tiny.safetensors"), NULL, &e), &e);
    CHECK_OK(lm_weights_open(&w, s, "text_encoder", NULL, NULL, 0, &e), &e);
    CHECK_OK(lm_clip_load(&c, w, s, &e), &e);
    int32_t ids[77] = { 49406, 49408 };
    float out[77 * 32];
    int r1 = lm_clip_encode(c, ids, 77, 1, 1, out, &e);
    ids[1] = 1;
    int r2 = lm_clip_encode(c, ids, 77, 3, 1, out, &e);
    lm_clip_free(c);
    lm_weights_close(w);
    lm_source_close(s);
    CHECK_EQ_INT(r1, LM_EUSAGE);
    CHECK_EQ_INT(r2, LM_EUSAGE);
}

/* test_clip cmprow FILE_A KEY_A FILE_B KEY_B ROW TOL: max |A - B[ROW]| (B's
 * first dimension indexed; A has B's other dimensions), exit 0 when <= TOL.
 * Integer tensors are compared as their values. Used by tests/cli. */
static float *get_any(const char *path, const char *key, int64_t *n, int64_t *rows)
{
    lm_source *s = NULL;
    lm_err e;
    float *b = NULL;
    if (lm_source_open(&s, path, NULL, &e)) return NULL;
    int64_t i = lm_source_find(s, key);
    if (i >= 0) {
        const lm_entry *en = lm_source_entry(s, (size_t)i);
        *n = en->numel;
        *rows = en->ndim ? en->shape[0] : 1;
        b = malloc((size_t)en->numel * sizeof *b);
        if (en->dtype == LM_DT_I64) {
            int64_t *raw = malloc((size_t)en->numel * sizeof *raw);
            if (raw && b && !lm_source_read(s, (size_t)i, raw, &e))
                for (int64_t k = 0; k < en->numel; k++) b[k] = (float)raw[k];
            else { free(b); b = NULL; }
            free(raw);
        } else if (b && lm_source_read_f32(s, (size_t)i, b, &e)) { free(b); b = NULL; }
    }
    lm_source_close(s);
    return b;
}

static int cmprow_main(char **argv)
{
    int64_t na = 0, nb = 0, ra = 0, rb = 0, row = atoll(argv[6]);
    float *a = get_any(argv[2], argv[3], &na, &ra), *b = get_any(argv[4], argv[5], &nb, &rb);
    if (!a || !b || rb < 1 || nb / rb != na || row < 0 || row >= rb) {
        printf("cmprow: %s:%s or %s:%s missing or of different sizes\n", argv[2], argv[3], argv[4], argv[5]);
        free(a); free(b);
        return 2;
    }
    double m = 0;
    for (int64_t k = 0; k < na; k++) { double d = fabs((double)a[k] - b[row * na + k]); if (!(d <= m)) m = d; }
    printf("%.3g\n", m);
    free(a); free(b);
    return m <= atof(argv[7]) ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 8 && !strcmp(argv[1], "cmprow")) return cmprow_main(argv);
    lm_err e;
    if (lm_source_open(&g_gold, FIXTURE("golden/clip/clip_tiny_goldens.safetensors"), NULL, &e)) g_gold = NULL;
    RUN(test_clip_ldm_layout);
    RUN(test_clip_diffusers_layout);
    RUN(test_clip_tokenizer_ids);
    RUN(test_clip_errors);
    lm_source_close(g_gold);
    TEST_EXIT();
}
