/* Tensor source: format detection, dispatch to a backend, and the shared
 * entry table with its name index. See include/libmerge/source.h. */
#include "source_impl.h"
#include "core/strhash.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *lm_format_name(lm_format f)
{
    switch (f) {
    case LM_FMT_SAFETENSORS: return "safetensors";
    case LM_FMT_TORCH_ZIP: return "torch-zip";
    case LM_FMT_TORCH_LEGACY: return "torch-legacy";
    case LM_FMT_PICKLE: return "pickle";
    case LM_FMT_GGUF: return "gguf";
    case LM_FMT_ZIP: return "zip";
    default: return "unknown";
    }
}

int lm_detect_format_fd(int fd, const char *path, lm_format *fmt, lm_err *err)
{
    unsigned char b[16] = {0};
    /* only regular files can be mapped, so anything else is refused here */
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET,
                          dir ? "is a directory, not a model file" : "not a regular file (a FIFO, device or socket?)");
    }
    ssize_t got = pread(fd, b, sizeof b, 0);
    int saved = errno;
    if (got < 0) return lm_err_set(err, LM_EIO, path, NULL, 0, "cannot read: %s", strerror(saved));
    *fmt = LM_FMT_UNKNOWN;
    if (got >= 4 && memcmp(b, "PK\x03\x04", 4) == 0) { *fmt = LM_FMT_ZIP; return 0; } /* refined by the torch backend */
    if (got >= 4 && memcmp(b, "GGUF", 4) == 0) { *fmt = LM_FMT_GGUF; return 0; }
    /* legacy torch.save starts with the pickled magic number 0x1950a86a20f9469cfc6c */
    static const unsigned char magic[] = { 0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19 };
    if (got >= (ssize_t)sizeof magic && memcmp(b, magic, sizeof magic) == 0) { *fmt = LM_FMT_TORCH_LEGACY; return 0; }
    if (got >= 9) {
        /* safetensors: u64 LE header length, then '{' (the reference allows leading spaces? no:
         * it parses the JSON as is, so we require '{' after optional whitespace). Tested
         * before the bare pickle: a header length of 384 starts 0x80 0x01 like PROTO 1. */
        int i = 8;
        while (i < got && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t')) i++;
        if (i < got && b[i] == '{') { *fmt = LM_FMT_SAFETENSORS; return 0; }
    }
    if (got >= 2 && b[0] == 0x80 && b[1] <= 5) *fmt = LM_FMT_PICKLE;
    return 0;
}

int lm_detect_format(const char *path, lm_format *fmt, lm_err *err)
{
    /* O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(errno));
    int rc = lm_detect_format_fd(fd, path, fmt, err);
    close(fd);
    return rc;
}

int lm_source_open(lm_source **out, const char *path, const lm_open_opts *opts, lm_err *err)
{
    lm_format fmt;
    *out = NULL;
    int rc = lm_detect_format(path, &fmt, err);
    if (rc) return rc;
    switch (fmt) {
    case LM_FMT_SAFETENSORS: return lm_safetensors_open(out, path, err);
    case LM_FMT_ZIP: case LM_FMT_TORCH_LEGACY: case LM_FMT_PICKLE:
        return lm_torch_open(out, path, fmt, opts, err);
    case LM_FMT_GGUF:
        return lm_err_set(err, LM_EUNSUPPORTED, path, NULL, 0, "GGUF files are not supported");
    default:
        return lm_err_set(err, LM_EINPUT, path, NULL, 0,
                          "not a safetensors or PyTorch file (unrecognised first bytes)");
    }
}

void lm_source_close(lm_source *s)
{
    if (!s) return;
    if (s->ops && s->ops->close) s->ops->close(s);
    for (size_t i = 0; i < s->n_entries; i++) free((char *)s->entries[i].name);
    for (size_t i = 0; i < s->n_meta; i++) { free(s->meta_keys[i]); free(s->meta_values[i]); }
    free(s->entries);
    free(s->meta_keys);
    free(s->meta_values);
    free(s->index);
    free(s->path);
    free(s);
}

const char *lm_source_path(const lm_source *s) { return s->path; }
lm_format lm_source_format(const lm_source *s) { return s->format; }
size_t lm_source_count(const lm_source *s) { return s->n_entries; }
const lm_entry *lm_source_entry(const lm_source *s, size_t i) { return i < s->n_entries ? &s->entries[i] : NULL; }
uint64_t lm_source_file_size(const lm_source *s) { return s->file_size; }
uint64_t lm_source_data_start(const lm_source *s) { return s->data_start; }
size_t lm_source_meta_count(const lm_source *s) { return s->n_meta; }
const char *lm_source_meta_key(const lm_source *s, size_t i) { return i < s->n_meta ? s->meta_keys[i] : NULL; }
const char *lm_source_meta_value(const lm_source *s, size_t i) { return i < s->n_meta ? s->meta_values[i] : NULL; }

const char *lm_source_meta_get(const lm_source *s, const char *key)
{
    for (size_t i = 0; i < s->n_meta; i++)
        if (strcmp(s->meta_keys[i], key) == 0) return s->meta_values[i];
    return NULL;
}

/* Key in slot j of the name index (NULL when empty), for lm_strtab_probe. */
static const char *index_key(const void *table, size_t j)
{
    const lm_source *s = table;
    return s->index[j] < 0 ? NULL : s->entries[s->index[j]].name;
}

int64_t lm_source_find(const lm_source *s, const char *name)
{
    if (!s->index_cap) return -1;
    return s->index[lm_strtab_probe(s, s->index_cap, index_key, name)];
}

/* Inserts entry k; returns 1 if its name was already present. */
static int index_insert(lm_source *s, size_t k)
{
    size_t j = lm_strtab_probe(s, s->index_cap, index_key, s->entries[k].name);
    if (s->index[j] >= 0) return 1;
    s->index[j] = (int64_t)k;
    return 0;
}

int lm_source_reindex(lm_source *s, lm_err *err)
{
    size_t cap = 16;
    while (cap < 2 * s->n_entries + 2) cap *= 2;
    int64_t *idx = malloc(cap * sizeof *idx);
    if (!idx) return lm_err_set(err, LM_ENOMEM, s->path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    for (size_t j = 0; j < cap; j++) idx[j] = -1;
    free(s->index);
    s->index = idx;
    s->index_cap = cap;
    for (size_t k = 0; k < s->n_entries; k++)
        if (index_insert(s, k))
            return lm_err_set(err, LM_EINPUT, s->path, s->entries[k].name, LM_ERR_NO_OFFSET, "duplicate tensor name");
    return 0;
}

int lm_source_new(lm_source **out, const char *path, lm_format fmt, lm_err *err)
{
    lm_source *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    s->format = fmt;
    *out = s;
    return 0;
}

int lm_source_add(lm_source *s, const char *name, lm_dtype dt, int ndim,
                  const int64_t *shape, uint64_t offset, size_t *idx, lm_err *err)
{
    if (ndim < 0 || ndim > LM_MAX_DIMS)
        return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "%d dimensions (at most %d supported)", ndim, LM_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "negative dimension %lld", (long long)shape[d]);
        if (__builtin_mul_overflow(numel, (uint64_t)shape[d], &numel) || numel > (uint64_t)INT64_MAX)
            return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "shape product overflows 64 bits");
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)lm_dtype_size(dt), &nbytes))
        return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "tensor byte size overflows 64 bits");
    if (s->n_entries == s->cap_entries) {
        size_t cap = s->cap_entries ? 2 * s->cap_entries : 64;
        lm_entry *e = realloc(s->entries, cap * sizeof *e);
        if (!e) return lm_err_set(err, LM_ENOMEM, s->path, name, LM_ERR_NO_OFFSET, "out of memory");
        s->entries = e;
        s->cap_entries = cap;
    }
    lm_entry *e = &s->entries[s->n_entries];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) return lm_err_set(err, LM_ENOMEM, s->path, name, LM_ERR_NO_OFFSET, "out of memory");
    e->dtype = dt;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->numel = (int64_t)numel;
    e->nbytes = nbytes;
    e->offset = offset;
    size_t k = s->n_entries++;
    if (idx) *idx = k;
    /* grow the index at half load; insert incrementally otherwise */
    if (2 * s->n_entries + 2 > s->index_cap) return lm_source_reindex(s, err);
    if (index_insert(s, k)) {
        s->n_entries--;
        free((char *)e->name);
        return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "duplicate tensor name");
    }
    return 0;
}

int lm_source_add_meta(lm_source *s, const char *key, const char *value, lm_err *err)
{
    if (s->n_meta == s->cap_meta) {
        size_t cap = s->cap_meta ? 2 * s->cap_meta : 16;
        char **k = realloc(s->meta_keys, cap * sizeof *k);
        if (!k) return lm_err_set(err, LM_ENOMEM, s->path, key, LM_ERR_NO_OFFSET, "out of memory");
        s->meta_keys = k;
        char **v = realloc(s->meta_values, cap * sizeof *v);
        if (!v) return lm_err_set(err, LM_ENOMEM, s->path, key, LM_ERR_NO_OFFSET, "out of memory");
        s->meta_values = v;
        s->cap_meta = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) { free(k); free(v); return lm_err_set(err, LM_ENOMEM, s->path, key, LM_ERR_NO_OFFSET, "out of memory"); }
    s->meta_keys[s->n_meta] = k;
    s->meta_values[s->n_meta] = v;
    s->n_meta++;
    return 0;
}

static int cmp_offset(const void *a, const void *b)
{
    const lm_entry *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

void lm_source_sort_by_offset(lm_source *s)
{
    /* offsets are unique per non-empty tensor; ties (zero-size) keep a stable-enough order */
    qsort(s->entries, s->n_entries, sizeof *s->entries, cmp_offset);
    lm_source_reindex(s, NULL);
}

const void *lm_source_raw(const lm_source *s, size_t i)
{
    if (i >= s->n_entries || !s->ops || !s->ops->raw) return NULL;
    return s->ops->raw(s, i);
}

int lm_source_read(const lm_source *s, size_t i, void *dst, lm_err *err)
{
    if (i >= s->n_entries) return lm_err_set(err, LM_EUSAGE, s->path, NULL, LM_ERR_NO_OFFSET, "tensor index %zu out of range", i);
    return s->ops->read(s, i, dst, err);
}

int lm_source_read_f32(const lm_source *s, size_t i, float *dst, lm_err *err)
{
    if (i >= s->n_entries) return lm_err_set(err, LM_EUSAGE, s->path, NULL, LM_ERR_NO_OFFSET, "tensor index %zu out of range", i);
    const lm_entry *e = &s->entries[i];
    const void *raw = lm_source_raw(s, i);
    if (e->dtype == LM_DT_F32 || raw) {
        if (raw) return lm_convert_to_f32(dst, raw, e->dtype, (size_t)e->numel) ?
            lm_err_set(err, LM_EUNSUPPORTED, s->path, e->name, LM_ERR_NO_OFFSET, "cannot convert %s to F32", lm_dtype_name(e->dtype)) : 0;
        return lm_source_read(s, i, dst, err);
    }
    void *tmp = malloc(e->nbytes ? e->nbytes : 1);
    if (!tmp) return lm_err_set(err, LM_ENOMEM, s->path, e->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_source_read(s, i, tmp, err);
    if (!rc && lm_convert_to_f32(dst, tmp, e->dtype, (size_t)e->numel))
        rc = lm_err_set(err, LM_EUNSUPPORTED, s->path, e->name, LM_ERR_NO_OFFSET, "cannot convert %s to F32", lm_dtype_name(e->dtype));
    free(tmp);
    return rc;
}
