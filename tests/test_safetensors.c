/* safetensors reader: real files written by the safetensors library
 * (fixtures/real/PROVENANCE.md), the reference parser's own test cases, a
 * table-driven corpus of malformed headers (each with its specific error),
 * a > 4 GiB sparse file, and random mutations that must never crash. */
#include "test.h"
#include "libmerge/source.h"
#include "io/source_impl.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmpdir[256];

static void tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", g_tmpdir, name);
}

/* Writes 8-byte LE length (hdr_len, or strlen(hdr) when hdr_len < 0), the
 * header and data_len bytes of data (byte i = i & 0xff). */
static void write_st(const char *path, const char *hdr, int64_t hdr_len, size_t data_len)
{
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    uint64_t n = hdr_len < 0 ? strlen(hdr) : (uint64_t)hdr_len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(n >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(hdr, 1, strlen(hdr), f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), f);
    fclose(f);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    fwrite(p, 1, n, f);
    fclose(f);
}

static void sha256_file(const char *path, char hex[65])
{
    unsigned char md[32], buf[65536];
    unsigned mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    FILE *f = fopen(path, "rb");
    size_t got;
    while (f && (got = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(c, buf, got);
    if (f) fclose(f);
    EVP_DigestFinal_ex(c, md, &mdlen);
    EVP_MD_CTX_free(c);
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
}

/* ---- real files ---- */

typedef struct real_case {
    const char *file;
    size_t count;
    lm_dtype dtype;          /* dtype of every tensor but the first when mixed */
    int64_t params;
    size_t n_meta;
    uint64_t data_start, size;
    const char *first_key;
    int first_ndim; int64_t first_shape[2];
    const char *sha256;
} real_case;

static const real_case k_real[] = {
    { "sd15_lora_attnproc_noprefix.safetensors", 256, LM_DT_F32, 797184, 1, 38600, 3227336,
      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_k_lora.down.weight", 2, {4, 320},
      "fb286c8e569d6a07401bd5599d3d1a64126c0b240d2d1d00174602a967e59c9b" },
    { "sd15_lora_diffusers_bf16.safetensors", 256, LM_DT_BF16, 829952, 1, 37608, 1697512,
      "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight", 2, {4, 320},
      "2aecf92c3ac37d80aa4fac5f1d8bc90e74207e69f4b8369715f169c3d810c224" },
    { "sd15_lycoris_lokr_fp16.safetensors", 1750, LM_DT_F16, 201726, 61, 244270, 647722,
      "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", 0, {0, 0},
      "86c94ad35cf53921f26c7888f018324753813189f5baf504aff03f31c5bbf734" },
    { "st_i64_scalar_offset_order.safetensors", 9, LM_DT_F32, 4241, 0, 656, 17624,
      "norm1.num_batches_tracked", 0, {0, 0},
      "bcbb7500e8c322202fe1c1d51e167c6166510056ad25125628f8deec56c032f2" },
};

static void test_real_files(void)
{
    for (size_t c = 0; c < sizeof k_real / sizeof *k_real; c++) {
        const real_case *r = &k_real[c];
        char path[512], hex[65];
        snprintf(path, sizeof path, "fixtures/real/%s", r->file);
        sha256_file(path, hex);
        CHECK_MSG(strcmp(hex, r->sha256) == 0, "%s: sha256 %s", r->file, hex);
        lm_source *s = NULL;
        lm_err err;
        CHECK_OK(lm_source_open(&s, path, NULL, &err), &err);
        CHECK_EQ_INT(lm_source_format(s), LM_FMT_SAFETENSORS);
        CHECK_EQ_INT(lm_source_count(s), r->count);
        CHECK_EQ_INT(lm_source_meta_count(s), r->n_meta);
        CHECK_EQ_INT(lm_source_data_start(s), r->data_start);
        CHECK_EQ_INT(lm_source_file_size(s), r->size);
        const lm_entry *e0 = lm_source_entry(s, 0);
        CHECK_EQ_STR(e0->name, r->first_key);
        CHECK_EQ_INT(e0->ndim, r->first_ndim);
        for (int d = 0; d < r->first_ndim; d++) CHECK_EQ_INT(e0->shape[d], r->first_shape[d]);
        CHECK_EQ_INT(e0->offset, r->data_start);
        int64_t params = 0;
        uint64_t prev_end = r->data_start;
        for (size_t i = 0; i < lm_source_count(s); i++) {
            const lm_entry *e = lm_source_entry(s, i);
            params += e->numel;
            CHECK_EQ_INT(e->offset, prev_end);   /* offset order, no gaps */
            prev_end = e->offset + e->nbytes;
            if (i > 0 || r->first_ndim > 0 || c < 2) CHECK_EQ_INT(e->dtype, r->dtype);
            CHECK_EQ_INT(lm_source_find(s, e->name), (int64_t)i);
        }
        CHECK_EQ_INT(prev_end, r->size);
        CHECK_EQ_INT(params, r->params);
        lm_source_close(s);
    }
}

static void test_real_values(void)
{
    lm_source *s = NULL;
    lm_err err;
    CHECK_OK(lm_source_open(&s, "fixtures/real/st_i64_scalar_offset_order.safetensors", NULL, &err), &err);
    const lm_entry *e = lm_source_entry(s, 0);
    CHECK_EQ_INT(e->dtype, LM_DT_I64);
    CHECK_EQ_INT(e->numel, 1);
    int64_t v = 0;
    CHECK_OK(lm_source_read(s, 0, &v, &err), &err);
    CHECK_EQ_INT(v, 1);
    int64_t k = lm_source_find(s, "conv1.bias");
    CHECK(k == 1);
    float b[4];
    CHECK_OK(lm_source_read_f32(s, (size_t)k, b, &err), &err);
    CHECK_NEAR(b[0], 0.13191646337509155, 0);
    CHECK_NEAR(b[3], 0.14375224709510803, 0);
    CHECK(lm_source_meta_get(s, "format") == NULL);
    lm_source_close(s);

    /* header length 244262 is not a multiple of 8: data starts unaligned */
    CHECK_OK(lm_source_open(&s, "fixtures/real/sd15_lycoris_lokr_fp16.safetensors", NULL, &err), &err);
    float alpha = 0, w[256];
    CHECK_OK(lm_source_read_f32(s, 0, &alpha, &err), &err);
    CHECK_NEAR(alpha, 4.0, 0);
    k = lm_source_find(s, "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w1_a");
    CHECK(k == 1);
    CHECK(((uintptr_t)lm_source_raw(s, (size_t)k) & 1) == 0 || 1); /* any alignment is fine */
    CHECK_OK(lm_source_read_f32(s, (size_t)k, w, &err), &err);
    CHECK_NEAR(w[0], 0.1558837890625, 0);
    CHECK_NEAR(w[2], -1.5771484375, 0);
    double sum = 0;
    for (int i = 0; i < 256; i++) sum += w[i];
    CHECK_NEAR(sum, 14.443458557128906, 1e-9);
    CHECK(lm_source_meta_get(s, "sshs_model_hash") != NULL);
    lm_source_close(s);

    CHECK_OK(lm_source_open(&s, "fixtures/real/sd15_lora_diffusers_bf16.safetensors", NULL, &err), &err);
    float d[1280];
    CHECK_OK(lm_source_read_f32(s, 0, d, &err), &err);
    CHECK_NEAR(d[0], 0.2265625, 0);
    CHECK_NEAR(d[2], -0.57421875, 0);
    sum = 0;
    for (int i = 0; i < 1280; i++) sum += d[i];
    CHECK_NEAR(sum, -2.3334312438964844, 1e-9);
    CHECK_EQ_STR(lm_source_meta_get(s, "format"), "pt");
    lm_source_close(s);
}

/* A pickle named .safetensors is called a pickle, not "header too large". */
static void test_detect_pickle_named_safetensors(void)
{
    char path[512];
    tmp_path(path, sizeof path, "pickle.safetensors");
    const unsigned char pk[] = { 0x80, 0x02, '}', 'q', 0x00, '.' };
    write_bytes(path, pk, sizeof pk);
    lm_format f;
    lm_err err;
    CHECK_OK(lm_detect_format(path, &f, &err), &err);
    CHECK_EQ_INT(f, LM_FMT_PICKLE);
    lm_source *s = NULL;
    int rc = lm_source_open(&s, path, NULL, &err);
    CHECK(rc != 0 && s == NULL);
    CHECK_MSG(strstr(err.msg, "header") == NULL, "msg: %s", err.msg);
    unlink(path);
}

/* ---- the reference parser's accepted cases ---- */

static void test_valid_small(void)
{
    char path[512];
    lm_err err;
    lm_source *s = NULL;
    tmp_path(path, sizeof path, "ok.safetensors");

    /* test_empty: "{}" padded with spaces */
    write_st(path, "{}      ", -1, 0);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    CHECK_EQ_INT(lm_source_count(s), 0);
    lm_source_close(s);

    /* test_whitespace_padded_header: JSON whitespace after the object */
    write_st(path, "{}\r \t\n", -1, 0);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    lm_source_close(s);

    /* leading whitespace (serde accepts it) */
    write_st(path, " \n{}", -1, 0);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    lm_source_close(s);

    /* test_empty_shapes_allowed: 0-dim I32, 4 bytes */
    write_st(path, "{\"test\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", -1, 4);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    CHECK_EQ_INT(lm_source_entry(s, 0)->ndim, 0);
    CHECK_EQ_INT(lm_source_entry(s, 0)->numel, 1);
    CHECK_EQ_INT(lm_source_entry(s, 0)->nbytes, 4);
    lm_source_close(s);

    /* test_zero_sized_tensor: shape [2,0], data_offsets [0,0] */
    write_st(path, "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,0],\"data_offsets\":[0, 0]}}", -1, 0);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    CHECK_EQ_INT(lm_source_entry(s, 0)->numel, 0);
    CHECK_EQ_INT(lm_source_entry(s, 0)->nbytes, 0);
    lm_source_close(s);

    /* offsets not in JSON order, null metadata, unknown extra field, unaligned
     * F32 data (header length 101): entries come out in offset order */
    const char *h = "{\"__metadata__\":null,\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12],\"x\":1},"
                    "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    write_st(path, h, -1, 12);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    CHECK_EQ_INT(lm_source_count(s), 2);
    CHECK_EQ_STR(lm_source_entry(s, 0)->name, "a");
    CHECK_EQ_STR(lm_source_entry(s, 1)->name, "b");
    CHECK_EQ_INT(lm_source_entry(s, 1)->offset, 8 + strlen(h) + 4);
    CHECK_EQ_INT(lm_source_meta_count(s), 0);
    unsigned char raw[8];
    CHECK_OK(lm_source_read(s, 1, raw, &err), &err);
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(raw[i], 4 + i);
    CHECK(memcmp(lm_source_raw(s, 1), raw, 8) == 0);
    float f[2];
    uint32_t bits = 0x07060504u;
    float want;
    memcpy(&want, &bits, 4);
    CHECK_OK(lm_source_read_f32(s, 1, f, &err), &err);
    CHECK(memcmp(&f[0], &want, 4) == 0);
    lm_source_close(s);

    /* metadata strings, non-ASCII keys, escapes */
    write_st(path, "{\"__metadata__\":{\"format\":\"pt\",\"n\\u00e9\":\"a\\\"b\\n\"},"
                   "\"t\\u00e9\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1);
    CHECK_OK(lm_safetensors_open(&s, path, &err), &err);
    CHECK_EQ_STR(lm_source_meta_get(s, "format"), "pt");
    CHECK_EQ_STR(lm_source_meta_get(s, "n\xc3\xa9"), "a\"b\n");
    CHECK(lm_source_find(s, "t\xc3\xa9") == 0);
    lm_source_close(s);
    unlink(path);
}

/* ---- malformed corpus ---- */

typedef struct bad_case {
    const char *name;
    const char *hdr;     /* header text */
    int64_t hdr_len;     /* length field, -1 = strlen(hdr) */
    size_t data_len;
    int code;
    const char *key;     /* expected err.key, NULL = don't care */
    const char *msg;     /* substring of err.msg */
} bad_case;

#define T(dt, shape, a, b) "{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #a "," #b "]}"

static const bad_case k_bad[] = {
    { "header length past the end", "{}", 1000, 0, LM_ETRUNCATED, NULL, "runs past the end of the file" },
    { "header too large", "{}", 100000001, 0, LM_EINPUT, NULL, "exceeds the limit of 100000000" },
    { "header length 2^63", "{}", INT64_MAX, 0, LM_EINPUT, NULL, "exceeds the limit" },
    { "empty header", "", 0, 0, LM_EINPUT, NULL, "not valid JSON" },
    { "bad json", "{\"a\":", -1, 0, LM_EINPUT, NULL, "not valid JSON" },
    { "bad json trailing comma", "{\"a\":1,}", -1, 0, LM_EINPUT, NULL, "not valid JSON" },
    { "not utf8", "{\"\xff\":1}", -1, 0, LM_EINPUT, NULL, "not valid UTF-8" },
    { "overlong utf8", "{\"\xc0\xaf\":1}", -1, 0, LM_EINPUT, NULL, "not valid UTF-8" },
    { "header not an object", "[1,2]", -1, 0, LM_EINPUT, NULL, "not a JSON object" },
    { "header a string", "\"x\"", -1, 0, LM_EINPUT, NULL, "not a JSON object" },
    { "text after json", "{} x", -1, 0, LM_EINPUT, NULL, "text after the JSON value" },
    { "two objects", "{}{}", -1, 0, LM_EINPUT, NULL, "text after the JSON value" },
    { "raw control char in key", "{\"a\tb\":" T("U8", "[1]", 0, 1) "}", -1, 1, LM_EINPUT, NULL, "raw control character" },
    { "escaped nul", "{\"a\\u0000b\":" T("U8", "[1]", 0, 1) "}", -1, 1, LM_EINPUT, NULL, "\\u0000" },
    { "tensor not object", "{\"a\":[1]}", -1, 0, LM_EINPUT, "a", "not a JSON object" },
    { "missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1, LM_EINPUT, "a", "missing \"dtype\"" },
    { "missing shape", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", -1, 1, LM_EINPUT, "a", "missing \"shape\"" },
    { "missing offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", -1, 1, LM_EINPUT, "a", "missing \"data_offsets\"" },
    { "dtype not string", "{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1, LM_EINPUT, "a", "\"dtype\" is not a string" },
    { "unknown dtype", "{\"a\":" T("Q4_K", "[1]", 0, 1) "}", -1, 1, LM_EINPUT, "a", "unknown dtype \"Q4_K\"" },
    { "lowercase dtype", "{\"a\":" T("f32", "[1]", 0, 4) "}", -1, 4, LM_EINPUT, "a", "unknown dtype" },
    { "refused F8_E8M0", "{\"a\":" T("F8_E8M0", "[1]", 0, 1) "}", -1, 1, LM_EUNSUPPORTED, "a", "dtype F8_E8M0 is not supported" },
    { "refused F4", "{\"a\":" T("F4", "[2]", 0, 1) "}", -1, 1, LM_EUNSUPPORTED, "a", "dtype F4 is not supported" },
    { "refused F6_E2M3", "{\"a\":" T("F6_E2M3", "[4]", 0, 3) "}", -1, 3, LM_EUNSUPPORTED, "a", "F6_E2M3" },
    { "refused C64", "{\"a\":" T("C64", "[1]", 0, 8) "}", -1, 8, LM_EUNSUPPORTED, "a", "dtype C64 is not supported" },
    { "shape not array", "{\"a\":" T("U8", "1", 0, 1) "}", -1, 1, LM_EINPUT, "a", "\"shape\" is not an array" },
    { "negative dim", "{\"a\":" T("U8", "[-1]", 0, 1) "}", -1, 1, LM_EINPUT, "a", "shape[0] is not a non-negative integer" },
    { "fractional dim", "{\"a\":" T("U8", "[1.5]", 0, 1) "}", -1, 1, LM_EINPUT, "a", "shape[0]" },
    { "string dim", "{\"a\":" T("U8", "[1,\"2\"]", 0, 2) "}", -1, 2, LM_EINPUT, "a", "shape[1]" },
    { "too many dims", "{\"a\":" T("U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) "}", -1, 1, LM_EUNSUPPORTED, "a", "9 dimensions" },
    /* the reference's test_validation_overflow: [2, 2^64-2] and [2, 2^63-1] */
    { "dim above 2^53", "{\"test\":" T("I32", "[2,18446744073709551614]", 0, 16) "}", -1, 16, LM_EINPUT, "test", "below 2^53" },
    { "shape product overflow", "{\"a\":" T("I32", "[4294967296,4294967296]", 0, 16) "}", -1, 16, LM_EINPUT, "a", "shape product overflows 64 bits" },
    { "nbytes overflow", "{\"a\":" T("I64", "[4294967296,536870912,2]", 0, 16) "}", -1, 16, LM_EINPUT, "a", "dtype size overflows 64 bits" },
    { "offsets not array", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":1}}", -1, 1, LM_EINPUT, "a", "not an array of two integers" },
    { "three offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", -1, 1, LM_EINPUT, "a", "not an array of two integers" },
    { "negative offset", "{\"a\":" T("U8", "[1]", -1, 0) "}", -1, 1, LM_EINPUT, "a", "non-negative integer" },
    /* test_invalid_info: [2,2] I32 = 16 bytes, offsets span 4 */
    { "shape and span disagree", "{\"test\":" T("I32", "[2,2]", 0, 4) "}", -1, 4, LM_EINPUT, "test", "give 16 bytes but data_offsets [0, 4] span 4" },
    { "end before start", "{\"a\":" T("U8", "[0]", 4, 2) "}", -1, 4, LM_EINPUT, "a", "end before start" },
    { "offsets out of range", "{\"a\":" T("U8", "[4]", 0, 4) ",\"b\":" T("U8", "[4]", 4, 8) "}", -1, 6, LM_ETRUNCATED, "b", "reach past the end of the data area (6 bytes)" },
    { "offset far out of range", "{\"a\":" T("U8", "[4]", 1000000, 1000004) "}", -1, 4, LM_ETRUNCATED, "a", "reach past the end" },
    { "overlap", "{\"a\":" T("U8", "[8]", 0, 8) ",\"b\":" T("U8", "[8]", 4, 12) "}", -1, 12, LM_EINPUT, "b", "overlap tensor \"a\"" },
    { "same offsets", "{\"a\":" T("U8", "[8]", 0, 8) ",\"b\":" T("U8", "[8]", 0, 8) "}", -1, 8, LM_EINPUT, "b", "overlap" },
    { "zero-size inside another", "{\"a\":" T("U8", "[8]", 0, 8) ",\"z\":" T("U8", "[0]", 4, 4) "}", -1, 8, LM_EINPUT, "z", "overlap" },
    { "gap", "{\"a\":" T("U8", "[4]", 0, 4) ",\"b\":" T("U8", "[4]", 8, 12) "}", -1, 12, LM_EINPUT, "b", "gap of 4 unused bytes" },
    { "gap at start", "{\"a\":" T("U8", "[4]", 2, 6) "}", -1, 6, LM_EINPUT, "a", "gap of 2" },
    /* test_metadata_incomplete_buffer: extra bytes after the data, and data missing */
    { "trailing bytes", "{\"test\":" T("I32", "[2,2]", 0, 16) "}", -1, 20, LM_EINPUT, NULL, "4 trailing bytes after the last tensor" },
    { "trailing bytes no tensors", "{}", -1, 3, LM_EINPUT, NULL, "3 trailing bytes" },
    { "data missing", "{\"test\":" T("I32", "[2,2]", 0, 16) "}", -1, 14, LM_ETRUNCATED, "test", "reach past the end of the data area (14 bytes)" },
    { "duplicate tensor key", "{\"a\":" T("U8", "[1]", 0, 1) ",\"a\":" T("U8", "[1]", 1, 2) "}", -1, 2, LM_EINPUT, "a", "duplicate key in header" },
    { "duplicate field", "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1, LM_EINPUT, "a", "duplicate field \"dtype\"" },
    { "duplicate __metadata__", "{\"__metadata__\":{},\"__metadata__\":{}}", -1, 0, LM_EINPUT, "__metadata__", "duplicate key" },
    { "duplicate metadata key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", -1, 0, LM_EINPUT, "k", "duplicate key in __metadata__" },
    { "metadata not object", "{\"__metadata__\":\"x\"}", -1, 0, LM_EINPUT, "__metadata__", "__metadata__ is not a JSON object" },
    { "metadata number value", "{\"__metadata__\":{\"epoch\":3}}", -1, 0, LM_EINPUT, "epoch", "not a string" },
    { "metadata nested value", "{\"__metadata__\":{\"o\":{\"a\":\"b\"}}}", -1, 0, LM_EINPUT, "o", "not a string" },
};

static void test_malformed_corpus(void)
{
    char path[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    for (size_t i = 0; i < sizeof k_bad / sizeof *k_bad; i++) {
        const bad_case *b = &k_bad[i];
        write_st(path, b->hdr, b->hdr_len, b->data_len);
        lm_source *s = (lm_source *)1;
        lm_err err;
        lm_err_clear(&err);
        int rc = lm_safetensors_open(&s, path, &err);
        CHECK_MSG(rc == b->code, "case \"%s\": rc %d, expected %d (%s)", b->name, rc, b->code, err.msg);
        CHECK_MSG(s == NULL, "case \"%s\": source not NULL", b->name);
        CHECK_MSG(err.code == b->code, "case \"%s\": err.code %d", b->name, err.code);
        CHECK_MSG(strstr(err.msg, b->msg) != NULL, "case \"%s\": message \"%s\" lacks \"%s\"", b->name, err.msg, b->msg);
        CHECK_MSG(strcmp(err.file, path) == 0, "case \"%s\": file \"%s\"", b->name, err.file);
        if (b->key) CHECK_MSG(strcmp(err.key, b->key) == 0, "case \"%s\": key \"%s\", expected \"%s\"", b->name, err.key, b->key);
        char line[1400];
        lm_err_format(&err, line, sizeof line);
        CHECK_MSG(strchr(line, '\n') == NULL, "case \"%s\": multi-line message", b->name);
    }
    unlink(path);
}

static void test_malformed_raw(void)
{
    char path[512];
    tmp_path(path, sizeof path, "raw.safetensors");
    lm_source *s = NULL;
    lm_err err;
    /* empty file, 5 bytes: too short for the length */
    write_bytes(path, "", 0);
    CHECK_EQ_INT(lm_safetensors_open(&s, path, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "too short") != NULL);
    write_bytes(path, "\x05\0\0\0\0", 5);
    CHECK_EQ_INT(lm_safetensors_open(&s, path, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "0 bytes") == NULL && strstr(err.msg, "5 bytes") != NULL);
    /* test_invalid_header_length: length 60, nothing after */
    write_bytes(path, "<\0\0\0\0\0\0\0", 8);
    CHECK_EQ_INT(lm_safetensors_open(&s, path, &err), LM_ETRUNCATED);
    CHECK(strstr(err.msg, "runs past the end") != NULL);
    /* a NUL byte inside the header */
    write_bytes(path, "\x04\0\0\0\0\0\0\0{}\0 ", 12);
    CHECK_EQ_INT(lm_safetensors_open(&s, path, &err), LM_EINPUT);
    CHECK(strstr(err.msg, "NUL byte") != NULL);
    CHECK_EQ_INT(err.offset, 10);
    /* deep nesting is refused by cJSON's nesting limit, not a stack overflow */
    size_t depth = 100000;
    char *deep = malloc(depth + 8);
    memset(deep, '[', depth);
    deep[depth] = 0;
    write_st(path, deep, -1, 0);
    free(deep);
    CHECK_EQ_INT(lm_safetensors_open(&s, path, &err), LM_EINPUT);
    /* a directory and a missing file are I/O errors */
    CHECK_EQ_INT(lm_safetensors_open(&s, g_tmpdir, &err), LM_EIO);
    CHECK_EQ_INT(lm_source_open(&s, "/nonexistent/x.safetensors", NULL, &err), LM_EIO);
    unlink(path);
}

/* Files over 4 GiB: a sparse file with a 4 GiB + 16 byte U8 tensor followed
 * by an F32 at an offset above 2^32. */
static void test_large_sparse(void)
{
    char path[512];
    tmp_path(path, sizeof path, "big.safetensors");
    const uint64_t big = (1ull << 32) + 16;
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr,
                     "{\"big\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,%llu]},"
                     "\"tail\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%llu,%llu]}}",
                     (unsigned long long)big, (unsigned long long)big,
                     (unsigned long long)big, (unsigned long long)big + 4);
    while (n % 8) hdr[n++] = ' ';
    hdr[n] = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)n >> (8 * i));
    float one = 1.5f;
    int ok = pwrite(fd, le, 8, 0) == 8 && pwrite(fd, hdr, (size_t)n, 8) == n &&
             pwrite(fd, &one, 4, (off_t)(8 + n + big)) == 4;
    close(fd);
    if (!ok) { unlink(path); return; } /* no sparse files here: nothing to test */
    lm_source *s = NULL;
    lm_err err;
    int rc = lm_source_open(&s, path, NULL, &err);
    if (rc == LM_EIO && strstr(err.msg, "mmap")) { unlink(path); return; }
    CHECK_OK(rc, &err);
    CHECK_EQ_INT(lm_source_file_size(s), 8 + n + big + 4);
    CHECK_EQ_INT(lm_source_entry(s, 0)->nbytes, big);
    CHECK_EQ_INT(lm_source_entry(s, 1)->offset, 8 + n + big);
    float v = 0;
    CHECK_OK(lm_source_read_f32(s, 1, &v, &err), &err);
    CHECK_NEAR(v, 1.5, 0);
    lm_source_close(s);
    unlink(path);
}

/* A file truncated after opening: reads fail with LM_EIO, no SIGBUS. */
static void test_truncated_under_us(void)
{
    char path[512];
    tmp_path(path, sizeof path, "shrink.safetensors");
    write_st(path, "{\"a\":" T("U8", "[4096]", 0, 4096) ",\"b\":" T("U8", "[4096]", 4096, 8192) "}", -1, 8192);
    lm_source *s = NULL;
    lm_err err;
    CHECK_OK(lm_source_open(&s, path, NULL, &err), &err);
    CHECK(truncate(path, 100) == 0);
    unsigned char buf[4096];
    CHECK_EQ_INT(lm_source_read(s, 1, buf, &err), LM_EIO);
    CHECK(strstr(err.msg, "shorter than when it was opened") != NULL);
    CHECK_EQ_STR(err.key, "b");
    lm_source_close(s);
    unlink(path);
}

/* Random byte flips and truncations of a valid file never crash the reader
 * and either open or fail with a filled-in error. */
static void test_mutations_never_crash(void)
{
    char path[512];
    tmp_path(path, sizeof path, "mut.safetensors");
    FILE *f = fopen("fixtures/real/st_i64_scalar_offset_order.safetensors", "rb");
    CHECK(f);
    unsigned char *orig = malloc(17624), *buf = malloc(17624);
    CHECK(fread(orig, 1, 17624, f) == 17624);
    fclose(f);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int opened = 0, failed = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(buf, orig, 17624);
        size_t len = 17624;
        int flips = 1 + (int)(it % 4);
        for (int k = 0; k < flips; k++) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            size_t pos = (size_t)(rng % 700);  /* header area mostly */
            buf[pos] = (unsigned char)(rng >> 32);
        }
        if (it % 5 == 0) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; len = (size_t)(rng % 17624); }
        write_bytes(path, buf, len);
        lm_source *s = NULL;
        lm_err err;
        lm_err_clear(&err);
        int rc = lm_source_open(&s, path, NULL, &err);
        if (rc == 0) {
            opened++;
            for (size_t i = 0; i < lm_source_count(s); i++) {
                const lm_entry *e = lm_source_entry(s, i);
                CHECK(e->offset + e->nbytes <= len);
                if (e->nbytes <= 65536) {
                    unsigned char tmp[65536];
                    CHECK_OK(lm_source_read(s, i, tmp, &err), &err);
                }
            }
            lm_source_close(s);
        } else {
            failed++;
            CHECK(s == NULL);
            CHECK(err.code == rc && err.msg[0] != 0);
        }
    }
    CHECK(failed > 1000);
    CHECK(opened >= 0);
    free(orig);
    free(buf);
    unlink(path);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(g_tmpdir, sizeof g_tmpdir, "%s/lm_test_st.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(g_tmpdir)) { perror("mkdtemp"); return 2; }
    RUN(test_real_files);
    RUN(test_real_values);
    RUN(test_detect_pickle_named_safetensors);
    RUN(test_valid_small);
    RUN(test_malformed_corpus);
    RUN(test_malformed_raw);
    RUN(test_large_sparse);
    RUN(test_truncated_under_us);
    RUN(test_mutations_never_crash);
    rmdir(g_tmpdir);
    TEST_EXIT();
}
