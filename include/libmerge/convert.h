/* libmerge/convert.h — model-convert: any model file → safetensors, with a
 * dtype change, pruning, EMA weights and a layout change on the way.
 *
 * The input is any lm_source (safetensors, torch zip, torch legacy; PyTorch
 * files through the restricted unpickler). The output is written by the
 * streaming safetensors writer: memory holds about one tensor (less when the
 * tensor lies contiguous in the input's mapping: then it is converted in
 * chunks straight from the mapping, whose pages are released once written).
 */
#ifndef LIBMERGE_CONVERT_H
#define LIBMERGE_CONVERT_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"
#include "libmerge/keymap.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_convert_opts {
    int version;             /* LM_CONVERT_OPTS_VERSION */
    lm_dtype dtype;          /* LM_DT_INVALID keeps every dtype; else LM_DT_F16, LM_DT_BF16 or
                                LM_DT_F32: floating tensors only are converted (RNE), integer
                                and bool tensors are copied */
    int prune;               /* drop EMA copies and training state (see lm_model_convert) */
    int use_ema;             /* replace live UNet weights by their EMA copies */
    lm_layout layout;        /* LM_LAYOUT_UNKNOWN keeps names; LDM or DIFFUSERS converts */
    int skip_unknown;        /* PyTorch input: read non-whitelisted globals as opaque values */
    /* Called once per tensor whose down-cast turned finite values into ±Inf
     * (count = how many); may be NULL. */
    void (*on_overflow)(void *ctx, const char *name, int64_t count);
    /* Called for each input tensor left out, with why ("pruned", "EMA copy used",
     * "no <layout> name"); may be NULL. */
    void (*on_drop)(void *ctx, const char *name, const char *why);
    /* Progress in output bytes; may be NULL. */
    void (*on_progress)(void *ctx, uint64_t done, uint64_t total);
    void *ctx;
    int standalone_vae;      /* with layout LDM: the output holds only a VAE, named as a
                                standalone VAE file ("encoder.…", "decoder.…", as
                                vae-ft-mse-840000 and sdxl_vae are, and A1111 and ComfyUI
                                load VAE files), not "first_stage_model.…" */
} lm_convert_opts;
#define LM_CONVERT_OPTS_VERSION 1
#define LM_CONVERT_OPTS_INIT { LM_CONVERT_OPTS_VERSION, LM_DT_INVALID, 0, 0, LM_LAYOUT_UNKNOWN, 0, NULL, NULL, NULL, NULL, 0 }

typedef struct lm_convert_report {
    size_t n_in;             /* tensors in the input */
    size_t n_out;            /* tensors written */
    size_t n_pruned;         /* left out by prune */
    size_t n_ema;            /* live weights replaced by EMA copies */
    size_t n_unmapped;       /* left out: no name in the target layout, or not the VAE
                                (standalone_vae) */
    size_t n_converted;      /* floating tensors whose dtype changed */
    size_t n_overflow_tensors;
    int64_t n_overflow_values;
    uint64_t bytes_out;      /* size of the data area */
    char source_sha256[65];  /* of the input file, lower-case hex */
    char from_layout[16], to_layout[16];
} lm_convert_report;

/* Converts the model file in_path into the safetensors file out_path.
 *
 * Order of operations, per tensor: (1) use_ema: every "model.<name>" for
 * which "model_ema.<name without dots>" exists takes the EMA tensor's data
 * (LitEma's naming in CompVis latent-diffusion, as the SD prune scripts and
 * A1111's use_ema path do); the model_ema.* tensors are then left out;
 * (2) prune: leaves out "model_ema.*" and training state — the tensors under
 * optimizer, optimizer_states, optimizer_state_dict, lr_scheduler(s),
 * callbacks — keeping what inference uses (the rule of the SD1.x prune
 * scripts A1111 and kohya-ss users run: keep the state dict, drop the EMA
 * copies and everything the trainer saved beside it); (3) layout: names go
 * through lm_layout_convert_name for the detected architecture; a VAE
 * attention 1×1 conv becomes a linear weight and back, an OpenCLIP
 * projection is transposed; an OpenCLIP encoder's packed
 * attn.in_proj_weight [3d, d] / in_proj_bias [3d] becomes
 * self_attn.q_proj/k_proj/v_proj [d, d] / [d] (row blocks 0, 1, 2) and
 * back (concatenated in that order), each output tensor streamed from its
 * input rows (diffusers' convert_open_clip_checkpoint and the reverse in
 * scripts/convert_diffusers_to_original_sdxl.py); an incomplete q/k/v set or
 * one whose shapes or dtypes disagree is LM_EINPUT naming the tensor;
 * tensors with no name in the target layout (LDM scheduler buffers such as
 * alphas_cumprod, OpenCLIP's logit_scale going to diffusers, transformers'
 * position_ids of an OpenCLIP encoder going to LDM) are left out, counted
 * in n_unmapped and passed to on_drop with the reason;
 * a single-component diffusers output uses bare names as diffusers' own
 * per-component files do; (4) dtype.
 *
 * Output: tensors in the reference safetensors writer's order; metadata is
 * the input's (if any; "layout" updated when converted), plus
 * "format": "pt" and "source_sha256": the input file's SHA-256.
 * report may be NULL. Errors: LM_EUSAGE (bad options, out is the input),
 * LM_EINPUT/LM_EUNSUPPORTED (the input, or use_ema without EMA tensors,
 * a layout change on an unrecognised architecture), LM_EIO, LM_ENOMEM.
 * Nothing is left at out_path on failure. */
int lm_model_convert(const char *in_path, const char *out_path, const lm_convert_opts *opts,
                     lm_convert_report *report, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
