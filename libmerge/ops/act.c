/* Activations, elementwise helpers, upsampling, softmax. */
#include <math.h>
#include <string.h>

#include "libmerge/ops.h"
#include "ops/vmath.h"
#include "ops/prof.h"

void lm_silu(float *x, size_t n)
{
    double t0 = lm_prof_t0();
    lm_vsilu(x, n, 1.0f);
    lm_prof_end(LM_PROF_ACT, t0);
}

void lm_gelu(float *x, size_t n)
{
    lm_vgelu_mul(x, NULL, x, n);
}

void lm_quick_gelu(float *x, size_t n)
{
    lm_vsilu(x, n, 1.702f);
}

void lm_geglu(const float *x, int64_t T, int F, float *y)
{
    double t0 = lm_prof_t0();
    for (int64_t t = 0; t < T; t++) {
        const float *a = x + t * 2 * F, *g = a + F;
        lm_vgelu_mul(y + t * F, a, g, (size_t)F);
    }
    lm_prof_end(LM_PROF_ACT, t0);
}

void lm_add(float *y, const float *x, size_t n)
{
    double t0 = lm_prof_t0();
    for (size_t i = 0; i < n; i++) y[i] += x[i];
    lm_prof_end(LM_PROF_OTHER, t0);
}

void lm_add_channel(float *y, int C, int64_t HW, const float *v)
{
    double t0 = lm_prof_t0();
    for (int c = 0; c < C; c++) {
        float *r = y + (size_t)c * HW;
        float b = v[c];
        for (int64_t i = 0; i < HW; i++) r[i] += b;
    }
    lm_prof_end(LM_PROF_OTHER, t0);
}

void lm_upsample_nearest2x(const float *x, int C, int H, int W, float *y)
{
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H; i++) {
            const float *s = x + ((size_t)c * H + i) * W;
            float *d = y + ((size_t)c * 2 * H + 2 * i) * 2 * W;
            for (int j = 0; j < W; j++) d[2 * j] = d[2 * j + 1] = s[j];
            memcpy(d + 2 * W, d, (size_t)2 * W * sizeof(float));
        }
}

/* source index of output index i (PyTorch's nearest_idx) */
static int nearest_src(int i, int in, int out)
{
    if (out == in) return i;
    if (out == 2 * in) return i >> 1;
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)i * scale);
    return s < in - 1 ? s : in - 1;
}

void lm_upsample_nearest(const float *x, int C, int H, int W, int OH, int OW, float *y)
{
    double t0 = lm_prof_t0();
    for (int c = 0; c < C; c++)
        for (int i = 0; i < OH; i++) {
            const float *s = x + ((size_t)c * H + nearest_src(i, H, OH)) * W;
            float *d = y + ((size_t)c * OH + i) * OW;
            for (int j = 0; j < OW; j++) d[j] = s[nearest_src(j, W, OW)];
        }
    lm_prof_end(LM_PROF_OTHER, t0);
}

void lm_softmax_rows(float *x, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        float *p = x + r * cols;
        float m = lm_vmax(p, (size_t)cols);
        float s = lm_vexp_sub_sum(p, (size_t)cols, m);
        float inv = 1.0f / s;
        for (int64_t i = 0; i < cols; i++) p[i] *= inv;
    }
}
