/* Internal: shared state of the PyTorch readers (zip and legacy formats). */
#ifndef LIBMERGE_IO_TORCH_IMPL_H
#define LIBMERGE_IO_TORCH_IMPL_H

#include <pthread.h>
#include <zip.h>

#include "../source_impl.h"
#include "pickle.h"

/* Largest data.pkl we read into memory: SD checkpoints' are ~100 KiB. */
#define TT_MAX_PICKLE ((uint64_t)256 << 20)

typedef struct tt_storage {
    char *key;                    /* the persistent id's key ("0", "1", … in torch files) */
    char *type;                   /* storage type global, e.g. "torch.HalfStorage" */
    lm_dtype dtype;               /* LM_DT_INVALID for types we do not read */
    uint64_t numel;               /* as the persistent id states it */
    uint64_t nbytes;              /* numel × element size (untyped: numel) */
    const unsigned char *data;    /* in the mapping, or NULL: read through libzip */
    int64_t zindex;               /* zip entry index, -1 for legacy */
} tt_storage;

typedef struct tt_tensor {
    size_t storage;
    int64_t offset;               /* elements */
    int ndim;
    int64_t size[LM_MAX_DIMS], stride[LM_MAX_DIMS];
    int contiguous;               /* row-major from offset */
} tt_tensor;

typedef struct tt_backend {
    unsigned char *map;
    size_t map_len;
    zip_t *zip;
    pthread_mutex_t zip_lock;     /* libzip handles are not thread-safe */
    tt_storage *st;
    size_t n_st, cap_st;
    tt_tensor *t;                 /* parallel to the source's entries */
    size_t cap_t;
    int big_endian;               /* storages hold big-endian elements */
    int legacy;
    size_t nontensor;
    char dropped[32];             /* prefix dropped from the state dict's names, "" if none */
} tt_backend;

/* Adds a storage from a torch persistent id ('storage', type, key, location,
 * numel[, view_metadata]). Validates the key; repeats are merged later. */
int tt_add_storage(lm_source *s, tt_backend *be, const pk_value *persid, lm_err *err);

/* Sorts storages by key (tensors find theirs by binary search) and merges
 * repeated keys, refusing one key with two types or sizes (LM_EINPUT). */
int tt_sort_storages(lm_source *s, tt_backend *be, lm_err *err);
tt_storage *tt_find_storage(const tt_backend *be, const char *key);

/* Walks the unpickled object and adds one entry per tensor leaf, named by
 * the keys on its path joined with '.', less the wrapper and DDP prefixes
 * that the rule in torch.c (plan_flattening) drops. n_values
 * (pk_value_count) bounds the walk: a value reached by many paths (shared
 * sub-objects) counts each time, up to 4 × n_values + 1024 in all. */
int tt_flatten(lm_source *s, tt_backend *be, const pk_value *root, size_t n_values, lm_err *err);

/* The legacy reader (legacy.c): fills be from the mapped file. */
int tt_legacy_load(lm_source *s, tt_backend *be, const lm_open_opts *opts, lm_err *err);

#endif
