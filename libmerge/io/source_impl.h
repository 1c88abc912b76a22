/* Internal: the shared body of a tensor source and the backend interface.
 * Backends (safetensors.c, torch/…) fill entries and metadata through the
 * helpers below and provide read/raw/close. Not a public header. */
#ifndef LIBMERGE_IO_SOURCE_IMPL_H
#define LIBMERGE_IO_SOURCE_IMPL_H

#include "libmerge/source.h"

typedef struct lm_source_ops {
    /* Copies entry i's bytes (contiguous, little-endian) into dst. */
    int (*read)(const lm_source *s, size_t i, void *dst, lm_err *err);
    /* Pointer to entry i's contiguous bytes in a mapping, or NULL. */
    const void *(*raw)(const lm_source *s, size_t i);
    /* Frees the backend state (not the entries). */
    void (*close)(lm_source *s);
} lm_source_ops;

struct lm_source {
    char *path;
    lm_format format;
    uint64_t file_size;
    uint64_t data_start;
    lm_entry *entries;
    size_t n_entries, cap_entries;
    char **meta_keys, **meta_values;
    size_t n_meta, cap_meta;
    int64_t *index;        /* open-addressing hash table of entry indices, -1 empty */
    size_t index_cap;      /* power of two */
    const lm_source_ops *ops;
    void *backend;
};

/* Allocates an empty source for path. */
int lm_source_new(lm_source **out, const char *path, lm_format fmt, lm_err *err);

/* Appends an entry (name is copied; numel/nbytes computed with overflow
 * checks). Fails with LM_EINPUT on a duplicate name. Returns the new index
 * through *idx if non-NULL. */
int lm_source_add(lm_source *s, const char *name, lm_dtype dt, int ndim,
                  const int64_t *shape, uint64_t offset, size_t *idx, lm_err *err);

/* Appends a metadata pair (both copied). */
int lm_source_add_meta(lm_source *s, const char *key, const char *value, lm_err *err);

/* Sorts entries by offset (stable) and rebuilds the index. */
void lm_source_sort_by_offset(lm_source *s);

/* Rebuilds the name index (after reordering). */
int lm_source_reindex(lm_source *s, lm_err *err);

/* Backends' open functions. */
int lm_safetensors_open(lm_source **out, const char *path, lm_err *err);
int lm_torch_open(lm_source **out, const char *path, lm_format fmt,
                  const lm_open_opts *opts, lm_err *err);

#endif
