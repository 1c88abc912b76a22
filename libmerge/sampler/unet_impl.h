/* Internal: the UNet's loaded weights, block by block (diffusers' module tree). */
#ifndef LIBMERGE_SAMPLER_UNET_IMPL_H
#define LIBMERGE_SAMPLER_UNET_IMPL_H

#include "libmerge/unet.h"
#include "libmerge/ops.h"

typedef struct {                                    /* w [out, in(, k, k)], b [out] or NULL; */
    float *w, *b;                                   /* wino [16, out, in]: Winograd-transformed */
    float *wino;                                    /* 3×3 weights (w is then NULL), or NULL */
} u_lin;

typedef struct {                                    /* ResnetBlock2D */
    int cin, cout;
    u_lin norm1, conv1, temb, norm2, conv2, shortcut; /* shortcut.w NULL: identity */
} u_resnet;

typedef struct {                                    /* BasicTransformerBlock */
    u_lin norm1, qkv, out1;                         /* qkv.w [3C, C]: to_q, to_k, to_v stacked */
    u_lin norm2, q2, kv2, out2;                     /* q2.w [C, C], kv2.w [2C, ctx]: to_k, to_v */
    u_lin norm3, ff1, ff2;                          /* ff1 [8C, C] (GEGLU), ff2 [C, 4C] */
} u_tblock;

typedef struct {                                    /* Transformer2DModel */
    int C, heads, depth;
    u_lin norm, proj_in, proj_out;                  /* proj_* [C, C] (conv 1×1 or linear) */
    u_tblock *blocks;
} u_transformer;

typedef struct {
    int n_res;
    u_resnet res[4];
    u_transformer attn[4];                          /* depth 0: none */
    u_lin sample;                                   /* downsampler / upsampler conv, w NULL: none */
} u_block;

typedef struct { float *p; size_t cap; int used; } u_buf;

struct lm_unet {
    lm_unet_config cfg;
    lm_unet_opts opts;
    u_lin time1, time2, add1, add2, conv_in, norm_out, conv_out;
    u_block down[LM_UNET_MAX_LEVELS], up[LM_UNET_MAX_LEVELS];
    u_resnet mid_res[2];
    u_transformer mid_attn;
    float **owned;                                  /* every weight buffer, for lm_unet_free */
    size_t n_owned, cap_owned;
    lm_work work;
    u_buf *pool;                                    /* activation buffers (unet.c) */
    size_t n_pool, cap_pool;
};

#endif
