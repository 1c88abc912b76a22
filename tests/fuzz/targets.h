/* tests/fuzz/targets.h — one function per parser entry point, shared by the
 * libFuzzer harnesses (tests/fuzz/fuzz_*.c) and the regression replay test
 * (tests/test_regress.c), so a crash found by a fuzzer replays through
 * exactly the same calls.
 *
 * Each lmf_* function takes arbitrary bytes, runs them through the public
 * API the way a command would, and returns the library's return code
 * (0 or a negative LM_E* code) with *err filled. The library must never
 * crash, hang, leak or touch memory it does not own on any input; where a
 * result can be checked against another path through the API (raw bytes vs
 * lm_source_read, lm_source_find vs the entry index) a disagreement aborts,
 * so the fuzzer reports it as a finding.
 *
 * Inputs reach the library as a path: the bytes go into a memfd and the
 * library opens "/proc/self/fd/N", so nothing touches the disk.
 */
#ifndef LIBMERGE_TESTS_FUZZ_TARGETS_H
#define LIBMERGE_TESTS_FUZZ_TARGETS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"
#include "libmerge/keymap.h"
#include "libmerge/dtype.h"
#include "libmerge/tokenizer.h"

/* Tensors larger than this are not read back (the reader has already
 * validated their extent; reading gigabytes per input would only slow the
 * fuzzer). The readers themselves must refuse sizes the file cannot hold. */
#define LMF_FN static __attribute__((unused))
#define LMF_MAX_READ ((uint64_t)64 << 20)

/* Writes data into a fresh memfd and names it in path. Returns the fd
 * (close it when done) or -1. */
LMF_FN int lmf_memfile(const uint8_t *data, size_t n, char *path, size_t pn)
{
    int fd = memfd_create("lmfuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, data + done, n - done);
        if (w <= 0) { close(fd); return -1; }
        done += (size_t)w;
    }
    snprintf(path, pn, "/proc/self/fd/%d", fd);
    return fd;
}

LMF_FN void lmf_die(const char *what, const char *name)
{
    fprintf(stderr, "lmf: invariant broken: %s (%s)\n", what, name ? name : "");
    abort();
}

/* An error must carry a reason: a failure the user cannot read is a bug. */
LMF_FN void lmf_check_err(int rc, const lm_err *err)
{
    if (rc > 0) lmf_die("positive return code", NULL);
    if (rc < 0 && (!err->msg[0] || err->code != rc)) lmf_die("error without reason or with another code", err->msg);
}

/* Reads every entry of an open source through every read path and checks
 * they agree. Returns the first read error (0 if none). */
LMF_FN int lmf_read_all(const lm_source *s, lm_err *err)
{
    int first = 0;
    size_t n = lm_source_count(s);
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(s, i);
        if (!e || !e->name) lmf_die("entry without name", NULL);
        if (lm_source_find(s, e->name) != (int64_t)i) lmf_die("lm_source_find disagrees with entry index", e->name);
        if (e->ndim < 0 || e->ndim > LM_MAX_DIMS) lmf_die("ndim out of range", e->name);
        if (e->nbytes != (uint64_t)e->numel * lm_dtype_size(e->dtype)) lmf_die("nbytes != numel * dtype size", e->name);
        if (e->nbytes > LMF_MAX_READ) continue;
        unsigned char *buf = malloc(e->nbytes ? e->nbytes : 1);
        float *f = malloc(e->numel ? (size_t)e->numel * sizeof *f : 1);
        if (!buf || !f) { free(buf); free(f); continue; }
        lm_err e1;
        lm_err_clear(&e1);
        int rc = lm_source_read(s, i, buf, &e1);
        lmf_check_err(rc, &e1);
        if (rc == 0) {
            const void *raw = lm_source_raw(s, i);
            if (raw && e->nbytes && memcmp(raw, buf, e->nbytes)) lmf_die("lm_source_raw differs from lm_source_read", e->name);
        } else if (!first) {
            first = rc;
            *err = e1;
        }
        lm_err_clear(&e1);
        rc = lm_source_read_f32(s, i, f, &e1);
        lmf_check_err(rc, &e1);
        free(buf);
        free(f);
    }
    for (size_t i = 0; i < lm_source_meta_count(s); i++) {
        const char *k = lm_source_meta_key(s, i), *v = lm_source_meta_value(s, i);
        if (!k || !v) lmf_die("metadata pair with NULL", NULL);
        if (lm_source_meta_get(s, k) == NULL) lmf_die("lm_source_meta_get misses a key", k);
    }
    return first;
}

/* Model file (any format lm_source_open detects): open, read every tensor,
 * classify it (lm_model_detect, lm_lora_detect). */
LMF_FN int lmf_source(const uint8_t *data, size_t n, lm_err *err)
{
    char path[64];
    int fd = lmf_memfile(data, n, path, sizeof path);
    if (fd < 0) return 0;
    lm_source *s = NULL;
    lm_err_clear(err);
    int rc = lm_source_open(&s, path, NULL, err);
    lmf_check_err(rc, err);
    if (rc == 0) {
        if (lm_source_file_size(s) != n) lmf_die("file size", NULL);
        rc = lmf_read_all(s, err);
        lm_model_info info;
        lm_model_detect(s, &info);
        (void)lm_lora_detect(s);
        /* as a base checkpoint: the key map and layout conversion of every name */
        lm_keymap *km = NULL;
        lm_err e2;
        int r2 = lm_keymap_build(&km, s, &e2);
        lmf_check_err(r2, &e2);
        lm_keymap_free(km);
        for (size_t i = 0; i < lm_source_count(s) && i < 4096; i++) {
            char out[512];
            int reshape = 0;
            const char *nm = lm_source_entry(s, i)->name;
            for (int a = LM_ARCH_SD1; a <= LM_ARCH_SSD1B; a++) {
                (void)lm_layout_convert_name((lm_arch)a, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, nm, out, sizeof out, &reshape);
                (void)lm_layout_convert_name((lm_arch)a, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, nm, out, sizeof out, &reshape);
                (void)lm_layout_convert_name((lm_arch)a, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, nm, out, 8, &reshape);
            }
        }
    } else if (s) {
        lmf_die("failed open left *out set", err->msg);
    }
    lm_source_close(s);
    close(fd);
    return rc;
}

/* The same with --skip-unknown (torch: unknown globals read as opaque values). */
LMF_FN int lmf_source_skip_unknown(const uint8_t *data, size_t n, lm_err *err)
{
    char path[64];
    int fd = lmf_memfile(data, n, path, sizeof path);
    if (fd < 0) return 0;
    lm_source *s = NULL;
    lm_open_opts o = LM_OPEN_OPTS_INIT;
    o.skip_unknown = 1;
    lm_err_clear(err);
    int rc = lm_source_open(&s, path, &o, err);
    lmf_check_err(rc, err);
    if (rc == 0) rc = lmf_read_all(s, err);
    lm_source_close(s);
    close(fd);
    return rc;
}

/* Tensor source with names and shapes but no data, for the key map: the
 * full-size SD1.5 single-file layout from the manifest in fixtures/.
 * Built once (both the fuzzer and the replay test run from the repo root). */
#include <cjson/cJSON.h>
#include "io/source_impl.h"

LMF_FN int lmf_nodata_read(const lm_source *s, size_t i, void *dst, lm_err *err)
{
    (void)dst;
    return lm_err_set(err, LM_EIO, s->path, s->entries[i].name, LM_ERR_NO_OFFSET, "manifest base has no data");
}
static const lm_source_ops lmf_nodata_ops = { lmf_nodata_read, NULL, NULL };

static lm_source *lmf_manifest_base(const char *manifest)
{
    FILE *f = fopen(manifest, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *txt = malloc((size_t)len + 1);
    if (!txt || fread(txt, 1, (size_t)len, f) != (size_t)len) { fclose(f); free(txt); return NULL; }
    fclose(f);
    txt[len] = 0;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    lm_source *s = NULL;
    if (!j || lm_source_new(&s, manifest, LM_FMT_SAFETENSORS, NULL)) { cJSON_Delete(j); return NULL; }
    s->ops = &lmf_nodata_ops;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(j, "tensors")) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, "name");
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
        int64_t shape[LM_MAX_DIMS];
        int nd = 0;
        const cJSON *d;
        cJSON_ArrayForEach(d, sh) if (nd < LM_MAX_DIMS) shape[nd++] = (int64_t)d->valuedouble;
        if (!cJSON_IsString(nm) || !cJSON_IsString(dt)) continue;
        lm_dtype dtype = lm_dtype_from_name(dt->valuestring);
        if (lm_source_add(s, nm->valuestring, dtype == LM_DT_INVALID ? LM_DT_F32 : dtype, nd, shape, 0, NULL, NULL)) break;
    }
    cJSON_Delete(j);
    return s;
}

/* LoRA file: open, detect the convention, resolve every module onto a
 * full-size SD1.5 base, and apply each module whose target is small to a
 * zero weight (exercises ΔW on the file's factors). */
#define LMF_MAX_APPLY ((int64_t)1 << 22)
LMF_FN int lmf_lora(const uint8_t *data, size_t n, lm_err *err)
{
    static lm_keymap *km;
    static const lm_source *base;
    static int init;
    if (!init) {
        init = 1;
        static lm_source *b;
        b = lmf_manifest_base("fixtures/golden/sd15/sd15_ldm_manifest.json");
        if (b && lm_keymap_build(&km, b, NULL) == 0) base = b;
        if (!base) fprintf(stderr, "lmf: no key map base (run from the repository root); resolve not fuzzed\n");
    }
    char path[64];
    int fd = lmf_memfile(data, n, path, sizeof path);
    if (fd < 0) return 0;
    lm_lora *l = NULL;
    lm_err_clear(err);
    int rc = lm_lora_open(&l, path, NULL, err);
    lmf_check_err(rc, err);
    if (rc == 0) {
        const lm_source *s = lm_lora_source(l);
        (void)lm_lora_detect(s);
        (void)lm_lora_convention_name(lm_lora_convention_of(l));
        size_t m = lm_lora_count(l);
        for (size_t i = 0; i < m; i++) {
            const lm_lora_module *mod = lm_lora_module_at(l, i);
            if (!mod || !mod->name) lmf_die("module without name", NULL);
        }
        lm_target *tg = base && m ? calloc(m, sizeof *tg) : NULL;
        if (tg) {
            lm_err e2;
            lm_err_clear(&e2);
            size_t unmatched = 0;
            int r2 = lm_keymap_resolve(km, l, 1, tg, &unmatched, &e2);
            lmf_check_err(r2, &e2);
            for (size_t i = 0; r2 == 0 && i < m; i++) {
                if (tg[i].tensor < 0) continue;
                if ((size_t)tg[i].tensor >= lm_source_count(base)) lmf_die("target index out of range", NULL);
                const lm_entry *e = lm_source_entry(base, (size_t)tg[i].tensor);
                if (e->numel > LMF_MAX_APPLY) continue;
                float *W = calloc(e->numel ? (size_t)e->numel : 1, sizeof *W);
                if (!W) continue;
                lm_err_clear(&e2);
                int r3 = lm_lora_apply(l, i, 0.5f, W, e->shape, e->ndim, tg[i].row0, tg[i].rows, &e2);
                lmf_check_err(r3, &e2);
                free(W);
            }
            free(tg);
        }
        /* ΔW on its own, for modules small enough */
        for (size_t i = 0; i < m; i++) {
            const lm_lora_module *mod = lm_lora_module_at(l, i);
            int64_t numel = 1;
            int ok = mod->ndim == 2 || mod->ndim == 4;
            for (int d = 0; ok && d < mod->ndim; d++) {
                if (mod->shape[d] < 0 || (mod->shape[d] && numel > LMF_MAX_APPLY / mod->shape[d])) ok = 0;
                else numel *= mod->shape[d];
            }
            if (!ok || numel > LMF_MAX_APPLY) continue;
            float *d = malloc(numel ? (size_t)numel * sizeof *d : 1);
            if (!d) continue;
            lm_err e3;
            lm_err_clear(&e3);
            int r3 = lm_lora_delta(l, i, d, &e3);
            lmf_check_err(r3, &e3);
            free(d);
        }
    } else if (l) {
        lmf_die("failed open left *out set", err->msg);
    }
    lm_lora_close(l);
    close(fd);
    return rc;
}

/* Prompt: the CLIP tokenizer on the bytes as a prompt (NUL-terminated copy;
 * lm_tokenizer_normalize also sees the raw bytes with any NULs). Checks that
 * lm_tokenizer_encode is BOS + the first 75 ids of lm_tokenizer_content +
 * EOS + padding, and that every id names a vocabulary token. */
#define LMF_VOCAB "fixtures/golden/clip/bpe_simple_vocab_16e6.txt.gz"
LMF_FN int lmf_tokenizer(const uint8_t *data, size_t n, lm_err *err)
{
    static lm_tokenizer *tok;
    static int init;
    if (!init) {
        init = 1;
        if (lm_tokenizer_open(&tok, LMF_VOCAB, NULL))
            fprintf(stderr, "lmf: cannot load %s (run from the repository root)\n", LMF_VOCAB);
    }
    lm_err_clear(err);
    char *out = NULL;
    int rc = lm_tokenizer_normalize((const char *)data, n, &out, err);
    lmf_check_err(rc, err);
    free(out);
    if (!tok) return rc;
    char *p = malloc(n + 1);
    if (!p) return 0;
    memcpy(p, data, n);
    p[n] = 0;
    int32_t ids[LM_CLIP_CTX], *c = NULL;
    size_t nc = 0, ncontent = 0;
    lm_err_clear(err);
    rc = lm_tokenizer_encode(tok, p, LM_CLIP_PAD_SD15, ids, &ncontent, err);
    lmf_check_err(rc, err);
    lm_err e2;
    lm_err_clear(&e2);
    int rc2 = lm_tokenizer_content(tok, p, &c, &nc, &e2);
    lmf_check_err(rc2, &e2);
    if ((rc == 0) != (rc2 == 0)) lmf_die("encode and content disagree on success", p);
    if (rc == 0) {
        size_t keep = nc < LM_CLIP_CTX - 2 ? nc : LM_CLIP_CTX - 2;
        if (ncontent != nc) lmf_die("n_content differs from content length", p);
        if (ids[0] != LM_CLIP_BOS || ids[1 + keep] != LM_CLIP_EOS) lmf_die("BOS/EOS misplaced", p);
        for (size_t i = 0; i < keep; i++)
            if (ids[1 + i] != c[i]) lmf_die("encode differs from content", p);
        for (size_t i = keep + 2; i < LM_CLIP_CTX; i++)
            if (ids[i] != LM_CLIP_PAD_SD15) lmf_die("bad padding", p);
        for (size_t i = 0; i < nc; i++)
            if (c[i] < 0 || c[i] >= LM_CLIP_VOCAB || !lm_tokenizer_token(tok, c[i])) lmf_die("id out of vocabulary", p);
    }
    free(c);
    free(p);
    return rc;
}

/* Bare pickle: the restricted unpickler alone (internal API), with the
 * default whitelist and with skip_unknown, walking the persistent ids. */
#include "io/torch/pickle.h"
LMF_FN int lmf_pickle(const uint8_t *data, size_t n, lm_err *err)
{
    int first = 0;
    for (int skip = 0; skip < 2; skip++) {
        pk_ctx *ctx = NULL;
        pk_value *root = NULL;
        size_t used = 0;
        lm_err e;
        lm_err_clear(&e);
        int rc = pk_load(&ctx, data, n, "pickle", 0, skip, &root, &used, &e);
        lmf_check_err(rc, &e);
        if (rc == 0) {
            if (!root || used > n) lmf_die("pk_load: no root or used past the end", NULL);
            for (size_t i = 0; i < pk_persid_count(ctx); i++)
                if (!pk_persid(ctx, i)) lmf_die("NULL persistent id", NULL);
            if (root->kind == PK_DICT) (void)pk_dict_get(root, "state_dict");
        } else if (!first) {
            first = rc;
            *err = e;
        }
        pk_free(ctx);
    }
    return first;
}

/* PyTorch zip around a fuzzed pickle: the bytes become archive/data.pkl of a
 * well-formed zip (stored records, right CRCs) holding storages
 * archive/data/0 … archive/data/7 of 4096 bytes each, so mutations reach
 * the storage and tensor-record checks behind the zip layer. */
#include <zlib.h>
typedef struct { unsigned char *p; size_t n, cap; } lmf_buf;
LMF_FN void lmf_put(lmf_buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n) c *= 2;
        unsigned char *q = realloc(b->p, c);
        if (!q) abort();
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
LMF_FN void lmf_le(lmf_buf *b, uint64_t v, int n)
{
    unsigned char x[8];
    for (int i = 0; i < n; i++) x[i] = (unsigned char)(v >> (8 * i));
    lmf_put(b, x, (size_t)n);
}
LMF_FN int lmf_torch_zip_pickle(const uint8_t *data, size_t n, lm_err *err)
{
    static unsigned char storage[4096];
    for (size_t i = 0; i < sizeof storage; i++) storage[i] = (unsigned char)(i * 7 + 1);
    enum { NE = 10 };
    const char *names[NE] = { "archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/data/1",
                              "archive/data/2", "archive/data/3", "archive/data/4", "archive/data/5",
                              "archive/data/6", "archive/data/7" };
    lmf_buf z = {0}, cd = {0};
    for (int k = 0; k < NE; k++) {
        const unsigned char *d = k == 0 ? data : k == 1 ? (const unsigned char *)"little" : storage;
        size_t dn = k == 0 ? n : k == 1 ? 6 : sizeof storage;
        uint32_t crc = (uint32_t)crc32(0L, d, (uInt)dn);
        size_t nl = strlen(names[k]), off = z.n;
        lmf_le(&z, 0x04034b50, 4); lmf_le(&z, 20, 2); lmf_le(&z, 0, 2); lmf_le(&z, 0, 2);
        lmf_le(&z, 0, 2); lmf_le(&z, 0x21, 2); lmf_le(&z, crc, 4); lmf_le(&z, dn, 4); lmf_le(&z, dn, 4);
        lmf_le(&z, nl, 2); lmf_le(&z, 0, 2); lmf_put(&z, names[k], nl); lmf_put(&z, d, dn);
        lmf_le(&cd, 0x02014b50, 4); lmf_le(&cd, 20, 2); lmf_le(&cd, 20, 2); lmf_le(&cd, 0, 2); lmf_le(&cd, 0, 2);
        lmf_le(&cd, 0, 2); lmf_le(&cd, 0x21, 2); lmf_le(&cd, crc, 4); lmf_le(&cd, dn, 4); lmf_le(&cd, dn, 4);
        lmf_le(&cd, nl, 2); lmf_le(&cd, 0, 2); lmf_le(&cd, 0, 2); lmf_le(&cd, 0, 2); lmf_le(&cd, 0, 2);
        lmf_le(&cd, 0, 4); lmf_le(&cd, off, 4); lmf_put(&cd, names[k], nl);
    }
    size_t cdoff = z.n;
    lmf_put(&z, cd.p, cd.n);
    lmf_le(&z, 0x06054b50, 4); lmf_le(&z, 0, 2); lmf_le(&z, 0, 2); lmf_le(&z, NE, 2); lmf_le(&z, NE, 2);
    lmf_le(&z, cd.n, 4); lmf_le(&z, cdoff, 4); lmf_le(&z, 0, 2);
    int rc = lmf_source(z.p, z.n, err);
    free(z.p);
    free(cd.p);
    return rc;
}

#endif
