/* Architecture detection and the LoRA key map, on the full-size manifests
 * (names and shapes of SD1.5, SDXL base 1.0 and SSD-1B checkpoints, the
 * released LCM-LoRA key lists and kohya-ss module names). */
#include "test.h"

#include <cjson/cJSON.h>

#include "libmerge/keymap.h"
#include "libmerge/source.h"
#include "support/manifest_source.h"

#define SD15_LDM FIXTURE("golden/sd15/sd15_ldm_manifest.json")
#define SD15_DIF FIXTURE("golden/sd15/sd15_diffusers_manifest.json")
#define SDXL_LDM FIXTURE("golden/manifests/sdxl_base_1.0_checkpoint_keys.json")
#define SSD1B_LDM FIXTURE("golden/manifests/ssd1b_unet_keys.json")

static lm_source *sd15_diffusers(int with_vae_te, const char *unet_prefix)
{
    lm_source *s = NULL;
    if (manifest_source_new(&s, "sd15-diffusers", NULL)) return NULL;
    int rc = manifest_source_add(s, SD15_DIF, "components.unet.tensors", NULL, unet_prefix, NULL);
    if (!rc && with_vae_te) rc = manifest_source_add(s, SD15_DIF, "components.vae.tensors", NULL, "vae.", NULL);
    if (!rc && with_vae_te) rc = manifest_source_add(s, SD15_DIF, "components.text_encoder.tensors", NULL, "text_encoder.", NULL);
    if (rc) { lm_source_close(s); return NULL; }
    return s;
}

static lm_source *ldm_manifest(const char *path)
{
    lm_source *s = NULL;
    return manifest_source_open(&s, path, "tensors", NULL, NULL) ? NULL : s;
}

/* The diffusers form of an LDM checkpoint, by our own conversion: names
 * converted, conv 1×1 ↔ linear and transposes applied to shapes, OpenCLIP's
 * packed in_proj split into q/k/v_proj, logit_scale dropped. */
static lm_source *to_diffusers(const lm_source *ldm, lm_arch arch)
{
    lm_source *s = NULL;
    if (manifest_source_new(&s, "converted", NULL)) return NULL;
    for (size_t i = 0; i < lm_source_count(ldm); i++) {
        const lm_entry *e = lm_source_entry(ldm, i);
        char out[512];
        int rs = 0;
        int64_t shape[LM_MAX_DIMS];
        memcpy(shape, e->shape, sizeof shape);
        int nd = e->ndim;
        int rc = lm_layout_convert_name(arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, e->name, out, sizeof out, &rs);
        if (rc == LM_EUNSUPPORTED && strstr(e->name, "attn.in_proj_")) {
            const char *p = strstr(e->name, "resblocks.") + 10;
            int layer = atoi(p), w = strstr(e->name, "in_proj_weight") != NULL;
            const char *qkv[] = { "q", "k", "v" };
            shape[0] /= 3;
            for (int c = 0; c < 3; c++) {
                snprintf(out, sizeof out, "text_encoder_2.text_model.encoder.layers.%d.self_attn.%s_proj.%s", layer, qkv[c], w ? "weight" : "bias");
                if (manifest_source_put(s, out, e->dtype, nd, shape, NULL)) goto fail;
            }
            continue;
        }
        if (rc == LM_EUNSUPPORTED) continue;
        if (rc) goto fail;
        if (rs == LM_RESHAPE_CONV1X1) nd = 2;
        if (rs == LM_RESHAPE_TRANSPOSE) { shape[0] = e->shape[1]; shape[1] = e->shape[0]; }
        if (manifest_source_put(s, out, e->dtype, nd, shape, NULL)) goto fail;
    }
    return s;
fail:
    lm_source_close(s);
    return NULL;
}

static void test_detect_sd15_ldm(void)
{
    lm_source *s = ldm_manifest(SD15_LDM);
    CHECK(s);
    lm_model_info m;
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_MSG(m.arch == LM_ARCH_SD1, "arch %s: %s", lm_arch_name(m.arch), m.reason);
    CHECK_EQ_STR(lm_layout_name(m.layout), "ldm");
    CHECK(m.has_unet && m.has_vae && m.has_te && !m.has_te2);
    CHECK_EQ_INT(m.context_dim, 768);
    CHECK_EQ_INT(m.model_channels, 320);
}

static void test_detect_sd15_diffusers(void)
{
    lm_source *s = sd15_diffusers(1, "unet.");
    CHECK(s);
    lm_model_info m;
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_MSG(m.arch == LM_ARCH_SD1, "arch %s: %s", lm_arch_name(m.arch), m.reason);
    CHECK_EQ_STR(lm_layout_name(m.layout), "diffusers");
    CHECK(m.has_unet && m.has_vae && m.has_te && !m.has_te2);
    CHECK_EQ_INT(m.context_dim, 768);
    /* a bare UNet file */
    s = sd15_diffusers(0, NULL);
    CHECK(s);
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_EQ_STR(lm_arch_name(m.arch), "sd1");
    CHECK(m.has_unet && !m.has_vae && !m.has_te);
    CHECK_EQ_INT(m.model_channels, 320);
}

static void test_detect_sdxl_and_ssd1b(void)
{
    lm_source *s = ldm_manifest(SDXL_LDM);
    CHECK(s);
    lm_model_info m;
    lm_model_detect(s, &m);
    lm_source *d = to_diffusers(s, LM_ARCH_SDXL);
    lm_source_close(s);
    CHECK_MSG(m.arch == LM_ARCH_SDXL, "arch %s: %s", lm_arch_name(m.arch), m.reason);
    CHECK_EQ_INT(m.layout, LM_LAYOUT_LDM);
    CHECK(m.has_unet && m.has_vae && m.has_te && m.has_te2);
    CHECK_EQ_INT(m.context_dim, 2048);
    CHECK_EQ_INT(m.model_channels, 320);
    CHECK(d);
    lm_model_detect(d, &m);
    lm_source_close(d);
    CHECK_MSG(m.arch == LM_ARCH_SDXL && m.layout == LM_LAYOUT_DIFFUSERS, "%s/%s: %s", lm_arch_name(m.arch), lm_layout_name(m.layout), m.reason);
    CHECK(m.has_unet && m.has_vae && m.has_te && m.has_te2);
    s = ldm_manifest(SSD1B_LDM);
    CHECK(s);
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_MSG(m.arch == LM_ARCH_SSD1B, "arch %s: %s", lm_arch_name(m.arch), m.reason);
    CHECK_EQ_STR(lm_arch_name(m.arch), "ssd-1b");
    CHECK_EQ_INT(m.context_dim, 2048);
}

/* Test-size fixtures have SD1.5's / SDXL's structure with small widths. */
static void test_detect_tiny_fixtures(void)
{
    const struct { const char *path; lm_arch arch; lm_layout layout; int unet, vae; } cases[] = {
        { FIXTURE("golden/sd15/unet_ldm.safetensors"), LM_ARCH_SD1, LM_LAYOUT_LDM, 1, 0 },
        { FIXTURE("golden/sd15/unet_diffusers.safetensors"), LM_ARCH_SD1, LM_LAYOUT_DIFFUSERS, 1, 0 },
        { FIXTURE("golden/sdxl/unet_tiny_sdxl_original.safetensors"), LM_ARCH_SDXL, LM_LAYOUT_LDM, 1, 0 },
        { FIXTURE("golden/sdxl/unet_tiny_sdxl_diffusers.safetensors"), LM_ARCH_SDXL, LM_LAYOUT_DIFFUSERS, 1, 0 },
        { FIXTURE("golden/sd15/vae_ldm.safetensors"), LM_ARCH_UNKNOWN, LM_LAYOUT_LDM, 0, 1 },
        { FIXTURE("golden/sd15/vae_diffusers.safetensors"), LM_ARCH_UNKNOWN, LM_LAYOUT_DIFFUSERS, 0, 1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lm_source *s = NULL;
        lm_err err;
        lm_model_info m;
        CHECK_OK(lm_source_open(&s, cases[i].path, NULL, &err), &err);
        lm_model_detect(s, &m);
        lm_source_close(s);
        CHECK_MSG(m.arch == cases[i].arch && m.layout == cases[i].layout && m.has_unet == cases[i].unet &&
                  m.has_vae == cases[i].vae, "%s: %s/%s: %s", cases[i].path, lm_arch_name(m.arch), lm_layout_name(m.layout), m.reason);
        CHECK(m.reason[0]);
    }
}

/* Schedule buffers and EMA scalars some SD1.x files carry change nothing. */
static void test_detect_ignores_extras(void)
{
    lm_source *s = ldm_manifest(SD15_LDM);
    CHECK(s);
    lm_err err;
    lm_model_info m;
    int rc = manifest_source_add(s, SD15_LDM, "optional_tensors", NULL, NULL, &err);
    size_t n = lm_source_count(s);
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(n, 1131 + 14);
    CHECK_MSG(m.arch == LM_ARCH_SD1 && m.layout == LM_LAYOUT_LDM, "%s/%s: %s", lm_arch_name(m.arch), lm_layout_name(m.layout), m.reason);
}

/* SDXL refiner: label_emb, 4 levels, context 1280, 384 channels — refused by name. */
static void test_detect_refiner(void)
{
    lm_source *s = NULL;
    lm_model_info m;
    const struct { const char *name; int nd; int64_t shape[4]; } ents[] = {
        { "model.diffusion_model.input_blocks.0.0.weight", 4, { 384, 4, 3, 3 } },
        { "model.diffusion_model.label_emb.0.0.weight", 2, { 1536, 2560 } },
        { "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", 2, { 768, 1280 } },
        { "model.diffusion_model.input_blocks.11.0.in_layers.0.weight", 1, { 1536 } },
        { "model.diffusion_model.middle_block.1.proj_in.weight", 2, { 1536, 1536 } },
    };
    CHECK_OK(manifest_source_new(&s, "refiner", NULL), NULL);
    for (size_t i = 0; i < sizeof ents / sizeof ents[0]; i++)
        manifest_source_put(s, ents[i].name, LM_DT_F16, ents[i].nd, ents[i].shape, NULL);
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_EQ_INT(m.arch, LM_ARCH_UNKNOWN);
    CHECK_EQ_INT(m.layout, LM_LAYOUT_LDM);
    CHECK_EQ_INT(m.context_dim, 1280);
    CHECK_EQ_INT(m.model_channels, 384);
    CHECK_MSG(strstr(m.reason, "4 levels") && strstr(m.reason, "refiner"), "%s", m.reason);
}

static void test_detect_unknown(void)
{
    lm_source *s = NULL;
    lm_model_info m;
    int64_t sh[2] = { 4, 4 };
    /* mixed layouts */
    CHECK_OK(manifest_source_new(&s, "mixed", NULL), NULL);
    manifest_source_put(s, "model.diffusion_model.input_blocks.0.0.weight", LM_DT_F32, 2, sh, NULL);
    manifest_source_put(s, "down_blocks.0.resnets.0.conv1.weight", LM_DT_F32, 2, sh, NULL);
    lm_model_detect(s, &m);
    lm_source_close(s);
    CHECK_EQ_INT(m.arch, LM_ARCH_UNKNOWN);
    CHECK_EQ_INT(m.layout, LM_LAYOUT_UNKNOWN);
    CHECK_MSG(strstr(m.reason, "mixes"), "%s", m.reason);
    /* nothing known */
    CHECK_OK(manifest_source_new(&s, "other", NULL), NULL);
    manifest_source_put(s, "encoder.layers.0.weight_x", LM_DT_F32, 2, sh, NULL);
    manifest_source_put(s, "alphas_cumprod", LM_DT_F32, 2, sh, NULL);
    lm_model_detect(s, &m);
    CHECK_EQ_INT(m.arch, LM_ARCH_UNKNOWN);
    CHECK(m.reason[0]);
    /* and a key map refuses such a base, saying why */
    lm_keymap *km = NULL;
    lm_err err;
    lm_source_close(s);
    CHECK_OK(manifest_source_new(&s, "vae-only", NULL), NULL);
    manifest_source_put(s, "first_stage_model.decoder.conv_in.weight", LM_DT_F32, 2, sh, NULL);
    CHECK_EQ_INT(lm_keymap_build(&km, s, &err), LM_EUNSUPPORTED);
    lm_source_close(s);
    CHECK(km == NULL);
    CHECK_MSG(strstr(err.msg, "VAE only"), "%s", err.msg);
}

/* A module list: name, ΔW shape, component, expected row0 (-1: don't care). */
typedef struct mod { char name[256]; int ndim; int64_t shape[4]; lm_component comp; int64_t row0; } mod;
typedef struct mods { mod *v; size_t n, cap; } mods;

static void mods_add(mods *m, const char *name, int ndim, const int64_t *shape, lm_component comp, int64_t row0)
{
    if (m->n == m->cap) { m->cap = m->cap ? 2 * m->cap : 256; m->v = realloc(m->v, m->cap * sizeof *m->v); }
    mod *x = &m->v[m->n++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim;
    memcpy(x->shape, shape, (size_t)ndim * sizeof *shape);
    x->comp = comp;
    x->row0 = row0;
}

/* kohya-named LoRA tensor list → modules with ΔW shape [up0, down1, down2, down3]. */
static mods lcm_modules(const char *path)
{
    mods m = { 0 };
    lm_source *s = NULL;
    if (manifest_source_open(&s, path, "tensors", NULL, NULL)) return m;
    const char *suf = ".lora_down.weight";
    for (size_t i = 0; i < lm_source_count(s); i++) {
        const lm_entry *down = lm_source_entry(s, i);
        size_t len = strlen(down->name);
        if (len <= strlen(suf) || strcmp(down->name + len - strlen(suf), suf)) continue;
        char name[256], upn[300];
        snprintf(name, sizeof name, "%.*s", (int)(len - strlen(suf)), down->name);
        snprintf(upn, sizeof upn, "%s.lora_up.weight", name);
        int64_t u = lm_source_find(s, upn);
        if (u < 0) continue;
        int64_t shape[4] = { lm_source_entry(s, (size_t)u)->shape[0], down->shape[1], 1, 1 };
        if (down->ndim == 4) { shape[2] = down->shape[2]; shape[3] = down->shape[3]; }
        mods_add(&m, name, down->ndim, shape, LM_COMP_UNET, -1);
    }
    lm_source_close(s);
    return m;
}

/* kohya_lora_names_*.json list at key: lora_name + weight_shape. */
static void kohya_modules(mods *m, const char *path, const char *key, lm_component comp, int packed_rows)
{
    char *t = manifest_read_file(path, NULL);
    cJSON *j = t ? cJSON_Parse(t) : NULL;
    free(t);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, key)) {
        const cJSON *sh = cJSON_GetObjectItem(e, "weight_shape"), *d;
        int64_t shape[4];
        int nd = 0;
        cJSON_ArrayForEach(d, sh) shape[nd++] = (int64_t)d->valuedouble;
        const char *name = cJSON_GetObjectItem(e, "lora_name")->valuestring;
        int64_t row0 = -1;
        if (packed_rows) {
            row0 = strstr(name, "_q_proj") ? 0 : strstr(name, "_k_proj") ? packed_rows : strstr(name, "_v_proj") ? 2 * packed_rows : 0;
        }
        mods_add(m, name, nd, shape, comp, row0);
    }
    cJSON_Delete(j);
}

/* Every module maps to exactly one base tensor (distinct per module) of a
 * fitting shape. */
static const char *map_all(const lm_source *base, const mods *m, size_t want, char *why, size_t whyn)
{
    lm_keymap *km = NULL;
    lm_err err;
    if (m->n != want) { snprintf(why, whyn, "%zu modules, expected %zu", m->n, want); return why; }
    if (lm_keymap_build(&km, base, &err)) { char b[1400]; snprintf(why, whyn, "build: %s", lm_err_format(&err, b, sizeof b)); return why; }
    int64_t *seen = calloc(m->n, sizeof *seen);
    const char *fail = NULL;
    for (size_t i = 0; i < m->n && !fail; i++) {
        lm_target t;
        const mod *x = &m->v[i];
        if (lm_keymap_find(km, x->name, x->comp, &t) < 0) { snprintf(why, whyn, "%s unmatched", x->name); fail = why; break; }
        if (lm_keymap_check_fit(km, x->name, &t, x->ndim, x->shape, &err)) {
            char b[1400];
            snprintf(why, whyn, "%s", lm_err_format(&err, b, sizeof b));
            fail = why;
            break;
        }
        if (x->row0 >= 0 && t.row0 != x->row0) { snprintf(why, whyn, "%s row0 %lld, expected %lld", x->name, (long long)t.row0, (long long)x->row0); fail = why; }
        seen[i] = t.tensor * 4 + t.row0 / (t.rows ? t.rows : 1);
        for (size_t k = 0; k < i && !fail; k++)
            if (seen[k] == seen[i]) { snprintf(why, whyn, "%s and %s share a target", m->v[k].name, x->name); fail = why; }
    }
    free(seen);
    lm_keymap_free(km);
    return fail;
}

static void lcm_case(const char *lora_keys, const lm_source *base, size_t want)
{
    char why[2048];
    mods m = lcm_modules(lora_keys);
    const char *fail = map_all(base, &m, want, why, sizeof why);
    free(m.v);
    CHECK_MSG(!fail, "%s", fail);
}

static void test_keymap_lcm_sd15(void)
{
    lm_source *ldm = ldm_manifest(SD15_LDM), *dif = sd15_diffusers(1, "unet."), *bare = sd15_diffusers(0, NULL);
    CHECK(ldm && dif && bare);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_sd15_keys.json"), ldm, 278);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_sd15_keys.json"), dif, 278);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_sd15_keys.json"), bare, 278);
    lm_source_close(ldm);
    lm_source_close(dif);
    lm_source_close(bare);
}

static void test_keymap_lcm_sdxl(void)
{
    lm_source *ldm = ldm_manifest(SDXL_LDM);
    CHECK(ldm);
    lm_source *dif = to_diffusers(ldm, LM_ARCH_SDXL);
    CHECK(dif);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_sdxl_keys.json"), ldm, 788);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_sdxl_keys.json"), dif, 788);
    lm_source_close(ldm);
    lm_source_close(dif);
}

static void test_keymap_lcm_ssd1b(void)
{
    lm_source *ldm = ldm_manifest(SSD1B_LDM);
    CHECK(ldm);
    lm_source *dif = to_diffusers(ldm, LM_ARCH_SSD1B);
    CHECK(dif);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_ssd1b_keys.json"), ldm, 423);
    lcm_case(FIXTURE("golden/manifests/lcm_lora_ssd1b_keys.json"), dif, 423);
    lm_source_close(ldm);
    lm_source_close(dif);
}

static void test_keymap_kohya_sd15(void)
{
    const char *path = FIXTURE("golden/manifests/kohya_lora_names_sd15.json");
    mods m = { 0 };
    kohya_modules(&m, path, "unet", LM_COMP_UNET, 0);
    kohya_modules(&m, path, "text_encoder", LM_COMP_TE, 0);
    lm_source *ldm = ldm_manifest(SD15_LDM), *dif = sd15_diffusers(1, "unet.");
    char why[2048];
    const char *f1 = ldm ? map_all(ldm, &m, 278 + 72, why, sizeof why) : "no base";
    const char *f2 = !f1 && dif ? map_all(dif, &m, 278 + 72, why, sizeof why) : f1;
    free(m.v);
    lm_source_close(ldm);
    lm_source_close(dif);
    CHECK_MSG(!f1 && !f2, "%s", f1 ? f1 : f2);
}

static void test_keymap_kohya_sdxl(void)
{
    const char *path = FIXTURE("golden/manifests/kohya_lora_names_sdxl.json");
    mods packed = { 0 }, plain = { 0 };
    for (int k = 0; k < 2; k++) {
        mods *m = k ? &plain : &packed;
        kohya_modules(m, path, "unet", LM_COMP_UNET, 0);
        kohya_modules(m, path, "text_encoder_1", LM_COMP_TE, 0);
        kohya_modules(m, path, "text_encoder_2", LM_COMP_TE2, k ? 0 : 1280);
    }
    lm_source *ldm = ldm_manifest(SDXL_LDM);
    lm_source *dif = ldm ? to_diffusers(ldm, LM_ARCH_SDXL) : NULL;
    char why[2048];
    /* LDM base: te2 q/k/v land on row blocks 0, 1280, 2560 of in_proj_weight */
    const char *f1 = ldm ? map_all(ldm, &packed, 788 + 72 + 192, why, sizeof why) : "no base";
    const char *f2 = !f1 && dif ? map_all(dif, &plain, 788 + 72 + 192, why, sizeof why) : f1;
    free(packed.v);
    free(plain.v);
    lm_source_close(ldm);
    lm_source_close(dif);
    CHECK_MSG(!f1 && !f2, "%s", f1 ? f1 : f2);
}

/* The other conventions' spellings of the same modules. */
static void test_keymap_spellings(void)
{
    lm_source *sd = ldm_manifest(SD15_LDM), *xl = ldm_manifest(SDXL_LDM);
    CHECK(sd && xl);
    lm_keymap *a = NULL, *b = NULL;
    lm_err err;
    CHECK_OK(lm_keymap_build(&a, sd, &err), &err);
    CHECK_OK(lm_keymap_build(&b, xl, &err), &err);
    const char *q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    const char *o = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0.weight";
    const char *c = "model.diffusion_model.output_blocks.2.1.conv.weight";
    const struct { lm_keymap *km; const char *name; lm_component comp; const char *want; int64_t row0; } cases[] = {
        { a, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", LM_COMP_UNET, q, 0 },
        { a, "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", LM_COMP_UNET, q, 0 },
        { a, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", LM_COMP_UNET, q, 0 },
        { a, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", LM_COMP_UNET, q, 0 },
        { a, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora", LM_COMP_UNET, q, 0 },
        { a, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora", LM_COMP_UNET, q, 0 },
        { a, "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora", LM_COMP_UNET, o, 0 },
        { a, "base_model.model.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0", LM_COMP_UNET, o, 0 },
        { a, "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0", LM_COMP_UNET, o, 0 },
        { a, "lora_unet_up_blocks_0_upsamplers_0_conv", LM_COMP_UNET, c, 0 },
        { a, "lycoris_up_blocks_0_upsamplers_0_conv", LM_COMP_UNET, c, 0 },
        { a, "lora_te_text_model_encoder_layers_11_mlp_fc2", LM_COMP_TE, "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight", 0 },
        { a, "text_encoder.text_model.encoder.layers.0.self_attn.k_proj", LM_COMP_TE, "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight", 0 },
        { a, "base_model.model.text_model.encoder.layers.0.self_attn.k_proj", LM_COMP_TE, "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight", 0 },
        { b, "lora_te2_text_model_encoder_layers_0_self_attn_v_proj", LM_COMP_TE2, "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", 2560 },
        { b, "text_encoder_2.text_model.encoder.layers.5.self_attn.k_proj", LM_COMP_TE2, "conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_weight", 1280 },
        { b, "text_model.encoder.layers.5.self_attn.q_proj", LM_COMP_TE2, "conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_weight", 0 },
        { b, "text_model.encoder.layers.5.self_attn.q_proj", LM_COMP_TE, "conditioner.embedders.0.transformer.text_model.encoder.layers.5.self_attn.q_proj.weight", 0 },
        { b, "lora_te2_text_model_encoder_layers_31_self_attn_out_proj", LM_COMP_TE2, "conditioner.embedders.1.model.transformer.resblocks.31.attn.out_proj.weight", 0 },
        { b, "lora_te1_text_model_encoder_layers_0_mlp_fc1", LM_COMP_TE, "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight", 0 },
        { b, "lora_unet_input_blocks_4_1_proj_in", LM_COMP_UNET, "model.diffusion_model.input_blocks.4.1.proj_in.weight", 0 },
        { b, "lora_unet_down_blocks_1_attentions_0_proj_in", LM_COMP_UNET, "model.diffusion_model.input_blocks.4.1.proj_in.weight", 0 },
        { b, "lora_unet_label_emb_0_0", LM_COMP_UNET, "model.diffusion_model.label_emb.0.0.weight", 0 },
        { b, "lora_unet_add_embedding_linear_1", LM_COMP_UNET, "model.diffusion_model.label_emb.0.0.weight", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lm_target t = { -7, -7, -7, -7 };
        int64_t k = lm_keymap_find(cases[i].km, cases[i].name, cases[i].comp, &t);
        const lm_source *base = cases[i].km == a ? sd : xl;
        CHECK_MSG(k >= 0, "%s unmatched", cases[i].name);
        CHECK_MSG(!strcmp(lm_source_entry(base, (size_t)k)->name, cases[i].want), "%s -> %s", cases[i].name, lm_source_entry(base, (size_t)k)->name);
        CHECK_EQ_INT(t.row0, cases[i].row0);
        CHECK_EQ_INT(t.tensor, k);
        const char *bn = lm_source_entry(base, (size_t)t.bias) ? lm_source_entry(base, (size_t)t.bias)->name : "";
        CHECK_MSG(t.bias < 0 || (strstr(bn, "bias") && !strncmp(bn, cases[i].want, strlen(cases[i].want) - 7)),
                  "%s: bias %s", cases[i].name, bn);
    }
    /* packed rows carry their bias; q/k/v have none in CLIP ViT-L? they do: check one */
    lm_target t;
    CHECK(lm_keymap_find(b, "lora_te2_text_model_encoder_layers_0_self_attn_v_proj", LM_COMP_TE2, &t) >= 0);
    CHECK_EQ_STR(lm_source_entry(xl, (size_t)t.bias)->name, "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias");
    CHECK_EQ_INT(t.rows, 1280);
    /* '_' is never turned back into '.': a near miss is unmatched, not guessed */
    CHECK_EQ_INT(lm_keymap_find(a, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q_x", LM_COMP_UNET, NULL), -1);
    CHECK_EQ_INT(lm_keymap_find(a, "lora_unet_down.blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", LM_COMP_UNET, NULL), -1);
    CHECK_EQ_INT(lm_keymap_find(b, "lora_unet_down_blocks_0_attentions_0_proj_in", LM_COMP_UNET, NULL), -1);
    /* the VAE is not a LoRA target */
    CHECK_EQ_INT(lm_keymap_find(a, "first_stage_model.decoder.conv_in", LM_COMP_UNET, NULL), -1);
    /* 391 UNet weights × 9 spellings + 99 text-encoder weights × 6, all distinct */
    CHECK_EQ_INT(lm_keymap_size(a), 391 * 9 + 99 * 6);
    CHECK_EQ_INT(lm_keymap_info(b)->arch, LM_ARCH_SDXL);
    lm_keymap_free(a);
    lm_keymap_free(b);
    lm_source_close(sd);
    lm_source_close(xl);
}

/* An SD1.5 module on an SDXL base: both shapes and the likely cause. */
static void test_keymap_shape_mismatch(void)
{
    lm_source *xl = ldm_manifest(SDXL_LDM), *sd = ldm_manifest(SD15_LDM);
    CHECK(xl && sd);
    lm_keymap *km = NULL, *k2 = NULL;
    lm_err err;
    CHECK_OK(lm_keymap_build(&km, xl, &err), &err);
    CHECK_OK(lm_keymap_build(&k2, sd, &err), &err);
    lm_target t;
    const char *name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k";
    int64_t shape[2] = { 640, 768 };
    CHECK(lm_keymap_find(km, name, LM_COMP_UNET, &t) >= 0);
    int rc = lm_keymap_check_fit(km, name, &t, 2, shape, &err);
    int64_t xs[2] = { 640, 2048 };
    lm_target t2;
    CHECK(lm_keymap_find(k2, name, LM_COMP_UNET, &t2) >= 0);
    int rc2 = lm_keymap_check_fit(k2, name, &t2, 2, xs, &err);
    char msg2[512];
    snprintf(msg2, sizeof msg2, "%s", err.msg);
    lm_err_clear(&err);
    lm_keymap_check_fit(km, name, &t, 2, shape, &err);
    /* linear onto a 1×1 conv and the right shape pass */
    int64_t conv[4] = { 320, 320, 1, 1 }, lin[2] = { 320, 320 };
    int rc3 = lm_keymap_find(k2, "lora_unet_down_blocks_0_attentions_0_proj_in", LM_COMP_UNET, &t2) < 0 ? -1 :
              lm_keymap_check_fit(k2, "x", &t2, 2, lin, NULL) | lm_keymap_check_fit(k2, "x", &t2, 4, conv, NULL);
    lm_keymap_free(km);
    lm_keymap_free(k2);
    lm_source_close(xl);
    lm_source_close(sd);
    CHECK_EQ_INT(rc, LM_EMISMATCH);
    CHECK_EQ_STR(err.key, name);
    CHECK_MSG(strstr(err.msg, "[640,768]") && strstr(err.msg, "[640,2048]") && strstr(err.msg, "an SD1.x LoRA on an SDXL base?"), "%s", err.msg);
    CHECK_EQ_INT(rc2, LM_EMISMATCH);
    CHECK_MSG(strstr(msg2, "an SDXL LoRA on an SD1.x base?"), "%s", msg2);
    CHECK_EQ_INT(rc3, 0);
}

/* SD2.x in the LDM layout: the OpenCLIP ViT-H text encoder under
 * cond_stage_model.model. packs q/k/v in in_proj_weight [3·1024, 1024]. */
static void test_keymap_sd2_packed_te(void)
{
    lm_source *s = NULL;
    lm_keymap *km = NULL;
    lm_err err;
    const struct { const char *name; int nd; int64_t shape[4]; } ents[] = {
        { "model.diffusion_model.input_blocks.0.0.weight", 4, { 320, 4, 3, 3 } },
        { "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 2, { 320, 1024 } },
        { "model.diffusion_model.input_blocks.1.1.proj_in.weight", 2, { 320, 320 } },
        { "model.diffusion_model.input_blocks.11.0.in_layers.0.weight", 1, { 1280 } },
        { "cond_stage_model.model.token_embedding.weight", 2, { 49408, 1024 } },
        { "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", 2, { 3072, 1024 } },
        { "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", 1, { 3072 } },
        { "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight", 2, { 4096, 1024 } },
    };
    CHECK_OK(manifest_source_new(&s, "sd2-ldm", &err), &err);
    for (size_t i = 0; i < sizeof ents / sizeof ents[0]; i++)
        CHECK_OK(manifest_source_put(s, ents[i].name, LM_DT_F16, ents[i].nd, ents[i].shape, &err), &err);
    lm_model_info m;
    lm_model_detect(s, &m);
    int rc = lm_keymap_build(&km, s, &err);
    lm_target k = { 0 }, fc = { 0 };
    int64_t ik = rc ? -2 : lm_keymap_find(km, "lora_te_text_model_encoder_layers_0_self_attn_k_proj", LM_COMP_TE, &k);
    int64_t ifc = rc ? -2 : lm_keymap_find(km, "text_encoder.text_model.encoder.layers.0.mlp.fc1", LM_COMP_TE, &fc);
    int64_t kshape[2] = { 1024, 1024 }, qkv[2] = { 3072, 1024 };
    int fit = rc ? -2 : lm_keymap_check_fit(km, "k", &k, 2, kshape, NULL);
    int misfit = rc ? -2 : lm_keymap_check_fit(km, "qkv", &k, 2, qkv, &err);
    lm_keymap_free(km);
    lm_source_close(s);
    CHECK_MSG(m.arch == LM_ARCH_SD2 && m.layout == LM_LAYOUT_LDM && m.has_te && m.has_unet, "%s: %s", lm_arch_name(m.arch), m.reason);
    CHECK_EQ_INT(m.context_dim, 1024);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(ik, 5);
    CHECK_EQ_INT(k.row0, 1024);
    CHECK_EQ_INT(k.rows, 1024);
    CHECK_EQ_INT(k.bias, 6);
    CHECK_EQ_INT(ifc, 7);
    CHECK_EQ_INT(fc.row0, 0);
    CHECK_EQ_INT(fc.rows, 4096);
    CHECK_EQ_INT(fit, 0);
    CHECK_EQ_INT(misfit, LM_EMISMATCH);
    CHECK_MSG(strstr(err.msg, "rows [1024,2048) of"), "%s", err.msg);
}

int main(void)
{
    RUN(test_detect_sd15_ldm);
    RUN(test_detect_sd15_diffusers);
    RUN(test_detect_sdxl_and_ssd1b);
    RUN(test_detect_tiny_fixtures);
    RUN(test_detect_ignores_extras);
    RUN(test_detect_refiner);
    RUN(test_detect_unknown);
    RUN(test_keymap_lcm_sd15);
    RUN(test_keymap_lcm_sdxl);
    RUN(test_keymap_lcm_ssd1b);
    RUN(test_keymap_kohya_sd15);
    RUN(test_keymap_kohya_sdxl);
    RUN(test_keymap_spellings);
    RUN(test_keymap_shape_mismatch);
    RUN(test_keymap_sd2_packed_te);
    TEST_EXIT();
}
