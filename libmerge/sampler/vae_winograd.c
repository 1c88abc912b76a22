/* 3×3 convolution, stride 1, padding 1, by Winograd's minimal filtering
 * F(2×2, 3×3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
 * Networks", eq. 8: Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A) on cblas_sgemm: each 4×4
 * input tile is transformed once, the 16 element-wise products summed over
 * channels become 16 matrix products [OC, C]·[C, tiles], and each 2×2
 * output tile is transformed back: 16 multiplies per 4 outputs instead of
 * 36. Tiles are processed a slab of tile rows at a time, so scratch memory
 * stays bounded; the transforms run along whole rows so they vectorise.
 * Internal to the VAE (vae_impl.h). */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "vae_impl.h"

float *lm_wino_filter(const float *w, int OC, int C)
{
    float *U = malloc((size_t)16 * OC * C * sizeof *U);
    if (!U) return NULL;
    const size_t plane = (size_t)OC * C;
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++) {
            const float *g = w + ((size_t)o * C + c) * 9;
            float t[4][3];   /* G g */
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[j];
                t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; i++) {   /* (G g) Gᵀ */
                const float u[4] = { t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                                     0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2] };
                for (int j = 0; j < 4; j++) U[(size_t)(i * 4 + j) * plane + (size_t)o * C + c] = u[j];
            }
        }
    return U;
}

/* Bᵀ d B for the tiles of tile row ty of one channel: V[e * ldv + tx]. */
static void input_row(const float *xc, int H, int W, int tw, int ty, float *rows /* [8][2tw+2] */,
                      float *V, size_t ldv)
{
    const int P = 2 * tw + 2;
    float *pr[4], *cr[4];
    for (int i = 0; i < 4; i++) {
        pr[i] = rows + (size_t)i * P;
        cr[i] = rows + (size_t)(4 + i) * P;
        const int yy = 2 * ty - 1 + i;
        memset(pr[i], 0, (size_t)P * sizeof(float));
        if (yy >= 0 && yy < H) memcpy(pr[i] + 1, xc + (size_t)yy * W, (size_t)W * sizeof(float));
    }
    for (int q = 0; q < P; q++) {   /* Bᵀ d: along the columns */
        cr[0][q] = pr[0][q] - pr[2][q];
        cr[1][q] = pr[1][q] + pr[2][q];
        cr[2][q] = pr[2][q] - pr[1][q];
        cr[3][q] = pr[1][q] - pr[3][q];
    }
    for (int i = 0; i < 4; i++) {   /* (Bᵀ d) B: along each row */
        const float *r = cr[i];
        float *v0 = V + (size_t)(i * 4 + 0) * ldv, *v1 = V + (size_t)(i * 4 + 1) * ldv;
        float *v2 = V + (size_t)(i * 4 + 2) * ldv, *v3 = V + (size_t)(i * 4 + 3) * ldv;
        for (int tx = 0; tx < tw; tx++) {
            const float a = r[2 * tx], b = r[2 * tx + 1], c = r[2 * tx + 2], d = r[2 * tx + 3];
            v0[tx] = a - c;
            v1[tx] = b + c;
            v2[tx] = c - b;
            v3[tx] = b - d;
        }
    }
}

/* Aᵀ m A for the tiles of one tile row of output channel o: rows 2ty, 2ty+1. */
static void output_row(const float *M, size_t lde, int tw, float bias, float *o0, float *o1)
{
    const float *m[16];
    for (int e = 0; e < 16; e++) m[e] = M + (size_t)e * lde;
    for (int tx = 0; tx < tw; tx++) {
        float r0[4], r1[4];
        for (int j = 0; j < 4; j++) {
            r0[j] = m[j][tx] + m[4 + j][tx] + m[8 + j][tx];
            r1[j] = m[4 + j][tx] - m[8 + j][tx] - m[12 + j][tx];
        }
        o0[2 * tx] = r0[0] + r0[1] + r0[2] + bias;
        o0[2 * tx + 1] = r0[1] - r0[2] - r0[3] + bias;
        o1[2 * tx] = r1[0] + r1[1] + r1[2] + bias;
        o1[2 * tx + 1] = r1[1] - r1[2] - r1[3] + bias;
    }
}

int lm_wino_conv3x3(const float *x, int C, int H, int W, const float *U, const float *b, int OC, float *y,
                    lm_work *work)
{
    const int th = (H + 1) / 2, tw = (W + 1) / 2;
    /* a slab of tile rows: V [16][C][nb] and M [16][OC][nb], nb = rows·tw, ~64 MiB */
    int64_t rows_per = ((int64_t)1 << 24) / (16 * (int64_t)(C + OC) * tw);
    if (rows_per < 1) rows_per = 1;
    if (rows_per > th) rows_per = th;
    const size_t nb = (size_t)rows_per * tw;
    const size_t scratch = (size_t)16 * (size_t)(C + OC) * nb + (size_t)8 * (2 * tw + 2) + (size_t)4 * tw;
    float *V = lm_work_get(work, scratch);
    if (!V) return LM_ENOMEM;
    float *M = V + (size_t)16 * C * nb, *rows = M + (size_t)16 * OC * nb, *orow = rows + (size_t)8 * (2 * tw + 2);
    for (int ty0 = 0; ty0 < th; ty0 += (int)rows_per) {
        const int nr = th - ty0 < rows_per ? th - ty0 : (int)rows_per;
        const int n = nr * tw;
        for (int c = 0; c < C; c++)
            for (int r = 0; r < nr; r++)
                input_row(x + (size_t)c * H * W, H, W, tw, ty0 + r, rows, V + (size_t)c * nb + (size_t)r * tw,
                          (size_t)C * nb);
        for (int e = 0; e < 16; e++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, n, C, 1.0f, U + (size_t)e * OC * C, C,
                        V + (size_t)e * C * nb, (int)nb, 0.0f, M + (size_t)e * OC * nb, (int)nb);
        for (int o = 0; o < OC; o++) {
            float *yo = y + (size_t)o * H * W;
            for (int r = 0; r < nr; r++) {
                const int yy = 2 * (ty0 + r);
                output_row(M + (size_t)o * nb + (size_t)r * tw, (size_t)OC * nb, tw, b ? b[o] : 0.0f, orow,
                           orow + 2 * tw);
                memcpy(yo + (size_t)yy * W, orow, (size_t)W * sizeof(float));
                if (yy + 1 < H) memcpy(yo + (size_t)(yy + 1) * W, orow + 2 * tw, (size_t)W * sizeof(float));
            }
        }
    }
    return 0;
}
