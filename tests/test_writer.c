/* Streaming safetensors writer: byte-identical round trips of real files
 * written by the safetensors library, the reference writer's own test
 * vectors (safetensors/src/tensor.rs tests), key order, escaping, refusal to
 * overwrite inputs, and no temporary file left after EFBIG, short or long
 * writes, abort, or SIGTERM. */
#include "test.h"
#include "libmerge/source.h"
#include "libmerge/writer.h"

#include <dirent.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[256];

static void pathf(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

/* Number of directory entries other than . and .. */
static int dir_count(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    if (d) closedir(d);
    return n;
}

/* Copies every tensor and the metadata of src into out through the writer,
 * in the writer's order, in chunks of `chunk` bytes. */
static int copy_through_mode(const char *src, const char *out, size_t chunk, int kernel, lm_err *err)
{
    lm_source *s = NULL;
    int rc = lm_source_open(&s, src, NULL, err);
    if (rc) return rc;
    size_t n = lm_source_count(s), nm = lm_source_meta_count(s);
    lm_wtensor *t = calloc(n + 1, sizeof *t);
    lm_kv *kv = calloc(nm + 1, sizeof *kv);
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(s, i);
        t[i].name = e->name;
        t[i].dtype = e->dtype;
        t[i].ndim = e->ndim;
        memcpy(t[i].shape, e->shape, sizeof t[i].shape);
    }
    for (size_t i = 0; i < nm; i++) { kv[i].key = lm_source_meta_key(s, i); kv[i].value = lm_source_meta_value(s, i); }
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    const char *inputs[1] = { src };
    o.inputs = inputs;
    o.n_inputs = 1;
    lm_writer *w = NULL;
    rc = lm_writer_open(&w, out, t, n, kv, nm, &o, err);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t i = lm_writer_tensor_index(w, k);
        const lm_entry *e = lm_source_entry(s, i);
        const unsigned char *p = lm_source_raw(s, i);
        if (kernel) { rc = lm_writer_copy_from(w, src, e->offset, e->nbytes, err); continue; }
        for (uint64_t off = 0; !rc && off < e->nbytes; off += chunk) {
            size_t m = e->nbytes - off < chunk ? (size_t)(e->nbytes - off) : chunk;
            rc = lm_writer_write(w, p + off, m, err);
        }
    }
    if (!rc) rc = lm_writer_commit(w, err);
    else lm_writer_abort(w);
    free(t);
    free(kv);
    lm_source_close(s);
    return rc;
}

static int copy_through(const char *src, const char *out, size_t chunk, lm_err *err)
{
    return copy_through_mode(src, out, chunk, 0, err);
}

/* Files written by the real safetensors library come back byte for byte. */
static void test_roundtrip_identical(void)
{
    static const char *files[] = {
        "st_i64_scalar_offset_order.safetensors",
        "sd15_lora_attnproc_noprefix.safetensors",
        "sd15_lora_diffusers_bf16.safetensors",
    };
    for (size_t f = 0; f < 3; f++) {
        char src[512], out[512];
        snprintf(src, sizeof src, "fixtures/real/%s", files[f]);
        pathf(out, sizeof out, files[f]);
        lm_err err;
        for (int kernel = 0; kernel < 2; kernel++) {
        CHECK_OK(copy_through_mode(src, out, f == 0 ? 7 : 1 << 20, kernel, &err), &err);
        size_t a_len = 0, b_len = 0;
        unsigned char *a = t_slurp(src, &a_len), *b = t_slurp(out, &b_len);
        CHECK(a && b);
        CHECK_EQ_INT(b_len, a_len);
        size_t diff = 0;
        while (diff < a_len && a[diff] == b[diff]) diff++;
        CHECK_MSG(diff == a_len, "%s (%s): first difference at byte %zu", files[f], kernel ? "copy_from" : "write", diff);
        free(a);
        free(b);
        unlink(out);
        }
    }
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

/* The old writer left the LyCORIS header unpadded (244262 bytes): ours pads
 * it to 244264, and the data and header text are otherwise identical. */
static void test_roundtrip_unpadded_source(void)
{
    char out[512];
    pathf(out, sizeof out, "lokr.safetensors");
    lm_err err;
    CHECK_OK(copy_through("fixtures/real/sd15_lycoris_lokr_fp16.safetensors", out, 4096, &err), &err);
    size_t a_len = 0, b_len = 0;
    unsigned char *a = t_slurp("fixtures/real/sd15_lycoris_lokr_fp16.safetensors", &a_len), *b = t_slurp(out, &b_len);
    CHECK(a && b);
    CHECK_EQ_INT(b_len, a_len + 2);
    CHECK_EQ_INT(b[0] | b[1] << 8 | b[2] << 16, 244264);
    CHECK(memcmp(a + 8, b + 8, 244262) == 0);
    CHECK(b[8 + 244262] == ' ' && b[8 + 244263] == ' ');
    CHECK(memcmp(a + 8 + 244262, b + 8 + 244264, a_len - 8 - 244262) == 0);
    free(a);
    free(b);
    unlink(out);
}

static void write_one(const char *path, const lm_wtensor *t, size_t n, const lm_kv *kv, size_t nkv,
                      const void *data, size_t len, lm_err *err, int *rc)
{
    lm_writer *w = NULL;
    *rc = lm_writer_open(&w, path, t, n, kv, nkv, NULL, err);
    if (*rc) return;
    if (len) *rc = lm_writer_write(w, data, len, err);
    if (*rc) { lm_writer_abort(w); return; }
    *rc = lm_writer_commit(w, err);
}

/* test_serialization, test_serialization_forced_alignement, test_empty of
 * the reference crate: exact bytes. */
static void test_reference_vectors(void)
{
    char path[512];
    pathf(path, sizeof path, "ref.safetensors");
    float v[6] = { 0, 1, 2, 3, 4, 5 };
    lm_err err;
    int rc;
    static const unsigned char ser[] = {
        64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
        116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
        58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
        101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
        0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64 };
    lm_wtensor t = { "attn.0", LM_DT_F32, 3, { 1, 2, 3 } };
    write_one(path, &t, 1, NULL, 0, v, sizeof v, &err, &rc);
    CHECK_OK(rc, &err);
    size_t len;
    unsigned char *b = t_slurp(path, &len);
    CHECK_EQ_INT(len, sizeof ser);
    CHECK(memcmp(b, ser, len) == 0);
    free(b);

    static const unsigned char forced[] = {
        72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
        121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
        91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
        115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
        32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
        160, 64 };
    lm_wtensor t2 = { "attn0", LM_DT_F32, 4, { 1, 1, 2, 3 } };
    write_one(path, &t2, 1, NULL, 0, v, sizeof v, &err, &rc);
    CHECK_OK(rc, &err);
    b = t_slurp(path, &len);
    CHECK_EQ_INT(len, sizeof forced);
    CHECK(memcmp(b, forced, len) == 0);
    free(b);

    static const unsigned char empty[] = { 8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32 };
    write_one(path, NULL, 0, NULL, 0, NULL, 0, &err, &rc);
    CHECK_OK(rc, &err);
    b = t_slurp(path, &len);
    CHECK_EQ_INT(len, sizeof empty);
    CHECK(memcmp(b, empty, len) == 0);
    free(b);

    static const char empty_meta[] = "{\"__metadata__\":{\"framework\":\"pt\"}}     ";
    lm_kv kv = { "framework", "pt" };
    write_one(path, NULL, 0, &kv, 1, NULL, 0, &err, &rc);
    CHECK_OK(rc, &err);
    b = t_slurp(path, &len);
    CHECK_EQ_INT(len, 8 + 40);
    CHECK_EQ_INT(b[0], 40);
    CHECK(memcmp(b + 8, empty_meta, 40) == 0);
    free(b);
    unlink(path);
}

/* Order: dtype descending in the reference enum order, then name; the
 * header lists tensors in data order; strings escaped as serde_json does. */
static void test_order_and_escapes(void)
{
    char path[512];
    pathf(path, sizeof path, "order.safetensors");
    lm_wtensor t[] = {
        { "b", LM_DT_F16, 1, { 1 } },
        { "z", LM_DT_F32, 1, { 1 } },
        { "a", LM_DT_I64, 0, { 0 } },
        { "a2", LM_DT_BF16, 1, { 1 } },
        { "c", LM_DT_U8, 1, { 1 } },
        { "q\"\\\n\x01\xc3\xa9", LM_DT_F64, 1, { 0 } },
        { "B", LM_DT_F16, 1, { 1 } },
    };
    static const size_t want[] = { 2, 5, 1, 3, 6, 0, 4 };
    lm_writer *w = NULL;
    lm_err err;
    CHECK_OK(lm_writer_open(&w, path, t, 7, NULL, 0, NULL, &err), &err);
    for (size_t k = 0; k < 7; k++) CHECK_EQ_INT(lm_writer_tensor_index(w, k), want[k]);
    unsigned char data[8 + 4 + 2 + 2 + 2 + 1] = { 1 };
    CHECK_OK(lm_writer_write(w, data, sizeof data, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    size_t len;
    unsigned char *b = t_slurp(path, &len);
    const char *expect =
        "{\"a\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
        "\"q\\\"\\\\\\n\\u0001\xc3\xa9\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[8,8]},"
        "\"z\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
        "\"a2\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[12,14]},"
        "\"B\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[14,16]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[16,18]},"
        "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[18,19]}}";
    size_t hl = strlen(expect), padded = (hl + 7) / 8 * 8;
    CHECK_EQ_INT(b[0] | b[1] << 8, padded);
    CHECK_MSG(memcmp(b + 8, expect, hl) == 0, "header: %.*s", (int)padded, (const char *)b + 8);
    CHECK_EQ_INT(len, 8 + padded + 19);
    free(b);
    /* and the reader gets the names back */
    lm_source *s = NULL;
    CHECK_OK(lm_source_open(&s, path, NULL, &err), &err);
    CHECK(lm_source_find(s, t[5].name) >= 0);
    CHECK_EQ_INT(lm_source_count(s), 7);
    lm_source_close(s);

    /* keep_order writes in the given order */
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.keep_order = 1;
    CHECK_OK(lm_writer_open(&w, path, t, 7, NULL, 0, &o, &err), &err);
    for (size_t k = 0; k < 7; k++) CHECK_EQ_INT(lm_writer_tensor_index(w, k), k);
    lm_writer_abort(w);
    unlink(path);
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

static void test_refuses_bad_tensors(void)
{
    char path[512];
    pathf(path, sizeof path, "bad.safetensors");
    lm_writer *w = NULL;
    lm_err err;
    lm_wtensor dup[] = { { "x", LM_DT_F32, 1, { 1 } }, { "x", LM_DT_F16, 1, { 1 } } };
    CHECK_EQ_INT(lm_writer_open(&w, path, dup, 2, NULL, 0, NULL, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "duplicate tensor name") && strcmp(err.key, "x") == 0);
    lm_wtensor meta_name = { "__metadata__", LM_DT_F32, 1, { 1 } };
    CHECK_EQ_INT(lm_writer_open(&w, path, &meta_name, 1, NULL, 0, NULL, &err), LM_EINPUT);
    lm_wtensor bad_utf8 = { "a\xff", LM_DT_F32, 1, { 1 } };
    CHECK_EQ_INT(lm_writer_open(&w, path, &bad_utf8, 1, NULL, 0, NULL, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "UTF-8") != NULL);
    lm_wtensor neg = { "n", LM_DT_F32, 2, { 2, -1 } };
    CHECK_EQ_INT(lm_writer_open(&w, path, &neg, 1, NULL, 0, NULL, &err), LM_EINPUT);
    lm_wtensor over = { "o", LM_DT_F32, 2, { 1ll << 40, 1ll << 40 } };
    CHECK_EQ_INT(lm_writer_open(&w, path, &over, 1, NULL, 0, NULL, &err), LM_EINPUT);
    lm_wtensor inval = { "i", LM_DT_INVALID, 1, { 1 } };
    CHECK_EQ_INT(lm_writer_open(&w, path, &inval, 1, NULL, 0, NULL, &err), LM_EINPUT);
    lm_kv kv[] = { { "k", "1" }, { "k", "2" } };
    CHECK_EQ_INT(lm_writer_open(&w, path, NULL, 0, kv, 2, NULL, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "duplicate metadata key") != NULL);
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

/* The output may not be an input: same name, a hard link, or a symlink to it. */
static void test_refuses_to_overwrite_input(void)
{
    char in[512], hard[512], sym[512];
    pathf(in, sizeof in, "in.safetensors");
    pathf(hard, sizeof hard, "hard.safetensors");
    pathf(sym, sizeof sym, "sym.safetensors");
    lm_err err;
    int rc;
    write_one(in, NULL, 0, NULL, 0, NULL, 0, &err, &rc);
    CHECK_OK(rc, &err);
    CHECK(link(in, hard) == 0);
    CHECK(symlink(in, sym) == 0);
    const char *inputs[] = { in };
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.inputs = inputs;
    o.n_inputs = 1;
    const char *outs[] = { in, hard, sym };
    for (int i = 0; i < 3; i++) {
        lm_writer *w = NULL;
        CHECK_EQ_INT(lm_writer_open(&w, outs[i], NULL, 0, NULL, 0, &o, &err), LM_EUSAGE);
        CHECK(w == NULL);
        CHECK(strstr(err.msg, "refusing to overwrite input") != NULL);
    }
    CHECK_EQ_INT(dir_count(g_dir), 3);
    /* a different file in the same place is fine, and replaces the old one */
    char other[512];
    pathf(other, sizeof other, "other.safetensors");
    lm_writer *w = NULL;
    lm_wtensor t = { "x", LM_DT_U8, 1, { 3 } };
    CHECK_OK(lm_writer_open(&w, other, &t, 1, NULL, 0, &o, &err), &err);
    CHECK_OK(lm_writer_write(w, "abc", 3, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    struct stat st;
    CHECK(stat(other, &st) == 0);
    CHECK_EQ_INT(st.st_size, 8 + 56 + 3);
    mode_t mask = umask(0);
    umask(mask);
    CHECK_EQ_INT(st.st_mode & 0777, 0666 & ~mask);
    unlink(in); unlink(hard); unlink(sym); unlink(other);
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

/* Too many bytes, too few bytes and abort leave nothing behind. */
static void test_short_long_abort(void)
{
    char path[512];
    pathf(path, sizeof path, "partial.safetensors");
    lm_wtensor t[] = { { "a", LM_DT_F32, 1, { 4 } }, { "b", LM_DT_F32, 1, { 4 } } };
    unsigned char data[40] = {0};
    lm_writer *w = NULL;
    lm_err err;
    CHECK_OK(lm_writer_open(&w, path, t, 2, NULL, 0, NULL, &err), &err);
    CHECK_EQ_INT(dir_count(g_dir), 1);   /* the temp file */
    CHECK_EQ_INT(lm_writer_write(w, data, 40, &err), LM_EUSAGE);
    CHECK_EQ_INT(dir_count(g_dir), 0);
    CHECK_EQ_INT(lm_writer_commit(w, &err), LM_EUSAGE);

    CHECK_OK(lm_writer_open(&w, path, t, 2, NULL, 0, NULL, &err), &err);
    CHECK_OK(lm_writer_write(w, data, 20, &err), &err);
    CHECK_EQ_INT(lm_writer_commit(w, &err), LM_EUSAGE);
    CHECK(strstr(err.msg, "only 20 of 32") != NULL);
    CHECK_EQ_STR(err.key, "b");
    CHECK_EQ_INT(dir_count(g_dir), 0);

    CHECK_OK(lm_writer_open(&w, path, t, 2, NULL, 0, NULL, &err), &err);
    CHECK_OK(lm_writer_write(w, data, 8, &err), &err);
    lm_writer_abort(w);
    lm_writer_abort(NULL);
    CHECK_EQ_INT(dir_count(g_dir), 0);

    /* a target in a directory that does not exist: I/O error */
    CHECK_EQ_INT(lm_writer_open(&w, "/nonexistent-dir/x.safetensors", t, 2, NULL, 0, NULL, &err), LM_EIO);
}

/* lm_writer_copy_from mixed with lm_writer_write, across two sources;
 * errors: missing source, past the declared size, source too short. */
static void test_copy_from(void)
{
    char src[512], out[512];
    pathf(src, sizeof src, "src.bin");
    pathf(out, sizeof out, "copy.safetensors");
    unsigned char bytes[64];
    for (int i = 0; i < 64; i++) bytes[i] = (unsigned char)(i * 7 + 1);
    FILE *f = fopen(src, "wb");
    fwrite(bytes, 1, 64, f);
    fclose(f);
    lm_wtensor t[] = { { "a", LM_DT_U8, 1, { 8 } }, { "b", LM_DT_U8, 1, { 16 } }, { "c", LM_DT_U8, 1, { 8 } } };
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.keep_order = 1;
    lm_writer *w = NULL;
    lm_err err;
    CHECK_OK(lm_writer_open(&w, out, t, 3, NULL, 0, &o, &err), &err);
    uint64_t ds = lm_writer_data_start(w);
    CHECK_OK(lm_writer_copy_from(w, src, 10, 4, &err), &err);     /* a: 4 copied, coalesced with */
    CHECK_OK(lm_writer_copy_from(w, src, 14, 4, &err), &err);     /*    the next 4 */
    CHECK_OK(lm_writer_write(w, "0123456789abcdef", 16, &err), &err);  /* b: written */
    CHECK_OK(lm_writer_copy_from(w, "fixtures/real/st_i64_scalar_offset_order.safetensors", 656, 8, &err), &err); /* c */
    CHECK_OK(lm_writer_commit(w, &err), &err);
    size_t len;
    unsigned char *b = t_slurp(out, &len);
    CHECK_EQ_INT(len, ds + 32);
    CHECK(memcmp(b + ds, bytes + 10, 8) == 0);
    CHECK(memcmp(b + ds + 8, "0123456789abcdef", 16) == 0);
    int64_t one = 0;
    memcpy(&one, b + ds + 24, 8);
    CHECK_EQ_INT(one, 1);   /* num_batches_tracked */
    free(b);
    unlink(out);

    CHECK_OK(lm_writer_open(&w, out, t, 3, NULL, 0, &o, &err), &err);
    CHECK_EQ_INT(lm_writer_copy_from(w, "/nonexistent/src", 0, 8, &err), LM_EIO);
    CHECK_EQ_STR(err.file, "/nonexistent/src");
    lm_writer_abort(w);
    CHECK_OK(lm_writer_open(&w, out, t, 3, NULL, 0, &o, &err), &err);
    CHECK_EQ_INT(lm_writer_copy_from(w, src, 0, 40, &err), LM_EUSAGE);
    lm_writer_abort(w);
    CHECK_OK(lm_writer_open(&w, out, t, 3, NULL, 0, &o, &err), &err);
    CHECK_OK(lm_writer_copy_from(w, src, 40, 32, &err), &err);   /* only 24 bytes there: found when issued */
    CHECK_EQ_INT(lm_writer_commit(w, &err), LM_EIO);
    CHECK_EQ_STR(err.file, src);
    unlink(src);
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

/* lm_writer_copy_from_fd reads the file its descriptor opened: the name removed, then
 * taken by another file, before the first copy and between coalesced copies; the
 * caller's descriptor keeps its position; a bad descriptor fails as a missing path does. */
static void test_copy_from_fd_survives_rename(void)
{
    char src[512], other[512], out[512];
    pathf(src, sizeof src, "fdsrc.bin");
    pathf(other, sizeof other, "fdother.bin");
    pathf(out, sizeof out, "fdcopy.safetensors");
    unsigned char bytes[64], junk[64];
    for (int i = 0; i < 64; i++) { bytes[i] = (unsigned char)(i * 5 + 3); junk[i] = 0xee; }
    FILE *f = fopen(src, "wb");
    fwrite(bytes, 1, 64, f);
    fclose(f);
    f = fopen(other, "wb");
    fwrite(junk, 1, 64, f);
    fclose(f);
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    CHECK_EQ_INT(lseek(fd, 3, SEEK_SET), 3);
    CHECK_EQ_INT(unlink(src), 0);                  /* gone before the first copy */
    lm_wtensor t[] = { { "a", LM_DT_U8, 1, { 8 } }, { "b", LM_DT_U8, 1, { 16 } } };
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.keep_order = 1;
    lm_writer *w = NULL;
    lm_err err;
    CHECK_OK(lm_writer_open(&w, out, t, 2, NULL, 0, &o, &err), &err);
    uint64_t ds = lm_writer_data_start(w);
    CHECK_OK(lm_writer_copy_from_fd(w, fd, src, 10, 8, &err), &err);
    CHECK_EQ_INT(rename(other, src), 0);           /* the name now leads to other bytes */
    CHECK_OK(lm_writer_copy_from_fd(w, fd, src, 18, 8, &err), &err);   /* coalesced */
    CHECK_OK(lm_writer_copy_from_fd(w, fd, src, 40, 8, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    CHECK_EQ_INT(lseek(fd, 0, SEEK_CUR), 3);
    close(fd);
    size_t len;
    unsigned char *b = t_slurp(out, &len);
    CHECK_EQ_INT(len, ds + 24);
    CHECK(b && memcmp(b + ds, bytes + 10, 16) == 0 && memcmp(b + ds + 16, bytes + 40, 8) == 0);
    free(b);
    unlink(out);
    CHECK_OK(lm_writer_open(&w, out, t, 2, NULL, 0, &o, &err), &err);
    CHECK_EQ_INT(lm_writer_copy_from_fd(w, 1000, src, 0, 8, &err), LM_EIO);   /* not open */
    CHECK_EQ_STR(err.file, src);
    lm_writer_abort(w);
    unlink(src);
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

/* EFBIG (RLIMIT_FSIZE) at open (space reservation) and during writes: the
 * temporary file is removed and the target never appears. */
static void test_efbig_leaves_no_file(void)
{
    char path[512];
    pathf(path, sizeof path, "big.safetensors");
    lm_atomic_install_signal_handlers();   /* ignores SIGXFSZ so write fails with EFBIG */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lm_wtensor t = { "w", LM_DT_F32, 1, { 1 << 20 } };   /* 4 MiB */
    float *data = calloc(1 << 20, sizeof *data);
    lm_err err;
    lm_writer *w = NULL;

    lim = old;
    lim.rlim_cur = 1 << 20;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = lm_writer_open(&w, path, &t, 1, NULL, 0, NULL, &err);
    if (rc == 0) {   /* filesystem without fallocate: the write fails instead */
        rc = lm_writer_write(w, data, (size_t)4 << 20, &err);
        if (!rc) rc = lm_writer_commit(w, &err);
        else lm_writer_abort(w);
    }
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK_EQ_INT(rc, LM_EIO);
    CHECK_MSG(strstr(err.msg, "too large") != NULL, "msg: %s", err.msg);
    CHECK_EQ_INT(dir_count(g_dir), 0);

    /* limit lowered after open: the data write hits it */
    CHECK_OK(lm_writer_open(&w, path, &t, 1, NULL, 0, NULL, &err), &err);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    rc = lm_writer_write(w, data, (size_t)4 << 20, &err);
    if (!rc) rc = lm_writer_commit(w, &err);
    else lm_writer_abort(w);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK_EQ_INT(rc, LM_EIO);
    CHECK_MSG(strstr(err.msg, "too large") != NULL, "msg: %s", err.msg);
    CHECK(strstr(err.msg, "temporary file removed") != NULL);
    CHECK_EQ_INT(dir_count(g_dir), 0);
    free(data);
}

/* SIGTERM in the middle of a write: the handler removes the temp file and
 * the process exits with 128 + 15. */
static void test_signal_removes_temp(void)
{
    char path[512];
    pathf(path, sizeof path, "sig.safetensors");
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        lm_atomic_install_signal_handlers();
        lm_wtensor t = { "w", LM_DT_U8, 1, { 1 << 20 } };
        lm_writer *w = NULL;
        lm_err err;
        if (lm_writer_open(&w, path, &t, 1, NULL, 0, NULL, &err)) _exit(3);
        char buf[1024] = {0};
        lm_writer_write(w, buf, sizeof buf, &err);
        if (write(pipefd[1], "x", 1) != 1) _exit(4);
        for (;;) pause();
    }
    close(pipefd[1]);
    char c;
    CHECK(read(pipefd[0], &c, 1) == 1);
    close(pipefd[0]);
    CHECK_EQ_INT(dir_count(g_dir), 1);   /* the temp file exists now */
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WEXITSTATUS(status), 128 + SIGTERM);
    CHECK_EQ_INT(dir_count(g_dir), 0);
}

/* Reads a whole small file; returns its length or -1. */
static long slurp(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return (long)n;
}

/* Writes tensors a (4012 bytes), b (20000) and c (12004) sequentially into seq, then
 * through lm_writer_pwrite from buffers placed at lm_writer_direct_shift (c first, then
 * b, a appended, b and c skipped): the whole 4 KiB blocks go out with O_DIRECT where the
 * filesystem has it. Both files must be byte for byte equal; with O_DIRECT the middle of
 * b never entered the page cache (mincore), which shows the direct path ran. */
static void direct_case(const char *name, int *direct_seen)
{
    enum { NA = 1003, NB = 5000, NC = 3001 };
    static float a[NA], b[NB], c[NC];
    for (int i = 0; i < NA; i++) a[i] = (float)i * 0.5f;
    for (int i = 0; i < NB; i++) b[i] = (float)i * -0.25f + 3;
    for (int i = 0; i < NC; i++) c[i] = (float)(i % 97) - 40;
    lm_wtensor wt[3] = { { "a", LM_DT_F32, 1, { NA } }, { "b", LM_DT_F32, 1, { NB } }, { "c", LM_DT_F32, 1, { NC } } };
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    lm_writer *w = NULL;
    lm_err err;
    lm_err_clear(&err);
    char seq[300], par[300];
    pathf(seq, sizeof seq, "seq_direct.safetensors");
    pathf(par, sizeof par, name);
    CHECK_OK(lm_writer_open(&w, seq, wt, 3, NULL, 0, &wo, &err), &err);
    CHECK_OK(lm_writer_write(w, a, sizeof a, &err), &err);
    CHECK_OK(lm_writer_write(w, b, sizeof b, &err), &err);
    CHECK_OK(lm_writer_write(w, c, sizeof c, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    CHECK_OK(lm_writer_open(&w, par, wt, 3, NULL, 0, &wo, &err), &err);
    const uint64_t ob = sizeof a, oc = sizeof a + sizeof b;
    size_t sb = lm_writer_direct_shift(w, ob), sc = lm_writer_direct_shift(w, oc);
    uint64_t ds = lm_writer_data_start(w);
    int direct = sb != 0;   /* (ds + ob) % 4096 is not 0 here: non-zero means a direct descriptor */
    CHECK((ds + ob) % LM_WRITER_DIRECT_ALIGN != 0);
    CHECK(sb == 0 || (sb == (ds + ob) % LM_WRITER_DIRECT_ALIGN && sc == (ds + oc) % LM_WRITER_DIRECT_ALIGN));
    unsigned char *bb = NULL, *bc = NULL;
    CHECK(!posix_memalign((void **)&bb, LM_WRITER_DIRECT_ALIGN, sizeof b + LM_WRITER_DIRECT_ALIGN));
    CHECK(!posix_memalign((void **)&bc, LM_WRITER_DIRECT_ALIGN, sizeof c + LM_WRITER_DIRECT_ALIGN));
    memcpy(bb + sb, b, sizeof b);
    memcpy(bc + sc, c, sizeof c);
    CHECK_OK(lm_writer_pwrite(w, oc, bc + sc, sizeof c, &err), &err);
    CHECK_OK(lm_writer_pwrite(w, ob, bb + sb, sizeof b, &err), &err);
    CHECK_OK(lm_writer_write(w, a, sizeof a, &err), &err);
    CHECK_OK(lm_writer_skip(w, sizeof b, &err), &err);
    CHECK_OK(lm_writer_skip(w, sizeof c, &err), &err);
    CHECK_OK(lm_writer_commit(w, &err), &err);
    free(bb);
    free(bc);
    static unsigned char x[65536], y[65536];
    long n1 = slurp(seq, x, sizeof x);
    if (direct) {   /* before anything reads par: its direct blocks are not cached */
        int fd = open(par, O_RDONLY);
        long pg = sysconf(_SC_PAGESIZE);
        off_t len = (off_t)(ds + oc);
        void *m = fd >= 0 ? mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
        unsigned char vec[64];
        if (m != MAP_FAILED && (size_t)((len + pg - 1) / pg) <= sizeof vec && mincore(m, (size_t)len, vec) == 0) {
            uint64_t first = (ds + ob + (uint64_t)pg - 1) / (uint64_t)pg;   /* first whole page of b */
            CHECK_MSG(!(vec[first] & 1), "a block written with O_DIRECT is in the page cache");
            *direct_seen = 1;
        }
        if (m != MAP_FAILED) munmap(m, (size_t)len);
        if (fd >= 0) close(fd);
    }
    long n2 = slurp(par, y, sizeof y);
    CHECK(n1 > 36000 && n1 == n2);
    CHECK_MSG(n1 == n2 && memcmp(x, y, (size_t)n1) == 0, "%s: written through lm_writer_pwrite differs from sequential", name);
}

static void test_pwrite_direct_equals_sequential(void)
{
    int seen = 0;
    direct_case("direct.safetensors", &seen);
    setenv("LIBMERGE_DIRECT_IO", "0", 1);
    int none = 0;
    direct_case("buffered.safetensors", &none);
    unsetenv("LIBMERGE_DIRECT_IO");
    CHECK_EQ_INT(none, 0);   /* LIBMERGE_DIRECT_IO=0: no direct descriptor, shift 0 */
    printf("# O_DIRECT %s on %s\n", seen ? "used" : "not available", g_dir);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/lm_test_writer.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 2; }
    RUN(test_roundtrip_identical);
    RUN(test_roundtrip_unpadded_source);
    RUN(test_reference_vectors);
    RUN(test_order_and_escapes);
    RUN(test_refuses_bad_tensors);
    RUN(test_refuses_to_overwrite_input);
    RUN(test_short_long_abort);
    RUN(test_copy_from);
    RUN(test_copy_from_fd_survives_rename);
    RUN(test_efbig_leaves_no_file);
    RUN(test_signal_removes_temp);
    RUN(test_pwrite_direct_equals_sequential);
    rmdir(g_dir);
    TEST_EXIT();
}
