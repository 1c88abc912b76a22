/* Real LoRA files (fixtures/real/) resolved onto the full-size SD1.5 base
 * manifests, in both layouts; the unmatched and shape-mismatch errors. */
#include "test.h"

#include "libmerge/keymap.h"
#include "libmerge/lora.h"
#include "libmerge/source.h"
#include "support/manifest_source.h"

#define SD15_LDM FIXTURE("golden/sd15/sd15_ldm_manifest.json")
#define SD15_DIF FIXTURE("golden/sd15/sd15_diffusers_manifest.json")
#define SDXL_LDM FIXTURE("golden/manifests/sdxl_base_1.0_checkpoint_keys.json")

static lm_source *sd15_base(int diffusers)
{
    lm_source *s = NULL;
    if (!diffusers) return manifest_source_open(&s, SD15_LDM, "tensors", NULL, NULL) ? NULL : s;
    if (manifest_source_new(&s, "sd15-diffusers", NULL)) return NULL;
    if (manifest_source_add(s, SD15_DIF, "components.unet.tensors", NULL, "unet.", NULL) ||
        manifest_source_add(s, SD15_DIF, "components.vae.tensors", NULL, "vae.", NULL) ||
        manifest_source_add(s, SD15_DIF, "components.text_encoder.tensors", NULL, "text_encoder.", NULL)) {
        lm_source_close(s);
        return NULL;
    }
    return s;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every module resolves, onto distinct targets; returns the module count or -1. */
static void full_case(const char *lora_path, int diffusers, size_t want_modules, size_t want_te,
                      const char *probe_module, const char *probe_target)
{
    lm_lora *l = NULL;
    lm_err err;
    CHECK_OK(lm_lora_open(&l, lora_path, NULL, &err), &err);
    lm_source *base = sd15_base(diffusers);
    lm_keymap *km = NULL;
    int rc = base ? lm_keymap_build(&km, base, &err) : LM_EIO;
    if (rc) { lm_lora_close(l); lm_source_close(base); CHECK_OK(rc, &err); }
    size_t n = lm_lora_count(l), unmatched = 99, te = 0, probe_hits = 0;
    lm_target *t = calloc(n, sizeof *t);
    int64_t *ids = calloc(n, sizeof *ids);
    rc = lm_keymap_resolve(km, l, 0, t, &unmatched, &err);
    for (size_t i = 0; !rc && i < n; i++) {
        ids[i] = t[i].tensor * 4 + t[i].row0 / (t[i].rows ? t[i].rows : 1);
        const char *tn = lm_source_entry(base, (size_t)t[i].tensor)->name;
        te += strstr(tn, "text_model") != NULL;
        if (!strcmp(lm_lora_module_at(l, i)->name, probe_module)) probe_hits += !strcmp(tn, probe_target);
    }
    qsort(ids, n, sizeof *ids, cmp_i64);
    size_t dup = 0;
    for (size_t i = 1; !rc && i < n; i++) dup += ids[i] == ids[i - 1];
    free(ids);
    free(t);
    lm_keymap_free(km);
    lm_source_close(base);
    lm_lora_close(l);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(unmatched, 0);
    CHECK_EQ_INT(n, want_modules);
    CHECK_EQ_INT(dup, 0);
    CHECK_EQ_INT(te, want_te);
    CHECK_EQ_INT(probe_hits, 1);
}

static void test_keymap_lora_attnproc_ldm(void)
{
    full_case(FIXTURE("real/sd15_lora_attnproc_noprefix.safetensors"), 0, 128, 0,
              "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora",
              "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0.weight");
}

static void test_keymap_lora_attnproc_diffusers(void)
{
    full_case(FIXTURE("real/sd15_lora_attnproc_noprefix.safetensors"), 1, 128, 0,
              "up_blocks.3.attentions.2.transformer_blocks.0.attn1.processor.to_q_lora",
              "unet.up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q.weight");
}

/* SD2.x's UNet has SD1.5's shapes except cross-attention from 1024-wide
 * text (attn2.to_k/to_v [C,1024]) and Linear proj_in/proj_out [C,C]
 * (use_linear_projection); derived here from the SD1.5 manifest, UNet only. */
static lm_source *sd2_unet_base(int diffusers)
{
    lm_source *sd = sd15_base(diffusers), *s = NULL;
    if (!sd || manifest_source_new(&s, diffusers ? "sd2-unet-diffusers" : "sd2-unet-ldm", NULL)) { lm_source_close(sd); return NULL; }
    for (size_t i = 0; i < lm_source_count(sd); i++) {
        const lm_entry *e = lm_source_entry(sd, i);
        if (strncmp(e->name, diffusers ? "unet." : "model.diffusion_model.", diffusers ? 5 : 22)) continue;
        int64_t shape[LM_MAX_DIMS];
        memcpy(shape, e->shape, sizeof shape);
        int nd = e->ndim;
        if (strstr(e->name, "attn2.to_k.weight") || strstr(e->name, "attn2.to_v.weight")) shape[1] = 1024;
        if ((strstr(e->name, "proj_in.weight") || strstr(e->name, "proj_out.weight")) && nd == 4) nd = 2;
        if (manifest_source_put(s, e->name, e->dtype, nd, shape, NULL)) { lm_source_close(s); s = NULL; break; }
    }
    lm_source_close(sd);
    return s;
}

/* fixtures/real/sd15_lora_diffusers_bf16.safetensors is, by its shapes, an
 * SD2.x LoRA: attn2.to_k/to_v down factors are [4, 1024]. */
static void test_keymap_lora_diffusers_bf16_is_sd2(void)
{
    lm_lora *l = NULL;
    lm_err err;
    CHECK_OK(lm_lora_open(&l, FIXTURE("real/sd15_lora_diffusers_bf16.safetensors"), NULL, &err), &err);
    size_t n = lm_lora_count(l);
    lm_target *t = calloc(n, sizeof *t);
    int rc[3];
    lm_err e[3];
    size_t unmatched[3] = { 9, 9, 9 };
    lm_arch arch[3] = { 0 };
    for (int k = 0; k < 3; k++) {
        lm_source *base = k == 0 ? sd15_base(0) : sd2_unet_base(k == 2);
        lm_keymap *km = NULL;
        rc[k] = base ? lm_keymap_build(&km, base, &e[k]) : LM_EIO;
        if (!rc[k]) {
            arch[k] = lm_keymap_info(km)->arch;
            rc[k] = lm_keymap_resolve(km, l, 0, t, &unmatched[k], &e[k]);
        }
        lm_keymap_free(km);
        lm_source_close(base);
    }
    free(t);
    lm_lora_close(l);
    CHECK_EQ_INT(n, 128);
    CHECK_EQ_INT(rc[0], LM_EMISMATCH);
    CHECK_MSG(strstr(e[0].msg, "[320,1024]") && strstr(e[0].msg, "[320,768]") &&
              strstr(e[0].msg, "an SD2.x LoRA on an SD1.x base?") && strstr(e[0].msg, "(32 modules do not fit)"), "%s", e[0].msg);
    CHECK_OK(rc[1], &e[1]);
    CHECK_OK(rc[2], &e[2]);
    CHECK_EQ_INT(arch[1], LM_ARCH_SD2);
    CHECK_EQ_INT(arch[2], LM_ARCH_SD2);
    CHECK_EQ_INT(unmatched[1], 0);
    CHECK_EQ_INT(unmatched[2], 0);
}

/* LyCORIS LoKr, kohya names: 350 modules, 72 of them in the text encoder,
 * UNet convs with 2-D factors whose ΔW [out, in·3·3] fits [out,in,3,3]. */
static void test_keymap_lora_lokr(void)
{
    for (int d = 0; d < 2; d++)
        full_case(FIXTURE("real/sd15_lycoris_lokr_fp16.safetensors"), d, 350, 72,
                  "lora_unet_up_blocks_0_upsamplers_0_conv",
                  d ? "unet.up_blocks.0.upsamplers.0.conv.weight" : "model.diffusion_model.output_blocks.2.1.conv.weight");
}

/* No UNet in the base: every UNet module is unmatched. */
static void test_keymap_lora_unmatched(void)
{
    lm_lora *l = NULL;
    lm_source *base = NULL;
    lm_keymap *km = NULL;
    lm_err err;
    CHECK_OK(lm_lora_open(&l, FIXTURE("real/sd15_lora_attnproc_noprefix.safetensors"), NULL, &err), &err);
    CHECK_OK(manifest_source_new(&base, "te-only", &err), &err);
    CHECK_OK(manifest_source_add(base, SD15_DIF, "components.text_encoder.tensors", NULL, "text_encoder.", &err), &err);
    CHECK_OK(lm_keymap_build(&km, base, &err), &err);
    size_t n = lm_lora_count(l), unmatched = 0;
    lm_target *t = calloc(n, sizeof *t);
    int rc = lm_keymap_resolve(km, l, 0, t, &unmatched, &err);
    lm_err strict = err;
    size_t u1 = unmatched;
    char list[4096], small[40];
    size_t listed = lm_keymap_format_unmatched(l, t, 20, list, sizeof list);
    size_t lines = 0;
    for (const char *c = list; *c; c++) lines += *c == '\n';
    size_t listed2 = lm_keymap_format_unmatched(l, t, 20, small, sizeof small);
    int rc2 = lm_keymap_resolve(km, l, 1, t, &unmatched, &err);
    int all_neg = 1;
    for (size_t i = 0; i < n; i++) all_neg &= t[i].tensor == -1 && t[i].bias == -1;
    free(t);
    lm_keymap_free(km);
    lm_source_close(base);
    lm_lora_close(l);
    CHECK_EQ_INT(rc, LM_EMISMATCH);
    CHECK_EQ_INT(u1, 128);
    CHECK_MSG(strstr(strict.msg, "128 of 128 LoRA modules match no tensor") && strstr(strict.msg, ": down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_"),
              "%s", strict.msg);
    CHECK_MSG(strstr(strict.file, "sd15_lora_attnproc_noprefix"), "%s", strict.file);
    CHECK(strict.key[0]);
    CHECK_EQ_INT(listed, 128);
    CHECK_EQ_INT(lines, 20);
    CHECK_MSG(!strncmp(list, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_k_lora\n", 73), "%s", list);
    CHECK_EQ_INT(listed2, 128);
    CHECK_EQ_STR(small, "");
    CHECK_EQ_INT(rc2, 0);
    CHECK_EQ_INT(unmatched, 128);
    CHECK(all_neg);
}

/* An SD1.5 LoRA on the SDXL base: error naming both shapes and the cause. */
static void test_keymap_lora_sd15_on_sdxl(void)
{
    lm_lora *l = NULL;
    lm_source *base = NULL;
    lm_keymap *km = NULL;
    lm_err err;
    CHECK_OK(lm_lora_open(&l, FIXTURE("real/sd15_lora_attnproc_noprefix.safetensors"), NULL, &err), &err);
    CHECK_OK(manifest_source_open(&base, SDXL_LDM, "tensors", NULL, &err), &err);
    CHECK_OK(lm_keymap_build(&km, base, &err), &err);
    size_t n = lm_lora_count(l), unmatched = 0;
    lm_target *t = calloc(n, sizeof *t);
    int rc = lm_keymap_resolve(km, l, 1, t, &unmatched, &err);
    free(t);
    lm_keymap_free(km);
    lm_source_close(base);
    lm_lora_close(l);
    CHECK_EQ_INT(rc, LM_EMISMATCH);
    CHECK_MSG(strstr(err.msg, "768]") && strstr(err.msg, "2048]") && strstr(err.msg, "an SD1.x LoRA on an SDXL base?"), "%s", err.msg);
    CHECK(strstr(err.key, "attn2"));
}

int main(void)
{
    RUN(test_keymap_lora_attnproc_ldm);
    RUN(test_keymap_lora_attnproc_diffusers);
    RUN(test_keymap_lora_diffusers_bf16_is_sd2);
    RUN(test_keymap_lora_lokr);
    RUN(test_keymap_lora_unmatched);
    RUN(test_keymap_lora_sd15_on_sdxl);
    TEST_EXIT();
}
