/* conv2d (im2col in slabs of output rows + sgemm, 1×1 as one sgemm), linear
 * layers and the 1×1 projections between images and tokens. */
#include <string.h>

#include "libmerge/ops.h"
#include "ops/prof.h"
#include "ops/gemm.h"
#include "ops/parallel.h"

/* Upper bound on the im2col slab, in floats (32 MiB): large enough for
 * sgemm to run at full speed, small enough to stay off the memory peak. */
#define SLAB_FLOATS ((size_t)8 << 20)

int64_t lm_conv2d_out_size(int64_t in, int k, int stride, int pad_lo, int pad_hi)
{
    int64_t span = in + pad_lo + pad_hi - k;
    if (span < 0 || stride < 1) return 0;
    return span / stride + 1;
}

/* col [C·k·k, rows·OW] for output rows [oy0, oy0+rows), channels [c0, c1).
 * Row index of col is (c·k + ky)·k + kx, which matches w [OC, C, k, k] read
 * as [OC, C·k·k]. */
static void im2col(const float *x, int c0, int c1, int H, int W, int k, int stride, int pad_t,
                   int pad_l, int oy0, int rows, int OW, float *col)
{
    size_t n = (size_t)rows * OW;
    for (int c = c0; c < c1; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int ky = 0; ky < k; ky++) {
            for (int kx = 0; kx < k; kx++) {
                float *dst = col + ((size_t)(c * k + ky) * k + kx) * n;
                /* output columns whose input column lies inside [0, W) */
                int ox_lo = 0, ox_hi = OW;   /* [ox_lo, ox_hi) */
                while (ox_lo < OW && ox_lo * stride - pad_l + kx < 0) ox_lo++;
                while (ox_hi > ox_lo && (ox_hi - 1) * stride - pad_l + kx >= W) ox_hi--;
                for (int r = 0; r < rows; r++) {
                    float *d = dst + (size_t)r * OW;
                    int iy = (oy0 + r) * stride - pad_t + ky;
                    if (iy < 0 || iy >= H) { memset(d, 0, (size_t)OW * sizeof(float)); continue; }
                    const float *s = xc + (size_t)iy * W - pad_l + kx;
                    for (int ox = 0; ox < ox_lo; ox++) d[ox] = 0.0f;
                    if (stride == 1) {
                        if (ox_hi > ox_lo)
                            memcpy(d + ox_lo, s + ox_lo, (size_t)(ox_hi - ox_lo) * sizeof(float));
                    } else {
                        for (int ox = ox_lo; ox < ox_hi; ox++) d[ox] = s[(size_t)ox * stride];
                    }
                    for (int ox = ox_hi; ox < OW; ox++) d[ox] = 0.0f;
                }
            }
        }
    }
}

typedef struct {
    const float *x;
    int H, W, k, stride, pad_t, pad_l, oy0, rows, OW, cpi;
    float *col;
} im2col_job;

#define IM2COL_CHANNELS 16   /* channels per parallel item */

static void im2col_item(void *p, int64_t item, int tid)
{
    const im2col_job *j = p;
    int c0 = (int)item * j->cpi;
    im2col(j->x, c0, c0 + j->cpi, j->H, j->W, j->k, j->stride, j->pad_t, j->pad_l, j->oy0, j->rows,
           j->OW, j->col);
}

/* Bias passes over the output before sgemm accumulates onto it, in blocks of
 * rows on the ops' threads when the output is large (a serial pass over a
 * 5–40 MB output stood between two parallel GEMMs). */
typedef struct { float *y; const float *v; int64_t rows, per; size_t n; int mode; } bias_job;

enum { FILL_ROWS, SET_TOKENS, ADD_TOKENS };

static void bias_rows(void *p, int64_t item, int tid)
{
    const bias_job *j = p;
    int64_t r1 = (item + 1) * j->per < j->rows ? (item + 1) * j->per : j->rows;
    for (int64_t r = item * j->per; r < r1; r++) {
        float *d = j->y + (size_t)r * j->n;
        if (j->mode == FILL_ROWS) for (size_t i = 0; i < j->n; i++) d[i] = j->v[r];
        else if (j->mode == ADD_TOKENS) for (size_t i = 0; i < j->n; i++) d[i] += j->v[i];
        else memcpy(d, j->v, j->n * sizeof *d);
    }
}

static void bias_pass(float *y, int64_t rows, size_t n, const float *v, int mode)
{
    int64_t per = (int64_t)(((size_t)1 << 14) / (n ? n : 1));   /* ≥ 16 Ki elements per item */
    if (per < 1) per = 1;
    bias_job j = { y, v, rows, per, n, mode };
    int nth = (size_t)rows * n >= ((size_t)1 << 16) ? lm_par_threads() : 1;
    lm_parallel((rows + per - 1) / per, nth, bias_rows, &j);
}

/* y[c, i] = v[c] for y [C, n] */
static void fill_rows(float *y, int C, size_t n, const float *v)
{
    bias_pass(y, C, n, v, FILL_ROWS);
}

/* y[t, o] (+)= b[o] for y [T, out] */
static void bias_tokens(float *y, int64_t T, int out, const float *b, int add)
{
    bias_pass(y, T, (size_t)out, b, add ? ADD_TOKENS : SET_TOKENS);
}

int lm_conv2d(const float *x, int C, int H, int W, const float *w, const float *b,
              int OC, int k, int stride, const int pad[4], float *y, lm_work *work)
{
    int64_t OH = lm_conv2d_out_size(H, k, stride, pad[0], pad[2]);
    int64_t OW = lm_conv2d_out_size(W, k, stride, pad[1], pad[3]);
    if (OH <= 0 || OW <= 0 || C <= 0 || OC <= 0)
        return lm_err_set(NULL, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "empty convolution");
    size_t P = (size_t)OH * OW;
    int is1 = k == 1 && stride == 1 && !pad[0] && !pad[1] && !pad[2] && !pad[3];
    double t0 = lm_prof_t0();
    /* the bias goes in first and sgemm accumulates onto it (beta = 1): one
     * pass instead of OpenBLAS zeroing C (beta = 0) plus a bias pass */
    float beta = 0.0f;
    if (b) {
        fill_rows(y, OC, P, b);
        beta = 1.0f;
    }
    if (is1) {
        lm_sgemm(0, 0, OC, (int)P, C, 1.0f, w, C, x, (int)P, beta, y, (int)P);
    } else {
        size_t K = (size_t)C * k * k;
        size_t rows = SLAB_FLOATS / (K * (size_t)OW);
        if (rows < 1) rows = 1;
        if (rows > (size_t)OH) rows = (size_t)OH;
        float *col = lm_work_get(work, K * rows * (size_t)OW);
        if (!col) { lm_prof_end(LM_PROF_CONV3, t0); return LM_ENOMEM; }
        for (size_t oy = 0; oy < (size_t)OH; oy += rows) {
            size_t r = rows < (size_t)OH - oy ? rows : (size_t)OH - oy;
            double t1 = lm_prof_t0();
            int full = C / IM2COL_CHANNELS * IM2COL_CHANNELS;
            im2col_job ij = { x, H, W, k, stride, pad[0], pad[1], (int)oy, (int)r, (int)OW,
                              IM2COL_CHANNELS, col };
            lm_parallel(full / IM2COL_CHANNELS, lm_par_threads(), im2col_item, &ij);
            im2col(x, full, C, H, W, k, stride, pad[0], pad[1], (int)oy, (int)r, (int)OW, col);
            lm_prof_end(LM_PROF_IM2COL, t1);
            lm_sgemm(0, 0, OC, (int)(r * OW), (int)K, 1.0f, w, (int)K, col, (int)(r * OW), beta,
                     y + oy * OW, (int)P);
        }
    }
    lm_prof_end_fl(is1 ? LM_PROF_CONV1 : LM_PROF_CONV3, t0, 2.0 * OC * (double)P * C * k * k);
    return 0;
}

void lm_linear(const float *x, int64_t T, int in, const float *w, const float *b, int out,
               float *y, int accumulate)
{
    double t0 = lm_prof_t0();
    if (b) bias_tokens(y, T, out, b, accumulate);
    lm_sgemm(0, 1, (int)T, out, in, 1.0f, x, in, w, in, (accumulate || b) ? 1.0f : 0.0f, y, out);
    lm_prof_end_fl(LM_PROF_LINEAR, t0, 2.0 * (double)T * out * in);
}

void lm_proj_to_tokens(const float *x, int C, int64_t HW, const float *w, const float *b,
                       int out, float *y)
{
    double t0 = lm_prof_t0();
    if (b) bias_tokens(y, HW, out, b, 0);
    lm_sgemm(1, 1, (int)HW, out, C, 1.0f, x, (int)HW, w, C, b ? 1.0f : 0.0f, y, out);
    lm_prof_end_fl(LM_PROF_CONV1, t0, 2.0 * (double)HW * out * C);
}

void lm_proj_from_tokens(const float *x, int64_t HW, int C, const float *w, const float *b,
                         int out, float *y, int accumulate)
{
    double t0 = lm_prof_t0();
    lm_sgemm(0, 1, out, (int)HW, C, 1.0f, w, C, x, C, accumulate ? 1.0f : 0.0f, y, (int)HW);
    if (b)
        for (int o = 0; o < out; o++)
            for (int64_t i = 0; i < HW; i++) y[(size_t)o * HW + i] += b[o];
    lm_prof_end_fl(LM_PROF_CONV1, t0, 2.0 * (double)HW * out * C);
}
