/* lm_lora_merge / lm_lora_extract / lm_svd_truncate: exactness with a negative λ and two
 * ranks, SVD against the numpy reference (fixtures/bake/ref_svd.json), LoCon shapes, PEFT
 * output, extraction, refusals. */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cJSON.h>
#include "support/data_sha256.h"
#include "test.h"
#include "libmerge/merge.h"
#include "libmerge/lora.h"
#include "libmerge/source.h"
#include "merge/merge_impl.h"

#define BASE FIXTURE("golden/sd15/unet_ldm.safetensors")
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

/* Index of the module of l whose name ends with the underscored path `u` (kohya) or
 * whose dotted path, underscored, ends with it. */
static int64_t find_module(const lm_lora *l, const char *u)
{
    for (size_t i = 0; i < lm_lora_count(l); i++) {
        char nm[512];
        snprintf(nm, sizeof nm, "%s", lm_lora_module_at(l, i)->name);
        for (char *p = nm; *p; p++) if (*p == '.') *p = '_';
        size_t a = strlen(nm), b = strlen(u);
        if (a >= b && !strcmp(nm + a - b, u)) return (int64_t)i;
    }
    return -1;
}

static float *delta(const lm_lora *l, int64_t i)
{
    const lm_lora_module *m = lm_lora_module_at(l, (size_t)i);
    int64_t n = 1;
    for (int d = 0; d < m->ndim; d++) n *= m->shape[d];
    float *v = malloc((size_t)n * sizeof *v);
    if (v && lm_lora_delta(l, (size_t)i, v, NULL)) { free(v); return NULL; }
    return v;
}

static int64_t numel(const lm_lora_module *m)
{
    int64_t n = 1;
    for (int d = 0; d < m->ndim; d++) n *= m->shape[d];
    return n;
}

/* max |ΔM − (la ΔA + lb ΔB)| / max |la ΔA + lb ΔB| over every module of M. */
static double merged_error(const lm_lora *M, const lm_lora *A, const lm_lora *B, double la, double lb)
{
    double worst = 0;
    for (size_t i = 0; i < lm_lora_count(M); i++) {
        const lm_lora_module *m = lm_lora_module_at(M, i);
        const char *path = m->name + 10;                 /* after "lora_unet_" */
        int64_t ia = find_module(A, path), ib = find_module(B, path);
        float *dm = delta(M, (int64_t)i), *da = ia >= 0 ? delta(A, ia) : NULL, *db = ib >= 0 ? delta(B, ib) : NULL;
        double num = 0, den = 0;
        for (int64_t k = 0; dm && k < numel(m); k++) {
            double ref = (da ? la * da[k] : 0) + (db ? lb * db[k] : 0);
            num = fmax(num, fabs(dm[k] - ref));
            den = fmax(den, fabs(ref));
        }
        if (!dm || (ia < 0 && ib < 0)) num = INFINITY, den = 1;
        worst = fmax(worst, num / den);
        free(dm); free(da); free(db);
    }
    return worst;
}

static void test_exact_merge_negative_lambda_two_ranks(void)
{
    lm_err err;
    const char *out = tmp("exact.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;      /* inputs are fp32: output fp32 */
    lm_lmerge_report rep;
    CHECK_OK(lm_lora_merge(in, 2, out, &o, &rep, &err), &err);
    CHECK_EQ_INT(rep.n_modules, 7);
    CHECK_NEAR(rep.max_rel_error, 0, 0);
    lm_lmerge_report_free(&rep);
    lm_lora *M = NULL, *A = NULL, *B = NULL;
    CHECK_OK(lm_lora_open(&M, out, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&A, LA, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&B, LB, NULL, &err), &err);
    CHECK_EQ_INT(lm_lora_convention_of(M), LM_LORA_KOHYA);
    /* A has rank 4, alpha 2 (scale 0.5); B rank 3, no alpha (scale 1); shared modules
     * come out rank 7 with alpha 7 (scale 1) */
    int64_t q = find_module(M, "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
    CHECK(q >= 0);
    CHECK_EQ_INT(lm_lora_module_at(M, (size_t)q)->rank, 7);
    CHECK_NEAR(lm_lora_module_at(M, (size_t)q)->alpha, 7, 0);
    CHECK_NEAR(lm_lora_module_at(M, (size_t)q)->scale, 1, 0);
    double e = merged_error(M, A, B, 0.8, -0.5);
    CHECK_NEAR(e, 0, 2e-6);      /* exact up to fp32 rounding of the folded factors and sgemm */
    /* the √λ scheme (both factors × √|λ|, sign lost) would be off by the whole B term */
    lm_lora_close(M); lm_lora_close(A); lm_lora_close(B);
}

static void test_svd_matches_numpy_reference(void)
{
    lm_err err;
    const char *out = tmp("r2.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    o.rank = 2;
    lm_lmerge_report rep;
    CHECK_OK(lm_lora_merge(in, 2, out, &o, &rep, &err), &err);
    FILE *f = fopen(FIXTURE("bake/ref_svd.json"), "rb");
    CHECK(f);
    char *txt = calloc(1, 1 << 16);
    size_t n = fread(txt, 1, (1 << 16) - 1, f);
    fclose(f);
    CHECK(n > 0);
    cJSON *root = cJSON_Parse(txt), *mods = cJSON_GetObjectItem(root, "modules");
    free(txt);
    CHECK(mods);
    CHECK_EQ_INT(rep.n_modules, (size_t)cJSON_GetArraySize(mods));
    for (size_t i = 0; i < rep.n_modules; i++) {
        cJSON *r = cJSON_GetObjectItem(mods, rep.modules[i].name);
        CHECK_MSG(r, "%s not in the reference", rep.modules[i].name);
        double re = cJSON_GetObjectItem(r, "rel_error_r2")->valuedouble, en = cJSON_GetObjectItem(r, "energy_r2")->valuedouble;
        CHECK_EQ_INT(rep.modules[i].rank, 2);
        CHECK_NEAR(rep.modules[i].rel_error, re, 1e-5);
        CHECK_NEAR(rep.modules[i].energy, en, 1e-5);
    }
    cJSON_Delete(root);
    lm_lmerge_report_free(&rep);
}

static void test_svd_reported_error_is_the_real_error(void)
{
    lm_err err;
    const char *exact = tmp("ex.safetensors"), *r2 = tmp("r2b.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    CHECK_OK(lm_lora_merge(in, 2, exact, &o, NULL, &err), &err);
    o.rank = 2;
    lm_lmerge_report rep;
    CHECK_OK(lm_lora_merge(in, 2, r2, &o, &rep, &err), &err);
    lm_lora *E = NULL, *R = NULL;
    CHECK_OK(lm_lora_open(&E, exact, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&R, r2, NULL, &err), &err);
    for (size_t i = 0; i < rep.n_modules; i++) {
        int64_t ie = find_module(E, rep.modules[i].name + 10), ir = find_module(R, rep.modules[i].name + 10);
        CHECK(ie >= 0 && ir >= 0);
        float *de = delta(E, ie), *dr = delta(R, ir);
        double num = 0, den = 0;
        for (int64_t k = 0; k < numel(lm_lora_module_at(E, (size_t)ie)); k++) {
            num += ((double)de[k] - dr[k]) * ((double)de[k] - dr[k]);
            den += (double)de[k] * de[k];
        }
        free(de); free(dr);
        CHECK_NEAR(sqrt(num / den), rep.modules[i].rel_error, 1e-4);
    }
    lm_lmerge_report_free(&rep);
    lm_lora_close(E); lm_lora_close(R);
}

static void test_svd_full_rank_reproduces_the_sum(void)
{
    lm_err err;
    const char *out = tmp("r7.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    o.rank = 16;                 /* ≥ 4 + 3: clipped to 7 per module, nothing lost */
    lm_lmerge_report rep;
    CHECK_OK(lm_lora_merge(in, 2, out, &o, &rep, &err), &err);
    CHECK(rep.max_rel_error < 1e-5);
    CHECK(rep.min_energy > 1 - 1e-9);
    lm_lmerge_report_free(&rep);
    lm_lora *M = NULL, *A = NULL, *B = NULL;
    CHECK_OK(lm_lora_open(&M, out, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&A, LA, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&B, LB, NULL, &err), &err);
    CHECK_NEAR(merged_error(M, A, B, 0.8, -0.5), 0, 1e-5);
    lm_lora_close(M); lm_lora_close(A); lm_lora_close(B);
}

static void test_svd_conv3x3_locon_shapes(void)
{
    lm_err err;
    const char *out = tmp("conv.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    o.rank = 2;
    CHECK_OK(lm_lora_merge(in, 2, out, &o, NULL, &err), &err);
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, out, NULL, &err), &err);
    int64_t d = lm_source_find(s, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight");
    int64_t u = lm_source_find(s, "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight");
    int64_t a = lm_source_find(s, "lora_unet_down_blocks_0_resnets_0_conv1.alpha");
    CHECK(d >= 0 && u >= 0 && a >= 0);
    const lm_entry *ed = lm_source_entry(s, (size_t)d), *eu = lm_source_entry(s, (size_t)u), *ea = lm_source_entry(s, (size_t)a);
    CHECK_EQ_INT(ed->ndim, 4);
    CHECK(ed->shape[0] == 2 && ed->shape[1] == 32 && ed->shape[2] == 3 && ed->shape[3] == 3);
    CHECK_EQ_INT(eu->ndim, 4);
    CHECK(eu->shape[0] == 32 && eu->shape[1] == 2 && eu->shape[2] == 1 && eu->shape[3] == 1);
    CHECK_EQ_INT(ea->ndim, 0);
    float alpha;
    CHECK_OK(lm_source_read_f32(s, (size_t)a, &alpha, &err), &err);
    CHECK_NEAR(alpha, 2, 0);
    CHECK_EQ_STR(lm_source_meta_get(s, "ss_network_dim"), "2");
    CHECK_EQ_STR(lm_source_meta_get(s, "ss_network_alpha"), "2");
    /* kohya's sshs_model_hash and ModelSpec's hash_sha256 describe this file's data */
    char hex[65], hex0x[67];
    CHECK(t_sha256_from(out, lm_source_data_start(s), hex) == 0);
    snprintf(hex0x, sizeof hex0x, "0x%s", hex);
    CHECK_EQ_STR(lm_source_meta_get(s, "sshs_model_hash"), hex);
    CHECK_EQ_STR(lm_source_meta_get(s, "modelspec.hash_sha256"), hex0x);
    lm_source_close(s);
    /* architecture of LoRAs merged without a base, from the cross-attention width */
    const char *sd2 = tmp("sd2.safetensors");
    lm_weighted in2 = { FIXTURE("real/sd15_lora_diffusers_bf16.safetensors"), 1.0, NULL };
    lm_lmerge_opts o2 = LM_LMERGE_OPTS_INIT;
    CHECK_OK(lm_lora_merge(&in2, 1, sd2, &o2, NULL, &err), &err);
    CHECK_OK(lm_source_open(&s, sd2, NULL, &err), &err);
    CHECK_EQ_STR(lm_source_meta_get(s, "modelspec.architecture"), "stable-diffusion-v2-512/lora");
    lm_source_close(s);
}

static void test_dense_svd_known_spectrum(void)
{
    /* A = diag(3, 2, 1) padded to 3×4: rank-2 truncation keeps 3 and 2 */
    float A[12] = { 0, 3, 0, 0,  2, 0, 0, 0,  0, 0, 0, 1 };
    float up[6], down[8];
    int k;
    double rel, energy;
    lm_err err;
    CHECK_OK(lm_svd_truncate(A, 3, 4, 2, up, down, &k, &rel, &energy, &err), &err);
    CHECK_EQ_INT(k, 2);
    CHECK_NEAR(rel, sqrt(1.0 / 14.0), 1e-6);
    CHECK_NEAR(energy, 13.0 / 14.0, 1e-6);
    float expect[12] = { 0, 3, 0, 0,  2, 0, 0, 0,  0, 0, 0, 0 };
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) {
            float v = 0;
            for (int r = 0; r < 2; r++) v += up[i * 2 + r] * down[r * 4 + j];
            CHECK_NEAR(v, expect[i * 4 + j], 1e-6);
        }
}

/* The randomised SVD used for dense ΔW (extract, LoHa/LoKr merges) against sgesdd on a
 * matrix like a fine-tune's difference: a decaying low-rank part plus fp16-sized noise. */
static void test_randomized_svd_as_accurate_as_sgesdd(void)
{
    enum { M = 320, N = 1152, R = 16 };     /* rank + oversampling ≤ min(M, N) / 4 */
    float *A = malloc(sizeof(float) * M * N), *A2 = malloc(sizeof(float) * M * N);
    float *u1 = malloc(sizeof(float) * M * R), *d1 = malloc(sizeof(float) * R * N);
    float *u2 = malloc(sizeof(float) * M * R), *d2 = malloc(sizeof(float) * R * N);
    uint64_t st = 42;
    for (int i = 0; i < M * N; i++) A[i] = 0;
    for (int t = 0; t < 48; t++) {            /* Σ σ_t x_t y_tᵀ, σ_t = 0.8^t */
        float x[M], y[N], sg = powf(0.8f, (float)t);
        for (int i = 0; i < M; i++) { st = st * 6364136223846793005ULL + 1442695040888963407ULL; x[i] = (float)((st >> 40) / 16777216.0 - 0.5); }
        for (int j = 0; j < N; j++) { st = st * 6364136223846793005ULL + 1442695040888963407ULL; y[j] = (float)((st >> 40) / 16777216.0 - 0.5); }
        for (int i = 0; i < M; i++) for (int j = 0; j < N; j++) A[i * N + j] += sg * x[i] * y[j];
    }
    for (int i = 0; i < M * N; i++) { st = st * 6364136223846793005ULL + 1442695040888963407ULL; A[i] += (float)(((st >> 40) / 16777216.0 - 0.5) * 1e-3); }
    memcpy(A2, A, sizeof(float) * M * N);
    int k1, k2;
    double e1, e2, en1, en2;
    lm_err err;
    CHECK_OK(lmm_svd_randomized(A, M, N, R, u1, d1, &k1, &e1, &en1, &err), &err);
    CHECK_OK(lm_svd_truncate(A2, M, N, R, u2, d2, &k2, &e2, &en2, &err), &err);
    CHECK_EQ_INT(k1, R);
    CHECK_EQ_INT(k2, R);
    CHECK_MSG(e1 <= e2 * 1.005 + 1e-7, "randomised error %g vs optimal %g", e1, e2);
    /* the reported error is the real one: ‖A − up·down‖ / ‖A‖ */
    double num = 0, den = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double v = 0;
            for (int r = 0; r < R; r++) v += (double)u1[i * R + r] * d1[r * N + j];
            num += (A[i * N + j] - v) * (A[i * N + j] - v);
            den += (double)A[i * N + j] * A[i * N + j];
        }
    CHECK_NEAR(sqrt(num / den), e1, 1e-4);
    free(A); free(A2); free(u1); free(d1); free(u2); free(d2);
}

static void test_peft_output_loads_with_the_same_delta(void)
{
    lm_err err;
    const char *kohya = tmp("k.safetensors"), *peft = tmp("p.safetensors");
    lm_weighted in[2] = { { LA, 0.8, NULL }, { LB, -0.5, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    CHECK_OK(lm_lora_merge(in, 2, kohya, &o, NULL, &err), &err);
    o.format = LM_LFMT_PEFT;
    CHECK_EQ_INT(lm_lora_merge(in, 2, peft, &o, NULL, &err), LM_EUNSUPPORTED);  /* A's kohya-only modules: no dotted path */
    o.base = BASE;
    CHECK_OK(lm_lora_merge(in, 2, peft, &o, NULL, &err), &err);
    lm_lora *K = NULL, *P = NULL;
    CHECK_OK(lm_lora_open(&K, kohya, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&P, peft, NULL, &err), &err);
    CHECK_EQ_INT(lm_lora_convention_of(P), LM_LORA_PEFT);
    CHECK_EQ_INT(lm_lora_count(P), lm_lora_count(K));
    for (size_t i = 0; i < lm_lora_count(K); i++) {
        const char *kn = lm_lora_module_at(K, i)->name + 10;    /* after "lora_unet_" */
        int64_t j = find_module(P, kn);
        CHECK_MSG(j >= 0, "%s missing from the PEFT file", kn);
        float *a = delta(K, (int64_t)i), *b = delta(P, j);
        for (int64_t k = 0; k < numel(lm_lora_module_at(K, i)); k++) CHECK_NEAR(a[k], b[k], 0);
        free(a); free(b);
    }
    lm_lora_close(K); lm_lora_close(P);
}

static void test_extract_recovers_a_baked_lora(void)
{
    lm_err err;
    const char *tuned = tmp("tuned.safetensors"), *ex = tmp("extracted.safetensors");
    lm_weighted a = { LA, 1.0, NULL };
    CHECK_OK(lm_bake(BASE, &a, 1, tuned, NULL, NULL, &err), &err);
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    o.rank = 4;
    lm_lmerge_report rep;
    CHECK_OK(lm_lora_extract(BASE, tuned, ex, &o, &rep, &err), &err);
    CHECK_EQ_INT(rep.n_modules, 6);           /* only A's targets differ */
    CHECK(rep.max_rel_error < 1e-3);          /* rank 4 holds all of a rank-4 update */
    lm_lmerge_report_free(&rep);
    lm_lora *E = NULL, *A = NULL;
    CHECK_OK(lm_lora_open(&E, ex, NULL, &err), &err);
    CHECK_OK(lm_lora_open(&A, LA, NULL, &err), &err);
    for (size_t i = 0; i < lm_lora_count(A); i++) {
        const lm_lora_module *m = lm_lora_module_at(A, i);
        int64_t j = find_module(E, m->name + 10);
        CHECK_MSG(j >= 0, "%s not extracted (kohya names expected)", m->name);
        float *da = delta(A, (int64_t)i), *de = delta(E, j);
        double num = 0, den = 0;
        for (int64_t k = 0; k < numel(m); k++) { num = fmax(num, fabs(da[k] - de[k])); den = fmax(den, fabs(da[k])); }
        free(da); free(de);
        CHECK_MSG(num / den < 1e-3, "%s: %g", m->name, num / den);   /* W+ΔW rounded to fp32, then subtracted */
    }
    lm_lora_close(E); lm_lora_close(A);
    /* recipe: base λ −1, tuned λ +1 */
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, ex, NULL, &err), &err);
    lm_recipe r;
    CHECK_OK(lm_recipe_parse(lm_source_meta_get(s, LM_RECIPE_KEY), &r, &err), &err);
    CHECK_EQ_STR(r.operation, "extract");
    CHECK_EQ_INT(r.n_inputs, 2);
    CHECK(r.inputs[0].lambda == -1 && r.inputs[1].lambda == 1);
    CHECK_EQ_INT(r.rank, 4);
    lm_recipe_free(&r);
    lm_source_close(s);
}

static void test_merge_refusals(void)
{
    lm_err err;
    const char *out = tmp("refused.safetensors");
    struct stat st;
    /* same module, different shapes */
    lm_weighted bad[2] = { { LA, 1.0, NULL }, { FIXTURE("bake/lora_badshape.safetensors"), 1.0, NULL } };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    CHECK_EQ_INT(lm_lora_merge(bad, 2, out, &o, NULL, &err), LM_EMISMATCH);
    CHECK(stat(out, &st) != 0);
    /* output == an input */
    lm_weighted in[2] = { { LA, 1.0, NULL }, { LB, 1.0, NULL } };
    CHECK_EQ_INT(lm_lora_merge(in, 2, LB, &o, NULL, &err), LM_EUSAGE);
    /* LoKr cannot be concatenated exactly */
    lm_weighted lokr = { FIXTURE("real/sd15_lycoris_lokr_fp16.safetensors"), 1.0, NULL };
    CHECK_EQ_INT(lm_lora_merge(&lokr, 1, out, &o, NULL, &err), LM_EUNSUPPORTED);
    CHECK(strstr(err.msg, "lokr") != NULL);
    CHECK(stat(out, &st) != 0);
    /* extract needs a rank; checkpoints of different architectures */
    CHECK_EQ_INT(lm_lora_extract(BASE, BASE, out, &o, NULL, &err), LM_EUSAGE);
    o.rank = 2;
    CHECK_EQ_INT(lm_lora_extract(BASE, FIXTURE("golden/sdxl/unet_tiny_sdxl_original.safetensors"), out, &o, NULL, &err),
                 LM_EMISMATCH);
    CHECK(stat(out, &st) != 0);
}

static void test_recipe_round_trip(void)
{
    lm_recipe r = { 0 };
    lm_recipe_input in[2] = { { "a.safetensors", "", 10, 0.1, "lora" }, { "b.safetensors", "", 20, -1.0 / 3.0, "lcm" } };
    memset(in[0].sha256, 'a', 64);
    memset(in[1].sha256, 'b', 64);
    r.tool = "lora-merge";
    r.operation = "lora-merge-svd";
    r.dtype = "F16";
    r.rank = 32;
    r.inputs = in;
    r.n_inputs = 2;
    char *js = lm_recipe_json(&r);
    CHECK(js);
    lm_recipe p;
    lm_err err;
    CHECK_OK(lm_recipe_parse(js, &p, &err), &err);
    free(js);
    CHECK_EQ_STR(p.operation, "lora-merge-svd");
    CHECK_EQ_INT(p.rank, 32);
    CHECK(p.inputs[0].lambda == 0.1 && p.inputs[1].lambda == -1.0 / 3.0);   /* bit-exact */
    CHECK_EQ_STR(p.inputs[1].role, "lcm");
    CHECK_EQ_INT(p.inputs[1].bytes, 20);
    lm_recipe_free(&p);
    CHECK_EQ_INT(lm_recipe_parse("{\"format\":\"other/1\"}", &p, &err), LM_EINPUT);
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

int main(void)
{
    /* outside tests/run.sh (which points XDG_CACHE_HOME at a temp dir), no SHA-256 cache:
     * a test never writes into the real home */
    if (!getenv("XDG_CACHE_HOME")) setenv("LIBMERGE_HASH_CACHE", "0", 1);
    snprintf(dir, sizeof dir, "/tmp/lm_test_merge_XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    RUN(test_exact_merge_negative_lambda_two_ranks);
    RUN(test_svd_matches_numpy_reference);
    RUN(test_svd_reported_error_is_the_real_error);
    RUN(test_svd_full_rank_reproduces_the_sum);
    RUN(test_svd_conv3x3_locon_shapes);
    RUN(test_dense_svd_known_spectrum);
    RUN(test_randomized_svd_as_accurate_as_sgesdd);
    RUN(test_peft_output_loads_with_the_same_delta);
    RUN(test_extract_recovers_a_baked_lora);
    RUN(test_merge_refusals);
    RUN(test_recipe_round_trip);
    cleanup();
    TEST_EXIT();
}
