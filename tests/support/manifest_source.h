/* Test helper: an in-memory tensor source built from a JSON manifest of
 * tensor names, dtypes and shapes (the JSON files in fixtures/golden/manifests/,
 * fixtures/golden/sd15/sd15_*_manifest.json). Entries only: reading tensor data
 * fails with LM_EUNSUPPORTED. */
#ifndef LIBMERGE_TESTS_MANIFEST_SOURCE_H
#define LIBMERGE_TESTS_MANIFEST_SOURCE_H

#include "libmerge/source.h"

/* Creates an empty in-memory source named `label`. */
int manifest_source_new(lm_source **out, const char *label, lm_err *err);

/* Appends the tensors of the JSON array at list_path ("tensors",
 * "components.unet.tensors", "unet") of the manifest at json_path. Each
 * element is an object with a name (field name_field, NULL for "name"),
 * "dtype" (default F32 when absent) and "shape"; prefix (may be NULL) is put
 * before every name. Errors: LM_EIO (unreadable), LM_EINPUT (not that shape
 * of JSON, naming the path), those of lm_source_add (duplicate names). */
int manifest_source_add(lm_source *s, const char *json_path, const char *list_path,
                        const char *name_field, const char *prefix, lm_err *err);

/* Appends one entry (tests that build a source by hand). */
int manifest_source_put(lm_source *s, const char *name, lm_dtype dt, int ndim, const int64_t *shape, lm_err *err);

/* manifest_source_new + manifest_source_add with json_path as label. */
int manifest_source_open(lm_source **out, const char *json_path, const char *list_path,
                         const char *prefix, lm_err *err);

/* Reads a whole file into a NUL-terminated malloc'd buffer, or NULL. */
char *manifest_read_file(const char *path, size_t *len);

#endif
