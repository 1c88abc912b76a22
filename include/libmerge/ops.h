/* libmerge/ops.h — the sampler's tensor ops: fp32, row-major (C order), on cblas_sgemm.
 *
 * Ops are plain functions on float pointers with their sizes passed in; the
 * comment of each gives the shapes of inputs and outputs. Image-like tensors
 * are one batch item in [C, H, W] (channels-first, as PyTorch's NCHW without
 * N): callers loop over the batch. Token tensors are [T, C] (token-major, a
 * row per token), as transformer blocks use them. The heavy work (conv2d,
 * linear, attention) runs on cblas_sgemm. Ops split their work over
 * short-lived threads of their own, as many as OpenBLAS is set to use
 * (openblas_get_num_threads, at most 64): GEMMs in blocks of output columns
 * (rows when narrow), each a single-threaded sgemm; attention by (head,
 * query block); im2col, norms and element-wise ops by blocks of channels or
 * rows. OpenBLAS is set to one thread meanwhile and restored after. Because
 * that setting is process wide, ops must not run concurrently with other
 * OpenBLAS calls from another thread. Ops returning void cannot fail (their
 * scratch, if any, is the caller's).
 *
 * Unless a comment says otherwise, an op's output must not overlap its input;
 * ops marked "in place" take one buffer.
 *
 * Reference implementations the ops match (numerics checked against diffusers
 * goldens, fixtures/golden/sd15/README.md): torch.nn.functional.conv2d,
 * group_norm, layer_norm, silu, gelu (approximate='none'), interpolate
 * (mode='nearest', scale 2), scaled_dot_product_attention, and diffusers'
 * get_timestep_embedding.
 */
#ifndef LIBMERGE_OPS_H
#define LIBMERGE_OPS_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- tensors and scratch memory ------------------------------------------ */

#define LM_TENSOR_MAX_DIMS 4

/* A contiguous fp32 tensor, row-major: element (i0,i1,…) at
 * data[((i0*shape[1] + i1)*shape[2] + …)]. dtype is always LM_DT_F32 in the
 * sampler (weights stored F16/BF16 are converted at load). owner = 1 when
 * data was allocated by lm_tensor_alloc and is freed by lm_tensor_free;
 * owner = 0 for a view into memory someone else owns. */
typedef struct lm_tensor {
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_TENSOR_MAX_DIMS];
    float *data;
    int owner;
} lm_tensor;

/* Allocates a zero-filled F32 tensor of ndim (1..4) dimensions. Errors:
 * LM_EUSAGE (bad ndim or negative size), LM_ENOMEM. On error *t is empty. */
int lm_tensor_alloc(lm_tensor *t, int ndim, const int64_t *shape, lm_err *err);

/* Frees data when owned and empties *t; safe on NULL and on an empty tensor. */
void lm_tensor_free(lm_tensor *t);

/* Number of elements (product of the shape; 0 for an empty tensor or NULL). */
int64_t lm_tensor_numel(const lm_tensor *t);

/* Scratch memory reused across ops (grown on demand, never shrunk), so a
 * forward pass does not allocate in every op. Start with LM_WORK_INIT. */
typedef struct lm_work {
    float *p;
    size_t n;         /* floats available at p */
} lm_work;
#define LM_WORK_INIT { NULL, 0 }

/* Returns a buffer of at least n floats (contents undefined), or NULL when
 * out of memory. The pointer stays valid until the next lm_work_get/free. */
float *lm_work_get(lm_work *w, size_t n);
/* Frees the scratch and empties *w; safe on NULL. */
void lm_work_free(lm_work *w);

/* ---- convolution and linear layers ---------------------------------------- */

/* Output size of a convolution along one axis:
 * (in + pad_lo + pad_hi - k) / stride + 1, or 0 when the kernel does not fit. */
int64_t lm_conv2d_out_size(int64_t in, int k, int stride, int pad_lo, int pad_hi);

/* 2-D convolution, one image (cross-correlation, as torch.nn.Conv2d):
 *   x [C, H, W], w [OC, C, k, k], b [OC] or NULL → y [OC, OH, OW],
 *   OH = lm_conv2d_out_size(H, k, stride, pad[0], pad[2]),
 *   OW = lm_conv2d_out_size(W, k, stride, pad[1], pad[3]),
 * pad = {top, left, bottom, right} zero padding (SD: {1,1,1,1} for 3×3 and
 * stride-2 downsampling; the VAE encoder's downsampler uses {0,0,1,1}).
 * k = 1 with stride 1 and no padding is a single sgemm (y = w · x, no copy);
 * otherwise im2col in slabs of output rows (bounded scratch from w) + sgemm.
 * Returns 0, LM_EUSAGE (sizes that give an empty output), LM_ENOMEM. */
int lm_conv2d(const float *x, int C, int H, int W, const float *w, const float *b,
              int OC, int k, int stride, const int pad[4], float *y, lm_work *work);

/* 3×3 convolution with stride 1 and padding 1 by Winograd's F(2×2, 3×3)
 * (Lavin & Gray 2016): the same result as lm_conv2d(k = 3, stride 1, pad
 * {1,1,1,1}) up to float rounding (the transforms add a few ulps; measured
 * max-abs error against a double-precision direct convolution in
 * test_ops), with 16 multiplies per 2×2 outputs instead of 36; worth it
 * when H·W gives a few hundred tiles or more. U [16, OC, C] holds the
 * transformed weights, made once by lm_conv3x3_winograd_weights from
 * w [OC, C, 3, 3]. x [C, H, W], b [OC] or NULL → y [OC, H, W]; scratch
 * from work is bounded (slabs of tile rows, ≈ 32 MiB). Returns 0,
 * LM_EUSAGE (empty sizes) or LM_ENOMEM. */
void lm_conv3x3_winograd_weights(const float *w, int OC, int C, float *U);
int lm_conv3x3_winograd(const float *x, int C, int H, int W, const float *U, const float *b, int OC,
                        float *y, lm_work *work);

/* Nearest-neighbour 2× upsampling followed by that convolution (diffusers
 * Upsample2D: interpolate(scale_factor 2, "nearest"), then conv 3×3 pad 1):
 * x [C, h, w] → y [OC, 2h, 2w], U and b as above, without the upsampled
 * image. Each 4×4 input tile of an upsampled image repeats its middle rows
 * and columns, so 7 of the 16 transformed elements are exactly 0 and only 9
 * of the 16 products are computed; the result equals lm_upsample_nearest2x
 * then lm_conv3x3_winograd bit for bit (finite weights; test_ops). Returns
 * 0, LM_EUSAGE (empty sizes) or LM_ENOMEM. */
int lm_conv3x3_winograd_up2(const float *x, int C, int h, int w, const float *U, const float *b, int OC,
                            float *y, lm_work *work);

/* Linear layer on tokens: y [T, out] = x [T, in] · wᵀ + b, w [out, in]
 * (torch.nn.Linear's layout), b [out] or NULL. With accumulate = 1 the
 * result is added to what y holds (y += x·wᵀ + b: residual connections). */
void lm_linear(const float *x, int64_t T, int in, const float *w, const float *b, int out,
               float *y, int accumulate);

/* Channels-first image to tokens through a 1×1 projection:
 * x [C, HW] (an image [C, H, W]), w [out, C] (or [out, C, 1, 1]), b [out] or
 * NULL → y [HW, out] = xᵀ · wᵀ + b. One sgemm, the transpose is free.
 * (Transformer2DModel proj_in, conv 1×1 or linear: the same matrix.) */
void lm_proj_to_tokens(const float *x, int C, int64_t HW, const float *w, const float *b,
                       int out, float *y);

/* Tokens back to channels-first through a 1×1 projection:
 * x [HW, C] tokens, w [out, C], b [out] or NULL → y [out, HW] = w · xᵀ + b;
 * with accumulate = 1, y += w·xᵀ + b (the transformer block's residual). */
void lm_proj_from_tokens(const float *x, int64_t HW, int C, const float *w, const float *b,
                         int out, float *y, int accumulate);

/* ---- normalisation ---------------------------------------------------------- */

/* Group normalisation (Wu & He 2018; torch.nn.GroupNorm), one image:
 * x [C, HW] → y [C, HW] (in place allowed: y == x). Each of `groups` groups
 * of C/groups channels is normalised with its own mean and biased variance,
 * (x - μ)/sqrt(σ² + eps), then scaled per channel: γ [C], β [C] (NULL: 1 and
 * 0). Statistics are accumulated in double: Σx and Σx² per channel, summed
 * per group, σ² = Σx²/n − μ² (a float's square is exact in double; the
 * cancellation costs ~1e-16·μ²/σ² relative, far below float rounding).
 * silu = 1 applies SiLU to the result (the norm → SiLU pair every resnet
 * uses, in one pass). C must be a multiple of groups. SD: groups 32; eps
 * 1e-5 (UNet resnets, out norm), 1e-6 (UNet attention blocks' norm, every
 * VAE norm). It is lm_group_norm_stats, _moments and _apply below in one. */
void lm_group_norm(const float *x, int C, int64_t HW, int groups, const float *gamma,
                   const float *beta, float eps, int silu, float *y);

/* The same GroupNorm in three parts, for an image seen a block of positions
 * at a time (the VAE's banded decode: the statistics of a whole activation
 * gathered while it is written band by band, applied to each band later).
 * Results equal lm_group_norm's up to the order of the double sums.
 *
 * lm_group_norm_stats adds to sum [C] and sumsq [C] (double, caller-zeroed
 * before the first block) Σx and Σx² of each channel c over x[c·ld + i],
 * i in [0, n): a block of n positions of an image [C, ld] (ld ≥ n; ld = n
 * for a contiguous [C, n]).
 * lm_group_norm_moments turns the sums over `count` positions per channel
 * into each group's mean [groups] and 1/sqrt(σ² + eps) rstd [groups] (σ²
 * biased, clamped at 0).
 * lm_group_norm_apply normalises x [C, n] → y [C, n] (in place allowed) with
 * those: y = (x − mean[g])·rstd[g]·γ[c] + β[c] (γ, β NULL: 1 and 0), then
 * SiLU when silu = 1. C must be a multiple of groups. */
void lm_group_norm_stats(const float *x, int C, int64_t n, int64_t ld, double *sum, double *sumsq);
void lm_group_norm_moments(const double *sum, const double *sumsq, int C, int groups, int64_t count,
                           float eps, double *mean, double *rstd);
void lm_group_norm_apply(const float *x, int C, int64_t n, int groups, const double *mean,
                         const double *rstd, const float *gamma, const float *beta, int silu, float *y);

/* Layer normalisation over the last axis (torch.nn.LayerNorm):
 * x [T, C] → y [T, C] (in place allowed), γ [C], β [C] (NULL: 1 and 0),
 * biased variance, statistics in double. SD transformer blocks: eps 1e-5. */
void lm_layer_norm(const float *x, int64_t T, int C, const float *gamma, const float *beta,
                   float eps, float *y);

/* ---- activations (in place, n elements) ------------------------------------- */

/* SiLU / swish: x · sigmoid(x) = x / (1 + e^-x). */
void lm_silu(float *x, size_t n);
/* GELU, exact: 0.5 · x · (1 + erf(x / √2)) (torch gelu, approximate='none'). */
void lm_gelu(float *x, size_t n);
/* QuickGELU: x · sigmoid(1.702 x) (OpenAI CLIP ViT-L/14, SD1.x text encoder). */
void lm_quick_gelu(float *x, size_t n);

/* GEGLU (Shazeer 2020; diffusers GEGLU): x [T, 2F] → y [T, F],
 * y = x[:, :F] · gelu(x[:, F:]) with exact GELU (first half value, second
 * half gate). y may not overlap x. */
void lm_geglu(const float *x, int64_t T, int F, float *y);

/* ---- elementwise and layout ------------------------------------------------- */

/* y[i] += x[i], n elements. */
void lm_add(float *y, const float *x, size_t n);

/* y[c, i] += v[c] for an image y [C, HW] and a per-channel vector v [C]
 * (the resnet's time-embedding projection). */
void lm_add_channel(float *y, int C, int64_t HW, const float *v);

/* Nearest-neighbour 2× upsampling (torch interpolate, scale_factor 2,
 * mode 'nearest'): x [C, H, W] → y [C, 2H, 2W], y[c, i, j] = x[c, i/2, j/2]. */
void lm_upsample_nearest2x(const float *x, int C, int H, int W, float *y);

/* Nearest-neighbour resize to a given size (torch interpolate, mode
 * 'nearest', size = (OH, OW)): x [C, H, W] → y [C, OH, OW], source row
 * i·H/OH rounded down as PyTorch computes it (float scale H/OH; exactly i/2
 * when OH = 2H), likewise for columns. The UNet uses it when a latent side
 * is not a multiple of 2^(levels−1), upsampling to the skip's size. */
void lm_upsample_nearest(const float *x, int C, int H, int W, int OH, int OW, float *y);

/* Softmax along each row, in place: x [rows, cols] (max subtracted first). */
void lm_softmax_rows(float *x, int64_t rows, int64_t cols);

/* ---- attention -------------------------------------------------------------- */

/* Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1;
 * torch scaled_dot_product_attention):
 *   q [Tq, ldq], k [Tk, ldk], v [Tk, ldv] → out [Tq, ldo];
 * head h uses columns [h·dh, (h+1)·dh) of q, k, v and writes the same
 * columns of out: out_h = softmax(scale · q_h k_hᵀ [+ mask]) v_h. With
 * causal = 1, query i sees keys 0..i only (CLIP's text encoder; requires
 * Tq == Tk). The ld* are row strides in floats (≥ heads·dh), so q, k, v may
 * be column blocks of one packed [T, 3C] projection. Queries are processed in
 * blocks whose scores [block, Tk] take at most 4 MiB of `work` per thread
 * (256 rows at Tk = 4096), so a 4096×4096 score matrix is never held whole;
 * (head, block) pairs run in parallel, each on a single-threaded sgemm.
 * scale is usually 1/√dh. out must not overlap
 * q, k or v. Returns 0 or LM_ENOMEM. */
int lm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                 int64_t Tq, int64_t Tk, int heads, int dh, float scale, int causal,
                 float *out, int ldo, lm_work *work);

/* ---- timestep embedding ----------------------------------------------------- */

/* Sinusoidal timestep embedding (DDPM/LDM; diffusers get_timestep_embedding):
 * t [N] → out [N, dim], half = dim/2,
 *   f_k = exp(-ln(max_period) · k / (half - shift)), k = 0..half-1,
 *   out[n] = [sin(t_n f_k) …, cos(t_n f_k) …], or [cos …, sin …] when
 *   flip_sin_to_cos = 1 (what SD uses, with shift 0 and max_period 10000).
 * Computed in float32 step by step as diffusers does (the exponent rounded
 * to float32, then divided, then exp). dim must be even. */
void lm_timestep_embedding(const float *t, int N, int dim, int flip_sin_to_cos, float shift,
                           float max_period, float *out);

/* ---- profiling (benchmarks) ------------------------------------------------- */

/* Op classes whose wall-clock time lm_ops_profile accumulates. The "of which"
 * classes are parts of the class before them (not added to the total). */
enum {
    LM_PROF_CONV3, LM_PROF_IM2COL, LM_PROF_CONV1, LM_PROF_LINEAR, LM_PROF_ATTN, LM_PROF_GNORM, LM_PROF_LNORM, LM_PROF_ACT, LM_PROF_OTHER, LM_PROF_N
};

/* Turns per-op-class timing on (1) or off (0) and zeroes the counters. Process
 * wide and not thread-safe: for benchmarks that call ops from one thread. */
void lm_ops_profile(int on);

/* Wall-clock seconds accumulated in class cls since lm_ops_profile(1);
 * *cpu (when not NULL) gets the process CPU seconds (all threads, OpenBLAS's
 * included) over the same intervals, *flops the floating-point operations of
 * the GEMM-shaped work (2 per multiply-add; 0 for elementwise classes),
 * *name the class's printable name. 0 for an unknown class. */
double lm_ops_profile_seconds(int cls, const char **name, double *cpu, double *flops);

#ifdef __cplusplus
}
#endif
#endif
