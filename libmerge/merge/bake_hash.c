/* lm_bake's hash threads: the base file's SHA-256 for the recipe, and the SHA-256 of the
 * output's data area for modelspec.hash_sha256, both next to the bake. */
#include "bake_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- base hash thread ------------------------------------------------------------ */


void *lmb_base_hash_thread(void *arg)
{
    hash_job *h = arg;
    double t0 = lmb_now();
    h->rc = lmm_sha256_file(h->path, h->hex, &h->bytes, &h->err);
    h->seconds = lmb_now() - t0;
    return NULL;
}

/* ---- output hash thread ----------------------------------------------------------- */

/* SHA-256 of the output's data area, in file order, next to the writing: copies are hashed
 * from the base mapping (they never pass through user space otherwise), conversions are
 * redone in a chunk buffer (cheap, deterministic), updates are read from their pool buffer,
 * which is not reused until hashed. */
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
            while (!b->res[j].done && !b->stop) pthread_cond_wait(&b->cv_done, &b->mu);
            ok = b->res[j].done && !b->res[j].rc && !b->stop;
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
        if (b->stop) { ok = 0; break; }
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

