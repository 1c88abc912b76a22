/* Internal: the VAE decoder's loaded weights and the forward pieces vae.c
 * (loading, untiled decode) shares with vae_band.c (banded decode). */
#ifndef LIBMERGE_SAMPLER_VAE_IMPL_H
#define LIBMERGE_SAMPLER_VAE_IMPL_H

#include "libmerge/ops.h"
#include "libmerge/vae.h"

typedef struct {
    int cin, cout;
    float *n1w, *n1b, *c1w, *c1b, *n2w, *n2b, *c2w, *c2b;
    float *scw, *scb;           /* 1×1 shortcut when cin != cout, else NULL */
    int wino1, wino2;           /* c1w / c2w hold Winograd filters */
} vae_resnet;

typedef struct {
    int c;
    float *nw, *nb, *qw, *qb, *kw, *kb, *vw, *vb, *ow, *ob;
} vae_attn;

struct lm_vae {
    lm_vae_config cfg;
    float *pq_w, *pq_b;         /* post_quant_conv [lc, lc, 1, 1] */
    float *in_w, *in_b;         /* decoder.conv_in [Ctop, lc, 3, 3] */
    vae_resnet mid[2];
    vae_attn attn;
    vae_resnet *up;             /* [levels * resnets], up block i (widest first) */
    float *ups_w[LM_VAE_MAX_LEVELS], *ups_b[LM_VAE_MAX_LEVELS];
    float *no_w, *no_b;         /* conv_norm_out / norm_out */
    float *out_w, *out_b;       /* conv_out [3, ch[0], 3, 3] */
    const char *attn_names[5];  /* norm, q, k, v, out under the file's spelling */
    int ups_wino[LM_VAE_MAX_LEVELS]; /* ups_w[i] holds Winograd filters */
};

/* Forward state of the in-memory decode: three buffers of at least
 * max(latent_channels, ch[levels-1])·h·w floats (more for decode_full). */
typedef struct {
    float *X, *T, *Y;           /* current activation, two temporaries */
    lm_work work;
} vae_fwd;

/* 3×3 convolution, stride 1, padding 1 on all sides: w holds Winograd
 * filters (wino = 1) or plain [OC, C, 3, 3] weights (im2col + sgemm).
 * Returns 0 or an ops error (LM_ENOMEM). */
int lm_vae_conv3(int wino, const float *x, int C, int H, int W, const float *w, const float *b, int OC,
                 float *y, lm_work *work);

/* The decoder up to the up blocks, at latent resolution: post_quant_conv,
 * conv_in, mid block (resnet, self-attention over all h·w positions,
 * resnet). z [lc, h, w] → f->X [ch[levels-1], h, w] (f's buffers swap).
 * Returns 0 or -1 (out of memory). */
int lm_vae_front(const lm_vae *v, const float *z, int h, int w, vae_fwd *f);

/* Exact banded decode (vae_band.c): the front in memory, then every later
 * layer in sweeps over bands of rows through temporary files; tile > 0:
 * bands of tile latent rows (tile·2^i rows at level i), 0: bands sized to a
 * memory budget of `budget` floats of band buffers per sweep (0: the
 * default, 128 MiB; tests pass small ones to get bands of any height, odd
 * ones included, which tile > 0 never gives at up levels). z [lc, h, w]
 * (scaled as the caller wants) → img [3, H, W]. Errors: LM_ENOMEM, LM_EIO
 * (temporary file). */
int lm_vae_decode_banded(const lm_vae *v, const float *z, int h, int w, int tile, size_t budget, float *img,
                         lm_err *err);

#endif
