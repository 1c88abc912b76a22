/* Writing a LoRA made of up/down pairs (lora-merge, extract), in kohya or PEFT naming.
 *   kohya: <name>.lora_down.weight [k, in(, kh, kw)], <name>.lora_up.weight [out, k(, 1, 1)],
 *          <name>.alpha 0-dim = k (scale alpha/rank = 1: every factor already carries its
 *          weight), names lora_unet_… / lora_te_… (kohya-ss/sd-scripts networks/lora.py);
 *   peft:  <path>.lora_A.weight (down), <path>.lora_B.weight (up), no alpha tensor: the
 *          scale is 1 = the default alpha = rank of peft and diffusers loaders. */
#include "merge_impl.h"
#include "lora_write.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

static int set_tensor(lm_wtensor *t, char **store, const char *name, const char *suffix, lm_dtype dt,
                      int ndim, const int64_t *shape)
{
    size_t n = strlen(name) + strlen(suffix) + 1;
    char *s = malloc(n);
    if (!s) return LM_ENOMEM;
    snprintf(s, n, "%s%s", name, suffix);
    *store = s;
    t->name = s;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    return 0;
}

int lmm_write_lora(const char *out, const lmm_outmod *mods, size_t n, lm_lora_format fmt, lm_dtype dt,
                   const lmm_meta *meta, const char *const *inputs, size_t n_inputs, uint64_t *bytes, lm_err *err)
{
    size_t per = fmt == LM_LFMT_KOHYA ? 3 : 2, nt = n * per;
    lm_wtensor *wt = calloc(nt ? nt : 1, sizeof *wt);
    char **names = calloc(nt ? nt : 1, sizeof *names);
    /* the data hashes (kohya's sshs_model_hash, ModelSpec's hash_sha256) describe this
     * output: placeholders of the same length now, the real values before commit */
    static const char Z[] = "0000000000000000000000000000000000000000000000000000000000000000";
    lmm_meta m2 = { 0 };
    int mrc = 0;
    for (size_t i = 0; i < meta->n && !mrc; i++)
        if (strcmp(meta->keys[i], "sshs_legacy_hash")) mrc = lmm_meta_set(&m2, meta->keys[i], meta->values[i]);
    if (!mrc) mrc = lmm_meta_set(&m2, "sshs_model_hash", Z);
    if (!mrc) mrc = lmm_meta_set(&m2, "modelspec.hash_sha256", "0x" "0000000000000000000000000000000000000000000000000000000000000000");
    lm_kv *kv = mrc ? NULL : lmm_meta_kv(&m2);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md) EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    lm_writer *w = NULL;
    void *buf = NULL;
    size_t bcap = 0;
    int rc = 0;
    if (!wt || !names || !kv || !md) { rc = lm_err_set(err, LM_ENOMEM, out, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    for (size_t i = 0; i < n; i++) {
        const lmm_outmod *m = &mods[i];
        const char *name = fmt == LM_LFMT_KOHYA ? m->kohya_name : m->peft_name;
        if (!name) {
            rc = lm_err_set(err, LM_EUNSUPPORTED, out, m->kohya_name, LM_ERR_NO_OFFSET,
                            "no module path for PEFT naming (give --base, or a diffusers/PEFT input)");
            goto out;
        }
        int64_t ds[4] = { m->k, 0, 1, 1 }, us[4] = { m->shape[0], m->k, 1, 1 }, none[1] = { 0 };
        int nd = m->ndim;
        for (int d = 1; d < nd; d++) ds[d] = m->shape[d];
        int e = set_tensor(&wt[i * per], &names[i * per], name,
                           fmt == LM_LFMT_KOHYA ? ".lora_down.weight" : ".lora_A.weight", dt, nd, ds);
        if (!e) e = set_tensor(&wt[i * per + 1], &names[i * per + 1], name,
                               fmt == LM_LFMT_KOHYA ? ".lora_up.weight" : ".lora_B.weight", dt, nd, us);
        if (!e && fmt == LM_LFMT_KOHYA) e = set_tensor(&wt[i * per + 2], &names[i * per + 2], name, ".alpha", dt, 0, none);
        if (e) { rc = lm_err_set(err, LM_ENOMEM, out, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    }
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.inputs = inputs;
    wo.n_inputs = n_inputs;
    if ((rc = lm_writer_open(&w, out, wt, nt, kv, m2.n, &wo, err))) goto out;
    for (size_t k = 0; k < nt && !rc; k++) {
        size_t t = lm_writer_tensor_index(w, k), i = t / per, which = t % per;
        const lmm_outmod *m = &mods[i];
        int64_t inner = 1;
        for (int d = 1; d < m->ndim; d++) inner *= m->shape[d];
        size_t cnt = which == 0 ? (size_t)(m->k * inner) : which == 1 ? (size_t)(m->shape[0] * m->k) : 1;
        float alpha = (float)m->k;
        const float *src = which == 0 ? m->down : which == 1 ? m->up : &alpha;
        size_t nb = cnt * lm_dtype_size(dt);
        if (nb > bcap) {
            void *nbuf = realloc(buf, nb);
            if (!nbuf) { rc = lm_err_set(err, LM_ENOMEM, out, NULL, LM_ERR_NO_OFFSET, "out of memory"); break; }
            buf = nbuf;
            bcap = nb;
        }
        if (lmm_count_nonfinite(src, LM_DT_F32, cnt)) {
            /* the inputs were finite: the arithmetic overflowed fp32 */
            rc = lm_err_set(err, LM_EINPUT, out, wt[t].name, LM_ERR_NO_OFFSET,
                            "a merged factor is NaN or ±Inf (λ·alpha/rank too large for fp32)");
            break;
        }
        int64_t ov = lm_convert_from_f32(buf, dt, src, cnt);
        if (ov < 0) { rc = lm_err_set(err, LM_EUSAGE, out, wt[t].name, LM_ERR_NO_OFFSET, "cannot store %s", lm_dtype_name(dt)); break; }
        if (ov > 0) {
            rc = lm_err_set(err, LM_EINPUT, out, wt[t].name, LM_ERR_NO_OFFSET,
                            "%lld values overflow %s: write fp32 (--dtype fp32)", (long long)ov, lm_dtype_name(dt));
            break;
        }
        EVP_DigestUpdate(md, buf, nb);
        rc = lm_writer_write(w, buf, nb, err);
    }
    if (!rc) {
        unsigned char d[32];
        unsigned int dn = 0;
        char hex[65], hex0x[67];
        EVP_DigestFinal_ex(md, d, &dn);
        for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
        snprintf(hex0x, sizeof hex0x, "0x%s", hex);
        free(kv);
        kv = NULL;
        if (lmm_meta_set(&m2, "sshs_model_hash", hex) || lmm_meta_set(&m2, "modelspec.hash_sha256", hex0x) ||
            !(kv = lmm_meta_kv(&m2)))
            rc = lm_err_set(err, LM_ENOMEM, out, NULL, LM_ERR_NO_OFFSET, "out of memory");
        else
            rc = lm_writer_update_meta(w, kv, m2.n, err);
    }
    if (!rc) {
        if (bytes) {
            *bytes = lm_writer_data_start(w);
            for (size_t t = 0; t < nt; t++) {
                uint64_t c = 1;
                for (int d = 0; d < wt[t].ndim; d++) c *= (uint64_t)wt[t].shape[d];
                *bytes += c * lm_dtype_size(dt);
            }
        }
        rc = lm_writer_commit(w, err);
        w = NULL;
    }
out:
    lm_writer_abort(w);
    for (size_t i = 0; names && i < nt; i++) free(names[i]);
    free(names);
    free(wt);
    free(kv);
    free(buf);
    lmm_meta_free(&m2);
    EVP_MD_CTX_free(md);
    return rc;
}
