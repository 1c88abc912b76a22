/* lm_tensor and lm_work: owned fp32 buffers and reusable scratch memory. */
#include <stdlib.h>
#include <string.h>

#include "libmerge/ops.h"

int lm_tensor_alloc(lm_tensor *t, int ndim, const int64_t *shape, lm_err *err)
{
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > LM_TENSOR_MAX_DIMS)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "tensor of %d dimensions", ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && n > INT64_MAX / 4 / shape[i]))
            return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "bad tensor size");
        n *= shape[i];
    }
    float *p = calloc(n ? (size_t)n : 1, sizeof(float));
    if (!p)
        return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET,
                          "out of memory allocating %lld floats", (long long)n);
    t->dtype = LM_DT_F32;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = p;
    t->owner = 1;
    return 0;
}

void lm_tensor_free(lm_tensor *t)
{
    if (!t) return;
    if (t->owner) free(t->data);
    memset(t, 0, sizeof *t);
}

int64_t lm_tensor_numel(const lm_tensor *t)
{
    if (!t || t->ndim < 1) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

float *lm_work_get(lm_work *w, size_t n)
{
    if (n <= w->n && w->p) return w->p;
    free(w->p);
    w->p = malloc((n ? n : 1) * sizeof(float));
    w->n = w->p ? n : 0;
    return w->p;
}

void lm_work_free(lm_work *w)
{
    if (!w) return;
    free(w->p);
    w->p = NULL;
    w->n = 0;
}
