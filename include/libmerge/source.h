/* libmerge/source.h — a "tensor source": the read side of every model file.
 *
 * A source is an ordered list of entries {name, dtype, shape, byte size} with
 * string metadata, opened from a .safetensors file (mmap) or a PyTorch file
 * (torch.save zip or legacy format, through the restricted unpickler). The
 * format is detected from the first bytes, never from the file name.
 *
 * Entry order is file order (safetensors: ascending data offset; torch: the
 * order of the pickled state dict), which is the order streaming writers use.
 * Tensor bytes are handed out contiguous, row-major (C order), little-endian.
 */
#ifndef LIBMERGE_SOURCE_H
#define LIBMERGE_SOURCE_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_MAX_DIMS 8

typedef enum lm_format {
    LM_FMT_UNKNOWN = 0,
    LM_FMT_SAFETENSORS,
    LM_FMT_TORCH_ZIP,     /* torch.save since 1.6: a zip with <archive>/data.pkl */
    LM_FMT_TORCH_LEGACY,  /* torch.save before 1.6: magic, protocol, sys info, pickle, storages */
    LM_FMT_PICKLE,        /* a bare pickle stream that is not a torch legacy file */
    LM_FMT_GGUF,          /* recognised to name it, not read */
    LM_FMT_ZIP            /* a zip that is not a torch archive */
} lm_format;

typedef struct lm_entry {
    const char *name;           /* tensor key, NUL-terminated, owned by the source */
    lm_dtype dtype;
    int ndim;                   /* 0 for a scalar */
    int64_t shape[LM_MAX_DIMS];
    int64_t numel;              /* product of shape (1 for ndim 0) */
    uint64_t nbytes;            /* numel * lm_dtype_size(dtype) */
    uint64_t offset;            /* safetensors: absolute file offset of the data; torch: 0 */
} lm_entry;

typedef struct lm_source lm_source;

typedef struct lm_open_opts {
    int version;            /* LM_OPEN_OPTS_VERSION */
    int skip_unknown;       /* torch: read non-whitelisted globals as opaque values, never call them */
} lm_open_opts;
#define LM_OPEN_OPTS_VERSION 1
#define LM_OPEN_OPTS_INIT { LM_OPEN_OPTS_VERSION, 0 }

/* Reads the first bytes of path and names its format from its magic bytes:
 * safetensors (an 8-byte little-endian header length, then '{'), zip
 * ("PK\3\4"; torch archives are told apart when opened), "GGUF", a pickle
 * (0x80, protocol ≤ 5; the legacy torch.save magic number 0x1950a86a20f9469cfc6c
 * pickled first makes it LM_FMT_TORCH_LEGACY). Returns 0 and sets *fmt
 * (LM_FMT_UNKNOWN when nothing matched), or LM_EIO naming path. */
int lm_detect_format(const char *path, lm_format *fmt, lm_err *err);
/* The same from an open descriptor (read with pread at offset 0, so its file
 * position is left alone); path names the file in errors. */
int lm_detect_format_fd(int fd, const char *path, lm_format *fmt, lm_err *err);
/* "safetensors", "torch-zip", "torch-legacy", "pickle", "gguf", "zip", "unknown". */
const char *lm_format_name(lm_format f);

/* Opens path as a tensor source. opts may be NULL. Errors: LM_EIO (cannot
 * open/read), LM_EINPUT (malformed: the message names key and byte offset),
 * LM_EUNSUPPORTED (a format or dtype refused by name), LM_ENOMEM. */
int lm_source_open(lm_source **out, const char *path, const lm_open_opts *opts, lm_err *err);

/* Closes and frees; safe on NULL. */
void lm_source_close(lm_source *s);

/* Accessors (never fail): the path as opened, the detected format, the number
 * of entries, entry i in file order (NULL when i >= lm_source_count; owned by
 * the source, valid until lm_source_close). */
const char *lm_source_path(const lm_source *s);
lm_format lm_source_format(const lm_source *s);
size_t lm_source_count(const lm_source *s);
const lm_entry *lm_source_entry(const lm_source *s, size_t i);

/* Index of the entry named name (exact, case-sensitive match), or -1.
 * O(1) average (a hash table seeded per process, so crafted names cannot
 * make it quadratic). */
int64_t lm_source_find(const lm_source *s, const char *name);

/* Pointer to entry i's raw bytes when they lie contiguous in a mapping
 * (safetensors always; torch zip when stored uncompressed, contiguous and
 * little-endian), else NULL. The pointer may be unaligned: copy out of it
 * with memcpy, never cast it to float*. Valid until lm_source_close. */
const void *lm_source_raw(const lm_source *s, size_t i);

/* Copies entry i's bytes (its own dtype, contiguous, little-endian) into
 * dst, which holds at least entry->nbytes. Errors: LM_EUSAGE (i out of
 * range), LM_EIO (file changed or truncated under us), LM_EINPUT (a
 * backend finds the stored bytes malformed), naming the file and the tensor. */
int lm_source_read(const lm_source *s, size_t i, void *dst, lm_err *err);

/* Reads entry i converted to fp32 into dst (entry->numel floats, row-major),
 * by lm_convert_to_f32 (exact for F16/BF16/F8, RNE for F64, by value for
 * integers). Errors: those of lm_source_read, LM_EUNSUPPORTED (a dtype with
 * no fp32 conversion), LM_ENOMEM (a temporary copy when the bytes are not
 * mapped), naming the file and the tensor. */
int lm_source_read_f32(const lm_source *s, size_t i, float *dst, lm_err *err);

/* Metadata: safetensors "__metadata__" (string → string, in header order);
 * torch sources have none. Key/value i is NULL when i >= lm_source_meta_count;
 * strings are owned by the source. */
size_t lm_source_meta_count(const lm_source *s);
const char *lm_source_meta_key(const lm_source *s, size_t i);
const char *lm_source_meta_value(const lm_source *s, size_t i);
/* Value for key, or NULL. */
const char *lm_source_meta_get(const lm_source *s, const char *key);

/* Size of the file in bytes (at open). */
uint64_t lm_source_file_size(const lm_source *s);

/* Safetensors only: byte offset where the data area starts (8 + header length); 0 otherwise. */
uint64_t lm_source_data_start(const lm_source *s);

#ifdef __cplusplus
}
#endif
#endif
