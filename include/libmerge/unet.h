/* libmerge/unet.h — the Stable Diffusion UNet (SD1.x; SD2.x and SDXL by the
 * same rules), ε = UNet(latent, timestep, context), in fp32 on the ops of
 * ops.h, computing what diffusers' UNet2DConditionModel computes.
 *
 * Hyper-parameters are inferred from tensor names and shapes: levels and
 * channels per level (down_blocks.i.resnets.0.conv1), layers per block,
 * which levels have cross-attention and how many transformer blocks each has,
 * the context width (attn2.to_k), conv or linear proj_in, the time-embedding
 * width, and the SDXL add_embedding. Attention heads cannot be read from
 * shapes: by default 8 heads per block (SD1.x's configuration, where
 * diffusers' attention_head_dim = 8 is the number of heads) unless the
 * context is 1024 or 2048 wide (SD2.x, SDXL: heads of width 64);
 * lm_unet_opts overrides either.
 *
 * Weights come from a tensor source in the LDM single-file layout or the
 * diffusers layout (bare or "unet."-prefixed), any float dtype, converted
 * to fp32 at load; LoRAs are applied to the fp32 weights at load time.
 * Memory: the fp32 weights plus the activations of one image at a time
 * (kept in a pool between calls, so later steps allocate nothing; about
 * 0.2 GB at 64×64 for SD1.5), freed by lm_unet_free. The 3×3 convolutions
 * of every level but the lowest keep their weights Winograd-transformed
 * instead (lm_conv3x3_winograd; 16/9 the size: SD1.5 3.44 GB of fp32
 * weights take 4.4 GB; peak RSS at 512 px 5.65 GiB). The forward pass runs
 * on as many threads as OpenBLAS is set to use (see ops.h). An lm_unet is
 * not safe to use from two threads at once.
 */
#ifndef LIBMERGE_UNET_H
#define LIBMERGE_UNET_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_UNET_MAX_LEVELS 6

typedef struct lm_unet_config {
    int in_channels, out_channels;   /* 4, 4 */
    int levels;                      /* len(block_out_channels): 4 (SD1.x/2.x), 3 (SDXL) */
    int channels[LM_UNET_MAX_LEVELS];/* block_out_channels: 320, 640, 1280, 1280 */
    int layers_per_block;            /* resnets per down block (2); up blocks have one more */
    int down_depth[LM_UNET_MAX_LEVELS]; /* transformer blocks per attention, 0 = no attention */
    int up_depth[LM_UNET_MAX_LEVELS];   /* the same for up block i (diffusers order) */
    int mid_depth;                   /* transformer blocks of the mid attention (0: none) */
    int heads[LM_UNET_MAX_LEVELS];   /* attention heads per level (head width = channels/heads) */
    int mid_heads;
    int context_dim;                 /* cross-attention width: 768 (SD1), 1024 (SD2), 2048 (SDXL) */
    int linear_proj;                 /* proj_in/proj_out are linear (SD2, SDXL), else 1×1 conv */
    int time_proj_dim;               /* sinusoidal embedding width (= channels[0]) */
    int time_embed_dim;              /* 4·channels[0] */
    int adm_in_channels;             /* SDXL add_embedding input width (2816), 0 if none */
    int groups;                      /* GroupNorm groups: 32 */
} lm_unet_config;

/* A tap receives intermediate activations of one image during
 * lm_unet_forward (tests and debugging): name is diffusers' module name
 * ("time_proj", "time_embedding", "add_embedding" (SDXL), "conv_in", "down_blocks.N", "mid_block",
 * "up_blocks.N", "conv_norm_out" (the norm before SiLU)), data is [C, H, W]
 * (H = W = 1 for the embeddings), n is the batch index. */
typedef void (*lm_unet_tap)(void *ctx, const char *name, int n, const float *data,
                            int C, int H, int W);

typedef struct lm_unet_opts {
    int version;             /* LM_UNET_OPTS_VERSION */
    int num_heads;           /* > 0: heads in every attention block */
    int head_dim;            /* > 0: heads = channels / head_dim (ignored when num_heads > 0) */
    lm_unet_tap tap;         /* may be NULL */
    void *tap_ctx;
} lm_unet_opts;
#define LM_UNET_OPTS_VERSION 1
#define LM_UNET_OPTS_INIT { LM_UNET_OPTS_VERSION, 0, 0, NULL, NULL }

typedef struct lm_unet lm_unet;

/* Loads the UNet of src (a whole checkpoint or a UNet file), LDM or
 * diffusers layout, with n_loras LoRAs applied at weights λ = lambdas[i]
 * (loras and lambdas may be NULL when n_loras = 0; the LoRAs are read during
 * the call and not kept). opts may be NULL. Errors: LM_EINPUT (no UNet, a
 * tensor missing or with a shape that does not fit the inferred structure,
 * naming file and tensor), LM_EMISMATCH (a LoRA module that matches no UNet
 * tensor, or whose ΔW does not fit), LM_EIO, LM_ENOMEM. */
int lm_unet_load(lm_unet **out, const lm_source *src, const lm_unet_opts *opts,
                 const lm_lora *const *loras, const float *lambdas, size_t n_loras, lm_err *err);

/* Frees the weights and the activation pool; safe on NULL. */
void lm_unet_free(lm_unet *u);

/* The structure inferred at load, owned by u. */
const lm_unet_config *lm_unet_config_of(const lm_unet *u);

/* Floating-point operations of one forward pass of one image with a
 * latent h×w and a context of ctx_len tokens (multiply-adds counted as 2;
 * exact for sides that are multiples of 2^(levels−1), close otherwise). */
double lm_unet_flops(const lm_unet *u, int h, int w, int ctx_len);

/* ε prediction: latent [N, in_channels, h, w], timesteps [N] (in training
 * steps, 0..999, as floats), context [N, ctx_len, context_dim] (the text
 * encoder's last hidden states), y [N, adm_in_channels] (SDXL's pooled text
 * embedding + size/crop embedding; NULL otherwise) → eps [N, out_channels,
 * h, w]. Any h, w ≥ 1: sides that are not multiples of 2^(levels−1) are
 * handled as diffusers does (stride-2 convolutions round up, upsamplers
 * resize to the skip connection's size). Images of the batch are computed
 * one after another. Errors: LM_EUSAGE (empty sizes), LM_ENOMEM. */
int lm_unet_forward(lm_unet *u, const float *latent, int N, int h, int w,
                    const float *timesteps, const float *context, int ctx_len,
                    const float *y, float *eps, lm_err *err);

/* SDXL's added conditioning y [N, adm_in_channels] for lm_unet_forward, as
 * diffusers builds it (addition_embed_type "text_time"): the pooled text
 * embedding text_embeds [N, pooled_dim] (1280 for SDXL base) followed by the
 * sinusoidal embedding (flip_sin_to_cos, shift 0, width d = (adm −
 * pooled_dim)/6, 256 for SDXL) of each of the 6 time_ids [N, 6] =
 * (original_h, original_w, crop_top, crop_left, target_h, target_w), in
 * pixels. Errors: LM_EUSAGE when the UNet has no added conditioning or its
 * width does not split so. */
int lm_unet_sdxl_y(const lm_unet *u, const float *text_embeds, int pooled_dim, const float *time_ids,
                   int N, float *y, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
