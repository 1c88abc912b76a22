/* In-memory tensor sources from JSON manifests (see manifest_source.h). */
#include "manifest_source.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/source_impl.h"

static int no_read(const lm_source *s, size_t i, void *dst, lm_err *err)
{
    (void)dst;
    return lm_err_set(err, LM_EUNSUPPORTED, s->path, s->entries[i].name, LM_ERR_NO_OFFSET,
                      "a manifest source has names and shapes only, no data");
}

static const lm_source_ops MANIFEST_OPS = { no_read, NULL, NULL };

char *manifest_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = '\0';
        if (len) *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

int manifest_source_new(lm_source **out, const char *label, lm_err *err)
{
    int rc = lm_source_new(out, label, LM_FMT_UNKNOWN, err);
    if (!rc) (*out)->ops = &MANIFEST_OPS;
    return rc;
}

/* Walks a dot-separated path of object keys. */
static const cJSON *walk(const cJSON *j, const char *path)
{
    char key[128];
    while (j && *path) {
        size_t k = strcspn(path, ".");
        if (k >= sizeof key) return NULL;
        memcpy(key, path, k);
        key[k] = '\0';
        j = cJSON_GetObjectItemCaseSensitive(j, key);
        path += k + (path[k] == '.');
    }
    return j;
}

static int add_one(lm_source *s, const cJSON *t, const char *name_field, const char *prefix,
                   const char *json_path, lm_err *err)
{
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, name_field ? name_field : "name");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
    if (!cJSON_IsString(nm) || !cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > LM_MAX_DIMS)
        return lm_err_set(err, LM_EINPUT, json_path, NULL, LM_ERR_NO_OFFSET, "tensor entry without name or shape");
    lm_dtype dtype = cJSON_IsString(dt) ? lm_dtype_from_name(dt->valuestring) : LM_DT_F32;
    if (dtype == LM_DT_INVALID)
        return lm_err_set(err, LM_EINPUT, json_path, nm->valuestring, LM_ERR_NO_OFFSET, "unknown dtype");
    int64_t shape[LM_MAX_DIMS];
    int nd = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        if (!cJSON_IsNumber(d)) return lm_err_set(err, LM_EINPUT, json_path, nm->valuestring, LM_ERR_NO_OFFSET, "bad shape");
        shape[nd++] = (int64_t)d->valuedouble;
    }
    char name[1024];
    snprintf(name, sizeof name, "%s%s", prefix ? prefix : "", nm->valuestring);
    return lm_source_add(s, name, dtype, nd, shape, 0, NULL, err);
}

int manifest_source_add(lm_source *s, const char *json_path, const char *list_path,
                        const char *name_field, const char *prefix, lm_err *err)
{
    char *text = manifest_read_file(json_path, NULL);
    if (!text) return lm_err_set(err, LM_EIO, json_path, NULL, LM_ERR_NO_OFFSET, "cannot read");
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return lm_err_set(err, LM_EINPUT, json_path, NULL, LM_ERR_NO_OFFSET, "not JSON");
    const cJSON *list = walk(root, list_path);
    int rc = 0;
    if (!cJSON_IsArray(list)) {
        rc = lm_err_set(err, LM_EINPUT, json_path, list_path, LM_ERR_NO_OFFSET, "no array at this path");
    } else {
        const cJSON *t;
        cJSON_ArrayForEach(t, list) {
            if ((rc = add_one(s, t, name_field, prefix, json_path, err))) break;
        }
    }
    cJSON_Delete(root);
    return rc;
}

int manifest_source_put(lm_source *s, const char *name, lm_dtype dt, int ndim, const int64_t *shape, lm_err *err)
{
    return lm_source_add(s, name, dt, ndim, shape, 0, NULL, err);
}

int manifest_source_open(lm_source **out, const char *json_path, const char *list_path,
                         const char *prefix, lm_err *err)
{
    int rc = manifest_source_new(out, json_path, err);
    if (rc) return rc;
    if ((rc = manifest_source_add(*out, json_path, list_path, NULL, prefix, err))) {
        lm_source_close(*out);
        *out = NULL;
    }
    return rc;
}
