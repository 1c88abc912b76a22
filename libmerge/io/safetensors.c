/* safetensors reader: mmap, header validation, tensor source backend.
 *
 * Format (huggingface/safetensors, README "Format"): 8-byte little-endian u64
 * N, then N bytes of UTF-8 JSON, then the data area. The rules below follow
 * what the reference Rust parser (safetensors/src/tensor.rs,
 * SafeTensors::read_metadata and Metadata::validate) accepts and rejects;
 * libmerge(7) lists them too. Each rule gives its own error message:
 *
 *  R1  the file holds at least the 8 length bytes             ("HeaderTooSmall")
 *  R2  N <= 100,000,000 (MAX_HEADER_SIZE in the reference)    ("HeaderTooLarge")
 *  R3  8 + N <= file size                                     ("InvalidHeaderLength")
 *  R4  the header is valid UTF-8 with no NUL byte             ("InvalidHeader"),
 *      strings hold no raw control character (JSON forbids them; cJSON
 *      would accept them) and no \u0000 escape
 *  R5  the header is JSON (cJSON); only JSON whitespace may follow the value,
 *      as the reference writer pads with spaces               ("InvalidHeaderDeserialization")
 *  R6  the JSON value is an object; keys are unique at every level (cJSON keeps
 *      duplicates, serde would silently keep one: we refuse them)
 *  R7  "__metadata__" is absent, null, or an object of string values
 *  R8  every other key is a tensor: an object with "dtype" (string), "shape"
 *      (array of non-negative integers) and "data_offsets" (array of exactly two
 *      non-negative integers); other fields are ignored, as serde ignores them
 *  R9  dtype is one of BOOL U8 I8 U16 I16 U32 I32 U64 I64 F16 BF16 F32 F64
 *      F8_E4M3 F8_E5M2; the newer names the format lists (F4, F6_E2M3,
 *      F6_E3M2, F8_E8M0, C64, F8_E4M3FNUZ, F8_E5M2FNUZ) are refused by name
 *      (LM_EUNSUPPORTED); anything else is an unknown dtype
 *  R10 shape product × dtype size is computed without 64-bit overflow
 *      ("ValidationOverflow") and equals end − start ("TensorInvalidInfo")
 *  R11 sorted by (start, end), each tensor starts where the previous one ended:
 *      no overlap, no gap, end >= start ("InvalidOffset"), and no tensor
 *      reaches past the data area
 *  R12 the last tensor ends exactly at the end of the file: trailing bytes
 *      are an error, as in the reference ("MetadataIncompleteBuffer")
 * Allowed: zero-size tensors (a 0 in the shape, data_offsets [s, s]), 0-dim
 * tensors (shape [], one element), a header whose length is not a multiple
 * of 8 (older writers), leading JSON whitespace, data at any alignment.
 * Limits of this reader (not of the format): at most LM_MAX_DIMS dimensions;
 * integers above 2^53 are refused (cJSON holds numbers as doubles, so larger
 * ones cannot be read exactly; no real tensor has that many bytes).
 *
 * Entries are handed out in data-offset order. Tensor bytes stay in the map
 * and may be unaligned: readers copy them out, nothing casts into the map. */
#include "source_impl.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000ull   /* MAX_HEADER_SIZE in safetensors/src/tensor.rs */
#define ST_MAX_EXACT (1ull << 53)    /* largest integer a double holds exactly */

typedef struct st_backend {
    unsigned char *map;
    size_t map_len;
    int fd;   /* kept for st_read: pread reports a truncated file as an error, a map would SIGBUS */
} st_backend;

typedef struct st_info {
    const char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    uint64_t start, end, nbytes;
    size_t order;  /* position in the JSON object: tie-break for equal offsets */
} st_info;

static int st_read(const lm_source *s, size_t i, void *dst, lm_err *err)
{
    const st_backend *b = s->backend;
    const lm_entry *e = &s->entries[i];
    unsigned char *d = dst;
    uint64_t got = 0;
    while (got < e->nbytes) {
        size_t want = e->nbytes - got > (1u << 30) ? (1u << 30) : (size_t)(e->nbytes - got);
        ssize_t k = pread(b->fd, d + got, want, (off_t)(e->offset + got));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0)
            return lm_err_set(err, LM_EIO, s->path, e->name, (int64_t)(e->offset + got), "cannot read: %s", strerror(errno));
        if (k == 0)
            return lm_err_set(err, LM_EIO, s->path, e->name, (int64_t)(e->offset + got), "file is shorter than when it was opened (truncated?)");
        got += (uint64_t)k;
    }
    return 0;
}

static const void *st_raw(const lm_source *s, size_t i)
{
    const st_backend *b = s->backend;
    return b->map + s->entries[i].offset;
}

static void st_close(lm_source *s)
{
    st_backend *b = s->backend;
    if (!b) return;
    if (b->map) munmap(b->map, b->map_len);
    if (b->fd >= 0) close(b->fd);
    free(b);
    s->backend = NULL;
}

static const lm_source_ops st_ops = { st_read, st_raw, st_close };

/* Checks what cJSON lets through inside strings but JSON (RFC 8259) and the
 * reference's serde_json refuse: raw control characters (< 0x20). Also
 * refuses the escape "\u0000", which would end a cJSON string early (cJSON
 * strings are NUL-terminated), so that two different keys could compare
 * equal. Walks the text tracking strings and escapes; returns the offset of
 * the offending byte and sets *why, or returns -1. */
static int64_t check_strings(const char *p, size_t n, const char **why)
{
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (!in_str) { if (p[i] == '"') in_str = 1; continue; }
        if (p[i] == '"') { in_str = 0; continue; }
        if ((unsigned char)p[i] < 0x20) { *why = "header string contains a raw control character"; return (int64_t)i; }
        if (p[i] != '\\') continue;
        if (i + 5 < n && p[i + 1] == 'u' && p[i + 2] == '0' && p[i + 3] == '0' && p[i + 4] == '0' && p[i + 5] == '0') {
            *why = "header string contains \\u0000";
            return (int64_t)i;
        }
        i++; /* skip the escaped character */
    }
    return -1;
}

static int json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* R6: returns the first key that occurs twice among obj's members, or NULL.
 * Sorting pointers keeps this O(n log n) for hostile headers with many keys. */
static const char *duplicate_key(const cJSON *obj, int *oom)
{
    size_t n = 0, k = 0;
    *oom = 0;
    for (const cJSON *c = obj->child; c; c = c->next) n++;
    if (n < 2) return NULL;
    const char **keys = malloc(n * sizeof *keys);
    if (!keys) { *oom = 1; return NULL; }
    for (const cJSON *c = obj->child; c; c = c->next) keys[k++] = c->string ? c->string : "";
    qsort(keys, n, sizeof *keys, cmp_str_ptr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) dup = keys[i];
    free(keys);
    return dup;
}

/* A JSON number that is a non-negative integer no larger than 2^53. */
static int json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > (double)ST_MAX_EXACT || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static const char *const k_refused_dtypes[] = {
    "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "C64", "F8_E4M3FNUZ", "F8_E5M2FNUZ", NULL
};

/* R8–R10 for one tensor entry. */
static int parse_tensor(const char *path, const cJSON *t, st_info *info, lm_err *err)
{
    const char *key = t->string;
    if (!cJSON_IsObject(t))
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "tensor entry is not a JSON object");
    int oom;
    const char *dup = duplicate_key(t, &oom);
    if (oom) return lm_err_set(err, LM_ENOMEM, path, key, LM_ERR_NO_OFFSET, "out of memory");
    if (dup) return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "duplicate field \"%s\" in tensor entry", dup);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    if (!dt) return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "missing \"dtype\"");
    if (!shape) return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "missing \"shape\"");
    if (!offs) return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "missing \"data_offsets\"");

    if (!cJSON_IsString(dt))
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "\"dtype\" is not a string");
    info->dtype = lm_dtype_from_name(dt->valuestring);
    if (info->dtype == LM_DT_INVALID) {
        for (int i = 0; k_refused_dtypes[i]; i++)
            if (strcmp(dt->valuestring, k_refused_dtypes[i]) == 0)
                return lm_err_set(err, LM_EUNSUPPORTED, path, key, LM_ERR_NO_OFFSET, "dtype %s is not supported", dt->valuestring);
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "unknown dtype \"%.64s\"", dt->valuestring);
    }

    if (!cJSON_IsArray(shape))
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "\"shape\" is not an array");
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > LM_MAX_DIMS)
        return lm_err_set(err, LM_EUNSUPPORTED, path, key, LM_ERR_NO_OFFSET, "%d dimensions (at most %d supported)", ndim, LM_MAX_DIMS);
    info->ndim = ndim;
    uint64_t numel = 1;
    int overflow = 0, d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t x;
        if (json_u64(v, &x))
            return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET,
                              "shape[%d] is not a non-negative integer below 2^53", d);
        info->shape[d] = (int64_t)x;
        if (__builtin_mul_overflow(numel, x, &numel)) overflow = 1;
    }
    /* a zero dimension makes the product 0 whatever overflowed before it */
    for (int k = 0; k < ndim; k++) if (info->shape[k] == 0) { overflow = 0; numel = 0; }
    if (overflow || numel > (uint64_t)INT64_MAX)
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "shape product overflows 64 bits");
    if (__builtin_mul_overflow(numel, (uint64_t)lm_dtype_size(info->dtype), &info->nbytes))
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "shape product × dtype size overflows 64 bits");

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET, "\"data_offsets\" is not an array of two integers");
    if (json_u64(offs->child, &info->start) || json_u64(offs->child->next, &info->end))
        return lm_err_set(err, LM_EINPUT, path, key, LM_ERR_NO_OFFSET,
                          "\"data_offsets\" holds something other than a non-negative integer below 2^53");
    info->name = key;
    return 0;
}

/* R7 */
static int parse_metadata(lm_source *s, const cJSON *m, lm_err *err)
{
    if (cJSON_IsNull(m)) return 0;
    if (!cJSON_IsObject(m))
        return lm_err_set(err, LM_EINPUT, s->path, "__metadata__", LM_ERR_NO_OFFSET, "__metadata__ is not a JSON object");
    int oom;
    const char *dup = duplicate_key(m, &oom);
    if (oom) return lm_err_set(err, LM_ENOMEM, s->path, "__metadata__", LM_ERR_NO_OFFSET, "out of memory");
    if (dup) return lm_err_set(err, LM_EINPUT, s->path, dup, LM_ERR_NO_OFFSET, "duplicate key in __metadata__");
    for (const cJSON *c = m->child; c; c = c->next) {
        if (!cJSON_IsString(c))
            return lm_err_set(err, LM_EINPUT, s->path, c->string, LM_ERR_NO_OFFSET,
                              "__metadata__ value is not a string (metadata is string to string only)");
        int rc = lm_source_add_meta(s, c->string, c->valuestring, err);
        if (rc) return rc;
    }
    return 0;
}

static int cmp_info(const void *a, const void *b)
{
    const st_info *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order ? 1 : 0;
}

/* R10–R12 over the tensors sorted by offsets; data_len is the data area size. */
static int check_layout(const char *path, const st_info *t, size_t n, uint64_t data_len,
                        uint64_t data_start, lm_err *err)
{
    uint64_t prev = 0;
    const char *prev_name = NULL;
    for (size_t i = 0; i < n; i++) {
        const st_info *x = &t[i];
        int64_t at = (int64_t)(data_start + (x->start < data_len ? x->start : data_len));
        if (x->end < x->start)
            return lm_err_set(err, LM_EINPUT, path, x->name, at,
                              "data_offsets [%llu, %llu]: end before start",
                              (unsigned long long)x->start, (unsigned long long)x->end);
        if (x->end > data_len)   /* the file is shorter than its header says: cut short */
            return lm_err_set(err, LM_ETRUNCATED, path, x->name, at,
                              "data_offsets [%llu, %llu] reach past the end of the data area (%llu bytes): the file is cut short",
                              (unsigned long long)x->start, (unsigned long long)x->end, (unsigned long long)data_len);
        if (x->end - x->start != x->nbytes)
            return lm_err_set(err, LM_EINPUT, path, x->name, at,
                              "shape and dtype %s give %llu bytes but data_offsets [%llu, %llu] span %llu",
                              lm_dtype_name(x->dtype), (unsigned long long)x->nbytes,
                              (unsigned long long)x->start, (unsigned long long)x->end,
                              (unsigned long long)(x->end - x->start));
        if (x->start < prev)
            return lm_err_set(err, LM_EINPUT, path, x->name, at,
                              "data_offsets [%llu, %llu] overlap tensor \"%.100s\" (which ends at %llu)",
                              (unsigned long long)x->start, (unsigned long long)x->end,
                              prev_name, (unsigned long long)prev);
        if (x->start > prev)
            return lm_err_set(err, LM_EINPUT, path, x->name, (int64_t)(data_start + prev),
                              "gap of %llu unused bytes before this tensor (data_offsets start at %llu, previous data ends at %llu)",
                              (unsigned long long)(x->start - prev), (unsigned long long)x->start,
                              (unsigned long long)prev);
        prev = x->end;
        prev_name = x->name;
    }
    if (prev != data_len)
        return lm_err_set(err, LM_EINPUT, path, NULL, (int64_t)(data_start + prev),
                          "%llu trailing bytes after the last tensor (data area is %llu bytes, tensors cover %llu)",
                          (unsigned long long)(data_len - prev), (unsigned long long)data_len,
                          (unsigned long long)prev);
    return 0;
}

/* Parses and validates the header text, fills s. hdr is NUL-terminated, n bytes. */
static int parse_header(lm_source *s, const char *hdr, size_t n, uint64_t data_len, lm_err *err)
{
    const char *path = s->path;
    size_t bad = lm_utf8_check((const unsigned char *)hdr, n);
    if (bad != n) return lm_err_set(err, LM_EINPUT, path, NULL, (int64_t)(8 + bad), "header is not valid UTF-8");
    const char *nul = memchr(hdr, 0, n);
    if (nul) return lm_err_set(err, LM_EINPUT, path, NULL, (int64_t)(8 + (nul - hdr)), "header contains a NUL byte");
    const char *why = NULL;
    int64_t bad_at = check_strings(hdr, n, &why);
    if (bad_at >= 0) return lm_err_set(err, LM_EINPUT, path, NULL, 8 + bad_at, "%s", why);

    size_t lead = 0;
    while (lead < n && json_ws(hdr[lead])) lead++;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr + lead, n - lead, &end, 0);
    if (!root) {
        int64_t at = (end && end >= hdr && end <= hdr + n) ? (int64_t)(8 + (end - hdr)) : 8;
        return lm_err_set(err, LM_EINPUT, path, NULL, at, "header is not valid JSON");
    }
    int rc = 0;
    st_info *infos = NULL;
    for (const char *p = end; p < hdr + n; p++)
        if (!json_ws(*p)) {
            rc = lm_err_set(err, LM_EINPUT, path, NULL, (int64_t)(8 + (p - hdr)),
                            "header has text after the JSON value (only whitespace padding is allowed)");
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        rc = lm_err_set(err, LM_EINPUT, path, NULL, 8, "header is not a JSON object");
        goto out;
    }
    int oom;
    const char *dup = duplicate_key(root, &oom);
    if (oom) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    if (dup) { rc = lm_err_set(err, LM_EINPUT, path, dup, LM_ERR_NO_OFFSET, "duplicate key in header"); goto out; }

    size_t count = 0;
    for (const cJSON *c = root->child; c; c = c->next) count++;
    infos = calloc(count ? count : 1, sizeof *infos);
    if (!infos) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    size_t nt = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if ((rc = parse_metadata(s, c, err))) goto out;
            continue;
        }
        if ((rc = parse_tensor(path, c, &infos[nt], err))) goto out;
        infos[nt].order = nt;
        nt++;
    }
    qsort(infos, nt, sizeof *infos, cmp_info);
    if ((rc = check_layout(path, infos, nt, data_len, s->data_start, err))) goto out;
    for (size_t i = 0; i < nt; i++)
        if ((rc = lm_source_add(s, infos[i].name, infos[i].dtype, infos[i].ndim, infos[i].shape,
                                s->data_start + infos[i].start, NULL, err)))
            goto out;
out:
    free(infos);
    cJSON_Delete(root);
    return rc;
}

int lm_safetensors_open(lm_source **out, const char *path, lm_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "not a regular file");
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {  /* R1 */
        close(fd);
        return lm_err_set(err, LM_EINPUT, path, NULL, 0,
                          "file is %llu bytes, too short for the 8-byte header length", (unsigned long long)size);
    }
    if (size > SIZE_MAX) {
        close(fd);
        return lm_err_set(err, LM_EUNSUPPORTED, path, NULL, LM_ERR_NO_OFFSET, "file too large to map");
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        close(fd);
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot mmap: %s", strerror(e));
    }

    const unsigned char *b = map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | b[i];
    int rc;
    lm_source *s = NULL;
    char *hdr = NULL;
    if (n > ST_MAX_HEADER) {  /* R2 */
        rc = lm_err_set(err, LM_EINPUT, path, NULL, 0,
                        "header length %llu exceeds the limit of %llu bytes",
                        (unsigned long long)n, ST_MAX_HEADER);
        goto fail;
    }
    if (8 + n > size) {  /* R3: the header itself is cut */
        rc = lm_err_set(err, LM_ETRUNCATED, path, NULL, 0,
                        "header length %llu runs past the end of the file (%llu bytes): the file is cut short",
                        (unsigned long long)n, (unsigned long long)size);
        goto fail;
    }
    if ((rc = lm_source_new(&s, path, LM_FMT_SAFETENSORS, err))) goto fail;
    st_backend *be = calloc(1, sizeof *be);
    if (!be) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto fail; }
    be->map = map;
    be->map_len = (size_t)size;
    be->fd = fd;
    map = NULL;  /* map and fd owned by the source from here on */
    fd = -1;
    s->backend = be;
    s->ops = &st_ops;
    s->file_size = size;
    s->data_start = 8 + n;
    /* a NUL-terminated copy: cJSON and the checks above want a C string */
    hdr = malloc((size_t)n + 1);
    if (!hdr) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto fail; }
    memcpy(hdr, be->map + 8, (size_t)n);
    hdr[n] = 0;
    if ((rc = parse_header(s, hdr, (size_t)n, size - 8 - n, err))) goto fail;
    free(hdr);
    *out = s;
    return 0;
fail:
    free(hdr);
    if (map) munmap(map, (size_t)size);
    if (fd >= 0) close(fd);
    lm_source_close(s);
    lm_err_file(err, path);
    return rc;
}
