/* Applying one LoRA module to a base weight: W += λ·ΔW, or DoRA's
 * W′ = m ⊙ V/‖V‖ with V = W + λ·ΔW. See include/libmerge/lora.h.
 *
 * DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
 * eq. 5) is not linear in λ: the norm of V depends on λ, so a combination
 * Σ λ_k·ΔW_k cannot contain DoRA modules. Callers forming λ-combinations
 * (bake, lora-merge) must apply each DoRA module on its own with this
 * function, never add its ΔW into a sum.
 *
 * λ enters V, as in PEFT (the adapter scale multiplies the LoRA term inside
 * the norm, tuners/lora/dora.py). LyCORIS and ComfyUI instead interpolate
 * W + λ·(m ⊙ V₁/‖V₁‖ − W) with V₁ = W + ΔW; both agree at λ = 1. Neither adds
 * an epsilon that matters in fp32 (LyCORIS adds FLT_EPSILON to the norm);
 * a zero-norm row or column is left at zero.
 *
 * The norm's axis follows the magnitude's shape: [out] or [out, 1, …]
 * (PEFT, newer LyCORIS): one norm per output row over in·kh·kw; [1, in, …]
 * (older LyCORIS, ComfyUI's default): one norm per input channel over
 * out·kh·kw of the module's rows.
 */
#include "lora_impl.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static void shape_str(int nd, const int64_t *s, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < nd && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)s[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* V (rows × cols·S, row-major) becomes m ⊙ V/‖V‖. */
static int dora(const lm_lora *l, const lm_lora_mod *m, float *V, int64_t rows, int64_t rowlen,
                const int64_t *wshape, int wndim, lm_err *err)
{
    const lm_entry *e = lm_source_entry(l->src, (size_t)m->fac[LM_FAC_DORA]);
    int by_row = e->numel == rows && (e->ndim == 1 || e->shape[0] == rows);
    int64_t cols = wndim >= 2 ? wshape[1] : 0;
    int by_col = !by_row && wndim >= 2 && e->ndim >= 2 && e->shape[0] == 1 && e->numel == cols;
    if (!by_row && !by_col) {
        char a[96], b[96];
        shape_str(e->ndim, e->shape, a, sizeof a);
        shape_str(wndim, wshape, b, sizeof b);
        return lm_err_set(err, LM_EMISMATCH, lm_source_path(l->src), e->name, LM_ERR_NO_OFFSET,
                          "DoRA magnitude %s fits neither the %lld rows nor the input channels of target %s",
                          a, (long long)rows, b);
    }
    float *mag;
    int rc = lm_lora_read_factor(l, m->fac[LM_FAC_DORA], &mag, err);
    if (rc) return rc;
    if (by_row) {
        for (int64_t o = 0; o < rows; o++) {
            float *v = V + o * rowlen;
            double ss = 0;
            for (int64_t k = 0; k < rowlen; k++) ss += (double)v[k] * v[k];
            if (ss > 0) cblas_sscal((int)rowlen, (float)(mag[o] / sqrt(ss)), v, 1);
        }
    } else {
        int64_t S = rowlen / cols;    /* kh·kw */
        double *ss = calloc((size_t)cols, sizeof *ss);
        if (!ss) { free(mag); return lm_err_set(err, LM_ENOMEM, lm_source_path(l->src), e->name, LM_ERR_NO_OFFSET, "out of memory"); }
        for (int64_t o = 0; o < rows; o++)
            for (int64_t c = 0; c < cols; c++)
                for (int64_t s = 0; s < S; s++) { double v = V[o * rowlen + c * S + s]; ss[c] += v * v; }
        for (int64_t c = 0; c < cols; c++) ss[c] = ss[c] > 0 ? mag[c] / sqrt(ss[c]) : 0.0;
        for (int64_t o = 0; o < rows; o++)
            for (int64_t c = 0; c < cols; c++)
                for (int64_t s = 0; s < S; s++) V[o * rowlen + c * S + s] *= (float)ss[c];
        free(ss);
    }
    free(mag);
    return 0;
}

int lm_lora_apply(const lm_lora *l, size_t i, float lambda, float *W,
                  const int64_t *wshape, int wndim, int64_t row0, int64_t rows, lm_err *err)
{
    if (!l || i >= l->n_mods)
        return lm_err_set(err, LM_EUSAGE, l ? lm_source_path(l->src) : NULL, NULL, LM_ERR_NO_OFFSET, "module index %zu out of range", i);
    const lm_lora_mod *m = &l->mods[i];
    const lm_lora_module *p = &m->pub;
    const char *path = lm_source_path(l->src);
    if (wndim < 1 || wndim > LM_MAX_DIMS)
        return lm_err_set(err, LM_EUSAGE, path, p->name, LM_ERR_NO_OFFSET, "target has %d dimensions", wndim);
    int64_t rowlen = 1, mnumel = 1;
    for (int d = 1; d < wndim; d++) {
        if (wshape[d] < 0 || (wshape[d] && rowlen > INT64_MAX / wshape[d]))
            return lm_err_set(err, LM_EUSAGE, path, p->name, LM_ERR_NO_OFFSET, "bad target shape");
        rowlen *= wshape[d];
    }
    for (int d = 0; d < p->ndim; d++) mnumel *= p->shape[d];
    char ms[96], ws[96];
    shape_str(p->ndim, p->shape, ms, sizeof ms);
    shape_str(wndim, wshape, ws, sizeof ws);
    if (row0 < 0 || rows < 0 || row0 > wshape[0] || rows > wshape[0] - row0)
        return lm_err_set(err, LM_EUSAGE, path, p->name, LM_ERR_NO_OFFSET,
                          "rows %lld..%lld outside target %s", (long long)row0, (long long)(row0 + rows), ws);
    /* Element counts must agree (linear [o,i] onto conv [o,i,1,1], 2-D LoKr/LoHa onto
     * [o,i,kh,kw]), and the output dimension must be the same, so that a
     * transposed or foreign layer is never reinterpreted. */
    if (p->shape[0] != rows || rows > INT64_MAX / (rowlen ? rowlen : 1) || mnumel != rows * rowlen) {
        if (rows == wshape[0])
            return lm_err_set(err, LM_EMISMATCH, path, p->name, LM_ERR_NO_OFFSET,
                              "LoRA module ΔW %s does not fit base weight %s", ms, ws);
        return lm_err_set(err, LM_EMISMATCH, path, p->name, LM_ERR_NO_OFFSET,
                          "LoRA module ΔW %s does not fit rows %lld..%lld of base weight %s",
                          ms, (long long)row0, (long long)(row0 + rows), ws);
    }
    float *dw = malloc((size_t)(mnumel ? mnumel : 1) * sizeof *dw);
    if (!dw) return lm_err_set(err, LM_ENOMEM, path, p->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_lora_delta(l, i, dw, err);
    if (!rc) {
        float *V = W + row0 * rowlen;
        cblas_saxpy((int)mnumel, lambda, dw, 1, V, 1);
        if (p->has_dora) rc = dora(l, m, V, rows, rowlen, wshape, wndim, err);
    }
    free(dw);
    return rc;
}
