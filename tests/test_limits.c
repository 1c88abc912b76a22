/* Every stated limit of the parsers, tested at the limit (accepted) and one
 * past it (refused with a clear error, never a crash or a runaway
 * allocation). The limits and their reasons are listed in libmerge(7),
 * LIMITS. Inputs are built in memory (memfd) here. */
#include "test.h"
#include "fuzz/targets.h"

#include <time.h>

#include "io/torch/pickle.h"

/* ---------- helpers ---------- */

typedef struct { char *p; size_t n, cap; } buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n) c *= 2;
        b->p = realloc(b->p, c);
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }
/* a string literal that may hold NUL bytes */
#define PUTL(b, lit) put((b), (lit), sizeof(lit) - 1)
static void putc_(buf *b, char c, size_t times)
{
    if (!times) return;
    put(b, &c, 1);
    if (times > 1) {
        size_t need = b->n + times - 1;
        if (need > b->cap) {
            size_t cap = b->cap;
            while (cap < need) cap *= 2;
            b->p = realloc(b->p, cap);
            b->cap = cap;
        }
        memset(b->p + b->n, c, times - 1);
        b->n = need;
    }
}

/* safetensors bytes: 8-byte length, header, data (data may be NULL: zeros) */
static buf st_file(const char *header, size_t hlen, size_t data_len)
{
    buf b = {0};
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    put(&b, le, 8);
    put(&b, header, hlen);
    putc_(&b, 0, data_len);
    return b;
}

/* Opens bytes as a tensor source; returns rc, *out set on success. */
static int open_bytes(const buf *b, lm_source **out, lm_err *err, int *fd)
{
    char path[64];
    *fd = lmf_memfile((const uint8_t *)b->p, b->n, path, sizeof path);
    if (*fd < 0) return lm_err_set(err, LM_EIO, NULL, NULL, LM_ERR_NO_OFFSET, "memfd failed");
    return lm_source_open(out, path, NULL, err);
}

/* Time bounds are for a native build; check-valgrind sets TEST_TIME_SCALE. */
static double time_scale(void)
{
    const char *e = getenv("TEST_TIME_SCALE");
    double k = e ? atof(e) : 1.0;
    return k >= 1.0 ? k : 1.0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---------- safetensors: header size (100,000,000 bytes, the reference's MAX_HEADER_SIZE) ---------- */

#define ST_HEADER_LIMIT 100000000u

static void limits_st_header_size(void)
{
    /* "{}" padded with spaces to exactly the limit: accepted */
    buf h = {0};
    PUTL(&h, "{}");
    putc_(&h, ' ', ST_HEADER_LIMIT - 2);
    buf f = st_file(h.p, h.n, 0);
    lm_source *s = NULL;
    lm_err err;
    int fd;
    int rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(lm_source_count(s), 0);
    CHECK_EQ_INT(lm_source_data_start(s), 8 + (uint64_t)ST_HEADER_LIMIT);
    lm_source_close(s);
    /* one byte more (and a file long enough to hold it): refused by the limit */
    PUTL(&h, " ");
    free(f.p);
    f = st_file(h.p, h.n, 0);
    free(h.p);
    rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_EQ_INT(rc, LM_EINPUT);
    CHECK(s == NULL);
    CHECK_MSG(strstr(err.msg, "exceeds the limit") && strstr(err.msg, "100000000"), "message: %s", err.msg);
}

/* ---------- safetensors and torch: dimensions (LM_MAX_DIMS = 8) ---------- */

static void limits_st_dims(void)
{
    const char *ok = "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}";
    const char *past = "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}";
    buf f = st_file(ok, strlen(ok), 8);
    lm_source *s = NULL;
    lm_err err;
    int fd;
    int rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(lm_source_entry(s, 0)->ndim, LM_MAX_DIMS);
    CHECK_EQ_INT(lm_source_entry(s, 0)->numel, 2);
    lm_source_close(s);
    f = st_file(past, strlen(past), 8);
    rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_EQ_INT(rc, LM_EUNSUPPORTED);
    CHECK_EQ_STR(err.key, "t");
    CHECK_MSG(strstr(err.msg, "9 dimensions"), "message: %s", err.msg);
}

/* A pickle of _rebuild_tensor_v2 with ndim dimensions of size 1. */
static buf pickle_tensor(int ndim)
{
    buf b = {0};
    put(&b, "\x80\x02", 2);
    PUTL(&b, "ctorch._utils\n_rebuild_tensor_v2\n(");
    PUTL(&b, "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x01tQ");
    PUTL(&b, "K\x00(");
    for (int i = 0; i < ndim; i++) PUTL(&b, "K\x01");
    PUTL(&b, "t(");
    for (int i = 0; i < ndim; i++) PUTL(&b, "K\x01");
    PUTL(&b, "t\x89" "ccollections\nOrderedDict\n)RtR.");
    return b;
}

/* Unpickles b, frees its bytes, returns pk_load's code. */
static int pickle_rc(buf *b, lm_err *err)
{
    pk_ctx *ctx = NULL;
    pk_value *root = NULL;
    size_t used = 0;
    lm_err_clear(err);
    int rc = pk_load(&ctx, (const unsigned char *)b->p, b->n, "limits.pkl", 0, 0, &root, &used, err);
    pk_free(ctx);
    free(b->p);
    b->p = NULL;
    return rc;
}

static void limits_torch_dims(void)
{
    lm_err err;
    buf b = pickle_tensor(LM_MAX_DIMS);
    int rc = pickle_rc(&b, &err);
    CHECK_OK(rc, &err);
    b = pickle_tensor(LM_MAX_DIMS + 1);
    rc = pickle_rc(&b, &err);
    CHECK_EQ_INT(rc, LM_EUNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "9 dimensions"), "message: %s", err.msg);
}

/* ---------- safetensors: integers in the header (at most 2^53, exact in a double) ---------- */

static void limits_st_integer(void)
{
    const char *ok = "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,9007199254740992],\"data_offsets\":[0,0]}}";
    const char *past = "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,9007199254740994],\"data_offsets\":[0,0]}}";
    buf f = st_file(ok, strlen(ok), 0);
    lm_source *s = NULL;
    lm_err err;
    int fd;
    int rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(lm_source_entry(s, 0)->shape[1], 9007199254740992LL);
    CHECK_EQ_INT(lm_source_entry(s, 0)->numel, 0);
    lm_source_close(s);
    f = st_file(past, strlen(past), 0);
    rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_EQ_INT(rc, LM_EINPUT);
    CHECK_MSG(strstr(err.msg, "2^53"), "message: %s", err.msg);
}

/* ---------- safetensors: tensor count (no limit of its own: bounded by the header size) ---------- */

static void limits_st_tensor_count(void)
{
    enum { N = 200000 };
    buf h = {0};
    char e[128];
    PUTL(&h, "{");
    for (int i = 0; i < N; i++) {
        snprintf(e, sizeof e, "%s\"t%06d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}", i ? "," : "", i, i, i + 1);
        puts_(&h, e);
    }
    PUTL(&h, "}");
    buf f = st_file(h.p, h.n, N);
    free(h.p);
    lm_source *s = NULL;
    lm_err err;
    int fd;
    double t0 = now();
    int rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(lm_source_count(s), N);
    CHECK_EQ_INT(lm_source_find(s, "t123456"), 123456);
    CHECK_EQ_INT(lm_source_entry(s, N - 1)->offset, lm_source_data_start(s) + N - 1);
    lm_source_close(s);
    /* linear, not quadratic: well under the time a quadratic scan would take */
    CHECK_MSG(now() - t0 < 30.0 * time_scale(), "200,000 tensors took %.1f s", now() - t0);
}

/* A header whose 20,000 names all fall in two adjacent buckets under the
 * unseeded FNV-1a the name index used to have (tests/regress/
 * safetensors-hash-flood, made by brute force): it took 1.2 s to open,
 * quadratic in the name count (100,000 such names: 30 s). With a seeded,
 * mixed hash it opens as fast as any other header. */
static void limits_st_hash_flood(void)
{
    FILE *f = fopen("tests/regress/safetensors-hash-flood", "rb");
    CHECK(f != NULL);
    fclose(f);
    lm_source *s = NULL;
    lm_err err;
    double t0 = now();
    int rc = lm_source_open(&s, "tests/regress/safetensors-hash-flood", NULL, &err);
    double dt = now() - t0;
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(lm_source_count(s), 20000);
    lm_source_close(s);
    CHECK_MSG(dt < 0.3 * time_scale(), "opening took %.2f s", dt);
}

/* ---------- key length (no limit of its own in the readers: bounded by the header) ---------- */

static void limits_key_length(void)
{
    enum { K = 1 << 20 };
    buf h = {0};
    PUTL(&h, "{\"lora_unet_");
    putc_(&h, 'k', K);
    PUTL(&h, ".lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[1,4],\"data_offsets\":[0,16]},\"lora_unet_");
    putc_(&h, 'k', K);
    PUTL(&h, ".lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[4,1],\"data_offsets\":[16,32]}}");
    buf f = st_file(h.p, h.n, 32);
    free(h.p);
    /* the source keeps the key whole */
    lm_source *s = NULL;
    lm_err err;
    int fd;
    int rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(strlen(lm_source_entry(s, 0)->name), K + strlen("lora_unet_.lora_down.weight"));
    lm_source_close(s);
    /* as a LoRA: parsed, then unmatched on an SD1.5 base (no crash, no overflow of fixed buffers) */
    rc = lmf_lora((const uint8_t *)f.p, f.n, &err);
    CHECK_MSG(rc == 0 || rc == LM_EINPUT, "lmf_lora returned %d: %s", rc, err.msg);
    /* an error about such a key carries a truncated, terminated key */
    char *p = strstr(f.p + 8, "\"F32\"");
    memcpy(p, "\"F33\"", 5);
    rc = open_bytes(&f, &s, &err, &fd);
    close(fd);
    free(f.p);
    CHECK_EQ_INT(rc, LM_EINPUT);
    CHECK_EQ_INT(strlen(err.key), sizeof err.key - 1);
    CHECK(strncmp(err.key, "lora_unet_kkk", 13) == 0);
}

/* ---------- pickle: nesting depth and MARK depth (PK_MAX_DEPTH = 1000) ---------- */

/* depth nested lists: "]" × depth, then APPEND × (depth - 1) */
static buf pickle_nested(size_t depth)
{
    buf b = {0};
    put(&b, "\x80\x02", 2);
    putc_(&b, ']', depth);
    putc_(&b, 'a', depth - 1);
    PUTL(&b, ".");
    return b;
}

static void limits_pickle_depth(void)
{
    lm_err err;
    buf b = pickle_nested(PK_MAX_DEPTH);
    int rc = pickle_rc(&b, &err);
    CHECK_OK(rc, &err);
    b = pickle_nested(PK_MAX_DEPTH + 1);
    rc = pickle_rc(&b, &err);
    CHECK_EQ_INT(rc, LM_EINPUT);
    CHECK_MSG(strstr(err.msg, "deeper than 1000"), "message: %s", err.msg);
    /* the 100,000-deep pickle of issue 3: refused, no stack overflow */
    b = pickle_nested(100000);
    rc = pickle_rc(&b, &err);
    CHECK_EQ_INT(rc, LM_EINPUT);
}

static void limits_pickle_marks(void)
{
    lm_err err;
    for (int extra = 0; extra < 2; extra++) {
        /* n MARKs, then n POP_MARKs: no nesting, only the mark stack grows */
        size_t n = PK_MAX_DEPTH + (size_t)extra;
        buf b = {0};
        PUTL(&b, "\x80\x02");
        putc_(&b, '(', n);
        putc_(&b, '1', n);
        PUTL(&b, "N.");
        int rc = pickle_rc(&b, &err);
        if (!extra) CHECK_OK(rc, &err);
        else {
            CHECK_EQ_INT(rc, LM_EINPUT);
            CHECK_MSG(strstr(err.msg, "MARKs nested deeper than 1000"), "message: %s", err.msg);
        }
    }
}

/* ---------- pickle: memo size (PK_MAX_MEMO = 2^24 entries) ---------- */

static void limits_pickle_memo(void)
{
    lm_err err;
    for (int extra = 0; extra < 2; extra++) {
        size_t n = PK_MAX_MEMO + (size_t)extra;
        buf b = {0};
        put(&b, "\x80\x04N", 3);
        putc_(&b, (char)0x94, n);       /* MEMOIZE the same None n times */
        put(&b, "0h\x00.", 4);          /* POP it, BINGET 0 */
        int rc = pickle_rc(&b, &err);
        if (!extra) CHECK_OK(rc, &err);
        else {
            CHECK_EQ_INT(rc, LM_EINPUT);
            CHECK_MSG(strstr(err.msg, "memo index 16777216"), "message: %s", err.msg);
        }
    }
    /* a memo index far past the entries: refused without allocating for it */
    buf b = {0};
    put(&b, "\x80\x02Nr\xff\xff\xff\x7fh\x00.", 11);
    int rc = pickle_rc(&b, &err);
    CHECK_EQ_INT(rc, LM_EINPUT);
}

/* ---------- pickle: container slots (PK_MAX_ITEMS = 2^24) ---------- */

static void limits_pickle_items(void)
{
    lm_err err;
    for (int extra = 0; extra < 2; extra++) {
        /* one list holding the same memoized None PK_MAX_ITEMS (+1) times */
        size_t n = PK_MAX_ITEMS + (size_t)extra;
        buf b = {0};
        put(&b, "\x80\x02]Nq\x00" "0", 7);
        for (size_t i = 0; i < n; i++) put(&b, "h\x00" "a", 3);
        PUTL(&b, ".");
        int rc = pickle_rc(&b, &err);
        if (!extra) CHECK_OK(rc, &err);
        else {
            CHECK_EQ_INT(rc, LM_ENOMEM);
            CHECK_MSG(strstr(err.msg, "container items"), "message: %s", err.msg);
        }
    }
}

/* ---------- tokenizer: prompt length (no limit of its own; the command line caps one
 * argument at 128 KiB, MAX_ARG_STRLEN) ---------- */

static void limits_prompt_length(void)
{
    lm_tokenizer *t = NULL;
    lm_err err;
    CHECK_OK(lm_tokenizer_open(&t, LMF_VOCAB, &err), &err);
    static const char *const pats[] = { "a photo of an astronaut ", "<|startoftext|>", "x", "\xc3\xa9" };
    enum { N = 128 * 1024 };
    char *p = malloc(N + 1);
    for (size_t k = 0; k < sizeof pats / sizeof *pats; k++) {
        size_t pl = strlen(pats[k]);
        for (size_t i = 0; i < N; i++) p[i] = pats[k][i % pl];
        p[N - N % pl] = 0;
        int32_t ids[LM_CLIP_CTX];
        size_t nc = 0;
        double t0 = now();
        int rc = lm_tokenizer_encode(t, p, LM_CLIP_PAD_SD15, ids, &nc, &err);
        double dt = now() - t0;
        if (rc) { free(p); lm_tokenizer_free(t); CHECK_OK(rc, &err); }
        if (ids[0] != LM_CLIP_BOS || ids[76] != LM_CLIP_EOS || nc <= 75 || dt > 5.0 * time_scale()) {
            free(p);
            lm_tokenizer_free(t);
            FAILF("pattern %zu: bos %d eos %d content %zu, %.2f s", k, ids[0], ids[76], nc, dt);
        }
    }
    free(p);
    /* the byte limit itself: at it accepted (and linear even when made of
     * special tokens), one past it refused by name */
    enum { M = LM_TOKENIZER_MAX_PROMPT };
    p = malloc(M + 2);
    const char *sp = "<|startoftext|>";
    for (size_t i = 0; i < M; i++) p[i] = sp[i % 15];
    p[M] = 0;
    int32_t ids[LM_CLIP_CTX];
    double t0 = now();
    int rc = lm_tokenizer_encode(t, p, LM_CLIP_PAD_SD15, ids, NULL, &err);
    double dt = now() - t0;
    p[M] = 'x';
    p[M + 1] = 0;
    int rc2 = lm_tokenizer_encode(t, p, LM_CLIP_PAD_SD15, ids, NULL, &err);
    free(p);
    lm_tokenizer_free(t);
    CHECK_OK(rc, &err);
    CHECK_MSG(dt < 5.0 * time_scale(), "1 MiB of special tokens took %.2f s", dt);
    CHECK_EQ_INT(rc2, LM_EINPUT);
    CHECK(strstr(err.msg, "at most 1048576") != NULL);
}

int main(void)
{
    RUN(limits_st_header_size);
    RUN(limits_st_dims);
    RUN(limits_torch_dims);
    RUN(limits_st_integer);
    RUN(limits_st_tensor_count);
    RUN(limits_st_hash_flood);
    RUN(limits_key_length);
    RUN(limits_pickle_depth);
    RUN(limits_pickle_marks);
    RUN(limits_pickle_memo);
    RUN(limits_pickle_items);
    RUN(limits_prompt_length);
    TEST_EXIT();
}
