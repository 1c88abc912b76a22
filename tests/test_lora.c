/* LoRA parsing and ΔW: hand-computable cases, every convention and module
 * kind against the numpy reference in fixtures/lora/NAME.ref.safetensors
 * (made by fixtures/lora/make_lora_fixtures.py), and malformed files. */
#include "test.h"
#include "libmerge/lora.h"

#include <stdlib.h>
#include <string.h>

static lm_lora *open_lora(const char *path, lm_err *e)
{
    lm_lora *l = NULL;
    if (lm_lora_open(&l, path, NULL, e)) return NULL;
    return l;
}

static int64_t numel_of(const lm_lora_module *m)
{
    int64_t n = 1;
    for (int d = 0; d < m->ndim; d++) n *= m->shape[d];
    return n;
}

static const lm_lora_module *find_mod(const lm_lora *l, const char *name, size_t *idx)
{
    for (size_t i = 0; i < lm_lora_count(l); i++)
        if (strcmp(lm_lora_module_at(l, i)->name, name) == 0) { if (idx) *idx = i; return lm_lora_module_at(l, i); }
    return NULL;
}

/* Reads reference tensor key from ref; returns a malloc'd buffer or NULL. */
static float *ref_get(const lm_source *ref, const char *key, int64_t *n)
{
    int64_t k = lm_source_find(ref, key);
    if (k < 0) return NULL;
    const lm_entry *e = lm_source_entry(ref, (size_t)k);
    float *b = malloc((size_t)e->numel * sizeof *b);
    if (lm_source_read_f32(ref, (size_t)k, b, NULL)) { free(b); return NULL; }
    *n = e->numel;
    return b;
}

/* max |a-b| ≤ 1e-5 · max|ref| + 1e-7 (fp32 sgemm against a float64 reference) */
static double max_err(const float *a, const float *ref, int64_t n, double *scale)
{
    double m = 0, s = 0;
    for (int64_t k = 0; k < n; k++) {
        double d = fabs((double)a[k] - ref[k]);
        if (d > m) m = d;
        if (fabs(ref[k]) > s) s = fabs(ref[k]);
    }
    *scale = s;
    return m;
}
#define CHECK_CLOSE(a, ref, n) do { double s_, e_ = max_err((a), (ref), (n), &s_); \
        CHECK_MSG(e_ <= 1e-5 * s_ + 1e-7, "max error %g against reference of max |x| %g", e_, s_); } while (0)

/* Every module of NAME.safetensors against NAME.ref.safetensors: ΔW, and
 * for DoRA modules the application at λ = 1 and 0.5 onto the stored W. */
static void check_against_ref(const char *name, lm_lora_convention conv, size_t count)
{
    char p[256], rp[256];
    snprintf(p, sizeof p, "fixtures/lora/%s.safetensors", name);
    snprintf(rp, sizeof rp, "fixtures/lora/%s.ref.safetensors", name);
    lm_err e;
    lm_lora *l = NULL;
    lm_source *ref = NULL;
    CHECK_OK(lm_lora_open(&l, p, NULL, &e), &e);
    CHECK_OK(lm_source_open(&ref, rp, NULL, &e), &e);
    CHECK_EQ_INT(lm_lora_convention_of(l), conv);
    CHECK_EQ_INT(lm_lora_count(l), count);
    CHECK_EQ_INT(lm_lora_ignored_count(l), 0);
    for (size_t i = 0; i < lm_lora_count(l); i++) {
        const lm_lora_module *m = lm_lora_module_at(l, i);
        int64_t n = numel_of(m), rn = 0;
        float *r = ref_get(ref, m->name, &rn);
        CHECK_MSG(r, "no reference for %s", m->name);
        CHECK_MSG(rn == n, "%s: ΔW has %lld elements, reference %lld", m->name, (long long)n, (long long)rn);
        float *dw = malloc((size_t)n * sizeof *dw);
        int rc = lm_lora_delta(l, i, dw, &e);
        if (rc) { free(dw); free(r); CHECK_OK(rc, &e); }
        double s_, err = max_err(dw, r, n, &s_);
        free(dw);
        free(r);
        CHECK_MSG(err <= 1e-5 * s_ + 1e-7, "%s: max error %g against reference of max |x| %g", m->name, err, s_);
        if (m->has_bias) {
            char k[512];
            snprintf(k, sizeof k, "%s#bias", m->name);
            float *rb = ref_get(ref, k, &rn), *b = malloc((size_t)m->shape[0] * sizeof *b);
            CHECK(rb && rn == m->shape[0]);
            CHECK_OK(lm_lora_delta_bias(l, i, b, &e), &e);
            double eb = max_err(b, rb, rn, &s_);
            free(b);
            free(rb);
            CHECK(eb == 0);
        } else {
            float b1;
            CHECK_EQ_INT(lm_lora_delta_bias(l, i, &b1, &e), LM_EUSAGE);
        }
        if (m->has_dora) {
            char k[512];
            const char *lam[2] = { "1", "0.5" };
            for (int j = 0; j < 2; j++) {
                int64_t wn, an;
                snprintf(k, sizeof k, "%s#W", m->name);
                float *W = ref_get(ref, k, &wn);
                snprintf(k, sizeof k, "%s#apply%s", m->name, lam[j]);
                float *A = ref_get(ref, k, &an);
                CHECK(W && A && wn == an && wn == n);
                rc = lm_lora_apply(l, i, (float)atof(lam[j]), W, m->shape, m->ndim, 0, m->shape[0], &e);
                if (rc) { free(W); free(A); CHECK_OK(rc, &e); }
                double ea = max_err(W, A, wn, &s_);
                free(W);
                free(A);
                CHECK_MSG(ea <= 1e-5 * s_ + 1e-7, "%s λ=%s: DoRA max error %g", m->name, lam[j], ea);
            }
        }
    }
    lm_source_close(ref);
    lm_lora_close(l);
}

static void test_hand_linear(void)
{
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/hand.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    size_t i;
    const lm_lora_module *m = find_mod(l, "lora_unet_x", &i);
    CHECK(m);
    CHECK_EQ_INT(m->kind, LM_MOD_LORA);
    CHECK_EQ_INT(m->rank, 1);
    CHECK_NEAR(m->alpha, 2, 0);
    CHECK_NEAR(m->scale, 2, 0);
    CHECK_EQ_INT(m->ndim, 2);
    CHECK_EQ_INT(m->shape[0], 2);
    CHECK_EQ_INT(m->shape[1], 2);
    CHECK(!m->has_dora);
    float dw[4];
    CHECK_OK(lm_lora_delta(l, i, dw, &e), &e);
    /* 2 · [[1],[2]] · [[3, 4]] */
    CHECK_NEAR(dw[0], 6, 0);
    CHECK_NEAR(dw[1], 8, 0);
    CHECK_NEAR(dw[2], 12, 0);
    CHECK_NEAR(dw[3], 16, 0);
    lm_lora_close(l);
}

/* The same module saved by torch.save (zip), BF16 0-dim alpha, F16 down */
static void test_torch_file(void)
{
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/hand_torch.pt"), &e);
    CHECK_MSG(l, "%s", e.msg);
    CHECK_EQ_INT(lm_lora_count(l), 1);
    CHECK_EQ_INT(lm_lora_convention_of(l), LM_LORA_KOHYA);
    const lm_lora_module *m = lm_lora_module_at(l, 0);
    CHECK_EQ_STR(m->name, "lora_unet_x");
    CHECK_NEAR(m->scale, 2, 0);
    float dw[4];
    CHECK_OK(lm_lora_delta(l, 0, dw, &e), &e);
    CHECK_NEAR(dw[0], 6, 0);
    CHECK_NEAR(dw[3], 16, 0);
    lm_lora_close(l);
}

static void test_hand_apply(void)
{
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/hand.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    size_t i;
    CHECK(find_mod(l, "lora_unet_x", &i));
    /* linear ΔW onto a conv 1×1 target [2, 2, 1, 1], λ = 0.5 */
    float W[4] = { 1, 1, 1, 1 };
    int64_t conv[4] = { 2, 2, 1, 1 };
    CHECK_OK(lm_lora_apply(l, i, 0.5f, W, conv, 4, 0, 2, &e), &e);
    CHECK_NEAR(W[0], 4, 0);
    CHECK_NEAR(W[1], 5, 0);
    CHECK_NEAR(W[2], 7, 0);
    CHECK_NEAR(W[3], 9, 0);
    /* rows 2..3 of a packed [6, 2] in_proj_weight; other rows untouched */
    float P[12] = {0};
    int64_t packed[2] = { 6, 2 };
    CHECK_OK(lm_lora_apply(l, i, 1.0f, P, packed, 2, 2, 2, &e), &e);
    CHECK_NEAR(P[3], 0, 0);
    CHECK_NEAR(P[4], 6, 0);
    CHECK_NEAR(P[5], 8, 0);
    CHECK_NEAR(P[6], 12, 0);
    CHECK_NEAR(P[7], 16, 0);
    CHECK_NEAR(P[8], 0, 0);
    /* a target of another shape is refused, naming both shapes */
    float X[6] = {0};
    int64_t other[2] = { 2, 3 };
    CHECK_EQ_INT(lm_lora_apply(l, i, 1.0f, X, other, 2, 0, 2, &e), LM_EMISMATCH);
    CHECK_MSG(strstr(e.msg, "[2, 2]") && strstr(e.msg, "[2, 3]"), "message: %s", e.msg);
    CHECK_EQ_STR(e.key, "lora_unet_x");
    CHECK_EQ_INT(lm_lora_apply(l, i, 1.0f, P, packed, 2, 5, 2, &e), LM_EUSAGE);
    lm_lora_close(l);
}

static void test_hand_dora(void)
{
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/hand.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    size_t i;
    const lm_lora_module *m = find_mod(l, "lora_unet_y", &i);
    CHECK(m && m->has_dora);
    CHECK_EQ_STR(lm_lora_algo_name(l), "dora");
    /* W = 0: V = ΔW = [[6, 8], [12, 16]], row norms 10 and 20, m = [5, 10] → V/2 */
    float W[4] = {0};
    int64_t s[2] = { 2, 2 };
    CHECK_OK(lm_lora_apply(l, i, 1.0f, W, s, 2, 0, 2, &e), &e);
    CHECK_NEAR(W[0], 3, 1e-6);
    CHECK_NEAR(W[1], 4, 1e-6);
    CHECK_NEAR(W[2], 6, 1e-6);
    CHECK_NEAR(W[3], 8, 1e-6);
    /* not linear in λ: at λ = 0.5 the direction is the same, so W' is too */
    float H[4] = {0};
    CHECK_OK(lm_lora_apply(l, i, 0.5f, H, s, 2, 0, 2, &e), &e);
    CHECK_NEAR(H[0], 3, 1e-6);
    CHECK_NEAR(H[3], 8, 1e-6);
    /* ΔW itself carries no magnitude */
    float dw[4];
    CHECK_OK(lm_lora_delta(l, i, dw, &e), &e);
    CHECK_NEAR(dw[3], 16, 0);
    lm_lora_close(l);
}

static void test_kohya_lora(void)
{
    check_against_ref("kohya_lora", LM_LORA_KOHYA, 7);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/kohya_lora.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const lm_lora_module *m;
    CHECK((m = find_mod(l, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", NULL)));
    CHECK_NEAR(m->scale, 0.5, 0);
    CHECK_EQ_INT(m->component, LM_COMP_UNET);
    CHECK((m = find_mod(l, "lora_unet_down_blocks_0_attentions_0_proj_in", NULL)));
    CHECK_NEAR(m->alpha, 4, 0);       /* 1-element F16 */
    CHECK_NEAR(m->scale, 2, 0);
    CHECK_EQ_INT(m->ndim, 4);
    CHECK_EQ_INT(m->shape[2], 1);
    CHECK((m = find_mod(l, "lora_unet_down_blocks_0_resnets_0_conv1", NULL)));
    CHECK_NEAR(m->alpha, 1.5, 0);     /* 0-dim BF16 */
    CHECK_NEAR(m->scale, 0.5, 0);
    CHECK_EQ_INT(m->shape[0], 5);
    CHECK_EQ_INT(m->shape[1], 4);
    CHECK_EQ_INT(m->shape[2], 3);
    CHECK_EQ_INT(m->shape[3], 3);
    CHECK((m = find_mod(l, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_TE);
    CHECK_NEAR(m->alpha, 3, 0);       /* missing alpha: alpha = rank */
    CHECK_NEAR(m->scale, 1, 0);
    CHECK((m = find_mod(l, "lora_te1_text_model_encoder_layers_0_self_attn_k_proj", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_TE);
    CHECK_NEAR(m->scale, 1, 0);       /* alpha 0 means rank (kohya) */
    CHECK((m = find_mod(l, "lora_te2_text_model_encoder_layers_0_mlp_fc1", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_TE2);
    CHECK_NEAR(m->alpha, 8, 0);
    CHECK_NEAR(m->scale, 0.25, 0);    /* .scale overrides alpha/rank */
    CHECK((m = find_mod(l, "lora_te2_text_model_encoder_layers_1_mlp_fc2", NULL)));
    CHECK_NEAR(m->scale, 0.75, 1e-7); /* F64 alpha 3 / rank 4 */
    CHECK_EQ_STR(lm_lora_algo_name(l), "locon");
    lm_lora_close(l);
}

static void test_locon_tucker(void)
{
    check_against_ref("kohya_locon_tucker", LM_LORA_KOHYA, 2);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/kohya_locon_tucker.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const lm_lora_module *m = find_mod(l, "lora_unet_down_blocks_1_resnets_0_conv2", NULL);
    CHECK(m);
    CHECK_EQ_INT(m->kind, LM_MOD_TUCKER);
    CHECK_EQ_INT(m->rank, 3);
    CHECK_NEAR(m->scale, 0.5, 0);
    CHECK_EQ_INT(m->ndim, 4);
    CHECK_EQ_INT(m->shape[0], 6);
    CHECK_EQ_INT(m->shape[1], 4);
    CHECK_EQ_INT(m->shape[2], 3);
    CHECK_EQ_STR(lm_lora_algo_name(l), "locon");
    lm_lora_close(l);
}

static void test_loha(void)
{
    check_against_ref("loha", LM_LORA_KOHYA, 3);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/loha.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const lm_lora_module *m = find_mod(l, "lora_unet_down_blocks_0_resnets_0_conv2", NULL);
    CHECK(m && m->kind == LM_MOD_LOHA);
    CHECK_EQ_INT(m->ndim, 2);         /* 2-D conv factors: [out, in·kh·kw] */
    CHECK_EQ_INT(m->shape[1], 27);
    CHECK_NEAR(m->scale, 2, 0);
    m = find_mod(l, "lora_unet_down_blocks_0_resnets_1_conv1", NULL);
    CHECK(m && m->ndim == 4 && m->shape[0] == 4 && m->shape[1] == 3 && m->shape[3] == 3);
    CHECK_EQ_STR(lm_lora_algo_name(l), "loha");
    lm_lora_close(l);
}

static void test_lokr(void)
{
    check_against_ref("lokr", LM_LORA_KOHYA, 7);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/lokr.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const char *U = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_";
    char k[256];
    const lm_lora_module *m;
    snprintf(k, sizeof k, "%sto_q", U);
    CHECK((m = find_mod(l, k, NULL)));
    CHECK_EQ_INT(m->rank, 0);         /* both factors full */
    CHECK_NEAR(m->scale, 1, 0);
    CHECK_NEAR(m->alpha, 7, 0);
    snprintf(k, sizeof k, "%sto_k", U);
    CHECK((m = find_mod(l, k, NULL)));
    CHECK_EQ_INT(m->rank, 2);
    CHECK_NEAR(m->scale, 0.5, 0);
    snprintf(k, sizeof k, "%sto_v", U);
    CHECK((m = find_mod(l, k, NULL)));
    CHECK_NEAR(m->scale, 1.5, 0);
    CHECK((m = find_mod(l, "lora_unet_down_blocks_0_resnets_0_conv1", NULL)));
    CHECK_EQ_INT(m->ndim, 4);
    CHECK_EQ_INT(m->shape[0], 6);
    CHECK_EQ_INT(m->shape[1], 8);
    CHECK((m = find_mod(l, "lora_unet_down_blocks_0_resnets_1_conv2", NULL)));
    CHECK_EQ_INT(m->ndim, 2);
    CHECK_EQ_INT(m->shape[1], 72);
    CHECK_EQ_STR(lm_lora_algo_name(l), "lokr");
    lm_lora_close(l);
}

static void test_full(void)
{
    check_against_ref("full", LM_LORA_KOHYA, 2);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/full.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const lm_lora_module *m = find_mod(l, "lora_unet_conv_in", NULL);
    CHECK(m && m->kind == LM_MOD_FULL && m->has_bias && m->rank == 0 && m->scale == 1.0f);
    CHECK_EQ_STR(lm_lora_algo_name(l), "full");
    lm_lora_close(l);
}

static void test_dora(void)
{
    check_against_ref("kohya_dora", LM_LORA_KOHYA, 3);
    check_against_ref("peft_dora", LM_LORA_PEFT, 1);
}

static void test_diffusers(void)
{
    check_against_ref("diffusers", LM_LORA_DIFFUSERS, 4);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/diffusers.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const lm_lora_module *m;
    CHECK((m = find_mod(l, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_UNET);
    CHECK_EQ_INT(m->convention, LM_LORA_DIFFUSERS);
    CHECK((m = find_mod(l, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_TE);
    CHECK((m = find_mod(l, "text_encoder_2.text_model.encoder.layers.0.mlp.fc1", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_TE2);
    lm_lora_close(l);
}

static void test_attnproc(void)
{
    check_against_ref("attnproc", LM_LORA_DIFFUSERS_ATTNPROC, 4);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/attnproc.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    CHECK(find_mod(l, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora", NULL));
    CHECK_EQ_INT(lm_lora_module_at(l, 0)->component, LM_COMP_UNET);
    lm_lora_close(l);
}

static void test_peft_alpha(void)
{
    check_against_ref("peft", LM_LORA_PEFT, 2);
    check_against_ref("peft_pipeline", LM_LORA_PEFT, 2);
    check_against_ref("peft_rslora", LM_LORA_PEFT, 1);
    check_against_ref("peft_noalpha", LM_LORA_PEFT, 1);
    lm_err e;
    lm_lora *l = open_lora(FIXTURE("lora/peft.safetensors"), &e);
    CHECK_MSG(l, "%s", e.msg);
    const lm_lora_module *m;
    CHECK((m = find_mod(l, "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", NULL)));
    CHECK_NEAR(m->alpha, 8, 0);       /* lora_alpha */
    CHECK_NEAR(m->scale, 2, 0);
    CHECK((m = find_mod(l, "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", NULL)));
    CHECK_NEAR(m->alpha, 2, 0);       /* alpha_pattern */
    lm_lora_close(l);
    CHECK((l = open_lora(FIXTURE("lora/peft_pipeline.safetensors"), &e)));
    CHECK((m = find_mod(l, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", NULL)));
    CHECK_EQ_INT(m->component, LM_COMP_TE);
    CHECK_NEAR(m->alpha, 12, 0);      /* "text_encoder.lora_alpha" */
    lm_lora_close(l);
    CHECK((l = open_lora(FIXTURE("lora/peft_noalpha.safetensors"), &e)));
    CHECK_NEAR(lm_lora_module_at(l, 0)->alpha, 4, 0);
    CHECK_NEAR(lm_lora_module_at(l, 0)->scale, 1, 0);
    lm_lora_close(l);
}

static void test_detect(void)
{
    static const struct { const char *f; lm_lora_convention c; } cases[] = {
        { "lora/kohya_lora.safetensors", LM_LORA_KOHYA },
        { "lora/lokr.safetensors", LM_LORA_KOHYA },
        { "lora/diffusers.safetensors", LM_LORA_DIFFUSERS },
        { "lora/attnproc.safetensors", LM_LORA_DIFFUSERS_ATTNPROC },
        { "lora/peft.safetensors", LM_LORA_PEFT },
        { "lora/err_not_lora.safetensors", LM_LORA_UNKNOWN },
        { "real/sd15_lora_attnproc_noprefix.safetensors", LM_LORA_DIFFUSERS_ATTNPROC },
        { "real/sd15_lora_diffusers_bf16.safetensors", LM_LORA_DIFFUSERS },
        { "real/sd15_lycoris_lokr_fp16.safetensors", LM_LORA_KOHYA },
        { "real/st_i64_scalar_offset_order.safetensors", LM_LORA_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, "fixtures/%s", cases[i].f);
        lm_source *s;
        lm_err e;
        CHECK_OK(lm_source_open(&s, p, NULL, &e), &e);
        lm_lora_convention c = lm_lora_detect(s);
        lm_source_close(s);
        CHECK_MSG(c == cases[i].c, "%s: detected %s, expected %s", cases[i].f,
                  lm_lora_convention_name(c), lm_lora_convention_name(cases[i].c));
    }
    CHECK_EQ_STR(lm_lora_convention_name(LM_LORA_PEFT), "peft");
    CHECK_EQ_STR(lm_module_kind_name(LM_MOD_TUCKER), "tucker");
    CHECK_EQ_STR(lm_component_name(LM_COMP_TE2), "te2");
}

static void test_from_source_and_factors(void)
{
    lm_source *s;
    lm_err e;
    CHECK_OK(lm_source_open(&s, FIXTURE("lora/hand.safetensors"), NULL, &e), &e);
    lm_lora *l;
    CHECK_OK(lm_lora_from_source(&l, s, &e), &e);
    CHECK(lm_lora_source(l) == s);
    size_t i;
    CHECK(find_mod(l, "lora_unet_x", &i));
    int64_t up = lm_lora_factor_entry(l, i, LM_FAC_UP);
    CHECK(up >= 0);
    CHECK_EQ_STR(lm_source_entry(s, (size_t)up)->name, "lora_unet_x.lora_up.weight");
    CHECK_EQ_INT(lm_lora_factor_entry(l, i, LM_FAC_MID), -1);
    CHECK_EQ_INT(lm_lora_factor_entry(l, 99, LM_FAC_UP), -1);
    lm_lora_close(l);
    lm_source_close(s);   /* borrowed: still ours to close */
}

/* Each malformed file fails with LM_EINPUT naming the key and the reason. */
static void test_errors(void)
{
    static const struct { const char *f, *key, *msg; } cases[] = {
        { "err_missing_down", "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", "up factor has no matching down factor" },
        { "err_rank_mismatch", "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", "rank mismatch: up F32[4, 2] dim 1 is 2 but down F32[3, 4] dim 0 is 3" },
        { "err_alpha_vector", "lora_unet_down_blocks_0_attentions_0_proj_in.alpha", "alpha must be a float scalar (0-dim or one element), got F32[2]" },
        { "err_alpha_int", "lora_unet_down_blocks_0_attentions_0_proj_in.alpha", "alpha must be a float scalar (0-dim or one element), got I64[]" },
        { "err_alpha_nan", "lora_unet_down_blocks_0_attentions_0_proj_in.alpha", "alpha is not finite" },
        { "err_not_lora", "", "no LoRA modules: none of the 2 tensors has a LoRA key suffix" },
        { "err_mixed_kinds", "lora_unet_down_blocks_0_attentions_0_proj_in", "module mixes factors of different kinds (lora loha" },
        { "err_duplicate", "lora_unet_down_blocks_0_attentions_0_proj_in.lora_A.weight", "second down factor for module lora_unet_down_blocks_0_attentions_0_proj_in (first: lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight)" },
        { "err_lokr_half", "lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w2_a", "lokr_w2_a factor has no matching lokr_w2_b factor" },
        { "err_dora_orphan", "lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale", "DoRA magnitude without LoRA factors" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, "fixtures/lora/%s.safetensors", cases[i].f);
        lm_lora *l = (lm_lora *)1;
        lm_err e;
        lm_err_clear(&e);
        int rc = lm_lora_open(&l, p, NULL, &e);
        CHECK_MSG(rc == LM_EINPUT, "%s: rc %d (%s)", cases[i].f, rc, e.msg);
        CHECK_MSG(l == NULL, "%s: *out not cleared", cases[i].f);
        CHECK_MSG(strstr(e.file, cases[i].f), "%s: file %s", cases[i].f, e.file);
        CHECK_MSG(strcmp(e.key, cases[i].key) == 0, "%s: key \"%s\", expected \"%s\"", cases[i].f, e.key, cases[i].key);
        CHECK_MSG(strstr(e.msg, cases[i].msg), "%s: message \"%s\"", cases[i].f, e.msg);
    }
}

int main(void)
{
    RUN(test_hand_linear);
    RUN(test_torch_file);
    RUN(test_hand_apply);
    RUN(test_hand_dora);
    RUN(test_kohya_lora);
    RUN(test_locon_tucker);
    RUN(test_loha);
    RUN(test_lokr);
    RUN(test_full);
    RUN(test_dora);
    RUN(test_diffusers);
    RUN(test_attnproc);
    RUN(test_peft_alpha);
    RUN(test_detect);
    RUN(test_from_source_and_factors);
    RUN(test_errors);
    TEST_EXIT();
}
