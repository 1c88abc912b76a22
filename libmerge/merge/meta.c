/* Output metadata of a bake or a LoRA merge: what the inputs carried, plus
 *  - Stability AI's ModelSpec keys (modelspec.*, github.com/Stability-AI/ModelSpec),
 *  - AUTOMATIC1111's merge provenance: "sd_merge_recipe" (a JSON object describing this
 *    operation) and "sd_merge_models" (JSON: SHA-256 of each input → {name, legacy_hash,
 *    sd_merge_recipe of that input or null}), which its UI shows for a checkpoint,
 *  - our own recipe (LM_RECIPE_KEY), which lcm-verify reads back. */
#include "meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>

static int set(lmm_meta *m, const char *k, const char *v, int *rc)
{
    if (!*rc && v && lmm_meta_set(m, k, v)) *rc = LM_ENOMEM;
    return *rc;
}

/* sd_merge_models: one entry per input, plus whatever the base already listed. */
static char *merge_models_json(const lm_source *base, const lm_recipe *r, const char *const *legacy)
{
    cJSON *o = NULL;
    const char *prev = base ? lm_source_meta_get(base, "sd_merge_models") : NULL;
    if (prev) o = cJSON_Parse(prev);
    if (!cJSON_IsObject(o)) { cJSON_Delete(o); o = cJSON_CreateObject(); }
    if (!o) return NULL;
    for (size_t i = 0; i < r->n_inputs; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e) break;
        cJSON_AddStringToObject(e, "name", r->inputs[i].name);
        cJSON_AddStringToObject(e, "legacy_hash", legacy && legacy[i] ? legacy[i] : "");
        const char *rec = (i == 0 && base) ? lm_source_meta_get(base, "sd_merge_recipe") : NULL;
        cJSON *rj = rec ? cJSON_Parse(rec) : NULL;
        cJSON_AddItemToObject(e, "sd_merge_recipe", rj ? rj : cJSON_CreateNull());
        cJSON_DeleteItemFromObjectCaseSensitive(o, r->inputs[i].sha256);
        cJSON_AddItemToObject(o, r->inputs[i].sha256, e);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* sd_merge_recipe: A1111 writes {"type":"webui", "primary_model_hash", …, "interp_method",
 * "multiplier", …}; we keep its spirit with our own type and the inputs with their λ. */
static char *a1111_recipe_json(const lm_recipe *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    char type[64];
    snprintf(type, sizeof type, "libmerge-%s", r->tool);
    cJSON_AddStringToObject(o, "type", type);
    cJSON_AddStringToObject(o, "version", r->tool_version ? r->tool_version : LM_TOOL_VERSION);
    cJSON_AddStringToObject(o, "interp_method", r->operation);
    size_t first = 0;
    if (r->n_inputs && r->inputs[0].role && (!strcmp(r->inputs[0].role, "base") || !strcmp(r->inputs[0].role, "tuned"))) {
        cJSON_AddStringToObject(o, "primary_model_hash", r->inputs[0].sha256);
        first = 1;
    } else {
        cJSON_AddNullToObject(o, "primary_model_hash");
    }
    if (r->n_inputs > 1 && !strcmp(r->operation, "extract"))
        cJSON_AddStringToObject(o, "secondary_model_hash", r->inputs[1].sha256);
    cJSON *a = cJSON_AddArrayToObject(o, "loras");
    for (size_t i = first; a && i < r->n_inputs; i++) {
        if (!strcmp(r->operation, "extract")) break;
        cJSON *e = cJSON_CreateObject();
        if (!e) break;
        cJSON_AddStringToObject(e, "name", r->inputs[i].name);
        cJSON_AddStringToObject(e, "sha256", r->inputs[i].sha256);
        cJSON_AddNumberToObject(e, "multiplier", r->inputs[i].lambda);
        cJSON_AddStringToObject(e, "role", r->inputs[i].role ? r->inputs[i].role : "lora");
        cJSON_AddItemToArray(a, e);
    }
    cJSON_AddStringToObject(o, "dtype", r->dtype ? r->dtype : "keep");
    if (r->rank) cJSON_AddNumberToObject(o, "rank", r->rank);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static char *description(const lm_recipe *r)
{
    size_t cap = 256 + r->n_inputs * 300, len = 0;
    char *d = malloc(cap);
    if (!d) return NULL;
    len += (size_t)snprintf(d + len, cap - len, "%s %s:", r->tool, r->operation);
    for (size_t i = 0; i < r->n_inputs && len < cap; i++) {
        const char *role = r->inputs[i].role ? r->inputs[i].role : "lora";
        if (!strcmp(role, "base") || !strcmp(role, "tuned"))
            len += (size_t)snprintf(d + len, cap - len, " %s %s", role, r->inputs[i].name);
        else
            len += (size_t)snprintf(d + len, cap - len, "%s %.9g x %s (%s)", i ? " +" : "",
                                    r->inputs[i].lambda, r->inputs[i].name, role);
    }
    return d;
}

int lmm_build_meta(lmm_meta *m, const lm_source *keep, const lm_recipe *r, const char *const *legacy,
                   lm_arch arch, int is_lora, const char *title)
{
    int rc = 0;
    /* hashes of the input's data describe the input, not this file: not kept */
    static const char *const stale[] = { "modelspec.hash_sha256", "sshs_model_hash", "sshs_legacy_hash" };
    if (keep)
        for (size_t i = 0; i < lm_source_meta_count(keep); i++) {
            const char *k = lm_source_meta_key(keep, i);
            int skip = 0;
            for (size_t j = 0; j < sizeof stale / sizeof stale[0]; j++) skip |= !strcmp(k, stale[j]);
            if (!skip) set(m, k, lm_source_meta_value(keep, i), &rc);
        }
    if (!lmm_meta_get(m, "format")) set(m, "format", "pt", &rc);
    /* ModelSpec: architecture/implementation/resolution/prediction type describe the
     * base and survive a bake; title, date and description describe this file. */
    const char *ms_arch = lmm_modelspec_arch(arch, is_lora);
    set(m, "modelspec.sai_model_spec", "1.0.0", &rc);
    if (ms_arch && (is_lora || !lmm_meta_get(m, "modelspec.architecture")))
        set(m, "modelspec.architecture", ms_arch, &rc);
    if (ms_arch && (is_lora || !lmm_meta_get(m, "modelspec.implementation")))
        set(m, "modelspec.implementation", lmm_modelspec_impl(arch), &rc);
    if (!lmm_meta_get(m, "modelspec.resolution") && ms_arch)
        set(m, "modelspec.resolution", arch == LM_ARCH_SDXL || arch == LM_ARCH_SSD1B ? "1024x1024" : "512x512", &rc);
    if (!is_lora && !lmm_meta_get(m, "modelspec.prediction_type") && arch == LM_ARCH_SD1)
        set(m, "modelspec.prediction_type", "epsilon", &rc);
    set(m, "modelspec.title", title, &rc);
    char date[11];
    lmm_date(date);
    set(m, "modelspec.date", date, &rc);
    char *d = description(r);
    set(m, "modelspec.description", d, &rc);
    free(d);
    char *a = a1111_recipe_json(r), *mm = merge_models_json(keep, r, legacy), *rec = lm_recipe_json(r);
    if (!a || !mm || !rec) rc = LM_ENOMEM;
    set(m, "sd_merge_recipe", a, &rc);
    set(m, "sd_merge_models", mm, &rc);
    set(m, LM_RECIPE_KEY, rec, &rc);
    free(a); free(mm); free(rec);
    return rc;
}
