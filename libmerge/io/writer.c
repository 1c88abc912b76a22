/* Streaming safetensors writer. See include/libmerge/writer.h.
 *
 * Byte layout matches the reference writer (huggingface/safetensors,
 * safetensors/src/tensor.rs `prepare` + `serialize_to_file`):
 *  - tensors sorted by dtype descending in the reference's Dtype enum order
 *    (BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < U16 < F16 < BF16 < I32 < U32
 *    < F32 < F64 < I64 < U64), then by name (bytewise), unless keep_order;
 *  - the header is compact JSON as serde_json prints it: "__metadata__" first
 *    (when there is metadata), then each tensor as
 *    {"dtype":"F32","shape":[1,2],"data_offsets":[0,8]} in data order;
 *  - the header is padded with spaces to a multiple of 8 bytes;
 *  - data follows, tensor after tensor, no gaps.
 * Strings are escaped as serde_json does: \" \\ \b \f \n \r \t, other
 * control characters as \u00xx, everything else (UTF-8) as is.
 *
 * Durability: the file is written to "<dir>/.<name>.XXXXXX", fsync'd,
 * renamed over the target, and the directory is fsync'd. Any failure removes
 * the temporary file; the target is never partially written. */
#include "libmerge/writer.h"
#include "utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WR_BUF (8u << 20)   /* coalesce small writes into 8 MiB */

typedef struct wr_tensor {
    char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
    uint64_t nbytes;
} wr_tensor;

struct lm_writer {
    char *path, *tmp;
    int fd;
    int failed;              /* LM_E* once a write failed: temp already removed */
    int src_fd;              /* lm_writer_copy_from: the source file kept open between calls */
    char *src_path;
    int src_given;           /* the caller's descriptor src_fd duplicates (copy_from_fd), or -1 */
    uint64_t pend_off, pend_len;  /* a copy not yet issued: contiguous copies coalesce into one */
    wr_tensor *t;
    size_t n;
    size_t *order;           /* order[k] = index of the k-th tensor to write */
    uint64_t data_start, data_len, written;
    size_t cur;              /* k of the tensor being written (for messages) */
    uint64_t cur_end;        /* data offset where tensor `cur` ends */
    unsigned char *buf;
    size_t buf_len;
    char **inputs;
    size_t n_inputs;
    uint64_t wb_off;         /* file bytes already handed to writeback (kick_writeback) */
    uint64_t drop_off;       /* file bytes written back and dropped from the page cache */
    int pfd;                 /* dup of fd for lm_writer_pwrite: stays open until free_writer,
                                so a failure closing fd never lets a worker's pwrite reach
                                a reused descriptor */
    int dfd;                 /* the temp file opened O_DIRECT for lm_writer_pwrite's aligned
                                middles, or -1; same lifetime as pfd */
    int direct_off;          /* set (atomically) once the filesystem refused a direct write */
};

/* Rank of a dtype in the reference's Dtype enum (declaration order). */
static int ref_rank(lm_dtype t)
{
    switch (t) {
    case LM_DT_BOOL: return 0;
    case LM_DT_U8: return 1;
    case LM_DT_I8: return 2;
    case LM_DT_F8_E5M2: return 3;
    case LM_DT_F8_E4M3: return 4;
    case LM_DT_I16: return 5;
    case LM_DT_U16: return 6;
    case LM_DT_F16: return 7;
    case LM_DT_BF16: return 8;
    case LM_DT_I32: return 9;
    case LM_DT_U32: return 10;
    case LM_DT_F32: return 11;
    case LM_DT_F64: return 12;
    case LM_DT_I64: return 13;
    case LM_DT_U64: return 14;
    default: return -1;
    }
}

static int cmp_ref_order(const void *a, const void *b, void *ctx)
{
    const wr_tensor *t = ctx;
    const wr_tensor *x = &t[*(const size_t *)a], *y = &t[*(const size_t *)b];
    int rx = ref_rank(x->dtype), ry = ref_rank(y->dtype);
    if (rx != ry) return ry - rx;   /* descending */
    return strcmp(x->name, y->name);
}

/* ---- a growable string for the header ---- */
typedef struct sbuf { char *p; size_t len, cap; int oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(sbuf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}

/* JSON string with serde_json's escapes. */
static void sb_json_str(sbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    sb_put(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        const char *esc = NULL;
        char u[7];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
                u[6] = 0;
                esc = u;
            }
        }
        if (!esc) continue;
        sb_put(b, run, (size_t)(s - run));
        sb_str(b, esc);
        run = s + 1;
    }
    sb_put(b, run, (size_t)(s - run));
    sb_put(b, "\"", 1);
}

static int check_text(const char *path, const char *what, const char *s, lm_err *err)
{
    size_t n = strlen(s);
    if (lm_utf8_check((const unsigned char *)s, n) != n)
        return lm_err_set(err, LM_EINPUT, path, s, LM_ERR_NO_OFFSET, "%s is not valid UTF-8", what);
    return 0;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Returns the first string that occurs twice, or NULL (*oom on failure). */
static const char *find_dup(const char *const *v, size_t n, int *oom)
{
    *oom = 0;
    if (n < 2) return NULL;
    const char **s = malloc(n * sizeof *s);
    if (!s) { *oom = 1; return NULL; }
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_cstr);
    const char *d = NULL;
    for (size_t i = 1; i < n && !d; i++) if (strcmp(s[i - 1], s[i]) == 0) d = s[i];
    free(s);
    return d;
}

/* Is `path` the same file as one of the inputs (same st_dev and st_ino, so
 * hard links and symlinks count), or the same name? Returns the input or NULL. */
static const char *same_as_input(const char *path, char *const *inputs, size_t n)
{
    struct stat out;
    int have_out = stat(path, &out) == 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(inputs[i], path) == 0) return inputs[i];
        struct stat in;
        if (have_out && stat(inputs[i], &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
            return inputs[i];
    }
    return NULL;
}

/* Can the file at `path` be replaced by renaming a new file over it? An
 * existing directory cannot, and a device, FIFO or socket must not be: the
 * rename would replace /dev/null itself (as root) by a regular file rather
 * than write into it. A symlink is itself replaced, never followed. Returns 0
 * or sets err (LM_EUSAGE). */
static int check_target(const char *path, lm_err *err)
{
    if (!path[0]) return lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET, "empty output path");
    if (path[strlen(path) - 1] == '/')
        return lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET, "ends with '/': the output must be a file name");
    struct stat st;
    if (lstat(path, &st) != 0 || S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)) return 0;
    return lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET,
                      S_ISDIR(st.st_mode) ? "is a directory: the output must be a file name"
                                          : "is a device, FIFO or socket, not a regular file: refusing to replace it");
}

int lm_output_check(const char *path, const char *const *inputs, size_t n_inputs, lm_err *err)
{
    /* same_as_input only reads the strings; the cast drops nothing it writes. */
    const char *in = same_as_input(path, (char *const *)inputs, inputs ? n_inputs : 0);
    if (in) return lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET, "refusing to overwrite input %s", in);
    return check_target(path, err);
}

static void free_writer(lm_writer *w)
{
    if (!w) return;
    if (w->src_fd >= 0) close(w->src_fd);
    if (w->pfd >= 0) close(w->pfd);
    if (w->dfd >= 0) close(w->dfd);
    free(w->src_path);
    if (w->t) for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    if (w->inputs) for (size_t i = 0; i < w->n_inputs; i++) free(w->inputs[i]);
    free(w->inputs);
    free(w->t);
    free(w->order);
    free(w->buf);
    free(w->path);
    free(w->tmp);
    free(w);
}

/* Closes and removes the temporary file (once). */
static void drop_tmp(lm_writer *w)
{
    if (w->fd >= 0) { close(w->fd); w->fd = -1; }
    if (w->tmp) {
        unlink(w->tmp);
        lm_atomic_unregister(w->tmp);
        free(w->tmp);
        w->tmp = NULL;
    }
}

/* Records a failure: removes the temp file and returns the error. */
static int fail(lm_writer *w, int rc)
{
    drop_tmp(w);
    w->failed = rc;
    return rc;
}

static int io_fail(lm_writer *w, lm_err *err, int e, const char *what)
{
    const char *key = (w->cur < w->n) ? w->t[w->order[w->cur]].name : NULL;
    lm_err_set(err, LM_EIO, w->path, key, (int64_t)(w->data_start + w->written),
               "%s: %s (temporary file removed)", what, strerror(e));
    return fail(w, LM_EIO);
}

/* A failure of the file as a whole (reserving space, fsync, rename): no tensor
 * or byte offset to name. */
static int file_fail(lm_writer *w, lm_err *err, int e, const char *what)
{
    lm_err_set(err, LM_EIO, w->path, NULL, LM_ERR_NO_OFFSET, "%s: %s (temporary file removed)", what, strerror(e));
    return fail(w, LM_EIO);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (k == 0) return EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int copy_bytes(lm_writer *w, uint64_t off, uint64_t n, lm_err *err);

/* Starts writeback of what was written since the last call, every 64 MiB
 * (sync_file_range SYNC_FILE_RANGE_WRITE: asynchronous, no durability
 * promise), and drops the range kicked one call earlier from the page cache
 * once it is on disk (by then its writeback is mostly done). The disk works
 * while the caller computes, the final fsync waits for the tail only (a
 * 2.1 GB bake's commit spent ~0.7 s in fsync: writeback starts at 10% of
 * RAM dirty), and the output does not push the inputs out of the page cache
 * or make the kernel reclaim memory for every new page (2 GB written with
 * the pages dropped as it goes: 0.76 s system time instead of 1.44 s). */
static void kick_writeback(lm_writer *w)
{
    off_t end = lseek(w->fd, 0, SEEK_CUR);
    if (end < 0 || (uint64_t)end < w->wb_off + (64u << 20)) return;
    if (w->wb_off > w->drop_off) {
        /* no waiting for the disk here: the caller is the in-order thread others wait on.
         * DONTNEED drops the pages already clean and leaves any still being written */
        off_t a = (off_t)w->drop_off, n = (off_t)(w->wb_off - w->drop_off);
        posix_fadvise(w->fd, a, n, POSIX_FADV_DONTNEED);
        w->drop_off = w->wb_off;
    }
    sync_file_range(w->fd, (off_t)w->wb_off, end - (off_t)w->wb_off, SYNC_FILE_RANGE_WRITE);
    w->wb_off = (uint64_t)end;
}

/* Issues what is pending: a coalesced copy, or the buffered bytes (never
 * both: each is flushed before the other starts). */
static int flush_buf(lm_writer *w, lm_err *err)
{
    if (w->pend_len) {
        uint64_t off = w->pend_off, n = w->pend_len;
        w->pend_len = 0;
        int rc = copy_bytes(w, off, n, err);
        if (rc && !w->failed) fail(w, rc);
        if (rc) return rc;
    }
    if (!w->buf_len) return 0;
    int e = write_all(w->fd, w->buf, w->buf_len);
    w->buf_len = 0;
    if (e) return io_fail(w, err, e, "cannot write");
    return 0;
}

/* Builds the header text (padded) for the tensors in w->order. */
static int build_header(lm_writer *w, const lm_kv *meta, size_t n_meta, sbuf *h)
{
    sb_put(h, "{", 1);
    int first = 1;
    if (n_meta) {
        sb_str(h, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i) sb_put(h, ",", 1);
            sb_json_str(h, meta[i].key);
            sb_put(h, ":", 1);
            sb_json_str(h, meta[i].value);
        }
        sb_put(h, "}", 1);
        first = 0;
    }
    uint64_t off = 0;
    for (size_t k = 0; k < w->n; k++) {
        const wr_tensor *t = &w->t[w->order[k]];
        if (!first) sb_put(h, ",", 1);
        first = 0;
        sb_json_str(h, t->name);
        sb_str(h, ":{\"dtype\":\"");
        sb_str(h, lm_dtype_name(t->dtype));
        sb_str(h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) sb_put(h, ",", 1);
            sb_u64(h, (uint64_t)t->shape[d]);
        }
        sb_str(h, "],\"data_offsets\":[");
        sb_u64(h, off);
        sb_put(h, ",", 1);
        if (__builtin_add_overflow(off, t->nbytes, &off)) return LM_EINPUT;
        sb_u64(h, off);
        sb_str(h, "]}");
    }
    sb_put(h, "}", 1);
    while (h->len % 8) sb_put(h, " ", 1);  /* as `prepare` pads: to a multiple of 8 */
    w->data_len = off;
    return h->oom ? LM_ENOMEM : 0;
}

static int validate_tensor(const char *path, const lm_wtensor *t, uint64_t *nbytes, lm_err *err)
{
    if (!t->name) return lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET, "tensor without a name");
    if (strcmp(t->name, "__metadata__") == 0)
        return lm_err_set(err, LM_EINPUT, path, t->name, LM_ERR_NO_OFFSET, "\"__metadata__\" cannot name a tensor");
    int rc = check_text(path, "tensor name", t->name, err);
    if (rc) return rc;
    if (lm_dtype_size(t->dtype) == 0)
        return lm_err_set(err, LM_EINPUT, path, t->name, LM_ERR_NO_OFFSET, "invalid dtype");
    if (t->ndim < 0 || t->ndim > LM_MAX_DIMS)
        return lm_err_set(err, LM_EINPUT, path, t->name, LM_ERR_NO_OFFSET, "%d dimensions (0 to %d allowed)", t->ndim, LM_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return lm_err_set(err, LM_EINPUT, path, t->name, LM_ERR_NO_OFFSET, "negative dimension %lld", (long long)t->shape[d]);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
            return lm_err_set(err, LM_EINPUT, path, t->name, LM_ERR_NO_OFFSET, "shape product overflows 64 bits");
    }
    if (__builtin_mul_overflow(numel, (uint64_t)lm_dtype_size(t->dtype), nbytes))
        return lm_err_set(err, LM_EINPUT, path, t->name, LM_ERR_NO_OFFSET, "tensor byte size overflows 64 bits");
    return 0;
}

static int validate_meta(const char *path, const lm_kv *meta, size_t n_meta, lm_err *err)
{
    for (size_t i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value)
            return lm_err_set(err, LM_EINPUT, path, meta[i].key, LM_ERR_NO_OFFSET, "metadata key or value is NULL");
        int rc = check_text(path, "metadata key", meta[i].key, err);
        if (!rc) rc = check_text(path, "metadata value", meta[i].value, err);
        if (rc) return rc;
    }
    if (n_meta < 2) return 0;
    const char **keys = malloc(n_meta * sizeof *keys);
    if (!keys) return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    for (size_t i = 0; i < n_meta; i++) keys[i] = meta[i].key;
    int oom;
    const char *dup = find_dup(keys, n_meta, &oom);
    int rc = 0;
    if (oom) rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    else if (dup) rc = lm_err_set(err, LM_EINPUT, path, dup, LM_ERR_NO_OFFSET, "duplicate metadata key");
    free(keys);
    return rc;
}

/* Creates "<dir>/.<base>.XXXXXX" next to path. */
static int make_tmp(lm_writer *w, lm_err *err)
{
    char *a = strdup(w->path), *b = strdup(w->path);
    if (!a || !b) { free(a); free(b); return lm_err_set(err, LM_ENOMEM, w->path, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    const char *dir = dirname(a), *base = basename(b);
    size_t n = strlen(dir) + strlen(base) + 16;
    w->tmp = malloc(n);
    if (!w->tmp) { free(a); free(b); return lm_err_set(err, LM_ENOMEM, w->path, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    /* ".NAME.XXXXXX" is 8 bytes longer than NAME: cut NAME so that an output
     * name near NAME_MAX (long titles, 3-byte UTF-8 characters) still gets
     * a temporary file; the rename gives it its full name. */
    long name_max = pathconf(dir, _PC_NAME_MAX);
    if (name_max <= 8) name_max = 255;
    int keep = (int)strlen(base);
    if (keep > name_max - 8) keep = (int)name_max - 8;
    snprintf(w->tmp, n, "%s/.%.*s.XXXXXX", dir, keep, base);
    free(a);
    free(b);
    w->fd = mkostemp(w->tmp, O_CLOEXEC);
    if (w->fd < 0) {
        int e = errno;
        free(w->tmp);
        w->tmp = NULL;
        return lm_err_set(err, LM_EIO, w->path, NULL, LM_ERR_NO_OFFSET, "cannot create a temporary file next to it: %s", strerror(e));
    }
    if (lm_atomic_register(w->tmp)) {
        unlink(w->tmp);
        close(w->fd);
        w->fd = -1;
        free(w->tmp);
        w->tmp = NULL;
        return lm_err_set(err, LM_ENOMEM, w->path, NULL, LM_ERR_NO_OFFSET, "too many temporary files open at once");
    }
    return 0;
}

int lm_writer_open(lm_writer **out, const char *path, const lm_wtensor *tensors, size_t n,
                   const lm_kv *meta, size_t n_meta, const lm_writer_opts *opts, lm_err *err)
{
    *out = NULL;
    lm_writer_opts defaults = LM_WRITER_OPTS_INIT;
    if (!opts) opts = &defaults;
    if (!meta) n_meta = 0;
    int rc;
    lm_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) { free(w); return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    w->fd = -1;
    w->src_fd = -1;
    w->src_given = -1;
    w->pfd = -1;
    w->dfd = -1;
    if (opts->n_inputs) {
        w->inputs = calloc(opts->n_inputs, sizeof *w->inputs);
        if (!w->inputs) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto bad; }
        w->n_inputs = opts->n_inputs;
        for (size_t i = 0; i < opts->n_inputs; i++)
            if (!(w->inputs[i] = strdup(opts->inputs[i]))) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto bad; }
    }
    const char *in = same_as_input(path, w->inputs, w->n_inputs);
    if (in) { rc = lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET, "refusing to overwrite input %s", in); goto bad; }
    if ((rc = check_target(path, err))) goto bad;

    w->t = calloc(n ? n : 1, sizeof *w->t);
    w->order = malloc((n ? n : 1) * sizeof *w->order);
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!w->t || !w->order || !names) { free(names); rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto bad; }
    w->n = n;
    for (size_t i = 0; i < n; i++) {
        if ((rc = validate_tensor(path, &tensors[i], &w->t[i].nbytes, err))) { free(names); goto bad; }
        if (!(w->t[i].name = strdup(tensors[i].name))) { free(names); rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto bad; }
        w->t[i].dtype = tensors[i].dtype;
        w->t[i].ndim = tensors[i].ndim;
        memcpy(w->t[i].shape, tensors[i].shape, sizeof w->t[i].shape);
        w->order[i] = i;
        names[i] = w->t[i].name;
    }
    int oom;
    const char *dup = find_dup(names, n, &oom);
    if (oom || dup) {
        rc = oom ? lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory")
                 : lm_err_set(err, LM_EINPUT, path, dup, LM_ERR_NO_OFFSET, "duplicate tensor name");
        free(names);
        goto bad;
    }
    free(names);
    if ((rc = validate_meta(path, meta, n_meta, err))) goto bad;
    if (!opts->keep_order && n > 1) {
        qsort_r(w->order, n, sizeof *w->order, cmp_ref_order, w->t);
    }

    sbuf h = {0};
    rc = build_header(w, meta, n_meta, &h);
    if (rc) {
        free(h.p);
        rc = rc == LM_ENOMEM ? lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory")
                             : lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET, "total data size overflows 64 bits");
        goto bad;
    }
    w->data_start = 8 + h.len;
    w->buf = malloc(WR_BUF);
    if (!w->buf) { free(h.p); rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto bad; }

    if ((rc = make_tmp(w, err))) { free(h.p); goto bad; }
    w->pfd = fcntl(w->fd, F_DUPFD_CLOEXEC, 0);   /* -1: lm_writer_pwrite reports it */
    const char *dio = getenv("LIBMERGE_DIRECT_IO");
    if (!dio || strcmp(dio, "0") != 0)
        w->dfd = open(w->tmp, O_WRONLY | O_DIRECT | O_CLOEXEC);   /* -1 (tmpfs, …): buffered only */
    /* reserve the space now: a full disk or a file-size limit fails here,
     * before any work is done (filesystems without fallocate just skip it) */
    uint64_t total = w->data_start + w->data_len;
    if (total > (uint64_t)INT64_MAX) { free(h.p); rc = lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET, "file size overflows"); fail(w, rc); goto bad; }
    if (fallocate(w->fd, 0, 0, (off_t)total) != 0 && errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
        free(h.p);
        rc = file_fail(w, err, errno, "cannot reserve space");
        goto bad;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    /* the length and header go through the buffer with the first data */
    if (8 + h.len <= WR_BUF) {
        memcpy(w->buf, le, 8);
        memcpy(w->buf + 8, h.p, h.len);
        w->buf_len = 8 + h.len;
    } else {
        int e = write_all(w->fd, le, 8);
        if (!e) e = write_all(w->fd, (const unsigned char *)h.p, h.len);
        if (e) { free(h.p); rc = io_fail(w, err, e, "cannot write header"); goto bad; }
    }
    free(h.p);
    w->cur = 0;
    w->cur_end = n ? w->t[w->order[0]].nbytes : 0;
    *out = w;
    return 0;
bad:
    drop_tmp(w);
    free_writer(w);
    return rc;
}

size_t lm_writer_tensor_index(const lm_writer *w, size_t k)
{
    return k < w->n ? w->order[k] : (size_t)-1;
}

uint64_t lm_writer_data_start(const lm_writer *w) { return w->data_start; }

/* Rebuilds the header with new metadata and rewrites it in place (lcm-bake: hashes
 * computed while the data streams). Same length or LM_EUSAGE. */
int lm_writer_update_meta(lm_writer *w, const lm_kv *meta, size_t n_meta, lm_err *err)
{
    if (w->failed) return lm_err_set(err, w->failed, w->path, NULL, LM_ERR_NO_OFFSET, "writer already failed");
    int rc = validate_meta(w->path, meta, n_meta, err);
    if (rc) return rc;
    sbuf h = {0};
    if (build_header(w, meta, n_meta, &h)) {
        free(h.p);
        return lm_err_set(err, LM_ENOMEM, w->path, NULL, LM_ERR_NO_OFFSET, "cannot rebuild the header");
    }
    if (8 + h.len != w->data_start) {
        free(h.p);
        return lm_err_set(err, LM_EUSAGE, w->path, NULL, LM_ERR_NO_OFFSET,
                          "new metadata changes the header length (%zu bytes, was %llu)", h.len,
                          (unsigned long long)(w->data_start - 8));
    }
    if ((rc = flush_buf(w, err))) { free(h.p); return rc; }
    for (size_t off = 0; off < h.len;) {
        ssize_t k = pwrite(w->fd, h.p + off, h.len - off, (off_t)(8 + off));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { int e = k < 0 ? errno : EIO; free(h.p); return io_fail(w, err, e, "cannot rewrite the header"); }
        off += (size_t)k;
    }
    free(h.p);
    return 0;
}

/* Moves w->cur to the tensor containing data offset w->written. */
static void advance(lm_writer *w)
{
    while (w->cur + 1 < w->n && w->written >= w->cur_end) {
        w->cur++;
        w->cur_end += w->t[w->order[w->cur]].nbytes;
    }
}

int lm_writer_write(lm_writer *w, const void *data, size_t nbytes, lm_err *err)
{
    if (w->failed)
        return lm_err_set(err, w->failed, w->path, NULL, LM_ERR_NO_OFFSET, "writer already failed");
    if (nbytes > w->data_len - w->written) {
        lm_err_set(err, LM_EUSAGE, w->path, NULL, (int64_t)(w->data_start + w->written),
                   "%zu bytes written past the %llu declared in the header (temporary file removed)",
                   nbytes - (size_t)(w->data_len - w->written), (unsigned long long)w->data_len);
        return fail(w, LM_EUSAGE);
    }
    const unsigned char *p = data;
    if (w->pend_len) {
        int rc = flush_buf(w, err);
        if (rc) return rc;
    }
    if (w->buf_len + nbytes <= WR_BUF) {
        memcpy(w->buf + w->buf_len, p, nbytes);
        w->buf_len += nbytes;
    } else {
        int rc = flush_buf(w, err);
        if (rc) return rc;
        if (nbytes >= WR_BUF) {
            int e = write_all(w->fd, p, nbytes);
            if (e) return io_fail(w, err, e, "cannot write");
        } else {
            memcpy(w->buf, p, nbytes);
            w->buf_len = nbytes;
        }
    }
    w->written += nbytes;
    advance(w);
    kick_writeback(w);
    return 0;
}

/* Copies n bytes at src offset off to the temp file: copy_file_range(2) lets
 * the kernel move page-cache pages without a trip through user space (what
 * cp(1) does); pread/write when the filesystems cannot. */
static int copy_bytes(lm_writer *w, uint64_t off, uint64_t n, lm_err *err)
{
    int use_cfr = 1;
    while (n) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        if (use_cfr) {
            loff_t in = (loff_t)off;
            ssize_t k = copy_file_range(w->src_fd, &in, w->fd, NULL, chunk, 0);
            if (k > 0) { off += (uint64_t)k; n -= (uint64_t)k; continue; }
            if (k == 0) return lm_err_set(err, LM_EIO, w->src_path, NULL, (int64_t)off, "file ended early (truncated while being copied?)");
            if (errno == EINTR) continue;
            if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP && errno != EBADF)
                return io_fail(w, err, errno, "cannot copy");
            use_cfr = 0;
        }
        size_t m = chunk < WR_BUF ? chunk : WR_BUF;
        ssize_t k = pread(w->src_fd, w->buf, m, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int e = k < 0 ? errno : 0;
            lm_err_set(err, LM_EIO, w->src_path, NULL, (int64_t)off, "%s", e ? strerror(e) : "file ended early");
            return fail(w, LM_EIO);
        }
        int e = write_all(w->fd, w->buf, (size_t)k);
        if (e) return io_fail(w, err, e, "cannot write");
        off += (uint64_t)k;
        n -= (uint64_t)k;
    }
    return 0;
}

/* pwrite(2) of every byte of [p, p + n) at file offset at; 0 or the errno. */
static int pwrite_all(int fd, const unsigned char *p, size_t n, uint64_t at)
{
    while (n) {
        ssize_t k = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)at);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? errno : EIO;
        p += k;
        at += (uint64_t)k;
        n -= (size_t)k;
    }
    return 0;
}

size_t lm_writer_direct_shift(const lm_writer *w, uint64_t off)
{
    return w->dfd >= 0 ? (size_t)((w->data_start + off) % LM_WRITER_DIRECT_ALIGN) : 0;
}

int lm_writer_pwrite(lm_writer *w, uint64_t off, const void *data, size_t nbytes, lm_err *err)
{
    /* reads only what open fixed (pfd, dfd, data_start, data_len, path) and the atomic
     * direct_off: safe from any thread */
    if (off > w->data_len || nbytes > w->data_len - off)
        return lm_err_set(err, LM_EUSAGE, w->path, NULL, (int64_t)(w->data_start + off),
                          "%zu bytes at data offset %llu run past the %llu declared in the header",
                          nbytes, (unsigned long long)off, (unsigned long long)w->data_len);
    if (w->pfd < 0) return lm_err_set(err, LM_EIO, w->path, NULL, LM_ERR_NO_OFFSET, "cannot write: no descriptor");
    const unsigned char *p = data;
    const uint64_t at = w->data_start + off, A = LM_WRITER_DIRECT_ALIGN;
    uint64_t a = (at + A - 1) / A * A, z = (at + nbytes) / A * A;   /* the whole blocks inside */
    int e = 0;
    if (w->dfd >= 0 && z > a && ((uintptr_t)(p + (a - at)) % A) == 0 && !__atomic_load_n(&w->direct_off, __ATOMIC_RELAXED)) {
        /* the whole blocks go to the disk from p (O_DIRECT: no copy into the page cache,
         * no writeback work for the kernel); the partial blocks at both ends, which the
         * neighbouring tensors share, through the page cache. The two never touch the
         * same page, so the page cache stays coherent with the direct writes. */
        uint64_t done = 0;
        while (a + done < z) {
            size_t m = (size_t)(z - a - done > (1u << 30) ? (1u << 30) : z - a - done);
            ssize_t k = pwrite(w->dfd, p + (a - at) + done, m, (off_t)(a + done));
            if (k < 0 && errno == EINTR) continue;
            if (k < 0 && errno == EINVAL && done == 0) {   /* the filesystem wants other alignment */
                __atomic_store_n(&w->direct_off, 1, __ATOMIC_RELAXED);
                break;
            }
            if (k <= 0) { e = k < 0 ? errno : EIO; break; }
            done += (uint64_t)k;
            if (done % A) break;          /* a short write off the block grid: rest buffered */
        }
        if (!e && done) {
            e = pwrite_all(w->pfd, p, (size_t)(a - at), at);
            uint64_t r = a + done;        /* buffered from here to the end */
            if (!e) e = pwrite_all(w->pfd, p + (r - at), (size_t)(at + nbytes - r), r);
            if (!e) return 0;
        }
    }
    if (!e) e = pwrite_all(w->pfd, p, nbytes, at);
    if (e) return lm_err_set(err, LM_EIO, w->path, NULL, (int64_t)at, "cannot write: %s", strerror(e));
    return 0;
}

int lm_writer_skip(lm_writer *w, size_t nbytes, lm_err *err)
{
    if (w->failed)
        return lm_err_set(err, w->failed, w->path, NULL, LM_ERR_NO_OFFSET, "writer already failed");
    if (nbytes > w->data_len - w->written) {
        lm_err_set(err, LM_EUSAGE, w->path, NULL, (int64_t)(w->data_start + w->written),
                   "%zu bytes skipped past the %llu declared in the header (temporary file removed)",
                   nbytes, (unsigned long long)w->data_len);
        return fail(w, LM_EUSAGE);
    }
    int rc = flush_buf(w, err);   /* what came before goes out first, then the position moves */
    if (rc) return rc;
    if (lseek(w->fd, (off_t)nbytes, SEEK_CUR) < 0) return io_fail(w, err, errno, "cannot seek");
    w->written += nbytes;
    advance(w);
    kick_writeback(w);
    return 0;
}

/* lm_writer_copy_from(_fd): given >= 0 is the caller's descriptor for src_path (duplicated,
 * so the bytes come from the file it opened even if the name now leads elsewhere), -1: the
 * path is opened here. */
static int copy_from(lm_writer *w, int given, const char *src_path, uint64_t offset, uint64_t nbytes, lm_err *err)
{
    if (w->failed)
        return lm_err_set(err, w->failed, w->path, NULL, LM_ERR_NO_OFFSET, "writer already failed");
    if (nbytes > w->data_len - w->written) {
        lm_err_set(err, LM_EUSAGE, w->path, NULL, (int64_t)(w->data_start + w->written),
                   "%llu bytes copied past the %llu declared in the header (temporary file removed)",
                   (unsigned long long)(nbytes - (w->data_len - w->written)), (unsigned long long)w->data_len);
        return fail(w, LM_EUSAGE);
    }
    if (!w->src_path || strcmp(w->src_path, src_path) != 0 || w->src_given != given) {
        int rc = flush_buf(w, err);   /* a pending copy reads the old source */
        if (rc) return rc;
        if (w->src_fd >= 0) close(w->src_fd);
        free(w->src_path);
        w->src_path = strdup(src_path);
        w->src_given = given;
        w->src_fd = given >= 0 ? fcntl(given, F_DUPFD_CLOEXEC, 0) : open(src_path, O_RDONLY | O_CLOEXEC);
        if (!w->src_path || w->src_fd < 0) {
            int e = errno;
            lm_err_set(err, LM_EIO, src_path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(e));
            return fail(w, LM_EIO);
        }
    }
    if (w->pend_len && offset == w->pend_off + w->pend_len) {
        w->pend_len += nbytes;   /* contiguous with the pending copy: one system call later */
    } else {
        int rc = flush_buf(w, err);   /* keep the file offset in step with what was written */
        if (rc) return rc;
        w->pend_off = offset;
        w->pend_len = nbytes;
    }
    w->written += nbytes;
    advance(w);
    return 0;
}

int lm_writer_copy_from(lm_writer *w, const char *src_path, uint64_t offset, uint64_t nbytes, lm_err *err)
{
    return copy_from(w, -1, src_path, offset, nbytes, err);
}

int lm_writer_copy_from_fd(lm_writer *w, int src_fd, const char *src_path, uint64_t offset, uint64_t nbytes, lm_err *err)
{
    return copy_from(w, src_fd < 0 ? -1 : src_fd, src_path, offset, nbytes, err);
}

static int fsync_dir(const char *path)
{
    char *a = strdup(path);
    if (!a) return ENOMEM;
    int fd = open(dirname(a), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(a);
    if (fd < 0) return errno;
    int e = 0;
    if (fsync(fd) != 0 && errno != EINVAL) e = errno;  /* some filesystems cannot fsync a directory */
    close(fd);
    return e;
}

int lm_writer_commit(lm_writer *w, lm_err *err)
{
    int rc = 0;
    if (w->failed) {
        rc = lm_err_set(err, w->failed, w->path, NULL, LM_ERR_NO_OFFSET, "writer already failed");
        goto out;
    }
    if (w->written != w->data_len) {
        size_t k = w->cur < w->n ? w->order[w->cur] : 0;
        rc = lm_err_set(err, LM_EUSAGE, w->path, w->n ? w->t[k].name : NULL, LM_ERR_NO_OFFSET,
                        "only %llu of %llu data bytes were written (temporary file removed)",
                        (unsigned long long)w->written, (unsigned long long)w->data_len);
        fail(w, rc);
        goto out;
    }
    if ((rc = flush_buf(w, err))) goto out;
    if (fsync(w->fd) != 0) { rc = file_fail(w, err, errno, "cannot fsync"); goto out; }
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(w->fd, 0666 & ~mask) != 0) { rc = file_fail(w, err, errno, "cannot set permissions"); goto out; }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) { rc = file_fail(w, err, errno, "cannot close"); goto out; }
    const char *in = same_as_input(w->path, w->inputs, w->n_inputs);  /* again: it may have appeared */
    if (in) {
        rc = lm_err_set(err, LM_EUSAGE, w->path, NULL, LM_ERR_NO_OFFSET, "refusing to overwrite input %s", in);
        fail(w, rc);
        goto out;
    }
    if (rename(w->tmp, w->path) != 0) { rc = file_fail(w, err, errno, "cannot rename the temporary file into place"); goto out; }
    lm_atomic_unregister(w->tmp);
    free(w->tmp);
    w->tmp = NULL;
    int e = fsync_dir(w->path);
    if (e) rc = lm_err_set(err, LM_EIO, w->path, NULL, LM_ERR_NO_OFFSET, "written, but cannot fsync its directory: %s", strerror(e));
out:
    drop_tmp(w);
    free_writer(w);
    return rc;
}

void lm_writer_abort(lm_writer *w)
{
    if (!w) return;
    drop_tmp(w);
    free_writer(w);
}
