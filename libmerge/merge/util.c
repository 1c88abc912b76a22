/* Small helpers of the merge module: file hashes, output-path refusal, metadata lists,
 * ModelSpec names, thread count. See merge_impl.h. */
#include "merge_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "libmerge/hash.h"

int lmm_sha256_file(const char *path, char hex[65], uint64_t *bytes, lm_err *err)
{
    /* the shared hasher (libmerge/hash.h) behind its SHA-256 cache: opens without blocking
     * and refuses FIFOs, devices and directories, so a hash thread never hangs in open() */
    return lm_hash_file_cached(path, hex, bytes, err);
}

void lmm_legacy_hash(const char *path, char out[9])
{
    lm_file_hashes h;
    out[0] = 0;
    if (lm_hash_file(path, LM_HASH_AUTOV1, &h, NULL) == 0) memcpy(out, h.autov1, 9);
}

void lmm_legacy_hash_source(const lm_source *s, const char *path, char out[9])
{
    /* A1111's model_hash: SHA-256 of the bytes [1 MiB, 1 MiB + 64 KiB) (fewer at the end
     * of the file; none for a file under 1 MiB): gathered from the tensors' mappings */
    enum { AT = 0x100000, LEN = 0x10000 };
    uint64_t size = lm_source_file_size(s), hi = size < AT + LEN ? size : AT + LEN, covered = 0;
    unsigned char buf[LEN];
    int ok = lm_source_format(s) == LM_FMT_SAFETENSORS && (size <= AT || lm_source_data_start(s) <= AT);
    for (size_t t = 0; ok && size > AT && t < lm_source_count(s); t++) {
        const lm_entry *e = lm_source_entry(s, t);
        uint64_t a = e->offset > AT ? e->offset : AT, z = e->offset + e->nbytes < hi ? e->offset + e->nbytes : hi;
        if (a >= z) continue;
        const unsigned char *raw = lm_source_raw(s, t);
        if (!raw) { ok = 0; break; }
        memcpy(buf + (a - AT), raw + (a - e->offset), (size_t)(z - a));
        covered += z - a;
    }
    if (!ok || (size > AT && covered != hi - AT)) { lmm_legacy_hash(path, out); return; }
    char hex[65];
    lm_sha256_hex(buf, size > AT ? (size_t)(hi - AT) : 0, hex);
    memcpy(out, hex, 8);
    out[8] = 0;
}

int lmm_check_output(const char *out, const char *const *inputs, size_t n, lm_err *err)
{
    struct stat so;
    int have_out = stat(out, &so) == 0;
    for (size_t i = 0; i < n; i++) {
        struct stat si;
        int same = !strcmp(out, inputs[i]);
        if (!same && have_out && stat(inputs[i], &si) == 0)
            same = si.st_dev == so.st_dev && si.st_ino == so.st_ino;
        if (same)
            return lm_err_set(err, LM_EUSAGE, out, NULL, LM_ERR_NO_OFFSET,
                              "output is the input %s: refusing to overwrite an input", inputs[i]);
    }
    return 0;
}

int lmm_meta_set(lmm_meta *m, const char *key, const char *value)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->keys[i], key)) {
            char *v = strdup(value);
            if (!v) return LM_ENOMEM;
            free(m->values[i]);
            m->values[i] = v;
            return 0;
        }
    if (m->n == m->cap) {
        size_t c = m->cap ? 2 * m->cap : 16;
        char **k = realloc(m->keys, c * sizeof *k);
        if (!k) return LM_ENOMEM;
        m->keys = k;
        char **v = realloc(m->values, c * sizeof *v);
        if (!v) return LM_ENOMEM;
        m->values = v;
        m->cap = c;
    }
    m->keys[m->n] = strdup(key);
    m->values[m->n] = strdup(value);
    if (!m->keys[m->n] || !m->values[m->n]) { free(m->keys[m->n]); free(m->values[m->n]); return LM_ENOMEM; }
    m->n++;
    return 0;
}

const char *lmm_meta_get(const lmm_meta *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++) if (!strcmp(m->keys[i], key)) return m->values[i];
    return NULL;
}

lm_kv *lmm_meta_kv(const lmm_meta *m)
{
    lm_kv *kv = malloc((m->n ? m->n : 1) * sizeof *kv);
    if (!kv) return NULL;
    for (size_t i = 0; i < m->n; i++) { kv[i].key = m->keys[i]; kv[i].value = m->values[i]; }
    return kv;
}

void lmm_meta_free(lmm_meta *m)
{
    for (size_t i = 0; i < m->n; i++) { free(m->keys[i]); free(m->values[i]); }
    free(m->keys);
    free(m->values);
    memset(m, 0, sizeof *m);
}

const char *lmm_modelspec_arch(lm_arch a, int lora)
{
    /* ids of Stability AI's ModelSpec (the original model each architecture comes from) */
    switch (a) {
    case LM_ARCH_SD1: return lora ? "stable-diffusion-v1/lora" : "stable-diffusion-v1";
    case LM_ARCH_SD2: return lora ? "stable-diffusion-v2-512/lora" : "stable-diffusion-v2-512";
    case LM_ARCH_SDXL:
    case LM_ARCH_SSD1B: return lora ? "stable-diffusion-xl-v1-base/lora" : "stable-diffusion-xl-v1-base";
    default: return NULL;
    }
}

const char *lmm_modelspec_impl(lm_arch a)
{
    return a == LM_ARCH_SDXL || a == LM_ARCH_SSD1B ? "https://github.com/Stability-AI/generative-models"
                                                   : "diffusers";
}

void lmm_date(char out[11])
{
    time_t t = time(NULL);
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde) t = (time_t)strtoll(sde, NULL, 10);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 11, "%Y-%m-%d", &tm);
}

const char *lmm_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

void lmm_title(const char *path, char *out, size_t n)
{
    snprintf(out, n, "%s", lmm_basename(path));
    char *dot = strrchr(out, '.');
    if (dot && dot != out) *dot = 0;
}

int lmm_threads(int requested)
{
    if (requested > 0) return requested > 64 ? 64 : requested;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

void lmm_release_pages(const void *p, size_t n)
{
    static size_t pg;
    if (!pg) pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + pg - 1) & ~(uintptr_t)(pg - 1), z = ((uintptr_t)p + n) & ~(uintptr_t)(pg - 1);
    if (z > a) madvise((void *)a, z - a, MADV_DONTNEED);
}

/* Exact count, by the exponent bits (all ones: Inf or NaN). */
static int64_t count_nonfinite_exact(const uint8_t *b, lm_dtype dt, size_t n)
{
    int64_t c = 0;
    switch (dt) {
    case LM_DT_F32:
        for (size_t i = 0; i < n; i++) { uint32_t v; memcpy(&v, b + 4 * i, 4); c += (v & 0x7f800000u) == 0x7f800000u; }
        break;
    case LM_DT_F16:
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, b + 2 * i, 2); c += (v & 0x7c00u) == 0x7c00u; }
        break;
    case LM_DT_BF16:
        for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, b + 2 * i, 2); c += (v & 0x7f80u) == 0x7f80u; }
        break;
    case LM_DT_F64:
        for (size_t i = 0; i < n; i++) {
            uint64_t v; memcpy(&v, b + 8 * i, 8);
            c += (v & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
        }
        break;
    case LM_DT_F8_E5M2:
        for (size_t i = 0; i < n; i++) c += (b[i] & 0x7cu) == 0x7cu;
        break;
    case LM_DT_F8_E4M3:   /* no Inf; NaN is S.1111.111 */
        for (size_t i = 0; i < n; i++) c += (b[i] & 0x7fu) == 0x7fu;
        break;
    default:
        break;
    }
    return c;
}

/* 16-byte vectors (GCC/Clang vector extensions: SSE2 on x86-64, NEON on arm64): lanes
 * OR-ed together, so the common all-finite case is one compare and one OR per vector. */
typedef uint32_t lmm_u32x4 __attribute__((vector_size(16)));
typedef uint16_t lmm_u16x8 __attribute__((vector_size(16)));

int64_t lmm_count_nonfinite(const void *p, lm_dtype dt, size_t n)
{
    /* a scan of every updated tensor: only detect here, count exactly when something is
     * found (rare); the per-element exact loop does not vectorise at -O2 */
    const uint8_t *b = p;
    size_t i = 0, esz = 0;
    int any = 0;
    if (dt == LM_DT_F32) {
        const lmm_u32x4 m = { 0x7f800000u, 0x7f800000u, 0x7f800000u, 0x7f800000u };
        lmm_u32x4 acc = { 0, 0, 0, 0 };
        for (; i + 4 <= n; i += 4) {
            lmm_u32x4 v;
            memcpy(&v, b + 4 * i, 16);
            acc |= (lmm_u32x4)((v & m) == m);
        }
        any = (acc[0] | acc[1] | acc[2] | acc[3]) != 0;
        esz = 4;
    } else if (dt == LM_DT_F16 || dt == LM_DT_BF16) {
        uint16_t e = dt == LM_DT_F16 ? 0x7c00u : 0x7f80u;
        const lmm_u16x8 m = { e, e, e, e, e, e, e, e };
        lmm_u16x8 acc = { 0, 0, 0, 0, 0, 0, 0, 0 };
        for (; i + 8 <= n; i += 8) {
            lmm_u16x8 v;
            memcpy(&v, b + 2 * i, 16);
            acc |= (lmm_u16x8)((v & m) == m);
        }
        for (int k = 0; k < 8; k++) any |= acc[k] != 0;
        esz = 2;
    } else {
        return count_nonfinite_exact(b, dt, n);
    }
    if (any) return count_nonfinite_exact(b, dt, n);
    return count_nonfinite_exact(b + esz * i, dt, n - i);
}

int lmm_lora_check_finite(const lm_lora *l, const char *path, lm_err *err)
{
    const lm_source *s = lm_lora_source(l);
    void *tmp = NULL;
    size_t tcap = 0;
    int rc = 0;
    for (size_t t = 0; t < lm_source_count(s) && !rc; t++) {
        const lm_entry *e = lm_source_entry(s, t);
        if (!lm_dtype_is_float(e->dtype) || !e->numel) continue;
        const void *raw = lm_source_raw(s, t);
        if (!raw) {
            if ((size_t)e->nbytes > tcap) {
                void *nt = realloc(tmp, (size_t)e->nbytes);
                if (!nt) { rc = lm_err_set(err, LM_ENOMEM, path, e->name, LM_ERR_NO_OFFSET, "out of memory"); break; }
                tmp = nt;
                tcap = (size_t)e->nbytes;
            }
            if ((rc = lm_source_read(s, t, tmp, err))) { lm_err_file(err, path); break; }
            raw = tmp;
        }
        int64_t c = lmm_count_nonfinite(raw, e->dtype, (size_t)e->numel);
        if (raw != tmp) lmm_release_pages(raw, (size_t)e->nbytes);   /* mapped pages leave RSS again */
        if (c) rc = lm_err_set(err, LM_EINPUT, path, e->name, LM_ERR_NO_OFFSET,
                               "%lld of %lld values are NaN or ±Inf", (long long)c, (long long)e->numel);
    }
    free(tmp);
    return rc;
}
