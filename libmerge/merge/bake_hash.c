/* lm_bake's hash threads: the base file's SHA-256 for the recipe, and the SHA-256 of the
 * output's data area for modelspec.hash_sha256, both next to the bake. */
#include "bake_impl.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- base hash thread ------------------------------------------------------------ */


/* SHA-256 of a safetensors base from the source's own mapping: the header read once, then
 * the tensors in file order straight from the mapped page cache, so the 2 GB pass costs no
 * copy into a read buffer (a pread pass spends ~0.5 s of CPU in the kernel copying SD1.5).
 * The same bytes lm_hash_file reads: returns 1 (caller falls back to it) unless the data
 * area is exactly the tensors end to end, as the safetensors format requires. */
static int hash_mapped(hash_job *h)
{
    const lm_source *s = h->src;
    if (!s || lm_source_format(s) != LM_FMT_SAFETENSORS) return 1;
    uint64_t size = lm_source_file_size(s), at = lm_source_data_start(s);
    if (at < 8 || at > size || at > (64u << 20)) return 1;
    size_t nt = lm_source_count(s);
    for (size_t t = 0, pos = at; t < nt; t++) {          /* contiguous and mapped, or fall back */
        const lm_entry *e = lm_source_entry(s, t);
        if (e->offset != pos || (e->nbytes && !lm_source_raw(s, t))) return 1;
        pos += e->nbytes;
        if (t + 1 == nt && pos != size) return 1;
    }
    int fd = h->fd;
    if (fd < 0) return 1;
    struct stat st;
    unsigned char *hdr = malloc((size_t)at);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = hdr && c && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == size &&
             pread(fd, hdr, (size_t)at, 0) == (ssize_t)at && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
    if (ok) EVP_DigestUpdate(c, hdr, (size_t)at);
    free(hdr);
    const size_t chunk = 8u << 20;
    for (size_t t = 0; ok && t < nt; t++) {
        const lm_entry *e = lm_source_entry(s, t);
        const uint8_t *raw = lm_source_raw(s, t);
        for (uint64_t i = 0; i < e->nbytes; i += chunk) {
            size_t m = e->nbytes - i < chunk ? (size_t)(e->nbytes - i) : chunk;
            EVP_DigestUpdate(c, raw + i, m);
            release_pages(raw + i, m);      /* resident memory stays a chunk, not the model */
        }
    }
    unsigned char md[32];
    unsigned int mdn = 0;
    if (ok) ok = EVP_DigestFinal_ex(c, md, &mdn) == 1;
    EVP_MD_CTX_free(c);
    if (!ok) return 1;
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) { h->hex[2 * i] = hx[md[i] >> 4]; h->hex[2 * i + 1] = hx[md[i] & 15]; }
    h->hex[64] = 0;
    h->bytes = size;
    h->rc = 0;
    return 0;
}

void *lmb_base_hash_thread(void *arg)
{
    hash_job *h = arg;
    double t0 = lmb_now();
    if (h->cached && h->key.size == lm_source_file_size(h->src)) {
        h->bytes = h->key.size;
        h->rc = 0;
    } else if (hash_mapped(h)) {
        if (h->fd < 0) {
            h->rc = lmm_sha256_file(h->path, h->hex, &h->bytes, &h->err);
        } else {
            lm_file_hashes fh;
            struct stat st;
            h->rc = lm_hash_fd(h->fd, h->path, LM_HASH_SHA256, &fh, &h->err);
            if (!h->rc) {
                memcpy(h->hex, fh.sha256, sizeof h->hex);
                h->bytes = fstat(h->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
                lm_hash_cache_put(&h->key, h->hex);
            }
        }
    } else {
        lm_hash_cache_put(&h->key, h->hex);   /* stored only if the file is as keyed */
    }
    h->seconds = lmb_now() - t0;
    return NULL;
}

/* ---- output hash thread ----------------------------------------------------------- */

/* SHA-256 of the output's data area, in file order, next to the writing: copies are hashed
 * from the base mapping (they never pass through user space otherwise), conversions are
 * redone in a chunk buffer (cheap, deterministic), updates are read from their region of
 * the output ring once computed (not reused until hashed and written). */
void *lmb_out_hash_thread(void *arg)
{
    bake *b = arg;
    size_t j = 0, chunk = 1u << 20, tcap = 0;
    uint8_t *cbuf = malloc(chunk * 4), *tmp = NULL;
    int ok = cbuf != NULL;
    for (size_t t = 0; t < b->nt && ok; t++) {
        const lm_entry *e = lm_source_entry(b->src, t);
        if (b->mode[t] == MODE_UPDATE) {
            pthread_mutex_lock(&b->mu);
            while (!b->res[j].ready && !b->stop) pthread_cond_wait(&b->cv_done, &b->mu);
            ok = b->res[j].ready && !b->res[j].rc && !b->stop;
            const void *buf = b->res[j].buf;
            size_t nb = b->res[j].nbytes;
            pthread_mutex_unlock(&b->mu);
            if (!ok) break;
            EVP_DigestUpdate(b->md, buf, nb);
            pthread_mutex_lock(&b->mu);
            b->hashed = ++j;
            pthread_cond_broadcast(&b->cv_space);
            pthread_mutex_unlock(&b->mu);
            continue;
        }
        pthread_mutex_lock(&b->mu);
        int stop = b->stop;
        pthread_mutex_unlock(&b->mu);
        if (stop) { ok = 0; break; }
        const uint8_t *raw = lm_source_raw(b->src, t);
        if (!raw) {
            if (e->nbytes > tcap) {
                uint8_t *nt = realloc(tmp, e->nbytes);
                if (!nt) { ok = 0; break; }
                tmp = nt;
                tcap = e->nbytes;
            }
            if (lm_source_read(b->src, t, tmp, NULL)) { ok = 0; break; }
            raw = tmp;
        }
        if (b->mode[t] == MODE_COPY) {
            EVP_DigestUpdate(b->md, raw, e->nbytes);
        } else {
            size_t isz = lm_dtype_size(e->dtype), osz = lm_dtype_size(b->odt[t]);
            for (size_t i = 0; i < (size_t)e->numel; i += chunk) {
                size_t m = (size_t)e->numel - i < chunk ? (size_t)e->numel - i : chunk;
                if (lm_convert(cbuf, b->odt[t], raw + i * isz, e->dtype, m) < 0) { ok = 0; break; }
                EVP_DigestUpdate(b->md, cbuf, m * osz);
            }
        }
        if (raw != tmp) release_pages(raw, e->nbytes);
    }
    free(cbuf);
    free(tmp);
    pthread_mutex_lock(&b->mu);
    b->hash_done = ok;
    if (!ok) b->hashed = (size_t)-1;      /* never hold the workers back */
    pthread_cond_broadcast(&b->cv_space);
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

