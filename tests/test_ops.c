/* Unit tests of the sampler ops (include/libmerge/ops.h) against direct
 * double-precision implementations of their definitions. */
#include <stdint.h>
#include "libmerge/ops.h"
#include "test.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void)  /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}
static float *rand_buf(size_t n)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}
static double max_abs_diff(const float *a, const double *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) { double d = fabs(a[i] - b[i]); if (!(d <= m)) m = d; }
    return m;
}

/* direct convolution in double */
static void conv_ref(const float *x, int C, int H, int W, const float *w, const float *b, int OC,
                     int k, int s, const int pad[4], int OH, int OW, double *y)
{
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < OH; i++)
            for (int j = 0; j < OW; j++) {
                double acc = b ? b[o] : 0.0;
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = i * s - pad[0] + ky, ix = j * s - pad[1] + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            acc += (double)x[(c * H + iy) * W + ix] * w[((o * C + c) * k + ky) * k + kx];
                        }
                y[(o * OH + i) * OW + j] = acc;
            }
}

static void check_conv(int C, int H, int W, int OC, int k, int s, int p0, int p1, int p2, int p3,
                       int use_bias, double *err_out, int *ok)
{
    int pad[4] = { p0, p1, p2, p3 };
    int OH = (int)lm_conv2d_out_size(H, k, s, p0, p2), OW = (int)lm_conv2d_out_size(W, k, s, p1, p3);
    float *x = rand_buf((size_t)C * H * W), *w = rand_buf((size_t)OC * C * k * k), *b = rand_buf(OC);
    float *y = malloc((size_t)OC * OH * OW * sizeof *y);
    double *r = malloc((size_t)OC * OH * OW * sizeof *r);
    lm_work wk = LM_WORK_INIT;
    *ok = lm_conv2d(x, C, H, W, w, use_bias ? b : NULL, OC, k, s, pad, y, &wk) == 0;
    conv_ref(x, C, H, W, w, use_bias ? b : NULL, OC, k, s, pad, OH, OW, r);
    *err_out = max_abs_diff(y, r, (size_t)OC * OH * OW);
    lm_work_free(&wk);
    free(x); free(w); free(b); free(y); free(r);
}

static void test_conv2d_3x3(void)
{
    double e; int ok;
    check_conv(5, 9, 7, 6, 3, 1, 1, 1, 1, 1, 1, &e, &ok);
    CHECK(ok); CHECK_NEAR(e, 0, 1e-5);
}
static void test_conv2d_stride2(void)
{
    double e; int ok;
    check_conv(4, 8, 8, 3, 3, 2, 1, 1, 1, 1, 1, &e, &ok);   /* UNet downsampler */
    CHECK(ok); CHECK_NEAR(e, 0, 1e-5);
    check_conv(4, 7, 9, 3, 3, 2, 1, 1, 1, 1, 0, &e, &ok);   /* odd sizes */
    CHECK(ok); CHECK_NEAR(e, 0, 1e-5);
    check_conv(3, 8, 8, 2, 3, 2, 0, 0, 1, 1, 1, &e, &ok);   /* VAE encoder: pad right/bottom */
    CHECK(ok); CHECK_NEAR(e, 0, 1e-5);
}
static void test_conv2d_1x1(void)
{
    double e; int ok;
    check_conv(7, 5, 6, 4, 1, 1, 0, 0, 0, 0, 1, &e, &ok);
    CHECK(ok); CHECK_NEAR(e, 0, 1e-5);
}
static void test_conv2d_slabs(void)
{
    /* C·9·OW large enough that the im2col runs in several slabs of rows */
    double e; int ok;
    check_conv(2400, 6, 400, 2, 3, 1, 1, 1, 1, 1, 1, &e, &ok);
    CHECK(ok); CHECK_NEAR(e, 0, 1e-3);
}
/* Winograd F(2×2, 3×3) against the direct convolution: odd sizes (partial
 * tiles), enough channels for parallel blocks, and C large enough that the
 * tiles run in several slabs of one tile row */
static double check_wino(int C, int H, int W, int OC, int use_bias)
{
    int pad[4] = { 1, 1, 1, 1 };
    float *x = rand_buf((size_t)C * H * W), *w = rand_buf((size_t)OC * C * 9), *b = rand_buf(OC);
    float *U = malloc((size_t)16 * OC * C * sizeof *U), *y = malloc((size_t)OC * H * W * sizeof *y);
    double *r = malloc((size_t)OC * H * W * sizeof *r);
    lm_work wk = LM_WORK_INIT;
    lm_conv3x3_winograd_weights(w, OC, C, U);
    double e = 1e9;
    if (lm_conv3x3_winograd(x, C, H, W, U, use_bias ? b : NULL, OC, y, &wk) == 0) {
        conv_ref(x, C, H, W, w, use_bias ? b : NULL, OC, 3, 1, pad, H, W, r);
        e = max_abs_diff(y, r, (size_t)OC * H * W);
    }
    lm_work_free(&wk);
    free(x); free(w); free(b); free(U); free(y); free(r);
    return e;
}
/* Upsample 2× + Winograd in one op against the two ops in sequence (bit for
 * bit) and against the double-precision direct convolution of the
 * upsampled image; returns the max-abs difference to the latter, or 1e9 */
static double check_wino_up2(int C, int h, int w, int OC)
{
    int pad[4] = { 1, 1, 1, 1 }, H = 2 * h, W = 2 * w;
    float *x = rand_buf((size_t)C * h * w), *w9 = rand_buf((size_t)OC * C * 9), *b = rand_buf(OC);
    float *U = malloc((size_t)16 * OC * C * sizeof *U), *xu = malloc((size_t)C * H * W * sizeof *xu);
    float *y = malloc((size_t)OC * H * W * sizeof *y), *y2 = malloc((size_t)OC * H * W * sizeof *y2);
    double *r = malloc((size_t)OC * H * W * sizeof *r), e = 1e9;
    lm_work wk = LM_WORK_INIT;
    lm_conv3x3_winograd_weights(w9, OC, C, U);
    lm_upsample_nearest2x(x, C, h, w, xu);
    if (lm_conv3x3_winograd_up2(x, C, h, w, U, b, OC, y, &wk) == 0 &&
        lm_conv3x3_winograd(xu, C, H, W, U, b, OC, y2, &wk) == 0 &&
        memcmp(y, y2, (size_t)OC * H * W * sizeof *y) == 0) {
        conv_ref(xu, C, H, W, w9, b, OC, 3, 1, pad, H, W, r);
        e = max_abs_diff(y, r, (size_t)OC * H * W);
    }
    lm_work_free(&wk);
    free(x); free(w9); free(b); free(U); free(xu); free(y); free(y2); free(r);
    return e;
}
static void test_conv3x3_winograd(void)
{
    CHECK_NEAR(check_wino_up2(3, 1, 1, 2), 0, 1e-5);
    CHECK_NEAR(check_wino_up2(5, 7, 13, 6), 0, 1e-5);      /* W = 26: vector blocks and a tail */
    CHECK_NEAR(check_wino_up2(3000, 3, 60, 3), 0, 1e-3);   /* two slabs of tile rows (2 + 1) */
    CHECK_NEAR(check_wino(5, 7, 9, 6, 1), 0, 1e-5);
    CHECK_NEAR(check_wino(3, 1, 1, 2, 0), 0, 1e-5);
    CHECK_NEAR(check_wino(37, 20, 30, 40, 1), 0, 1e-4);
    CHECK_NEAR(check_wino(4, 9, 35, 3, 1), 0, 1e-5);   /* odd H and W past the 8-tile vector blocks */
    CHECK_NEAR(check_wino(3000, 5, 200, 4, 1), 0, 1e-3);   /* sums of 27000 products */
}
static void test_conv2d_out_size(void)
{
    CHECK_EQ_INT(lm_conv2d_out_size(64, 3, 2, 1, 1), 32);
    CHECK_EQ_INT(lm_conv2d_out_size(64, 3, 2, 0, 1), 32);
    CHECK_EQ_INT(lm_conv2d_out_size(7, 3, 1, 1, 1), 7);
    CHECK_EQ_INT(lm_conv2d_out_size(1, 3, 1, 0, 0), 0);
}

/* lm_linear (plain and accumulating), lm_proj_to_tokens and lm_proj_from_tokens of
 * x [T, in] against a float64 reference: max |diff| ≤ tol (2·tol for the accumulated 2r). */
static void check_linear_proj(int T, int in, int out, double tol, double tol_acc)
{
    float *x = rand_buf((size_t)T * in), *w = rand_buf((size_t)out * in), *b = rand_buf(out);
    float *y = malloc((size_t)T * out * sizeof *y), *xt = malloc((size_t)T * in * sizeof *xt);
    double *r = malloc((size_t)T * out * sizeof *r);
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double a = b[o];
            for (int i = 0; i < in; i++) a += (double)x[t * in + i] * w[o * in + i];
            r[t * out + o] = a;
        }
    lm_linear(x, T, in, w, b, out, y, 0);
    CHECK_NEAR(max_abs_diff(y, r, (size_t)T * out), 0, tol);
    lm_linear(x, T, in, w, b, out, y, 1);   /* accumulate: 2r */
    for (size_t i = 0; i < (size_t)T * out; i++) r[i] *= 2;
    CHECK_NEAR(max_abs_diff(y, r, (size_t)T * out), 0, tol_acc);
    /* x viewed as an image [in, T]: tokens = xᵀ; proj_to_tokens(x) = linear(xᵀ) */
    for (int t = 0; t < T; t++) for (int i = 0; i < in; i++) xt[i * T + t] = x[t * in + i];
    lm_proj_to_tokens(xt, in, T, w, b, out, y);
    for (size_t i = 0; i < (size_t)T * out; i++) r[i] /= 2;
    CHECK_NEAR(max_abs_diff(y, r, (size_t)T * out), 0, tol);
    /* proj_from_tokens gives the transpose: [out, T] */
    lm_proj_from_tokens(x, T, in, w, b, out, y, 0);
    double m = 0;
    for (int t = 0; t < T; t++) for (int o = 0; o < out; o++)
        m = fmax(m, fabs(y[o * T + t] - r[t * out + o]));
    CHECK_NEAR(m, 0, tol);
    free(x); free(w); free(b); free(y); free(xt); free(r);
}

static void test_linear_and_proj(void) { check_linear_proj(13, 11, 9, 1e-5, 1e-5); }

static void test_group_norm(void)
{
    int C = 64, G = 32; int64_t HW = 37;
    float *x = rand_buf((size_t)C * HW), *g = rand_buf(C), *b = rand_buf(C);
    for (size_t i = 0; i < (size_t)C * HW; i++) x[i] = x[i] * 3 + 5;   /* offset mean */
    float *y = malloc((size_t)C * HW * sizeof *y), *y2 = malloc((size_t)C * HW * sizeof *y2);
    double *r = malloc((size_t)C * HW * sizeof *r), *r2 = malloc((size_t)C * HW * sizeof *r2);
    int cpg = C / G;
    for (int gi = 0; gi < G; gi++) {
        double s = 0, v = 0; size_t n = (size_t)cpg * HW;
        for (size_t i = 0; i < n; i++) s += x[gi * n + i];
        double mu = s / n;
        for (size_t i = 0; i < n; i++) v += (x[gi * n + i] - mu) * (x[gi * n + i] - mu);
        double rs = 1 / sqrt(v / n + 1e-5);
        for (size_t i = 0; i < n; i++) {
            int c = (int)(gi * cpg + i / HW);
            r[gi * n + i] = (x[gi * n + i] - mu) * rs * g[c] + b[c];
            r2[gi * n + i] = r[gi * n + i] / (1 + exp(-r[gi * n + i]));
        }
    }
    lm_group_norm(x, C, HW, G, g, b, 1e-5f, 0, y);
    CHECK_NEAR(max_abs_diff(y, r, (size_t)C * HW), 0, 2e-6);
    lm_group_norm(x, C, HW, G, g, b, 1e-5f, 1, y2);
    CHECK_NEAR(max_abs_diff(y2, r2, (size_t)C * HW), 0, 2e-6);
    lm_group_norm(x, C, HW, G, g, b, 1e-5f, 0, x);   /* in place */
    CHECK_NEAR(max_abs_diff(x, r, (size_t)C * HW), 0, 2e-6);
    free(x); free(g); free(b); free(y); free(y2); free(r); free(r2);
}

/* GroupNorm in parts (stats over blocks of positions with a row stride,
 * moments, apply block by block) equals lm_group_norm, with a mean far from
 * 0 (Σx² − nμ² cancellation) and 128 channels a group (the stack-free path). */
static void test_group_norm_parts(void)
{
    for (int k = 0; k < 2; k++) {
        int C = k ? 256 : 64, G = k ? 2 : 32; int64_t HW = 203, blk = 29;   /* 7 blocks of 29 */
        float *x = rand_buf((size_t)C * HW), *g = rand_buf(C), *b = rand_buf(C);
        for (size_t i = 0; i < (size_t)C * HW; i++) x[i] = x[i] * 0.5f + (k ? -300.0f : 40.0f);
        float *y = malloc((size_t)C * HW * sizeof *y), *y2 = malloc((size_t)C * HW * sizeof *y2);
        float *part = malloc((size_t)C * blk * sizeof *part);
        double sum[256] = { 0 }, sq[256] = { 0 }, mean[32], rstd[32];
        lm_group_norm(x, C, HW, G, g, b, 1e-6f, 1, y);
        for (int64_t p0 = 0; p0 < HW; p0 += blk) lm_group_norm_stats(x + p0, C, blk, HW, sum, sq);
        lm_group_norm_moments(sum, sq, C, G, HW, 1e-6f, mean, rstd);
        for (int64_t p0 = 0; p0 < HW; p0 += blk) {
            for (int c = 0; c < C; c++) memcpy(part + c * blk, x + c * HW + p0, (size_t)blk * sizeof *part);
            lm_group_norm_apply(part, C, blk, G, mean, rstd, g, b, 1, part);
            for (int c = 0; c < C; c++) memcpy(y2 + c * HW + p0, part + c * blk, (size_t)blk * sizeof *part);
        }
        double d = 0;
        for (size_t i = 0; i < (size_t)C * HW; i++) d = fmax(d, fabs((double)y[i] - y2[i]));
        CHECK_NEAR(d, 0, 1e-6);
        /* against a two-pass double reference of group 0, channel 0 */
        size_t n = (size_t)(C / G) * HW;
        double s = 0, v = 0;
        for (size_t i = 0; i < n; i++) s += x[i];
        for (size_t i = 0; i < n; i++) v += (x[i] - s / n) * (x[i] - s / n);
        double rs = 1 / sqrt(v / n + 1e-6), m = 0;
        for (int64_t i = 0; i < HW; i++) {
            double r = (x[i] - s / n) * rs * g[0] + b[0];
            r = r / (1 + exp(-r));
            m = fmax(m, fabs(r - y2[i]));
        }
        CHECK_NEAR(m, 0, k ? 2e-4 : 2e-5);   /* float input x·a + b at |x| 300 / 40: a few ulps of x·a */
        free(x); free(g); free(b); free(y); free(y2); free(part);
    }
}

static void test_layer_norm(void)
{
    int T = 5, C = 48;
    float *x = rand_buf((size_t)T * C), *g = rand_buf(C), *b = rand_buf(C);
    float *y = malloc((size_t)T * C * sizeof *y);
    double *r = malloc((size_t)T * C * sizeof *r);
    for (int t = 0; t < T; t++) {
        double s = 0, v = 0;
        for (int c = 0; c < C; c++) s += x[t * C + c];
        double mu = s / C;
        for (int c = 0; c < C; c++) v += (x[t * C + c] - mu) * (x[t * C + c] - mu);
        double rs = 1 / sqrt(v / C + 1e-5);
        for (int c = 0; c < C; c++) r[t * C + c] = (x[t * C + c] - mu) * rs * g[c] + b[c];
    }
    lm_layer_norm(x, T, C, g, b, 1e-5f, y);
    CHECK_NEAR(max_abs_diff(y, r, (size_t)T * C), 0, 2e-6);
    free(x); free(g); free(b); free(y); free(r);
}

static void test_activations(void)
{
    float v[4] = { 1.0f, -1.0f, 0.0f, 3.0f };
    lm_gelu(v, 4);   /* 0.5 x (1 + erf(x/√2)) */
    CHECK_NEAR(v[0], 0.8413447460685429, 1e-6);
    CHECK_NEAR(v[1], -0.15865525393145707, 1e-6);
    CHECK_NEAR(v[2], 0.0, 0);
    CHECK_NEAR(v[3], 2.9959502669177575, 1e-6);
    float s[2] = { 1.0f, -2.0f };
    lm_silu(s, 2);
    CHECK_NEAR(s[0], 0.7310585786300049, 1e-7);
    CHECK_NEAR(s[1], -0.2384058440442351, 1e-7);
    float q[1] = { 1.0f };
    lm_quick_gelu(q, 1);
    CHECK_NEAR(q[0], 1.0 / (1 + exp(-1.702)), 1e-7);
    /* GEGLU: first half value, second half gate */
    float x[2][4] = { { 2, 3, 1, -1 }, { -1, 0.5f, 0, 3 } }, y[2][2];
    lm_geglu(&x[0][0], 2, 2, &y[0][0]);
    CHECK_NEAR(y[0][0], 2 * 0.8413447460685429, 1e-6);
    CHECK_NEAR(y[0][1], 3 * -0.15865525393145707, 1e-6);
    CHECK_NEAR(y[1][0], 0.0, 0);
    CHECK_NEAR(y[1][1], 0.5 * 2.9959502669177575, 1e-6);
}

/* the vectorised exp/erf kernels against libm in double, over the range
 * activations take (and odd lengths for the vector tails) */
static void test_activation_sweep(void)
{
    enum { N = 4001 };
    static float in[N], a[N], b[N], c[N];
    for (int i = 0; i < N; i++) in[i] = a[i] = b[i] = c[i] = -40.0f + 80.0f * i / (N - 1);
    lm_silu(a, N);
    lm_gelu(b, N);
    lm_quick_gelu(c, N);
    double es = 0, eg = 0, eq = 0;
    for (int i = 0; i < N; i++) {
        double x = in[i];
        double s = x / (1 + exp(-x)), g = 0.5 * x * erfc(-x / sqrt(2.0)), q = x / (1 + exp(-1.702 * x));
        es = fmax(es, fabs(a[i] - s) / fmax(1e-30, fmax(fabs(s), 1e-3)));
        eg = fmax(eg, fabs(b[i] - g) / fmax(1e-30, fmax(fabs(g), 1e-3)));
        eq = fmax(eq, fabs(c[i] - q) / fmax(1e-30, fmax(fabs(q), 1e-3)));
    }
    CHECK_NEAR(es, 0, 1e-6);
    CHECK_NEAR(eg, 0, 1e-6);
    CHECK_NEAR(eq, 0, 1e-6);
    /* softmax of a long row with a wide range, odd length */
    enum { M = 1003 };
    static float r[M];
    double ref[M], z = 0;
    for (int i = 0; i < M; i++) { r[i] = (float)(i % 97) * 0.9f - 40.0f; z += exp((double)r[i]); }
    for (int i = 0; i < M; i++) ref[i] = exp((double)r[i]) / z;
    lm_softmax_rows(r, 1, M);
    double m = 0;
    for (int i = 0; i < M; i++) m = fmax(m, fabs(r[i] - ref[i]) / ref[i]);
    CHECK_NEAR(m, 0, 1e-5);   /* relative, down to probabilities of 1e-34 */
}

/* sized nearest resize against torch.nn.functional.interpolate(x, size,
 * mode='nearest') of x = arange(35).reshape(1,1,5,7) (torch 1.13) */
static void test_upsample_nearest_sized(void)
{
    float x[35], y[9 * 13];
    for (int i = 0; i < 35; i++) x[i] = (float)i;
    lm_upsample_nearest(x, 1, 5, 7, 9, 13, y);   /* 2H-1, 2W-1: odd skip sizes */
    static const float col0[9] = { 0, 0, 7, 7, 14, 14, 21, 21, 28 };
    static const float row0[13] = { 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6 };
    for (int i = 0; i < 9; i++) CHECK_NEAR(y[i * 13], col0[i], 0);
    for (int j = 0; j < 13; j++) CHECK_NEAR(y[j], row0[j], 0);
    lm_upsample_nearest(x, 1, 5, 7, 3, 11, y);   /* not a multiple either way */
    static const float ref[33] = { 0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 8, 9, 10, 10, 11, 12, 12, 13,
                                   21, 21, 22, 22, 23, 24, 24, 25, 26, 26, 27 };
    for (int i = 0; i < 33; i++) CHECK_NEAR(y[i], ref[i], 0);
    float z[2 * 10 * 14], w[2 * 10 * 14];            /* 2× exactly: same as lm_upsample_nearest2x */
    float x2[70];
    for (int i = 0; i < 70; i++) x2[i] = (float)(i * 3 % 11);
    lm_upsample_nearest(x2, 2, 5, 7, 10, 14, z);
    lm_upsample_nearest2x(x2, 2, 5, 7, w);
    CHECK(memcmp(z, w, sizeof z) == 0);
}

static void test_upsample_softmax_add(void)
{
    float x[2 * 2 * 3] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, y[2 * 4 * 6];
    lm_upsample_nearest2x(x, 2, 2, 3, y);
    CHECK_NEAR(y[0], 1, 0); CHECK_NEAR(y[1], 1, 0); CHECK_NEAR(y[2], 2, 0);
    CHECK_NEAR(y[6], 1, 0); CHECK_NEAR(y[12], 4, 0); CHECK_NEAR(y[23], 6, 0);
    CHECK_NEAR(y[24 + 23], 12, 0); CHECK_NEAR(y[24 + 18], 10, 0);
    float s[2][3] = { { 0, 1, 2 }, { 1000, 1000, -INFINITY } };
    lm_softmax_rows(&s[0][0], 2, 3);
    double z = 1 + exp(1) + exp(2);
    CHECK_NEAR(s[0][0], 1 / z, 1e-7); CHECK_NEAR(s[0][2], exp(2) / z, 1e-7);
    CHECK_NEAR(s[1][0], 0.5, 1e-7); CHECK_NEAR(s[1][2], 0.0, 0);
    float c[2 * 3] = { 0 }, v[2] = { 1, -2 };
    lm_add_channel(c, 2, 3, v);
    CHECK_NEAR(c[2], 1, 0); CHECK_NEAR(c[3], -2, 0);
}

static void attn_ref(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                     int Tq, int Tk, int H, int dh, float scale, int causal, double *out, int ldo)
{
    double *s = malloc((size_t)Tk * sizeof *s);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < Tq; i++) {
            double m = -INFINITY, z = 0;
            int n = causal ? i + 1 : Tk;
            for (int j = 0; j < n; j++) {
                double a = 0;
                for (int d = 0; d < dh; d++) a += (double)q[i * ldq + h * dh + d] * k[j * ldk + h * dh + d];
                s[j] = a * scale; if (s[j] > m) m = s[j];
            }
            for (int j = 0; j < n; j++) { s[j] = exp(s[j] - m); z += s[j]; }
            for (int d = 0; d < dh; d++) {
                double a = 0;
                for (int j = 0; j < n; j++) a += s[j] * v[j * ldv + h * dh + d];
                out[i * ldo + h * dh + d] = a / z;
            }
        }
    free(s);
}

static void check_attention(int Tq, int Tk, int H, int dh, int causal, int packed, double *e)
{
    int C = H * dh, ld = packed ? 3 * C : C;
    float *qkv = rand_buf((size_t)(Tq > Tk ? Tq : Tk) * 3 * C);
    for (size_t i = 0; i < (size_t)(Tq > Tk ? Tq : Tk) * 3 * C; i++) qkv[i] *= 2;
    const float *q = qkv, *k = packed ? qkv + C : qkv + (size_t)Tq * C;
    const float *v = packed ? qkv + 2 * C : k + (size_t)Tk * C;
    float *o = malloc((size_t)Tq * C * sizeof *o);
    double *r = malloc((size_t)Tq * C * sizeof *r);
    lm_work wk = LM_WORK_INIT;
    float scale = 1.0f / sqrtf((float)dh);
    int rc = lm_attention(q, ld, k, ld, v, ld, Tq, Tk, H, dh, scale, causal, o, C, &wk);
    attn_ref(q, ld, k, ld, v, ld, Tq, Tk, H, dh, scale, causal, r, C);
    *e = rc ? 1e9 : max_abs_diff(o, r, (size_t)Tq * C);
    lm_work_free(&wk);
    free(qkv); free(o); free(r);
}

static void test_attention(void)
{
    double e;
    check_attention(37, 77, 8, 5, 0, 0, &e);       /* cross-attention, 8 heads */
    CHECK_NEAR(e, 0, 1e-5);
    check_attention(50, 50, 2, 16, 0, 1, &e);      /* self-attention on a packed qkv */
    CHECK_NEAR(e, 0, 1e-5);
    check_attention(20, 20, 3, 4, 1, 1, &e);       /* causal (CLIP) */
    CHECK_NEAR(e, 0, 1e-5);
}
static void test_attention_query_blocks(void)
{
    /* Tk = 5000: blocks of 209 queries, the last one partial */
    double e;
    check_attention(700, 5000, 2, 8, 0, 0, &e);
    CHECK_NEAR(e, 0, 1e-5);
    check_attention(600, 600, 1, 8, 1, 1, &e);
    CHECK_NEAR(e, 0, 1e-5);
}

/* sizes large enough that conv2d, linear, the projections, the norms and the
 * element-wise ops split their work over threads (columns, rows, channels,
 * groups, tokens; a channel count that is not a multiple of the im2col
 * block): same results as the definitions */
static void test_parallel_sizes(void)
{
    double e; int ok;
    check_conv(37, 24, 24, 160, 3, 1, 1, 1, 1, 1, 1, &e, &ok);   /* output split by columns */
    CHECK(ok); CHECK_NEAR(e, 0, 1e-4);
    check_conv(16, 8, 8, 256, 3, 1, 1, 1, 1, 1, 1, &e, &ok);     /* narrow: split by rows */
    CHECK(ok); CHECK_NEAR(e, 0, 1e-4);
    check_conv(96, 20, 30, 200, 1, 1, 0, 0, 0, 0, 1, &e, &ok);   /* 1×1 */
    CHECK(ok); CHECK_NEAR(e, 0, 1e-4);

    check_linear_proj(1100, 128, 64, 1e-4, 2e-4);   /* T·out ≥ 64 Ki: the bias pass runs in parallel too */

    /* group norm + SiLU over 64 × 2048, layer norm over 1100 tokens */
    int C = 64, G = 32, HW = 2048, cpg = C / G;
    size_t n = (size_t)C * HW;
    float *g = rand_buf((size_t)C), *be = rand_buf((size_t)C), *gx = rand_buf(n);
    float *gy = malloc(n * sizeof *gy);
    double *gr = malloc(n * sizeof *gr);
    for (size_t i = 0; i < n; i++) gx[i] = gx[i] * 2 - 3;
    for (int gi = 0; gi < G; gi++) {
        size_t k = (size_t)cpg * HW;
        double s = 0, v = 0;
        for (size_t i = 0; i < k; i++) s += gx[gi * k + i];
        double mu = s / k;
        for (size_t i = 0; i < k; i++) v += (gx[gi * k + i] - mu) * (gx[gi * k + i] - mu);
        double rs = 1 / sqrt(v / k + 1e-5);
        for (size_t i = 0; i < k; i++) {
            int c = (int)(gi * cpg + i / HW);
            double z = (gx[gi * k + i] - mu) * rs * g[c] + be[c];
            gr[gi * k + i] = z / (1 + exp(-z));
        }
    }
    lm_group_norm(gx, C, HW, G, g, be, 1e-5f, 1, gy);
    CHECK_NEAR(max_abs_diff(gy, gr, n), 0, 2e-6);
    int LT = 1100, LC = 64;   /* n = 64 × 2048 ≥ 1100 × 64 */
    for (int t = 0; t < LT; t++) {
        const float *xr = gx + (size_t)t * LC;
        double s = 0, v = 0;
        for (int c = 0; c < LC; c++) s += xr[c];
        double mu = s / LC;
        for (int c = 0; c < LC; c++) v += (xr[c] - mu) * (xr[c] - mu);
        double rs = 1 / sqrt(v / LC + 1e-5);
        for (int c = 0; c < LC; c++) gr[(size_t)t * LC + c] = (xr[c] - mu) * rs * g[c] + be[c];
    }
    lm_layer_norm(gx, LT, LC, g, be, 1e-5f, gy);
    CHECK_NEAR(max_abs_diff(gy, gr, (size_t)LT * LC), 0, 2e-6);

    /* GEGLU over 600 tokens of 2 × 100, SiLU and add over n elements */
    int GT = 600, F = 100;
    for (int t = 0; t < GT; t++)
        for (int f = 0; f < F; f++) {
            double a = gx[(size_t)t * 2 * F + f], q = gx[(size_t)t * 2 * F + F + f];
            gr[(size_t)t * F + f] = a * 0.5 * q * erfc(-q / sqrt(2.0));
        }
    lm_geglu(gx, GT, F, gy);
    CHECK_NEAR(max_abs_diff(gy, gr, (size_t)GT * F), 0, 1e-5);
    for (size_t i = 0; i < n; i++) { gy[i] = gx[i]; gr[i] = gx[i] / (1 + exp(-(double)gx[i])) + gx[i]; }
    lm_silu(gy, n);
    lm_add(gy, gx, n);
    CHECK_NEAR(max_abs_diff(gy, gr, n), 0, 1e-5);
    free(g); free(be); free(gx); free(gy); free(gr);
}

static void test_timestep_embedding(void)
{
    float t[3] = { 0, 999, 1 }, o[3 * 32];
    lm_timestep_embedding(t, 3, 32, 1, 0, 10000, o);
    CHECK_NEAR(o[0], 1, 0); CHECK_NEAR(o[16], 0, 0);      /* t = 0: cos 1, sin 0 */
    for (int n = 1; n < 3; n++)
        for (int k = 0; k < 16; k++) {
            double f = exp(-log(10000.0) * k / 16);
            /* float32 argument t·f is off by up to ½ ulp of 999: ~3e-5 */
            CHECK_NEAR(o[n * 32 + k], cos(t[n] * f), 1e-4);
            CHECK_NEAR(o[n * 32 + 16 + k], sin(t[n] * f), 1e-4);
        }
    lm_timestep_embedding(t + 2, 1, 4, 0, 1, 10000, o);   /* sin first, shift 1: f = 1, 1e-4 */
    CHECK_NEAR(o[0], sin(1.0), 1e-7); CHECK_NEAR(o[1], sin(1e-4), 1e-9);
    CHECK_NEAR(o[2], cos(1.0), 1e-7);
}

static void test_tensor_alloc(void)
{
    lm_tensor t; lm_err err;
    int64_t sh[3] = { 2, 3, 4 };
    CHECK_OK(lm_tensor_alloc(&t, 3, sh, &err), &err);
    CHECK_EQ_INT(lm_tensor_numel(&t), 24);
    CHECK(t.owner && t.dtype == LM_DT_F32 && t.data[23] == 0.0f);
    lm_tensor_free(&t);
    CHECK(t.data == NULL && lm_tensor_numel(&t) == 0);
    CHECK_EQ_INT(lm_tensor_alloc(&t, 5, sh, &err), LM_EUSAGE);
    lm_tensor_free(NULL);
}

int main(void)
{
    RUN(test_conv2d_3x3);
    RUN(test_conv2d_stride2);
    RUN(test_conv2d_1x1);
    RUN(test_conv2d_slabs);
    RUN(test_conv2d_out_size);
    RUN(test_conv3x3_winograd);
    RUN(test_linear_and_proj);
    RUN(test_group_norm);
    RUN(test_group_norm_parts);
    RUN(test_layer_norm);
    RUN(test_activations);
    RUN(test_activation_sweep);
    RUN(test_upsample_nearest_sized);
    RUN(test_upsample_softmax_add);
    RUN(test_attention);
    RUN(test_attention_query_blocks);
    RUN(test_parallel_sizes);
    RUN(test_timestep_embedding);
    RUN(test_tensor_alloc);
    TEST_EXIT();
}
