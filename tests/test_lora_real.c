/* The real LoRA files in fixtures/real/ (see PROVENANCE.md there): they parse,
 * are classified, and their ΔW matches the numpy reference samples in
 * fixtures/lora/real_ref.safetensors (first 4 output rows, Σ ΔW, Σ ΔW²). */
#include "test.h"
#include "libmerge/lora.h"

#include <stdlib.h>
#include <string.h>

static size_t find(const lm_lora *l, const char *name)
{
    for (size_t i = 0; i < lm_lora_count(l); i++)
        if (strcmp(lm_lora_module_at(l, i)->name, name) == 0) return i;
    return (size_t)-1;
}

static int64_t numel_of(const lm_lora_module *m)
{
    int64_t n = 1;
    for (int d = 0; d < m->ndim; d++) n *= m->shape[d];
    return n;
}

static float *ref_read(const lm_source *ref, const char *key, int64_t *n)
{
    int64_t k = lm_source_find(ref, key);
    if (k < 0) return NULL;
    const lm_entry *e = lm_source_entry(ref, (size_t)k);
    float *b = malloc((size_t)e->numel * sizeof *b);
    if (lm_source_read_f32(ref, (size_t)k, b, NULL)) { free(b); return NULL; }
    *n = e->numel;
    return b;
}

/* Compares dw (module i's ΔW, n values, rows of n/out) with tag's reference
 * sample. Returns a message or NULL. */
static const char *compare_sample(const float *dw, int64_t n, int64_t out, const char *tag, char *msg, size_t mn)
{
    lm_source *ref;
    if (lm_source_open(&ref, FIXTURE("lora/real_ref.safetensors"), NULL, NULL)) return "cannot open real_ref";
    char k[512];
    int64_t rn, sn;
    snprintf(k, sizeof k, "%s#rows", tag);
    float *rows = ref_read(ref, k, &rn);
    snprintf(k, sizeof k, "%s#sum", tag);
    float *sums = ref_read(ref, k, &sn);
    lm_source_close(ref);
    const char *res = NULL;
    int64_t rowlen = n / out;
    if (!rows || !sums || sn != 2 || rn != 4 * rowlen) { res = "reference sample missing or of another size"; goto done; }
    double maxr = 0, maxe = 0, s = 0, ss = 0;
    for (int64_t j = 0; j < rn; j++) {
        if (fabs(rows[j]) > maxr) maxr = fabs(rows[j]);
        if (fabs(dw[j] - rows[j]) > maxe) maxe = fabs(dw[j] - rows[j]);
    }
    for (int64_t j = 0; j < n; j++) { s += dw[j]; ss += (double)dw[j] * dw[j]; }
    if (maxe > 1e-5 * maxr + 1e-8) { snprintf(msg, mn, "%s: rows differ by %g (max |x| %g)", tag, maxe, maxr); res = msg; goto done; }
    if (fabs(ss - sums[1]) > 1e-4 * sums[1] || fabs(s - sums[0]) > 1e-4 * sqrt(sums[1] * (double)n)) {
        snprintf(msg, mn, "%s: Σ %g / Σ² %g, reference %g / %g", tag, s, ss, sums[0], sums[1]);
        res = msg;
    }
done:
    free(rows);
    free(sums);
    return res;
}

static void check_module_sample(const lm_lora *l, const char *name, const char *tag)
{
    size_t i = find(l, name);
    CHECK_MSG(i != (size_t)-1, "no module %s", name);
    const lm_lora_module *m = lm_lora_module_at(l, i);
    int64_t n = numel_of(m);
    float *dw = malloc((size_t)n * sizeof *dw);
    lm_err e;
    int rc = lm_lora_delta(l, i, dw, &e);
    if (rc) { free(dw); CHECK_OK(rc, &e); }
    char msg[600];
    const char *bad = compare_sample(dw, n, m->shape[0], tag, msg, sizeof msg);
    free(dw);
    CHECK_MSG(!bad, "%s", bad);
}

/* Every module: kind, convention, component, rank, alpha, scale. */
static const char *uniform(const lm_lora *l, lm_module_kind kind, lm_lora_convention conv, int rank, float alpha)
{
    static char msg[600];
    for (size_t i = 0; i < lm_lora_count(l); i++) {
        const lm_lora_module *m = lm_lora_module_at(l, i);
        if (m->kind != kind || m->convention != conv || m->rank != rank || m->alpha != alpha ||
            m->scale != 1.0f || m->has_dora || m->has_bias) {
            snprintf(msg, sizeof msg, "%s: kind %s, convention %s, rank %d, alpha %g, scale %g", m->name,
                     lm_module_kind_name(m->kind), lm_lora_convention_name(m->convention), m->rank, m->alpha, m->scale);
            return msg;
        }
    }
    return NULL;
}

static void test_real_attnproc(void)
{
    lm_lora *l;
    lm_err e;
    CHECK_OK(lm_lora_open(&l, FIXTURE("real/sd15_lora_attnproc_noprefix.safetensors"), NULL, &e), &e);
    CHECK_EQ_INT(lm_lora_convention_of(l), LM_LORA_DIFFUSERS_ATTNPROC);
    CHECK_EQ_INT(lm_lora_count(l), 128);
    CHECK_EQ_INT(lm_lora_ignored_count(l), 0);
    CHECK_EQ_STR(lm_lora_algo_name(l), "lora");
    const char *u = uniform(l, LM_MOD_LORA, LM_LORA_DIFFUSERS_ATTNPROC, 4, 4.0f);   /* no alpha: alpha = rank */
    CHECK_MSG(!u, "%s", u);
    size_t i = find(l, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora");
    CHECK(i != (size_t)-1);
    const lm_lora_module *m = lm_lora_module_at(l, i);
    CHECK_EQ_INT(m->component, LM_COMP_UNET);
    CHECK_EQ_INT(m->ndim, 2);
    CHECK_EQ_INT(m->shape[0], 640);
    CHECK_EQ_INT(m->shape[1], 768);   /* SD1.x cross-attention width */
    check_module_sample(l, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora",
                        "attnproc:down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora");
    check_module_sample(l, "up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor.to_v_lora",
                        "attnproc:up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor.to_v_lora");
    lm_lora_close(l);
}

static void test_real_diffusers_bf16(void)
{
    lm_lora *l;
    lm_err e;
    CHECK_OK(lm_lora_open(&l, FIXTURE("real/sd15_lora_diffusers_bf16.safetensors"), NULL, &e), &e);
    CHECK_EQ_INT(lm_lora_convention_of(l), LM_LORA_DIFFUSERS);
    CHECK_EQ_INT(lm_lora_count(l), 128);
    CHECK_EQ_INT(lm_lora_ignored_count(l), 0);
    const char *u = uniform(l, LM_MOD_LORA, LM_LORA_DIFFUSERS, 4, 4.0f);
    CHECK_MSG(!u, "%s", u);
    size_t i = find(l, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
    CHECK(i != (size_t)-1);
    const lm_lora_module *m = lm_lora_module_at(l, i);
    CHECK_EQ_INT(m->component, LM_COMP_UNET);
    CHECK_EQ_INT(m->shape[0], 320);
    CHECK_EQ_INT(m->shape[1], 1024);  /* cross-attention width 1024: an SD2.x-sized UNet */
    CHECK(find(l, "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0") != (size_t)-1);
    check_module_sample(l, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
                        "diffusers:unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k");
    check_module_sample(l, "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
                        "diffusers:unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0");
    lm_lora_close(l);
}

static void test_real_lycoris_lokr(void)
{
    lm_lora *l;
    lm_err e;
    CHECK_OK(lm_lora_open(&l, FIXTURE("real/sd15_lycoris_lokr_fp16.safetensors"), NULL, &e), &e);
    CHECK_EQ_INT(lm_lora_convention_of(l), LM_LORA_KOHYA);
    CHECK_EQ_INT(lm_lora_count(l), 350);
    CHECK_EQ_INT(lm_lora_ignored_count(l), 0);
    CHECK_EQ_STR(lm_lora_algo_name(l), "lokr");
    const char *u = uniform(l, LM_MOD_LOKR, LM_LORA_KOHYA, 4, 4.0f);   /* 0-dim F16 alpha 4, rank 4 */
    CHECK_MSG(!u, "%s", u);
    size_t te = 0;
    for (size_t k = 0; k < lm_lora_count(l); k++) te += lm_lora_module_at(l, k)->component == LM_COMP_TE;
    CHECK_EQ_INT(te, 72);             /* 12 layers × q, k, v, out, fc1, fc2 */
    /* conv 3×3 with 2-D factors: [20,4]·[4,60] ⊗ [16,4]·[4,48] = [320, 2880] */
    size_t i = find(l, "lora_unet_down_blocks_0_resnets_0_conv1");
    CHECK(i != (size_t)-1);
    const lm_lora_module *m = lm_lora_module_at(l, i);
    CHECK_EQ_INT(m->ndim, 2);
    CHECK_EQ_INT(m->shape[0], 320);
    CHECK_EQ_INT(m->shape[1], 2880);
    check_module_sample(l, "lora_unet_down_blocks_0_resnets_0_conv1", "lokr:lora_unet_down_blocks_0_resnets_0_conv1");
    check_module_sample(l, "lora_unet_down_blocks_0_attentions_0_proj_in", "lokr:lora_unet_down_blocks_0_attentions_0_proj_in");
    check_module_sample(l, "lora_te_text_model_encoder_layers_0_mlp_fc1", "lokr:lora_te_text_model_encoder_layers_0_mlp_fc1");

    /* applied onto the 4-D conv weight [320, 320, 3, 3] by element count */
    int64_t ws[4] = { 320, 320, 3, 3 };
    float *W = calloc(320 * 320 * 9, sizeof *W);
    int rc = lm_lora_apply(l, i, 1.0f, W, ws, 4, 0, 320, &e);
    if (rc) { free(W); CHECK_OK(rc, &e); }
    char msg[600];
    const char *bad = compare_sample(W, 320 * 2880, 320, "lokr:lora_unet_down_blocks_0_resnets_0_conv1", msg, sizeof msg);
    free(W);
    CHECK_MSG(!bad, "%s", bad);
    /* and refused on the SDXL-sized [640, 640, 3, 3] */
    int64_t big[4] = { 640, 640, 3, 3 };
    float dummy = 0;
    CHECK_EQ_INT(lm_lora_apply(l, i, 1.0f, &dummy, big, 4, 0, 640, &e), LM_EMISMATCH);
    CHECK_MSG(strstr(e.msg, "[320, 2880]") && strstr(e.msg, "[640, 640, 3, 3]"), "message: %s", e.msg);
    lm_lora_close(l);
}

int main(void)
{
    RUN(test_real_attnproc);
    RUN(test_real_diffusers_bf16);
    RUN(test_real_lycoris_lokr);
    TEST_EXIT();
}
