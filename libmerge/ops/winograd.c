/* 3×3 convolution, stride 1, padding 1, by Winograd's minimal filtering
 * F(2×2, 3×3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
 * Networks", section 4: Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A per 4×4 input tile d
 * and 2×2 output tile Y). Summed over input channels, the 16 element-wise
 * products become 16 independent sgemm calls [OC, C]·[C, tiles], run in
 * parallel (one single-threaded sgemm per transform element); the input and
 * output transforms run in parallel over channels. Tiles are processed a
 * slab of tile rows at a time, so scratch memory stays bounded. */
#include <stdint.h>
#include <string.h>
#include <cblas.h>

#include "libmerge/ops.h"
#include "ops/parallel.h"
#include "ops/prof.h"

/* scratch per slab (V [16, C, Ts] and M [16, OC, Ts]): at most 8 Mi floats
 * (32 MiB), unless one tile row needs more */
#define SLAB_FLOATS ((size_t)8 << 20)

typedef struct { const float *w; float *U; int OC, C; } filter_job;

#define OC_BLOCK 16   /* output channels per parallel item of the filter transform */

static void filter_tf(void *p, int64_t item, int tid)
{
    const filter_job *fj = p;
    const float *w = fj->w;
    float *U = fj->U;
    const int C = fj->C;
    const size_t plane = (size_t)fj->OC * C;
    int o1 = (int)(item + 1) * OC_BLOCK < fj->OC ? (int)(item + 1) * OC_BLOCK : fj->OC;
    for (int o = (int)item * OC_BLOCK; o < o1; o++)
        for (int c = 0; c < C; c++) {
            const float *g = w + ((size_t)o * C + c) * 9;
            float t[4][3];   /* G g: G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1] */
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[j];
                t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; i++) {   /* (G g) Gᵀ */
                float u[4] = { t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                               0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2] };
                for (int k = 0; k < 4; k++) U[(size_t)(i * 4 + k) * plane + (size_t)o * C + c] = u[k];
            }
        }
}

void lm_conv3x3_winograd_weights(const float *w, int OC, int C, float *U)
{
    filter_job j = { w, U, OC, C };
    int64_t n = (OC + OC_BLOCK - 1) / OC_BLOCK;
    lm_parallel(n, (int64_t)OC * C >= 65536 ? lm_par_threads() : 1, filter_tf, &j);
}

typedef struct {
    const float *x, *U, *b;
    float *y, *V, *M, *rows;   /* rows: per thread 8 · (2·tw + 2) floats */
    int C, H, W, OC, tw, ty0, nty;
    size_t Ts;
    int up;   /* x is [C, H/2, W/2], read as its nearest-neighbour 2× upsampling */
} wino_job;

#define CH_BLOCK 8   /* channels per parallel item of the transforms */

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"   /* 32-byte vectors passed by value in the default clone */
#endif

typedef float v8f __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* Bᵀ d B for the tiles of one tile row of one channel: r[i] (i = 0..3) are
 * the 4 zero-padded input rows (P = 2·tw + 2 floats, column q ↔ x column
 * q − 1), cr 4·P floats of scratch, v[e] where transform element e of tile
 * tx goes (v[e][tx]). Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]. Along
 * the row 8 tiles at a time (vector extensions; the same operations as the
 * scalar tail). */
CLONES static void input_row(float *const *r, float *cr, int tw, float *const *v)
{
    const int P = 2 * tw + 2;
    float *c0 = cr, *c1 = cr + P, *c2 = cr + 2 * P, *c3 = cr + 3 * P;
    for (int q = 0; q < P; q++) {   /* Bᵀ d, down the columns */
        c0[q] = r[0][q] - r[2][q];
        c1[q] = r[1][q] + r[2][q];
        c2[q] = r[2][q] - r[1][q];
        c3[q] = r[1][q] - r[3][q];
    }
    for (int i = 0; i < 4; i++) {   /* (Bᵀ d) B, along the rows */
        const float *s = cr + (size_t)i * P;
        float *v0 = v[4 * i], *v1 = v[4 * i + 1], *v2 = v[4 * i + 2], *v3 = v[4 * i + 3];
        int tx = 0;
        for (; tx + 8 <= tw; tx += 8) {   /* reads s[2tx .. 2tx + 18) ≤ P */
            v8f a, b, a2, b2;
            memcpy(&a, s + 2 * tx, sizeof a);
            memcpy(&b, s + 2 * tx + 8, sizeof b);
            memcpy(&a2, s + 2 * tx + 2, sizeof a2);
            memcpy(&b2, s + 2 * tx + 10, sizeof b2);
            v8f d0 = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
            v8f d1 = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
            v8f d2 = __builtin_shufflevector(a2, b2, 0, 2, 4, 6, 8, 10, 12, 14);
            v8f d3 = __builtin_shufflevector(a2, b2, 1, 3, 5, 7, 9, 11, 13, 15);
            v8f o0 = d0 - d2, o1 = d1 + d2, o2 = d2 - d1, o3 = d1 - d3;
            memcpy(v0 + tx, &o0, sizeof o0);
            memcpy(v1 + tx, &o1, sizeof o1);
            memcpy(v2 + tx, &o2, sizeof o2);
            memcpy(v3 + tx, &o3, sizeof o3);
        }
        for (; tx < tw; tx++) {
            const float *d = s + 2 * tx;
            v0[tx] = d[0] - d[2];
            v1[tx] = d[1] + d[2];
            v2[tx] = d[2] - d[1];
            v3[tx] = d[1] - d[3];
        }
    }
}

/* V[e, c, t] = (Bᵀ d B)[e] for the tiles of channels [8·item, …) in the slab */
static void input_tf(void *p, int64_t item, int tid)
{
    const wino_job *j = p;
    const int P = 2 * j->tw + 2, W = j->W, H = j->H;
    float *r[4], *cr = j->rows + (size_t)tid * 8 * P + (size_t)4 * P;
    for (int i = 0; i < 4; i++) r[i] = j->rows + (size_t)tid * 8 * P + (size_t)i * P;
    const size_t plane = (size_t)j->C * j->Ts;
    int c1 = (int)(item + 1) * CH_BLOCK < j->C ? (int)(item + 1) * CH_BLOCK : j->C;
    for (int c = (int)item * CH_BLOCK; c < c1; c++) {
        const float *xc = j->x + (size_t)c * H * W;   /* (not used when up) */
        for (int ty = j->ty0; ty < j->ty0 + j->nty; ty++) {
            for (int i = 0; i < 4; i++) {   /* input rows 2ty−1 … 2ty+2 with zero padding */
                int yy = 2 * ty - 1 + i;
                if (j->up && yy >= 0 && yy < H) {   /* upsampled row yy = source row yy/2, columns doubled */
                    const float *xs = j->x + ((size_t)c * (H / 2) + (size_t)(yy / 2)) * (W / 2);
                    r[i][0] = 0.0f;
                    for (int q = 0; q < W / 2; q++) r[i][1 + 2 * q] = r[i][2 + 2 * q] = xs[q];
                    for (int q = W + 1; q < P; q++) r[i][q] = 0.0f;
                } else if (yy >= 0 && yy < H) {
                    r[i][0] = 0.0f;
                    memcpy(r[i] + 1, xc + (size_t)yy * W, (size_t)W * sizeof(float));
                    for (int q = W + 1; q < P; q++) r[i][q] = 0.0f;
                } else {
                    memset(r[i], 0, (size_t)P * sizeof(float));
                }
            }
            float *v[16];
            for (int e = 0; e < 16; e++) v[e] = j->V + (size_t)e * plane + (size_t)c * j->Ts + (size_t)(ty - j->ty0) * j->tw;
            input_row(r, cr, j->tw, v);
        }
    }
}

/* M[e] [OC, Ts] = U[e] [OC, C] · V[e] [C, Ts]; on an upsampled input the
 * elements of row or column 2 of the 4×4 transform are exactly 0 (a tile's
 * middle rows and columns repeat, so Bᵀ d B subtracts equal values): M[e] = 0 */
static void product(void *p, int64_t e, int tid)
{
    const wino_job *j = p;
    if (j->up && (e / 4 == 2 || e % 4 == 2)) {
        memset(j->M + (size_t)e * j->OC * j->Ts, 0, (size_t)j->OC * j->Ts * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->OC, (int)j->Ts, j->C, 1.0f,
                j->U + (size_t)e * j->OC * j->C, j->C, j->V + (size_t)e * j->C * j->Ts, (int)j->Ts, 0.0f,
                j->M + (size_t)e * j->OC * j->Ts, (int)j->Ts);
}

/* One tile row of one output channel: m[e] (e = 0..15) are the 16 planes of
 * M at this row's first tile, y0/y1 output rows 2ty and 2ty+1 (y1 NULL past
 * the bottom). Aᵀ m A along the tiles 8 at a time with vector extensions
 * (the same additions in the same order as the scalar tail, so the result
 * does not depend on the path); even and odd output columns are interleaved
 * by shuffles. Scalar for the last tiles and an odd W. */
CLONES static void output_row(const float *const *m, int tw, int W, float bias, float *y0, float *y1)
{
    int tx = 0;
    const v8f vb = { bias, bias, bias, bias, bias, bias, bias, bias };
    for (; tx + 8 <= tw && 2 * tx + 16 <= W; tx += 8) {
        v8f a[16];
        for (int e = 0; e < 16; e++) memcpy(&a[e], m[e] + tx, sizeof a[e]);
        v8f s0[4], s1[4];   /* Aᵀ m */
        for (int k = 0; k < 4; k++) {
            s0[k] = a[k] + a[4 + k] + a[8 + k];
            s1[k] = a[4 + k] - a[8 + k] - a[12 + k];
        }
        v8f ev = s0[0] + s0[1] + s0[2] + vb, od = s0[1] - s0[2] - s0[3] + vb;
        v8f lo = __builtin_shufflevector(ev, od, 0, 8, 1, 9, 2, 10, 3, 11);
        v8f hi = __builtin_shufflevector(ev, od, 4, 12, 5, 13, 6, 14, 7, 15);
        memcpy(y0 + 2 * tx, &lo, sizeof lo);
        memcpy(y0 + 2 * tx + 8, &hi, sizeof hi);
        if (y1) {
            ev = s1[0] + s1[1] + s1[2] + vb;
            od = s1[1] - s1[2] - s1[3] + vb;
            lo = __builtin_shufflevector(ev, od, 0, 8, 1, 9, 2, 10, 3, 11);
            hi = __builtin_shufflevector(ev, od, 4, 12, 5, 13, 6, 14, 7, 15);
            memcpy(y1 + 2 * tx, &lo, sizeof lo);
            memcpy(y1 + 2 * tx + 8, &hi, sizeof hi);
        }
    }
    for (; tx < tw; tx++) {
        float a[4][4];
        for (int e = 0; e < 16; e++) a[e / 4][e % 4] = m[e][tx];
        float s0[4], s1[4];
        for (int k = 0; k < 4; k++) {
            s0[k] = a[0][k] + a[1][k] + a[2][k];
            s1[k] = a[1][k] - a[2][k] - a[3][k];
        }
        int ox = 2 * tx;
        y0[ox] = s0[0] + s0[1] + s0[2] + bias;
        if (ox + 1 < W) y0[ox + 1] = s0[1] - s0[2] - s0[3] + bias;
        if (y1) {
            y1[ox] = s1[0] + s1[1] + s1[2] + bias;
            if (ox + 1 < W) y1[ox + 1] = s1[1] - s1[2] - s1[3] + bias;
        }
    }
}

/* y = Aᵀ m A + b for output channels [8·item, …), Aᵀ = [1 1 1 0; 0 1 −1 −1] */
static void output_tf(void *p, int64_t item, int tid)
{
    const wino_job *j = p;
    const size_t plane = (size_t)j->OC * j->Ts;
    int o1 = (int)(item + 1) * CH_BLOCK < j->OC ? (int)(item + 1) * CH_BLOCK : j->OC;
    for (int o = (int)item * CH_BLOCK; o < o1; o++) {
        float bias = j->b ? j->b[o] : 0.0f;
        float *yo = j->y + (size_t)o * j->H * j->W;
        for (int ty = j->ty0; ty < j->ty0 + j->nty; ty++) {
            const float *m[16];
            for (int e = 0; e < 16; e++) m[e] = j->M + (size_t)e * plane + (size_t)o * j->Ts + (size_t)(ty - j->ty0) * j->tw;
            int oy = 2 * ty;
            float *y0 = yo + (size_t)oy * j->W, *y1 = oy + 1 < j->H ? y0 + j->W : NULL;
            output_row(m, j->tw, j->W, bias, y0, y1);
        }
    }
}

static int winograd(const float *x, int C, int H, int W, const float *U, const float *b, int OC, float *y,
                    lm_work *work, int up)
{
    if (C <= 0 || OC <= 0 || H <= 0 || W <= 0)
        return lm_err_set(NULL, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "empty convolution");
    double t0 = lm_prof_t0();
    int th = (H + 1) / 2, tw = (W + 1) / 2, nth = lm_par_threads();
    size_t per_row = (size_t)16 * (C + OC) * tw;
    int rows = (int)(SLAB_FLOATS / per_row);
    if (rows < 1) rows = 1;
    if (rows > th) rows = th;
    size_t P = (size_t)2 * tw + 2, Vn = (size_t)16 * C * rows * tw, Mn = (size_t)16 * OC * rows * tw;
    float *s = lm_work_get(work, Vn + Mn + (size_t)nth * 8 * P);
    if (!s) return LM_ENOMEM;
    wino_job j = { x, U, b, y, s, s + Vn, s + Vn + Mn, C, H, W, OC, tw, 0, 0, 0, up };
    for (int ty0 = 0; ty0 < th; ty0 += rows) {
        j.ty0 = ty0;
        j.nty = rows < th - ty0 ? rows : th - ty0;
        j.Ts = (size_t)j.nty * tw;
        lm_parallel((C + CH_BLOCK - 1) / CH_BLOCK, nth, input_tf, &j);
        lm_parallel(16, nth, product, &j);
        lm_parallel((OC + CH_BLOCK - 1) / CH_BLOCK, nth, output_tf, &j);
    }
    lm_prof_end_fl(LM_PROF_CONV3, t0, 2.0 * OC * (double)H * W * C * 9);
    return 0;
}

int lm_conv3x3_winograd(const float *x, int C, int H, int W, const float *U, const float *b, int OC,
                        float *y, lm_work *work)
{
    return winograd(x, C, H, W, U, b, OC, y, work, 0);
}

int lm_conv3x3_winograd_up2(const float *x, int C, int h, int w, const float *U, const float *b, int OC,
                            float *y, lm_work *work)
{
    if (h > INT32_MAX / 2 || w > INT32_MAX / 2)
        return lm_err_set(NULL, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "upsampled size overflows");
    return winograd(x, C, 2 * h, 2 * w, U, b, OC, y, work, 1);
}
