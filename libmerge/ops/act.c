/* Activations, elementwise helpers, upsampling, softmax. */
#include <math.h>
#include <string.h>

#include "libmerge/ops.h"
#include "ops/vmath.h"
#include "ops/prof.h"
#include "ops/parallel.h"

/* Large element-wise ops run in blocks of CHUNK elements on the ops' threads. */
#define CHUNK ((size_t)1 << 15)

static int64_t chunks(size_t n) { return (int64_t)((n + CHUNK - 1) / CHUNK); }
static int threads_for(size_t n) { return n >= 2 * CHUNK ? lm_par_threads() : 1; }

typedef struct { float *y; const float *x; size_t n; int64_t T; int F; } ew_job;

static void silu_chunk(void *p, int64_t i, int tid)
{
    const ew_job *j = p;
    size_t lo = (size_t)i * CHUNK, len = j->n - lo < CHUNK ? j->n - lo : CHUNK;
    lm_vsilu(j->y + lo, len, 1.0f);
}

void lm_silu(float *x, size_t n)
{
    double t0 = lm_prof_t0();
    ew_job j = { x, NULL, n, 0, 0 };
    lm_parallel(chunks(n), threads_for(n), silu_chunk, &j);
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

#define GEGLU_TOKENS 16   /* tokens per parallel item */

static void geglu_tokens(void *p, int64_t i, int tid)
{
    const ew_job *j = p;
    int64_t t1 = (i + 1) * GEGLU_TOKENS < j->T ? (i + 1) * GEGLU_TOKENS : j->T;
    for (int64_t t = i * GEGLU_TOKENS; t < t1; t++) {
        const float *a = j->x + t * 2 * j->F, *g = a + j->F;
        lm_vgelu_mul(j->y + t * j->F, a, g, (size_t)j->F);
    }
}

void lm_geglu(const float *x, int64_t T, int F, float *y)
{
    double t0 = lm_prof_t0();
    ew_job j = { y, x, 0, T, F };
    lm_parallel((T + GEGLU_TOKENS - 1) / GEGLU_TOKENS, threads_for((size_t)T * F), geglu_tokens, &j);
    lm_prof_end(LM_PROF_ACT, t0);
}

static void add_chunk(void *p, int64_t i, int tid)
{
    const ew_job *j = p;
    size_t lo = (size_t)i * CHUNK, hi = j->n - lo < CHUNK ? j->n : lo + CHUNK;
    for (size_t k = lo; k < hi; k++) j->y[k] += j->x[k];
}

void lm_add(float *y, const float *x, size_t n)
{
    double t0 = lm_prof_t0();
    ew_job j = { y, x, n, 0, 0 };
    lm_parallel(chunks(n), threads_for(n), add_chunk, &j);
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
