/* PEFT alpha from safetensors metadata: diffusers writes the LoraConfig as
 * JSON under "lora_adapter_metadata" (see the alpha rules in lora_parse.c). */
#include "lora_impl.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }


static const char *comp_prefix(const char *name, const char **rest)
{
    static const char *P[] = { "text_encoder_2", "text_encoder", "unet", "transformer" };
    for (size_t i = 0; i < sizeof P / sizeof P[0]; i++) {
        size_t n = strlen(P[i]);
        if (strncmp(name, P[i], n) == 0 && name[n] == '.') { *rest = name + n + 1; return P[i]; }
    }
    *rest = starts(name, "base_model.model.") ? name + strlen("base_model.model.") : name;
    return NULL;
}

/* root["<prefix>.<key>"], root[prefix][key], or root[key]. */
static const cJSON *meta_item(const cJSON *root, const char *prefix, const char *key)
{
    if (prefix) {
        char k[128];
        snprintf(k, sizeof k, "%s.%s", prefix, key);
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, k);
        if (it) return it;
        const cJSON *sub = cJSON_GetObjectItemCaseSensitive(root, prefix);
        if (cJSON_IsObject(sub) && (it = cJSON_GetObjectItemCaseSensitive(sub, key))) return it;
    }
    return cJSON_GetObjectItemCaseSensitive(root, key);
}

int lm_lora_meta_alpha(const lm_lora_meta *pm, const char *name, float *alpha, int *rslora)
{
    *rslora = 0;
    if (pm->root) {
        const char *rest;
        const char *prefix = comp_prefix(name, &rest);
        const cJSON *rs = meta_item(pm->root, prefix, "use_rslora");
        *rslora = cJSON_IsTrue(rs);
        const cJSON *pat = meta_item(pm->root, prefix, "alpha_pattern");
        if (cJSON_IsObject(pat)) {
            const cJSON *it;
            size_t rl = strlen(rest);
            cJSON_ArrayForEach(it, pat) {
                size_t kl = strlen(it->string);
                if (!cJSON_IsNumber(it) || kl > rl) continue;
                if (strcmp(rest + rl - kl, it->string) == 0 && (kl == rl || rest[rl - kl - 1] == '.')) {
                    *alpha = (float)it->valuedouble;
                    return 1;
                }
            }
        }
        const cJSON *a = meta_item(pm->root, prefix, "lora_alpha");
        if (cJSON_IsNumber(a)) { *alpha = (float)a->valuedouble; return 1; }
    }
    if (pm->have_plain) { *alpha = pm->plain; return 1; }
    return 0;
}

void lm_lora_meta_load(lm_lora_meta *pm, const lm_source *s)
{
    memset(pm, 0, sizeof *pm);
    const char *js = lm_source_meta_get(s, "lora_adapter_metadata");
    if (js) {
        pm->root = cJSON_Parse(js);
        if (pm->root && !cJSON_IsObject(pm->root)) { cJSON_Delete(pm->root); pm->root = NULL; }
    }
    const char *plain = lm_source_meta_get(s, "lora_alpha");
    if (plain) {
        char *end;
        double v = strtod(plain, &end);
        if (end != plain && isfinite(v)) { pm->have_plain = 1; pm->plain = (float)v; }
    }
}

void lm_lora_meta_free(lm_lora_meta *pm)
{
    cJSON_Delete(pm->root);
    pm->root = NULL;
}
