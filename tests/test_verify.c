/* lcm-verify's library side: ulp and unit roundoff, a clean bake verified from its recipe
 * and from the command line (fp16, bf16, fp32), and planted faults each caught with its
 * own kind of problem: a dropped ΔW, λ applied twice, a transposed conv ΔW, one element
 * off by one ulp, fp16 overflow to Inf, a truncated output, a recipe input whose hash
 * differs, a LoRA module that matched nothing. Bakes are made with lm_bake from
 * fixtures/golden/sd15/unet_ldm.safetensors and fixtures/bake/ LoRAs; faults are planted
 * by rewriting one tensor of the baked file through the safetensors writer. */
#include "test.h"
#include "libmerge/verify.h"
#include "libmerge/merge.h"
#include "libmerge/source.h"
#include "libmerge/writer.h"
#include "libmerge/dtype.h"

#include <stdint.h>
#include <sys/stat.h>
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() RUNNING_ON_VALGRIND
#endif
#endif
#ifndef UNDER_VALGRIND
#define UNDER_VALGRIND() 0
#endif
#include <unistd.h>

#define BASE FIXTURE("golden/sd15/unet_ldm.safetensors")
#define LORA_A FIXTURE("bake/lora_a_kohya.safetensors")
#define LORA_B FIXTURE("bake/lora_b_diffusers.safetensors")
#define T_TOK "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  /* A only */
#define T_CONV "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"                     /* A and B, 32×32×3×3 */

static char g_dir[64];
static const char *g_search[] = { FIXTURE("golden/sd15"), FIXTURE("bake") };

static const char *tmp(const char *name)
{
    static char p[4][160];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
    return p[k];
}

static int bake(const char *out, lm_dtype dt, const lm_weighted *l, size_t n, int allow_unmatched)
{
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = dt;
    o.threads = 1;
    o.allow_unmatched = allow_unmatched;
    lm_err err;
    int rc = lm_bake(BASE, l, n, out, &o, NULL, &err);
    if (rc) { char b[1400]; printf("# bake: %s\n", lm_err_format(&err, b, sizeof b)); }
    return rc;
}

static const lm_weighted k_ab[] = { { LORA_A, 0.8, NULL }, { LORA_B, -0.5, NULL } };

/* Copies src to dst with tensor `name` replaced by f(out_f32, base_f32, n, shape) stored in
 * its dtype; extra_meta (key, value) is added to the metadata when given. */
typedef void (*fault_fn)(float *o, const float *w, size_t n, const int64_t *shape);

static int rewrite(const char *src_path, const char *dst, const char *name, fault_fn f, const char *mk, const char *mv)
{
    lm_source *s = NULL, *b = NULL;
    if (lm_source_open(&s, src_path, NULL, NULL) || lm_source_open(&b, BASE, NULL, NULL)) return -1;
    size_t n = lm_source_count(s), nm = lm_source_meta_count(s);
    lm_wtensor *wt = calloc(n, sizeof *wt);
    lm_kv *kv = calloc(nm + 1, sizeof *kv);
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(s, i);
        wt[i].name = e->name; wt[i].dtype = e->dtype; wt[i].ndim = e->ndim;
        memcpy(wt[i].shape, e->shape, sizeof wt[i].shape);
    }
    for (size_t i = 0; i < nm; i++) { kv[i].key = lm_source_meta_key(s, i); kv[i].value = lm_source_meta_value(s, i); }
    if (mk) { kv[nm].key = mk; kv[nm].value = mv; nm++; }
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    lm_writer *w = NULL;
    int rc = lm_writer_open(&w, dst, wt, n, kv, nm, &wo, NULL);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t i = lm_writer_tensor_index(w, k);
        const lm_entry *e = lm_source_entry(s, i);
        void *buf = malloc(e->nbytes + 1);
        rc = lm_source_read(s, i, buf, NULL);
        if (!rc && name && !strcmp(e->name, name)) {
            float *o = malloc(sizeof(float) * (size_t)e->numel), *wb = malloc(sizeof(float) * (size_t)e->numel);
            lm_source_read_f32(s, i, o, NULL);
            lm_source_read_f32(b, (size_t)lm_source_find(b, name), wb, NULL);
            f(o, wb, (size_t)e->numel, e->shape);
            lm_convert_from_f32(buf, e->dtype, o, (size_t)e->numel);
            free(o); free(wb);
        }
        if (!rc) rc = lm_writer_write(w, buf, e->nbytes, NULL);
        free(buf);
    }
    if (!rc) rc = lm_writer_commit(w, NULL);
    else lm_writer_abort(w);
    free(wt); free(kv);
    lm_source_close(s); lm_source_close(b);
    return rc;
}

static void f_drop(float *o, const float *w, size_t n, const int64_t *s) { (void)s; for (size_t i = 0; i < n; i++) o[i] = w[i]; }
static void f_twice(float *o, const float *w, size_t n, const int64_t *s) { (void)s; for (size_t i = 0; i < n; i++) o[i] = 2 * o[i] - w[i]; }
static void f_transpose(float *o, const float *w, size_t n, const int64_t *s)
{
    /* [out, in, kh, kw]: W + ΔWᵀ with out and in swapped */
    int64_t O = s[0], I = s[1], k = s[2] * s[3];
    float *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = o[i] - w[i];
    for (int64_t a = 0; a < O; a++)
        for (int64_t b = 0; b < I; b++)
            for (int64_t j = 0; j < k; j++) o[(a * I + b) * k + j] = w[(a * I + b) * k + j] + d[(b * I + a) * k + j];
    free(d);
}
static void f_one_ulp(float *o, const float *w, size_t n, const int64_t *s)
{
    (void)w; (void)n; (void)s;
    o[7] = lm_f16_to_f32((uint16_t)(lm_f32_to_f16(o[7]) + 1));   /* the next fp16 value up */
}

static const lm_verify_problem *find_problem(const lm_verify_report *r, const char *kind)
{
    for (size_t i = 0; i < r->n_problems; i++) if (!strcmp(r->problems[i].kind, kind)) return &r->problems[i];
    return NULL;
}

static const lm_verify_tensor *find_tensor(const lm_verify_report *r, const char *name)
{
    for (size_t i = 0; i < r->n_t; i++) if (!strcmp(r->t[i].name, name)) return &r->t[i];
    return NULL;
}

/* verify from the recipe with the fixture directories searched */
static int verify(const char *out, lm_verify_report *r, lm_err *err)
{
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    o.search = g_search;
    o.n_search = 2;
    return lm_verify_bake(out, &o, r, err);
}

static void test_ulp(void)
{
    CHECK_NEAR(lm_verify_ulp(LM_DT_F16, 1.0), ldexp(1, -10), 0);
    CHECK_NEAR(lm_verify_ulp(LM_DT_F16, 1.999), ldexp(1, -10), 0);
    CHECK_NEAR(lm_verify_ulp(LM_DT_F16, -2.0), ldexp(1, -9), 0);
    CHECK_NEAR(lm_verify_ulp(LM_DT_F16, 65504), 32, 0);
    CHECK_NEAR(lm_verify_ulp(LM_DT_F16, 1e-7), ldexp(1, -24), 0);   /* subnormal spacing */
    CHECK_NEAR(lm_verify_ulp(LM_DT_F16, 0), ldexp(1, -24), 0);
    CHECK_NEAR(lm_verify_ulp(LM_DT_BF16, 1.0), ldexp(1, -7), 0);
    CHECK_NEAR(lm_verify_ulp(LM_DT_F32, 3.0), ldexp(1, -22), 0);
    CHECK_NEAR(lm_verify_unit_roundoff(LM_DT_F16), ldexp(1, -11), 0);
    CHECK_NEAR(lm_verify_unit_roundoff(LM_DT_BF16), ldexp(1, -8), 0);
    CHECK_NEAR(lm_verify_unit_roundoff(LM_DT_F32), ldexp(1, -24), 0);
    /* the bound is attained: the fp16 neighbours of 1 + 2^-11 are 1 and 1 + 2^-10 */
    float x = 1.0f + ldexpf(1, -11);
    CHECK_NEAR(fabs(lm_f16_to_f32(lm_f32_to_f16(x)) - x), 0.5 * lm_verify_ulp(LM_DT_F16, 1.0), 0);
}

static void check_clean(const char *out, lm_dtype dt)
{
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(out, &r, &err), &err);
    if (!r.ok && r.n_problems) printf("# %s: %s\n", r.problems[0].where, r.problems[0].message);
    CHECK(r.ok);
    CHECK_EQ_STR(r.inputs_from, "recipe");
    CHECK_EQ_INT(r.n_inputs, 3);
    CHECK_EQ_INT(r.inputs[0].hash_ok, 1);
    CHECK_EQ_INT(r.inputs[1].hash_ok, 1);
    CHECK_EQ_INT(r.inputs[2].hash_ok, 1);
    CHECK_EQ_INT(r.inputs[1].matched, 6);
    CHECK_EQ_INT(r.inputs[2].matched, 4);
    CHECK_EQ_INT(r.tensors, 684);
    CHECK_EQ_INT(r.touched, 7);            /* the union of A's 6 and B's 4 targets */
    CHECK_EQ_INT(r.identical, 677);
    CHECK_EQ_INT(r.n_t, 7);
    CHECK_EQ_INT(r.failed, 0);
    CHECK(r.worst_ratio > 0 && r.worst_ratio <= 1);
    const lm_verify_tensor *t = find_tensor(&r, T_CONV);
    CHECK(t && t->modules == 2 && t->dtype == dt);
    /* fp16/bf16: the rounding error itself nearly reaches ½ ulp somewhere; fp32: far below */
    if (dt != LM_DT_F32) CHECK(r.worst_ratio > 0.5);
    else CHECK(r.worst_ratio < 0.5);
    lm_verify_report_free(&r);
}

static void test_clean_f16(void)
{
    CHECK_OK(bake(tmp("ab16.safetensors"), LM_DT_F16, k_ab, 2, 0), NULL);
    check_clean(tmp("ab16.safetensors"), LM_DT_F16);
}

static void test_clean_bf16(void)
{
    CHECK_OK(bake(tmp("abbf.safetensors"), LM_DT_BF16, k_ab, 2, 0), NULL);
    check_clean(tmp("abbf.safetensors"), LM_DT_BF16);
}

static void test_clean_f32(void)
{
    CHECK_OK(bake(tmp("ab32.safetensors"), LM_DT_INVALID, k_ab, 2, 0), NULL);
    check_clean(tmp("ab32.safetensors"), LM_DT_F32);
}

static void test_command_line_inputs(void)
{
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    o.base = BASE;
    o.loras = k_ab;
    o.n_loras = 2;
    lm_verify_report r;
    lm_err err;
    CHECK_OK(lm_verify_bake(tmp("ab16.safetensors"), &o, &r, &err), &err);
    CHECK(r.ok);
    CHECK_EQ_STR(r.inputs_from, "command line");
    CHECK_EQ_INT(r.inputs[2].hash_ok, 1);
    lm_verify_report_free(&r);
    /* a different λ than the one baked: the recipe and the numbers both say so */
    lm_weighted wrong[] = { { LORA_A, 0.8, NULL }, { LORA_B, -0.3, NULL } };
    o.loras = wrong;
    CHECK_OK(lm_verify_bake(tmp("ab16.safetensors"), &o, &r, &err), &err);
    CHECK(!r.ok);
    CHECK(find_problem(&r, "recipe") != NULL);
    CHECK(find_problem(&r, "tensor") != NULL);
    const lm_verify_tensor *t = find_tensor(&r, "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_v.weight");
    CHECK(t && !t->ok);
    CHECK_MSG(strstr(t->diagnosis, "wrong λ") && strstr(t->diagnosis, "expected -0.3"), "diagnosis: %s", t->diagnosis);
    lm_verify_report_free(&r);
}

static void test_fault_dropped(void)
{
    CHECK_OK(rewrite(tmp("ab16.safetensors"), tmp("f_drop.safetensors"), T_TOK, f_drop, NULL, NULL), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(tmp("f_drop.safetensors"), &r, &err), &err);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.failed, 1);
    const lm_verify_tensor *t = find_tensor(&r, T_TOK);
    CHECK(t && !t->ok && t->over > 0);
    CHECK_NEAR(t->rel, 1.0, 0.01);           /* the whole ΔW is missing */
    CHECK_MSG(strstr(t->diagnosis, "ΔW missing") != NULL, "diagnosis: %s", t->diagnosis);
    CHECK(strstr(t->diagnosis, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k") != NULL);
    const lm_verify_problem *p = find_problem(&r, "tensor");
    CHECK(p && !strcmp(p->where, T_TOK));
    lm_verify_report_free(&r);
}

static void test_fault_lambda_twice(void)
{
    CHECK_OK(rewrite(tmp("ab16.safetensors"), tmp("f_twice.safetensors"), T_TOK, f_twice, NULL, NULL), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(tmp("f_twice.safetensors"), &r, &err), &err);
    CHECK(!r.ok);
    const lm_verify_tensor *t = find_tensor(&r, T_TOK);
    CHECK(t && !t->ok);
    CHECK_MSG(strstr(t->diagnosis, "λ applied twice") && strstr(t->diagnosis, "effective λ 1.6"), "diagnosis: %s", t->diagnosis);
    lm_verify_report_free(&r);
}

static void test_fault_transposed_conv(void)
{
    CHECK_OK(rewrite(tmp("ab16.safetensors"), tmp("f_tr.safetensors"), T_CONV, f_transpose, NULL, NULL), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(tmp("f_tr.safetensors"), &r, &err), &err);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.failed, 1);
    const lm_verify_tensor *t = find_tensor(&r, T_CONV);
    CHECK(t && !t->ok && t->over > 1000);
    CHECK_MSG(strstr(t->diagnosis, "transposed") != NULL, "diagnosis: %s", t->diagnosis);
    lm_verify_report_free(&r);
}

static void test_fault_one_ulp(void)
{
    CHECK_OK(rewrite(tmp("ab16.safetensors"), tmp("f_ulp.safetensors"), T_CONV, f_one_ulp, NULL, NULL), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(tmp("f_ulp.safetensors"), &r, &err), &err);
    CHECK(!r.ok);
    const lm_verify_tensor *t = find_tensor(&r, T_CONV);
    CHECK(t && !t->ok);
    CHECK_EQ_INT(t->over, 1);                /* exactly the element moved by one ulp */
    CHECK(t->ratio > 1 && t->ratio < 3.5);   /* between ½ and 1½ ulp over a ½ ulp bound */
    lm_verify_report_free(&r);
}

static void test_fault_overflow(void)
{
    lm_weighted ov[] = { { FIXTURE("bake/lora_overflow.safetensors"), 1.0, NULL } };
    CHECK_OK(bake(tmp("ov16.safetensors"), LM_DT_F16, ov, 1, 0), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(tmp("ov16.safetensors"), &r, &err), &err);
    CHECK(!r.ok);
    CHECK(r.overflow > 0);
    CHECK_EQ_INT(r.overflow, r.inf);
    CHECK_EQ_INT(r.nan, 0);
    const lm_verify_problem *p = find_problem(&r, "overflow");
    CHECK(p && strstr(p->where, "attn1.to_q.weight") && strstr(p->message, "F16"));
    CHECK(find_problem(&r, "nonfinite") == NULL);
    lm_verify_report_free(&r);
    /* the same bake in fp32 holds */
    CHECK_OK(bake(tmp("ov32.safetensors"), LM_DT_F32, ov, 1, 0), NULL);
    CHECK_OK(verify(tmp("ov32.safetensors"), &r, &err), &err);
    CHECK(r.ok && r.overflow == 0);
    lm_verify_report_free(&r);
}

static void test_fault_truncated(void)
{
    const char *src = tmp("ab16.safetensors"), *dst = tmp("f_trunc.safetensors");
    FILE *f = fopen(src, "rb"), *g = fopen(dst, "wb");
    CHECK(f && g);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fwrite(buf, 1, (size_t)n - 4096, g);
    fclose(f); fclose(g); free(buf);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(dst, &r, &err), &err);
    CHECK(!r.ok);
    const lm_verify_problem *p = find_problem(&r, "output");
    CHECK(p && strstr(p->message, "cannot be read"));
    lm_verify_report_free(&r);
}

static void test_fault_recipe_hash(void)
{
    /* a LoRA with the recipe's file name but other bytes (one more metadata entry), found
     * first because it lies next to the output */
    char sub[128];
    snprintf(sub, sizeof sub, "%s/h", g_dir);
    mkdir(sub, 0700);
    char out[160], lcopy[160];
    snprintf(out, sizeof out, "%s/out.safetensors", sub);
    snprintf(lcopy, sizeof lcopy, "%s/lora_a_kohya.safetensors", sub);
    CHECK_OK(bake(out, LM_DT_F16, k_ab, 2, 0), NULL);
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, LORA_A, NULL, NULL), NULL);
    size_t n = lm_source_count(s);
    lm_wtensor *wt = calloc(n, sizeof *wt);
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(s, i);
        wt[i].name = e->name; wt[i].dtype = e->dtype; wt[i].ndim = e->ndim;
        memcpy(wt[i].shape, e->shape, sizeof wt[i].shape);
    }
    lm_kv kv = { "note", "not the file that was baked" };
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    lm_writer *w = NULL;
    CHECK_OK(lm_writer_open(&w, lcopy, wt, n, &kv, 1, &wo, NULL), NULL);
    for (size_t k = 0; k < n; k++) {
        size_t i = lm_writer_tensor_index(w, k);
        const lm_entry *e = lm_source_entry(s, i);
        lm_writer_write(w, lm_source_raw(s, i), e->nbytes, NULL);
    }
    CHECK_OK(lm_writer_commit(w, NULL), NULL);
    free(wt);
    lm_source_close(s);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(out, &r, &err), &err);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.inputs[1].hash_ok, 0);
    CHECK_EQ_INT(r.inputs[2].hash_ok, 1);
    const lm_verify_problem *p = find_problem(&r, "hash");
    CHECK(p && !strcmp(p->where, lcopy) && strstr(p->message, "lora_a_kohya.safetensors"));
    CHECK_EQ_INT(r.failed, 0);             /* same tensors: only the hash tells */
    CHECK_EQ_INT(r.n_problems, 1);
    lm_verify_report_free(&r);
}

static void test_fault_unmatched(void)
{
    lm_weighted um[] = { { FIXTURE("bake/lora_unmatched.safetensors"), 1.0, NULL } };
    CHECK_OK(bake(tmp("um.safetensors"), LM_DT_F16, um, 1, 1), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify(tmp("um.safetensors"), &r, &err), &err);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.inputs[1].unmatched, 1);
    CHECK_EQ_INT(r.inputs[1].matched, 1);
    const lm_verify_problem *p = find_problem(&r, "unmatched");
    CHECK(p && strstr(p->where, "attn1_to_zz"));
    CHECK_EQ_INT(r.failed, 0);
    lm_verify_report_free(&r);
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    o.search = g_search;
    o.n_search = 2;
    o.allow_unmatched = 1;
    CHECK_OK(lm_verify_bake(tmp("um.safetensors"), &o, &r, &err), &err);
    CHECK(r.ok);
    lm_verify_report_free(&r);
}


/* ---- merged LoRAs ---------------------------------------------------------------- */

static int merge(const char *out, int rank, const lm_weighted *in, size_t n)
{
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    o.rank = rank;
    o.threads = 1;
    lm_err err;
    int rc = lm_lora_merge(in, n, out, &o, NULL, &err);
    if (rc) { char b[1400]; printf("# merge: %s\n", lm_err_format(&err, b, sizeof b)); }
    return rc;
}

static int verify_lora(const char *merged, int mode, const lm_weighted *from, size_t n, lm_verify_report *r, lm_err *err)
{
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    o.search = g_search;
    o.n_search = 2;
    o.mode = mode;
    o.loras = from;
    o.n_loras = n;
    return lm_verify_lora(merged, &o, r, err);
}

static const lm_verify_module *find_module(const lm_verify_report *r, const char *name)
{
    for (size_t i = 0; i < r->n_m; i++) if (!strcmp(r->m[i].name, name)) return &r->m[i];
    return NULL;
}

static void test_lora_exact(void)
{
    CHECK_OK(merge(tmp("mex.safetensors"), 0, k_ab, 2), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify_lora(tmp("mex.safetensors"), 0, NULL, 0, &r, &err), &err);
    CHECK(r.ok);
    CHECK_EQ_STR(r.operation, "lora-merge-exact");
    CHECK_EQ_STR(r.inputs_from, "recipe");
    CHECK_EQ_INT(r.n_m, 7);
    CHECK_EQ_INT(r.inputs[0].hash_ok, 1);
    CHECK_EQ_INT(r.inputs[0].matched, 6);
    CHECK_EQ_INT(r.inputs[1].matched, 4);
    const lm_verify_module *m = find_module(&r, "unet:down_blocks_0_resnets_0_conv1");
    CHECK(m && m->ok && m->rank == 7 && m->sources == 2);
    CHECK(m->rel < 1e-6);                   /* fp32 factors: rounding only */
    lm_verify_report_free(&r);
}

static void test_lora_svd(void)
{
    CHECK_OK(merge(tmp("msvd.safetensors"), 2, k_ab, 2), NULL);
    lm_verify_report r;
    lm_err err;
    CHECK_OK(verify_lora(tmp("msvd.safetensors"), 0, NULL, 0, &r, &err), &err);
    CHECK(r.ok);
    CHECK_EQ_STR(r.operation, "lora-merge-svd");
    const lm_verify_module *m = find_module(&r, "unet:down_blocks_0_attentions_0_proj_in");
    CHECK(m && m->ok && m->rank == 2);
    /* the Eckart–Young optimum recomputed here equals numpy's (fixtures/bake/ref_svd.json) */
    CHECK_NEAR(m->optimum, 0.7241371771702773, 1e-5);
    CHECK_NEAR(m->rel, m->optimum, 1e-4);
    m = find_module(&r, "unet:up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v");
    CHECK(m && m->ok);
    CHECK_NEAR(m->optimum, 0.3556247384889349, 1e-5);
    lm_verify_report_free(&r);
    /* a truncated SVD is not an exact merge */
    CHECK_OK(verify_lora(tmp("msvd.safetensors"), 1, NULL, 0, &r, &err), &err);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.failed, 7);
    CHECK(find_problem(&r, "module") != NULL);
    lm_verify_report_free(&r);
}

static void f_up_twice(float *o, const float *w, size_t n, const int64_t *s) { (void)w; (void)s; for (size_t i = 0; i < n; i++) o[i] *= 2; }

static void test_lora_faults(void)
{
    lm_verify_report r;
    lm_err err;
    /* a wrong λ for B */
    lm_weighted wrong[] = { { LORA_A, 0.8, NULL }, { LORA_B, 0.5, NULL } };
    CHECK_OK(verify_lora(tmp("mex.safetensors"), 0, wrong, 2, &r, &err), &err);
    CHECK(!r.ok);
    CHECK(find_problem(&r, "recipe") != NULL);
    const lm_verify_module *m = find_module(&r, "unet:up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v");
    CHECK(m && !m->ok);
    m = find_module(&r, "unet:down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k");   /* A only */
    CHECK(m && m->ok);
    CHECK_EQ_INT(r.failed, 4);               /* B's four modules */
    lm_verify_report_free(&r);
    /* a source left out: its modules in the merged LoRA are extra or differ */
    CHECK_OK(verify_lora(tmp("mex.safetensors"), 0, k_ab, 1, &r, &err), &err);
    CHECK(!r.ok);
    const lm_verify_problem *p = find_problem(&r, "extra");
    CHECK(p && strstr(p->where, "attn2_to_v"));
    lm_verify_report_free(&r);
    /* one module's up factor doubled in the file */
    const char *up = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight";
    CHECK_OK(rewrite(tmp("mex.safetensors"), tmp("mex_bad.safetensors"), up, f_up_twice, NULL, NULL), NULL);
    CHECK_OK(verify_lora(tmp("mex_bad.safetensors"), 0, NULL, 0, &r, &err), &err);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.failed, 1);
    m = find_module(&r, "unet:down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k");
    CHECK(m && !m->ok);
    CHECK_NEAR(m->rel, 1.0, 1e-5);           /* 2·ΔW against ΔW */
    lm_verify_report_free(&r);
    /* a truncated merged LoRA */
    FILE *f = fopen(tmp("mex.safetensors"), "rb"), *g = fopen(tmp("mex_trunc.safetensors"), "wb");
    char buf[4096];
    size_t k = fread(buf, 1, sizeof buf, f);
    fwrite(buf, 1, k, g);
    fclose(f); fclose(g);
    CHECK_OK(verify_lora(tmp("mex_trunc.safetensors"), 0, NULL, 0, &r, &err), &err);
    CHECK(!r.ok && find_problem(&r, "output"));
    lm_verify_report_free(&r);
    /* a bake output is not a LoRA merge */
    CHECK_EQ_INT(verify_lora(tmp("ab16.safetensors"), 0, NULL, 0, &r, &err), LM_EINPUT);
    lm_verify_report_free(&r);
}


/* ---- compare and sweep on a single-file tiny SD1.5 (UNet + VAE + tiny CLIP) ---------- */

#define VOCAB FIXTURE("golden/clip/bpe_simple_vocab_16e6.txt.gz")

/* The three tiny golden parts in one file, as fixtures/verify/make_tiny_sd15.py writes it. */
static int write_tiny(const char *out)
{
    const char *parts[3] = { BASE, FIXTURE("golden/sd15/vae_ldm.safetensors"), FIXTURE("golden/clip/clip_tiny.safetensors") };
    lm_source *s[3] = { 0 };
    size_t n = 0;
    int rc = 0;
    for (int k = 0; k < 3 && !rc; k++) if (!(rc = lm_source_open(&s[k], parts[k], NULL, NULL))) n += lm_source_count(s[k]);
    lm_wtensor *wt = calloc(n ? n : 1, sizeof *wt);
    const lm_source **from = calloc(n ? n : 1, sizeof *from);
    size_t *idx = calloc(n ? n : 1, sizeof *idx), q = 0;
    for (int k = 0; k < 3 && !rc; k++)
        for (size_t i = 0; i < lm_source_count(s[k]); i++, q++) {
            const lm_entry *e = lm_source_entry(s[k], i);
            wt[q].name = e->name; wt[q].dtype = e->dtype; wt[q].ndim = e->ndim;
            memcpy(wt[q].shape, e->shape, sizeof wt[q].shape);
            from[q] = s[k];
            idx[q] = i;
        }
    lm_writer *w = NULL;
    if (!rc) rc = lm_writer_open(&w, out, wt, n, NULL, 0, NULL, NULL);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t t = lm_writer_tensor_index(w, k);
        rc = lm_writer_write(w, lm_source_raw(from[t], idx[t]), lm_source_entry(from[t], idx[t])->nbytes, NULL);
    }
    if (!rc) rc = lm_writer_commit(w, NULL);
    else lm_writer_abort(w);
    for (int k = 0; k < 3; k++) lm_source_close(s[k]);
    free(wt); free(from); free(idx);
    return rc;
}

static int bake_tiny(const char *out, lm_dtype dt, const lm_weighted *l, size_t n)
{
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.out_dtype = dt;
    o.threads = 1;
    return lm_bake(tmp("tiny.safetensors"), l, n, out, &o, NULL, NULL);
}

static lm_verify_render render_opts(void)
{
    lm_verify_render r;
    memset(&r, 0, sizeof r);
    r.opts = (lm_render_opts)LM_RENDER_OPTS_INIT;
    r.opts.prompt = "a photo of a cat";
    r.opts.vocab = VOCAB;
    r.opts.seed = 3;
    r.opts.steps = UNDER_VALGRIND() ? 1 : 4;   /* renders run ~500× slower under valgrind */
    r.opts.width = r.opts.height = 64;
    return r;
}

static int compare(const char *baked, const lm_weighted *l, size_t n, lm_compare_report *rep, lm_err *err)
{
    lm_lora *ls[4] = { 0 };
    float lam[4];
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) { rc = lm_lora_open(&ls[i], l[i].path, NULL, err); lam[i] = (float)l[i].lambda; }
    lm_verify_render r = render_opts();
    if (!rc) rc = lm_verify_compare(baked, tmp("tiny.safetensors"), (const lm_lora *const *)ls, lam, n, &r, rep, err);
    for (size_t i = 0; i < n; i++) lm_lora_close(ls[i]);
    return rc;
}

static void test_compare_thresholds(void)
{
    double tol, p;
    lm_compare_thresholds(LM_DT_F16, 0, 1.0, &tol, &p);
    CHECK_NEAR(tol, 16 * ldexp(1, -11), 0);
    CHECK_NEAR(p, 48.0, 0);                         /* 20·log10(256) = 48.16, capped at 48 */
    lm_compare_thresholds(LM_DT_BF16, 0, 4.0, &tol, &p);
    CHECK_NEAR(tol, 16 * ldexp(1, -8) * 4, 0);
    CHECK_NEAR(p, 20 * log10(32.0), 1e-12);         /* 30.1 dB */
    lm_compare_thresholds(LM_DT_F32, 8, 0.5, &tol, &p);
    CHECK_NEAR(tol, 8 * ldexp(1, -24), 0);          /* scale below 1 counts as 1 */
    uint8_t a[4] = { 0, 10, 20, 30 }, b[4] = { 0, 10, 20, 31 };
    CHECK(isinf(lm_psnr_u8(a, a, 4)));
    CHECK_NEAR(lm_psnr_u8(a, b, 4), 10 * log10(255.0 * 255.0 * 4), 1e-9);
}

static void test_compare_baked(void)
{
    CHECK_OK(write_tiny(tmp("tiny.safetensors")), NULL);
    CHECK_OK(bake_tiny(tmp("tiny16.safetensors"), LM_DT_F16, k_ab, 2), NULL);
    lm_compare_report rep;
    lm_err err;
    CHECK_OK(compare(tmp("tiny16.safetensors"), k_ab, 2, &rep, &err), &err);
    printf("# fp16 bake vs runtime: latent %.3g (tol %.3g), PSNR %.2f (min %.2f)\n", rep.latent_max_abs, rep.latent_tol,
           rep.psnr, rep.psnr_min);
    CHECK(rep.ok);
    CHECK(rep.dtype == LM_DT_F16);
    CHECK(rep.width == 64 && rep.height == 64 && rep.rgb_baked && rep.rgb_runtime);
    CHECK(rep.latent_max_abs > 0);                  /* fp16 rounding shows, */
    CHECK(rep.latent_max_abs < rep.latent_tol / 4); /* well inside the threshold */
    CHECK(rep.psnr > rep.psnr_min);
    lm_compare_report_free(&rep);
}

static void test_compare_dropped_lora(void)
{
    /* B left out of the bake: the baked model no longer renders like base + A + B */
    CHECK_OK(bake_tiny(tmp("tinya16.safetensors"), LM_DT_F16, k_ab, 1), NULL);
    lm_compare_report rep;
    lm_err err;
    CHECK_OK(compare(tmp("tinya16.safetensors"), k_ab, 2, &rep, &err), &err);
    printf("# B dropped: latent %.3g (tol %.3g), PSNR %.2f (min %.2f)\n", rep.latent_max_abs, rep.latent_tol, rep.psnr, rep.psnr_min);
    CHECK(!rep.ok);
    CHECK(rep.latent_max_abs > 2 * rep.latent_tol);
    CHECK(rep.psnr < rep.psnr_min);
    lm_compare_report_free(&rep);
}

static void test_sweep_grid(void)
{
    lm_lora *l = NULL;
    lm_err err;
    CHECK_OK(lm_lora_open(&l, LORA_A, NULL, &err), &err);
    const lm_lora *ls[1] = { l };
    float lam1 = 1.0f;
    int steps[2] = { 1, 2 };
    double lams[2] = { 0, 1 };
    lm_verify_render r = render_opts();
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    int rc = lm_verify_sweep(tmp("tiny.safetensors"), ls, &lam1, 1, steps, 2, lams, 2, &r, &rgb, &w, &h, &err);
    lm_lora_close(l);
    CHECK_OK(rc, &err);
    CHECK(w > 2 * 64 && h > 2 * 64);                /* two by two cells plus labels and gaps */
    /* the same cell layout from lm_png_grid without labels is smaller */
    CHECK(rgb != NULL);
    free(rgb);
}

static void test_refusals(void)
{
    lm_verify_report r;
    lm_err err;
    /* no recipe, no inputs */
    CHECK_EQ_INT(lm_verify_bake(BASE, NULL, &r, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "no recipe"));
    lm_verify_report_free(&r);
    /* recipe inputs not found without the search directories */
    CHECK_EQ_INT(lm_verify_bake(tmp("ab16.safetensors"), NULL, &r, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "unet_ldm.safetensors") && strstr(err.msg, "not found"));
    lm_verify_report_free(&r);
    /* a missing output is an I/O error, not a verdict */
    CHECK_EQ_INT(verify(tmp("nonexistent.safetensors"), &r, &err), LM_EIO);
    lm_verify_report_free(&r);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/test_verify.XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    RUN(test_ulp);
    RUN(test_clean_f16);
    RUN(test_clean_bf16);
    RUN(test_clean_f32);
    RUN(test_command_line_inputs);
    RUN(test_fault_dropped);
    RUN(test_fault_lambda_twice);
    RUN(test_fault_transposed_conv);
    RUN(test_fault_one_ulp);
    RUN(test_fault_overflow);
    RUN(test_fault_truncated);
    RUN(test_fault_recipe_hash);
    RUN(test_fault_unmatched);
    RUN(test_lora_exact);
    RUN(test_lora_svd);
    RUN(test_lora_faults);
    RUN(test_compare_thresholds);
    RUN(test_compare_baked);
    if (!UNDER_VALGRIND()) {
        RUN(test_compare_dropped_lora);
        RUN(test_sweep_grid);
    } else {
        printf("# test_compare_dropped_lora, test_sweep_grid: not run under valgrind (minutes of rendering)\n");
    }
    RUN(test_refusals);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) return 1;
    TEST_EXIT();
}
