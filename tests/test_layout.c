/* Layout conversion (LDM <-> diffusers) against the golden weight files and
 * the full-size manifests. */
#include "test.h"

#include <cjson/cJSON.h>

#include "libmerge/keymap.h"
#include "libmerge/source.h"
#include "support/manifest_source.h"

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static int same_shape(const lm_entry *a, const lm_entry *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++) if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

/* [C,C,1,1] vs [C,C] */
static int squeezed(const lm_entry *conv, const lm_entry *lin)
{
    return conv->ndim == 4 && lin->ndim == 2 && conv->shape[0] == lin->shape[0] &&
           conv->shape[1] == lin->shape[1] && conv->shape[2] == 1 && conv->shape[3] == 1;
}

/* Every name of `from` converts onto a distinct name of `to` with the same
 * shape (or the squeezed/unsqueezed one when *reshape says so), and back.
 * `strip` is the diffusers component prefix the bare diffusers file lacks. */
static const char *check_files(lm_arch arch, const lm_source *ldm, const lm_source *dif, const char *strip,
                               int *n_reshaped, char *why, size_t whyn)
{
    size_t n = lm_source_count(ldm);
    if (n != lm_source_count(dif)) { snprintf(why, whyn, "counts %zu vs %zu", n, lm_source_count(dif)); return why; }
    char *hit = calloc(n, 1);
    *n_reshaped = 0;
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(ldm, i);
        char out[512], back[512];
        int reshape = -1, rs2 = -1;
        if (lm_layout_convert_name(arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, e->name, out, sizeof out, &reshape)) {
            snprintf(why, whyn, "%s does not convert", e->name); free(hit); return why;
        }
        if (!starts(out, strip)) { snprintf(why, whyn, "%s -> %s lacks %s", e->name, out, strip); free(hit); return why; }
        int64_t j = lm_source_find(dif, out + strlen(strip));
        if (j < 0) { snprintf(why, whyn, "%s -> %s not in diffusers file", e->name, out); free(hit); return why; }
        const lm_entry *f = lm_source_entry(dif, (size_t)j);
        int ok = reshape == LM_RESHAPE_CONV1X1 ? squeezed(e, f) : (reshape == LM_RESHAPE_NONE && same_shape(e, f));
        if (!ok) { snprintf(why, whyn, "%s -> %s shape mismatch (reshape %d)", e->name, out, reshape); free(hit); return why; }
        if (hit[j]++) { snprintf(why, whyn, "%s -> %s twice", e->name, out); free(hit); return why; }
        *n_reshaped += reshape != 0;
        /* back again, from the bare name */
        if (lm_layout_convert_name(arch, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, f->name, back, sizeof back, &rs2) ||
            strcmp(back, e->name) || rs2 != reshape) {
            snprintf(why, whyn, "%s does not convert back to %s (got %s)", f->name, e->name, back); free(hit); return why;
        }
    }
    free(hit);
    return NULL;
}

static void files_case(lm_arch arch, const char *ldm_path, const char *dif_path, const char *strip, int want_reshaped)
{
    lm_source *a = NULL, *b = NULL;
    lm_err err;
    char why[600];
    int nr;
    CHECK_OK(lm_source_open(&a, ldm_path, NULL, &err), &err);
    if (lm_source_open(&b, dif_path, NULL, &err)) { lm_source_close(a); CHECK_OK(-1, &err); }
    const char *fail = check_files(arch, a, b, strip, &nr, why, sizeof why);
    lm_source_close(a);
    lm_source_close(b);
    CHECK_MSG(!fail, "%s", fail);
    CHECK_EQ_INT(nr, want_reshaped);
}

static void test_layout_sd15_unet_golden_files(void)
{
    files_case(LM_ARCH_SD1, FIXTURE("golden/sd15/unet_ldm.safetensors"), FIXTURE("golden/sd15/unet_diffusers.safetensors"), "unet.", 0);
}

static void test_layout_sd15_vae_golden_files(void)
{
    /* q, k, v, proj_out weights of the encoder's and the decoder's mid attention */
    files_case(LM_ARCH_SD1, FIXTURE("golden/sd15/vae_ldm.safetensors"), FIXTURE("golden/sd15/vae_diffusers.safetensors"), "vae.", 8);
}

static void test_layout_sdxl_tiny_unet_golden_files(void)
{
    files_case(LM_ARCH_SDXL, FIXTURE("golden/sdxl/unet_tiny_sdxl_original.safetensors"),
               FIXTURE("golden/sdxl/unet_tiny_sdxl_diffusers.safetensors"), "unet.", 0);
}

static cJSON *load_json(const char *path)
{
    char *t = manifest_read_file(path, NULL);
    cJSON *j = t ? cJSON_Parse(t) : NULL;
    free(t);
    return j;
}

/* sd15_ldm_manifest.json gives, per LDM tensor, the diffusers component, name and shape. */
static void test_layout_sd15_full_manifest(void)
{
    cJSON *j = load_json(FIXTURE("golden/sd15/sd15_ldm_manifest.json"));
    CHECK(j);
    const cJSON *t;
    int n = 0, reshaped = 0, bad = 0;
    char first[4096] = "";
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(j, "tensors")) {
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        const cJSON *d = cJSON_GetObjectItem(t, "diffusers");
        char want[512], out[512], back[512];
        snprintf(want, sizeof want, "%s.%s", cJSON_GetObjectItem(d, "component")->valuestring,
                 cJSON_GetObjectItem(d, "name")->valuestring);
        int rs = -1, rs2 = -1;
        int rc = lm_layout_convert_name(LM_ARCH_SD1, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, name, out, sizeof out, &rs);
        int rc2 = lm_layout_convert_name(LM_ARCH_SD1, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, want, back, sizeof back, &rs2);
        int shape_differs = cJSON_GetArraySize(cJSON_GetObjectItem(t, "shape")) != cJSON_GetArraySize(cJSON_GetObjectItem(d, "shape"));
        if (rc || rc2 || strcmp(out, want) || strcmp(back, name) || rs != rs2 || (rs == LM_RESHAPE_CONV1X1) != shape_differs) {
            if (!bad++) snprintf(first, sizeof first, "%s -> %s (rc %d), want %s; back %s (rc %d)", name, out, rc, want, back, rc2);
        }
        reshaped += rs != 0;
        n++;
    }
    cJSON_Delete(j);
    CHECK_MSG(!bad, "%d names wrong, first: %s", bad, first);
    CHECK_EQ_INT(n, 1131);
    CHECK_EQ_INT(reshaped, 8);
}

/* unet_module_map_{sd15,sdxl}.json: module paths diffusers <-> original with parameter names. */
static void module_map_case(lm_arch arch, const char *path, int want_modules)
{
    cJSON *j = load_json(path);
    CHECK(j);
    const cJSON *m;
    int n = 0, bad = 0;
    char first[4096] = "";
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(j, "modules")) {
        const char *dp = cJSON_GetObjectItem(m, "diffusers")->valuestring;
        const char *op = cJSON_GetObjectItem(m, "original")->valuestring;
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(m, "params")) {
            char ldm[512], dif[512], out[512], back[512];
            snprintf(ldm, sizeof ldm, "model.diffusion_model.%s.%s", op, p->string);
            snprintf(dif, sizeof dif, "unet.%s.%s", dp, p->string);
            int rc = lm_layout_convert_name(arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, ldm, out, sizeof out, NULL);
            int rc2 = lm_layout_convert_name(arch, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, dif, back, sizeof back, NULL);
            if (rc || rc2 || strcmp(out, dif) || strcmp(back, ldm))
                if (!bad++) snprintf(first, sizeof first, "%s -> %s (rc %d); %s -> %s (rc %d)", ldm, out, rc, dif, back, rc2);
        }
        n++;
    }
    cJSON_Delete(j);
    CHECK_MSG(!bad, "%d names wrong, first: %s", bad, first);
    CHECK_EQ_INT(n, want_modules);
}

static void test_layout_sd15_module_map(void) { module_map_case(LM_ARCH_SD1, FIXTURE("golden/manifests/unet_module_map_sd15.json"), 391); }
static void test_layout_sdxl_module_map(void) { module_map_case(LM_ARCH_SDXL, FIXTURE("golden/manifests/unet_module_map_sdxl.json"), 1050); }

static void test_layout_sdxl_tiny_key_map(void)
{
    cJSON *j = load_json(FIXTURE("golden/sdxl/unet_tiny_sdxl_key_map.json"));
    CHECK(j);
    const cJSON *kv;
    int n = 0, bad = 0;
    char first[4096] = "";
    cJSON_ArrayForEach(kv, cJSON_GetObjectItem(j, "diffusers_to_original")) {
        char out[512], back[512], pre[512];
        snprintf(pre, sizeof pre, "unet.%s", kv->string);
        int rc = lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, kv->string, out, sizeof out, NULL);
        int rc2 = lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, kv->valuestring, back, sizeof back, NULL);
        if (rc || rc2 || strcmp(out, kv->valuestring) || strcmp(back, pre))
            if (!bad++) snprintf(first, sizeof first, "%s -> %s (rc %d), want %s", kv->string, out, rc, kv->valuestring);
        n++;
    }
    cJSON_Delete(j);
    CHECK_MSG(!bad, "%d names wrong, first: %s", bad, first);
    CHECK_EQ_INT(n, 718);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Round trip of every name of a full checkpoint manifest; names that cannot
 * be expressed (packed OpenCLIP q/k/v, logit_scale) must say so with
 * LM_EUNSUPPORTED and be exactly those. */
static void roundtrip_case(lm_arch arch, const char *path, int want_total, int want_unsupported)
{
    lm_source *s = NULL;
    lm_err err;
    CHECK_OK(manifest_source_open(&s, path, "tensors", NULL, &err), &err);
    int unsupported = 0, bad = 0;
    char first[4096] = "";
    char **seen = calloc(lm_source_count(s), sizeof *seen);
    for (size_t i = 0; i < lm_source_count(s); i++) {
        const char *name = lm_source_entry(s, i)->name;
        char out[512], back[512];
        int rc = lm_layout_convert_name(arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, name, out, sizeof out, NULL);
        if (rc == LM_EUNSUPPORTED) {
            if (!strstr(name, "attn.in_proj_") && !strstr(name, "logit_scale"))
                if (!bad++) snprintf(first, sizeof first, "%s unsupported", name);
            unsupported++;
            continue;
        }
        int rc2 = rc ? rc : lm_layout_convert_name(arch, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, out, back, sizeof back, NULL);
        if (rc || rc2 || strcmp(back, name))
            if (!bad++) snprintf(first, sizeof first, "%s -> %s (rc %d) -> %s (rc %d)", name, out, rc, back, rc2);
        seen[i] = strdup(out);
    }
    /* distinct images */
    size_t k = 0, ns = lm_source_count(s);
    for (size_t i = 0; i < ns; i++) if (seen[i]) seen[k++] = seen[i];
    qsort(seen, k, sizeof *seen, cmp_str);
    int dup = 0;
    for (size_t i = 0; i < k; i++) {
        if (i && strcmp(seen[i - 1], seen[i]) == 0) dup++;
    }
    for (size_t i = 0; i < k; i++) free(seen[i]);
    free(seen);
    int total = (int)lm_source_count(s);
    lm_source_close(s);
    CHECK_MSG(!bad, "%d names wrong, first: %s", bad, first);
    CHECK_EQ_INT(dup, 0);
    CHECK_EQ_INT(total, want_total);
    CHECK_EQ_INT(unsupported, want_unsupported);
}

/* SDXL base 1.0: 2515 tensors; te2 has 32 layers × (in_proj_weight, in_proj_bias) + logit_scale */
static void test_layout_sdxl_full_roundtrip(void)
{
    roundtrip_case(LM_ARCH_SDXL, FIXTURE("golden/manifests/sdxl_base_1.0_checkpoint_keys.json"), 2515, 65);
}

static void test_layout_ssd1b_roundtrip(void)
{
    roundtrip_case(LM_ARCH_SSD1B, FIXTURE("golden/manifests/ssd1b_unet_keys.json"), 944, 0);
}

static void test_layout_openclip_names(void)
{
    char out[256];
    int rs = -1;
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS,
             "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight", out, sizeof out, &rs), NULL);
    CHECK_EQ_STR(out, "text_encoder_2.text_model.encoder.layers.31.mlp.fc1.weight");
    CHECK_EQ_INT(rs, LM_RESHAPE_NONE);
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS,
             "conditioner.embedders.1.model.text_projection", out, sizeof out, &rs), NULL);
    CHECK_EQ_STR(out, "text_encoder_2.text_projection.weight");
    CHECK_EQ_INT(rs, LM_RESHAPE_TRANSPOSE);
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM,
             "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj.bias", out, sizeof out, &rs), NULL);
    CHECK_EQ_STR(out, "conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.bias");
    CHECK_EQ_INT(lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS,
                 "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", out, sizeof out, &rs), LM_EUNSUPPORTED);
    CHECK_EQ_INT(lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM,
                 "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.weight", out, sizeof out, &rs), LM_EUNSUPPORTED);
    /* SD2.x: the same OpenCLIP names under cond_stage_model.model. */
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SD2, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS,
             "cond_stage_model.model.ln_final.weight", out, sizeof out, &rs), NULL);
    CHECK_EQ_STR(out, "text_encoder.text_model.final_layer_norm.weight");
    /* bare te name is the first encoder; SDXL's first is ViT-L under embedders.0 */
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SDXL, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM,
             "text_model.encoder.layers.3.self_attn.q_proj.weight", out, sizeof out, &rs), NULL);
    CHECK_EQ_STR(out, "conditioner.embedders.0.transformer.text_model.encoder.layers.3.self_attn.q_proj.weight");
}

/* The structure rules refuse names the architecture does not have. */
static void test_layout_rejects(void)
{
    char out[256], tiny[8];
    struct { lm_arch a; lm_layout from; const char *name; int rc; } cases[] = {
        { LM_ARCH_SDXL, LM_LAYOUT_DIFFUSERS, "unet.down_blocks.0.attentions.0.proj_in.weight", LM_EINPUT },
        { LM_ARCH_SDXL, LM_LAYOUT_LDM, "model.diffusion_model.input_blocks.1.1.proj_in.weight", LM_EINPUT },
        { LM_ARCH_SDXL, LM_LAYOUT_LDM, "model.diffusion_model.input_blocks.9.0.in_layers.0.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "model.diffusion_model.input_blocks.12.0.in_layers.0.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "model.diffusion_model.label_emb.0.0.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "model.diffusion_model.input_blocks.11.0.op.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "model.diffusion_model.output_blocks.11.1.conv.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "model.diffusion_model.input_blocks.1.0.in_layers.1.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "model.diffusion_model.input_blocks.01.0.in_layers.0.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_DIFFUSERS, "unet.up_blocks.3.upsamplers.0.conv.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_DIFFUSERS, "vae.decoder.up_blocks.3.upsamplers.0.conv.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_DIFFUSERS, "vae.encoder.down_blocks.0.resnets.2.conv1.weight", LM_EINPUT },
        { LM_ARCH_SSD1B, LM_LAYOUT_LDM, "model.diffusion_model.middle_block.1.proj_in.weight", LM_EINPUT },
        { LM_ARCH_SSD1B, LM_LAYOUT_DIFFUSERS, "mid_block.resnets.1.conv1.weight", LM_EINPUT },
        { LM_ARCH_UNKNOWN, LM_LAYOUT_LDM, "model.diffusion_model.out.2.weight", LM_EINPUT },
        { LM_ARCH_SD1, LM_LAYOUT_LDM, "alphas_cumprod", LM_EINPUT },
        { LM_ARCH_SDXL, LM_LAYOUT_LDM, "conditioner.embedders.1.model.logit_scale", LM_EUNSUPPORTED },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lm_layout to = cases[i].from == LM_LAYOUT_LDM ? LM_LAYOUT_DIFFUSERS : LM_LAYOUT_LDM;
        int rc = lm_layout_convert_name(cases[i].a, cases[i].from, to, cases[i].name, out, sizeof out, NULL);
        CHECK_MSG(rc == cases[i].rc, "%s: rc %d (%s), expected %d", cases[i].name, rc, out, cases[i].rc);
        CHECK_EQ_STR(out, "");
    }
    CHECK_EQ_INT(lm_layout_convert_name(LM_ARCH_SD1, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS,
                 "model.diffusion_model.out.2.weight", tiny, sizeof tiny, NULL), LM_EUSAGE);
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SD1, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS,
             "model.diffusion_model.out.2.weight", out, sizeof out, NULL), NULL);
    CHECK_EQ_STR(out, "unet.conv_out.weight");
    /* older diffusers VAE attention names convert to LDM too */
    int rs = 0;
    CHECK_OK(lm_layout_convert_name(LM_ARCH_SD1, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM,
             "vae.decoder.mid_block.attentions.0.proj_attn.weight", out, sizeof out, &rs), NULL);
    CHECK_EQ_STR(out, "first_stage_model.decoder.mid.attn_1.proj_out.weight");
    CHECK_EQ_INT(rs, LM_RESHAPE_CONV1X1);
}

int main(void)
{
    RUN(test_layout_sd15_unet_golden_files);
    RUN(test_layout_sd15_vae_golden_files);
    RUN(test_layout_sdxl_tiny_unet_golden_files);
    RUN(test_layout_sd15_full_manifest);
    RUN(test_layout_sd15_module_map);
    RUN(test_layout_sdxl_module_map);
    RUN(test_layout_sdxl_tiny_key_map);
    RUN(test_layout_sdxl_full_roundtrip);
    RUN(test_layout_ssd1b_roundtrip);
    RUN(test_layout_openclip_names);
    RUN(test_layout_rejects);
    TEST_EXIT();
}
