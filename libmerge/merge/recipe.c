/* The recipe every output of lcm-bake and lora-merge carries under LM_RECIPE_KEY:
 * a JSON object, written and read back here (libmerge(7), RECIPE):
 *   {"format":"libmerge.recipe/1", "tool":"lcm-bake", "tool_version":"0.1.0",
 *    "operation":"bake", "dtype":"keep", "format_out":"safetensors", "rank":0,
 *    "allow_unmatched":false,
 *    "inputs":[{"role":"base","name":"base.safetensors","sha256":"…","bytes":N,"lambda":1},
 *              {"role":"lora","name":"style.safetensors","sha256":"…","bytes":N,"lambda":0.8}, …]}
 * λ is a JSON number printed so that it reads back to the same double (cJSON prints
 * 15 significant digits and falls back to 17 when those do not round-trip). */
#include "libmerge/merge.h"

#include <stdlib.h>
#include <string.h>
#include <cJSON.h>

static char *dupnull(const char *s) { return s ? strdup(s) : NULL; }

char *lm_recipe_json(const lm_recipe *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "format", LM_RECIPE_FORMAT);
    cJSON_AddStringToObject(o, "tool", r->tool ? r->tool : "");
    cJSON_AddStringToObject(o, "tool_version", r->tool_version ? r->tool_version : LM_TOOL_VERSION);
    cJSON_AddStringToObject(o, "operation", r->operation ? r->operation : "");
    cJSON_AddStringToObject(o, "dtype", r->dtype ? r->dtype : "keep");
    cJSON_AddStringToObject(o, "format_out", r->format ? r->format : "safetensors");
    cJSON_AddNumberToObject(o, "rank", r->rank);
    cJSON_AddBoolToObject(o, "allow_unmatched", r->allow_unmatched);
    cJSON *a = cJSON_AddArrayToObject(o, "inputs");
    for (size_t i = 0; a && i < r->n_inputs; i++) {
        const lm_recipe_input *in = &r->inputs[i];
        cJSON *e = cJSON_CreateObject();
        if (!e) break;
        cJSON_AddStringToObject(e, "role", in->role ? in->role : "lora");
        cJSON_AddStringToObject(e, "name", in->name ? in->name : "");
        cJSON_AddStringToObject(e, "sha256", in->sha256);
        cJSON_AddNumberToObject(e, "bytes", (double)in->bytes);
        cJSON_AddNumberToObject(e, "lambda", in->lambda);
        cJSON_AddItemToArray(a, e);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static const char *str_field(const cJSON *o, const char *k)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

int lm_recipe_parse(const char *json, lm_recipe *r, lm_err *err)
{
    memset(r, 0, sizeof *r);
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return lm_err_set(err, LM_EINPUT, NULL, LM_RECIPE_KEY, LM_ERR_NO_OFFSET, "recipe is not a JSON object");
    }
    int rc = 0;
    const char *fmt = str_field(o, "format");
    if (!fmt || strcmp(fmt, LM_RECIPE_FORMAT)) {
        rc = lm_err_set(err, LM_EINPUT, NULL, "format", LM_ERR_NO_OFFSET, "recipe format is %s, expected %s",
                        fmt ? fmt : "missing", LM_RECIPE_FORMAT);
        goto out;
    }
    r->tool = dupnull(str_field(o, "tool"));
    r->tool_version = dupnull(str_field(o, "tool_version"));
    r->operation = dupnull(str_field(o, "operation"));
    r->dtype = dupnull(str_field(o, "dtype"));
    r->format = dupnull(str_field(o, "format_out"));
    if (!r->operation) { rc = lm_err_set(err, LM_EINPUT, NULL, "operation", LM_ERR_NO_OFFSET, "missing"); goto out; }
    cJSON *rank = cJSON_GetObjectItemCaseSensitive(o, "rank");
    r->rank = cJSON_IsNumber(rank) ? rank->valueint : 0;
    r->allow_unmatched = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "allow_unmatched"));
    cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "inputs");
    if (!cJSON_IsArray(a)) { rc = lm_err_set(err, LM_EINPUT, NULL, "inputs", LM_ERR_NO_OFFSET, "missing or not an array"); goto out; }
    size_t n = (size_t)cJSON_GetArraySize(a);
    r->inputs = calloc(n ? n : 1, sizeof *r->inputs);
    if (!r->inputs) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    cJSON *e;
    cJSON_ArrayForEach(e, a) {
        lm_recipe_input *in = &r->inputs[r->n_inputs];
        const char *sha = str_field(e, "sha256");
        cJSON *lam = cJSON_GetObjectItemCaseSensitive(e, "lambda");
        cJSON *by = cJSON_GetObjectItemCaseSensitive(e, "bytes");
        if (!sha || strlen(sha) != 64 || !cJSON_IsNumber(lam)) {
            rc = lm_err_set(err, LM_EINPUT, NULL, "inputs", LM_ERR_NO_OFFSET,
                            "input %zu lacks a 64-digit sha256 or a numeric lambda", r->n_inputs);
            goto out;
        }
        memcpy(in->sha256, sha, 65);
        in->lambda = lam->valuedouble;
        in->bytes = cJSON_IsNumber(by) ? (uint64_t)by->valuedouble : 0;
        in->name = dupnull(str_field(e, "name"));
        in->role = dupnull(str_field(e, "role"));
        r->n_inputs++;
    }
out:
    cJSON_Delete(o);
    if (rc) lm_recipe_free(r);
    return rc;
}

void lm_recipe_free(lm_recipe *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_inputs; i++) { free(r->inputs[i].name); free(r->inputs[i].role); }
    free(r->inputs);
    free(r->tool); free(r->tool_version); free(r->operation); free(r->dtype); free(r->format);
    memset(r, 0, sizeof *r);
}
