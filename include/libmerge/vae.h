/* libmerge/vae.h — the VAE decoder of Stable Diffusion (AutoencoderKL,
 * Rombach et al. 2022 "High-Resolution Image Synthesis with Latent Diffusion
 * Models"; diffusers' AutoencoderKL.decode / LDM's Decoder):
 *
 *   z / scaling_factor (0.18215) → post_quant_conv (1×1) → conv_in (3×3)
 *   → mid block: resnet, self-attention (one head over all C channels,
 *     scale 1/√C, residual), resnet
 *   → up blocks (widest first): layers_per_block+1 resnets each, then
 *     nearest 2× + conv 3×3 except in the last block
 *   → GroupNorm + SiLU → conv_out (3×3) → image [3, 8h, 8w], about [-1, 1]
 *
 * Resnet: GroupNorm → SiLU → conv 3×3 → GroupNorm → SiLU → conv 3×3, plus the
 * input (through a 1×1 conv when the channel count changes). Every GroupNorm:
 * 32 groups, eps 1e-6. Sizes (block_out_channels, resnets per block, latent
 * channels) are read from the weight shapes. The 3×3 convolutions of resnets
 * and upsamplers with >= 128 input and output channels run as Winograd
 * F(2×2, 3×3) (Lavin & Gray 2016; lm_conv3x3_winograd of ops.h), 2.25×
 * fewer products than im2col (measured ~30% less CPU for the SD1.5 decoder;
 * agreement with the goldens unchanged, 4.7e-6); an upsampler's nearest 2× upsampling and
 * convolution then run as one op (lm_conv3x3_winograd_up2: 9 of the 16
 * products, same result). LIBMERGE_VAE_CONV=im2col turns Winograd off,
 * =winograd uses it at every width.
 *
 * Layouts: diffusers (decoder.*, post_quant_conv.*, bare or with a "vae."
 * prefix; attention as to_q/to_k/to_v/to_out.0 or the older
 * query/key/value/proj_attn) and LDM single-file (first_stage_model.decoder.*,
 * decoder.up.{L-1-i} = up_blocks.i, mid.block_1/attn_1/block_2, nin_shortcut,
 * norm_out; attention weights as 1×1 convs). Reference: diffusers 0.27
 * goldens in fixtures/golden/sd15 (vae_io, lcm_pipeline).
 */
#ifndef LIBMERGE_VAE_H
#define LIBMERGE_VAE_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_VAE_MAX_LEVELS 8
#define LM_VAE_SCALING_SD 0.18215f    /* SD1.x/SD2.x scaling_factor */

typedef struct lm_vae_config {
    int latent_channels;              /* 4 */
    int levels;                       /* 4 */
    int ch[LM_VAE_MAX_LEVELS];        /* block_out_channels, narrowest first: 128, 256, 512, 512 */
    int resnets;                      /* resnets per decoder up block (layers_per_block + 1 = 3) */
    int groups;                       /* 32 */
    float eps;                        /* 1e-6 */
    float scaling_factor;             /* 0.18215 */
    int ldm;                          /* 1: the file uses LDM names, 0: diffusers */
    char prefix[32];                  /* stored prefix found: "first_stage_model.", "vae." or "" */
} lm_vae_config;

typedef struct lm_vae lm_vae;

/* Loads the decoder half (post_quant_conv and decoder.*) of src (a
 * checkpoint in either layout, or a standalone VAE file) as fp32. Errors:
 * LM_EINPUT (no VAE decoder; a missing or misshapen tensor, named with
 * lm_source_path(src)), LM_ENOMEM, LM_EIO. */
int lm_vae_load_source(lm_vae **out, const lm_source *src, lm_err *err);
/* Frees the decoder and its fp32 weights; safe on NULL. */
void lm_vae_free(lm_vae *v);
/* The hyper-parameters read from the weights' shapes (channels per level,
 * levels, latent channels); owned by v, valid until lm_vae_free. */
const lm_vae_config *lm_vae_config_of(const lm_vae *v);

typedef struct lm_vae_decode_opts {
    int version;        /* LM_VAE_DECODE_OPTS_VERSION */
    int scaled;         /* 1: z is a sampler latent, divided by scaling_factor first (the
                           pipeline's decode); 0: z goes to post_quant_conv as is */
    int tile;           /* banded decoding: > 0: bands of `tile` latent rows (tile·2^i rows at
                           up level i, full width); 0: automatic (untiled up to 64×64
                           latents = 512 px, else bands sized to ~128 MiB of buffers);
                           < 0: never banded */
    int overlap;        /* ignored (kept for the ABI): bands are exact, nothing overlaps */
} lm_vae_decode_opts;
#define LM_VAE_DECODE_OPTS_VERSION 1
#define LM_VAE_DECODE_OPTS_INIT { LM_VAE_DECODE_OPTS_VERSION, 1, 0, 0 }

/* Decodes one latent z [latent_channels, h, w] → img [3, 8h, 8w] fp32,
 * unclamped (h, w: latent size; the factor is 2^(levels-1)).
 *
 * Untiled, the decoder holds three fp32 activations of the widest
 * full-resolution level (SD1.5 at 512 px: 3 × 256 MiB, ~1.1 GB peak RSS
 * with the weights; 3 GB at 1024 px). Banded decoding (opts->tile > 0,
 * or automatic above 64×64 latents) gives the same image with memory
 * bounded by a band of rows and the weights: post_quant_conv, conv_in and
 * the mid block (its attention sees every position) run in memory at
 * latent resolution; every later layer runs as sweeps over bands of full
 * rows, each reading its input with the one-row halo of a 3×3 convolution
 * and writing its output to a temporary file while summing each channel's
 * x and x², so every GroupNorm normalises with the whole activation's mean
 * and variance, exactly as untiled (diffusers' tiled_decode, which decodes
 * tiles as images of their own, is not exact; this is). Equal to the
 * untiled decode up to float rounding: max |diff| ≤ 5.4e-6 on the tests'
 * tiny VAE (test_vae_banded_matches_untiled, _winograd: band heights 1, 2,
 * 3, 7 and the whole latent, outputs about ±3; 4.1e-6 on the full-size
 * SD1.5 decoder). Costs (SD1.5, bench/render, CPU seconds on a shared
 * 2-core machine): 1.06× the untiled CPU time at 1024 px (automatic bands;
 * 78 s against 74 s), ~1.13× at 512 px with bands of 8 latent rows
 * (Winograd recomputes two rows a band; every activation is copied through
 * the page cache: ~7% of the time). Peak RSS 695 MiB at 1024 px (the mid
 * block's attention over 128×128 positions is then the peak) against 3044
 * MiB untiled; 587 MiB at 512 px (bands of 8) against 1113 MiB. What
 * still grows with the image is the in-memory front at latent resolution
 * (1/64 of the pixels): three activations plus the attention's q, k, v and
 * output, 7·ch[levels-1]·h·w floats (SD1.5: 224 MiB at 1024 px, 896 MiB at
 * 2048 px); the bands themselves stay near 128 MiB (automatic).
 * Temporary disk: two unlinked files (O_TMPFILE; else mkstemp and an unlink
 * right after, so only a crash in between could leave a name) in $TMPDIR,
 * else /tmp, reserved up front (fallocate) for the largest
 * activation each holds (the files alternate: x and out of a resnet in one,
 * its intermediate h or an upsampler's output in the other): for SD1.5
 * 256 + 128 MiB at 512 px, 1 GiB + 512 MiB at 1024 px, ∝ image area. Their
 * pages sit in the kernel's page cache, not in the process's memory (on a
 * tmpfs $TMPDIR they are memory all the same: point it at a disk). A band
 * height (tile) at least the latent's height is one band: that decodes
 * untiled, which needs less memory than one band with its temporary files.
 * opts may be NULL (LM_VAE_DECODE_OPTS_INIT). Errors: LM_EUSAGE (bad size),
 * LM_ENOMEM, LM_EIO (the temporary files: named by their directory, the
 * reason, "disk full" for ENOSPC). */
int lm_vae_decode(const lm_vae *v, const float *z, int h, int w, const lm_vae_decode_opts *opts,
                  float *img, lm_err *err);

/* Floating-point operations of one untiled decode of an h×w latent
 * (multiply-adds counted as 2; convolutions, attention products and
 * projections; norms and activations left out). SD1.5 at 64×64: ~2.5e12. */
double lm_vae_flops(const lm_vae *v, int h, int w);

/* The pipeline's post-processing (diffusers VaeImageProcessor, numpy → PIL):
 * img [3, H, W] → rgb [H, W, 3] uint8, round(clamp(x/2 + 0.5, 0, 1)·255)
 * in float32 with round-half-to-even. */
void lm_vae_image_to_u8(const float *img, int H, int W, uint8_t *rgb);

#ifdef __cplusplus
}
#endif
#endif
