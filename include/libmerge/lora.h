/* libmerge/lora.h — LoRA files: naming conventions, modules, ΔW.
 *
 * A LoRA file is parsed into modules; each module is one layer's update with
 * its factors (up/down, LoHa, LoKr, Tucker mid, full diff), its alpha and rank,
 * and optional DoRA magnitude. ΔW of a module is computed in fp32 on
 * cblas_sgemm with the module's scale (alpha/rank, or `.scale`) folded in.
 *
 * The low-rank update of LoRA (Hu et al. 2021): ΔW = up · down · (alpha / rank),
 * up [out, r], down [r, in] (linear) or down [r, in, kh, kw], up [out, r, 1, 1]
 * (conv). The LCM-LoRA paper (arXiv:2311.05556) calls a set of them τ.
 *
 * Implementation: libmerge/lora/ (lora_parse.c names and groups tensors,
 * lora_delta.c computes ΔW, lora_apply.c applies a module to a base weight).
 * The full table of key suffixes per convention is in lora_parse.c.
 *
 * λ-combinations: plain modules are linear in λ, so Σ λ_k·ΔW_k may be
 * summed before adding to W. DoRA modules are not (W′ = m ⊙ V/‖V‖ with
 * V = W + λ·ΔW): bake them one at a time with lm_lora_apply, never sum them.
 */
#ifndef LIBMERGE_LORA_H
#define LIBMERGE_LORA_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_lora_convention {
    LM_LORA_UNKNOWN = 0,
    LM_LORA_KOHYA,             /* lora_unet_… / lora_te_… / lora_te1_…, .lora_down/.lora_up/.alpha (also LyCORIS) */
    LM_LORA_DIFFUSERS,         /* unet.….lora.down.weight, text_encoder.… (or no prefix) */
    LM_LORA_DIFFUSERS_ATTNPROC,/* ….processor.to_q_lora.down.weight (diffusers ≤ 0.20) */
    LM_LORA_PEFT               /* ….lora_A.weight / lora_B.weight, base_model.model. prefix */
} lm_lora_convention;

typedef enum lm_module_kind {
    LM_MOD_LORA = 0,   /* up·down (linear, conv 1×1, conv k×k down with 1×1 up) */
    LM_MOD_TUCKER,     /* LoCon with lora_mid: up, mid [r,r,kh,kw], down */
    LM_MOD_LOHA,       /* (w1a·w1b) ⊙ (w2a·w2b), optionally with hada_t1/hada_t2 */
    LM_MOD_LOKR,       /* w1 ⊗ w2, each full or as _a·_b factors, optional lokr_t2 */
    LM_MOD_FULL        /* .diff (and .diff_b): ΔW stored whole */
} lm_module_kind;

typedef enum lm_component {
    LM_COMP_UNET = 0,
    LM_COMP_TE,        /* SD1.x/SD2.x text encoder, SDXL first text encoder */
    LM_COMP_TE2        /* SDXL second text encoder (OpenCLIP bigG) */
} lm_component;

typedef struct lm_lora_module {
    const char *name;        /* module name as in the file, factor suffix removed
                                ("lora_unet_down_blocks_0_attentions_0_proj_in",
                                 "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") */
    lm_module_kind kind;
    lm_component component;
    int rank;                /* inner dimension r; 0 for LM_MOD_FULL */
    float alpha;             /* as stored; = rank when absent (scale 1) */
    float scale;             /* what ΔW is multiplied by: alpha/rank, `.scale` when present,
                                1 for full LoKr and diff */
    int has_dora;            /* a dora_scale magnitude is present: not linear in λ */
    int has_bias;            /* a .diff_b bias update is present */
    int ndim;                /* ΔW's natural shape: 2 (linear) or 4 (conv) */
    int64_t shape[4];        /* [out, in] or [out, in, kh, kw]; LoKr conv with 2-D factors
                                gives [out, in·kh·kw] until reshaped onto its target */
    lm_lora_convention convention; /* this module's naming convention (a file may mix them) */
} lm_lora_module;

/* The tensors a module is made of (see the suffix table in lora_parse.c). */
typedef enum lm_lora_factor {
    LM_FAC_UP = 0,     /* lora_up / lora.up / lora_B / _lora.up: [out, r] or [out, r, 1, 1] */
    LM_FAC_DOWN,       /* lora_down / lora.down / lora_A / _lora.down: [r, in] or [r, in, kh, kw] */
    LM_FAC_MID,        /* lora_mid: [r, r, kh, kw] (LoCon Tucker core) */
    LM_FAC_ALPHA,      /* alpha: float scalar, 0-dim or 1 element */
    LM_FAC_SCALE,      /* scale: float scalar, overrides alpha/rank */
    LM_FAC_HADA_W1A, LM_FAC_HADA_W1B, LM_FAC_HADA_W2A, LM_FAC_HADA_W2B,
    LM_FAC_HADA_T1, LM_FAC_HADA_T2,
    LM_FAC_LOKR_W1, LM_FAC_LOKR_W1A, LM_FAC_LOKR_W1B,
    LM_FAC_LOKR_W2, LM_FAC_LOKR_W2A, LM_FAC_LOKR_W2B, LM_FAC_LOKR_T2,
    LM_FAC_DORA,       /* dora_scale / lora_magnitude_vector: DoRA magnitude m */
    LM_FAC_DIFF,       /* diff: ΔW stored whole */
    LM_FAC_DIFF_B,     /* diff_b: bias update [out] */
    LM_FAC_COUNT
} lm_lora_factor;

typedef struct lm_lora lm_lora;

/* Opens a LoRA file (safetensors, or a torch file through the PyTorch
 * reader), detects its convention and groups its tensors into modules.
 * Errors: those of lm_source_open; LM_EINPUT when the tensors do not form
 * LoRA modules (a factor without its partner, rank disagreeing between up
 * and down, alpha not a float scalar), naming the key. */
int lm_lora_open(lm_lora **out, const char *path, const lm_open_opts *opts, lm_err *err);
/* Closes the LoRA (and the source lm_lora_open opened); safe on NULL. */
void lm_lora_close(lm_lora *l);

/* As lm_lora_open on a source the caller already opened (model-inspect,
 * tests). The source is borrowed: it must outlive the lm_lora, and the
 * caller closes it after lm_lora_close. Same errors as lm_lora_open. */
int lm_lora_from_source(lm_lora **out, const lm_source *src, lm_err *err);

/* The file's main naming convention (modules carry their own); its name:
 * "kohya", "diffusers", "diffusers-attnproc", "peft", "unknown"; the source
 * the factors are read from (owned by l, or borrowed: lm_lora_from_source). */
lm_lora_convention lm_lora_convention_of(const lm_lora *l);
const char *lm_lora_convention_name(lm_lora_convention c);
const lm_source *lm_lora_source(const lm_lora *l);
/* Modules are listed in byte order of their names (strcmp), not file order;
 * lm_lora_module_at returns NULL past the end. */
size_t lm_lora_count(const lm_lora *l);
const lm_lora_module *lm_lora_module_at(const lm_lora *l, size_t i);

/* Source entry index of factor f of module i, or -1 when the module has
 * none or i / f is out of range (lora-merge reads up/down through this). */
int64_t lm_lora_factor_entry(const lm_lora *l, size_t i, lm_lora_factor f);

/* The training algorithm the modules add up to: "lora" (up·down, linear or
 * conv 1×1), "locon" (conv k×k or Tucker), "loha", "lokr", "full", "dora"
 * (any module with a DoRA magnitude), "mixed" (several kinds). */
const char *lm_lora_algo_name(const lm_lora *l);
const char *lm_module_kind_name(lm_module_kind k);   /* "lora", "tucker", "loha", "lokr", "full" */
const char *lm_component_name(lm_component c);      /* "unet", "te", "te2" */

/* Tensors of the file that belong to no module (unknown suffix, or an
 * alpha/scale without factors): they are skipped, and listed here (names
 * owned by l; NULL when i >= lm_lora_ignored_count). */
size_t lm_lora_ignored_count(const lm_lora *l);
const char *lm_lora_ignored_at(const lm_lora *l, size_t i);

/* Detects the naming convention of a source's tensor names without building
 * modules (model-inspect uses it), from the key prefixes and factor suffixes
 * of the table in lora_parse.c (kohya-ss sd-scripts, diffusers, PEFT).
 * Never fails: LM_LORA_UNKNOWN when it is not a LoRA. */
lm_lora_convention lm_lora_detect(const lm_source *s);

/* ΔW of module i in fp32, scale folded in, written to dst (numel of
 * module->shape floats, row-major). For a DoRA module this is the plain
 * low-rank ΔW, without the magnitude (use lm_lora_apply). Errors: LM_EUSAGE
 * (i out of range), LM_EIO/LM_EINPUT from reading factors, LM_ENOMEM.
 * Formulas and their sources: libmerge/lora/lora_delta.c. */
int lm_lora_delta(const lm_lora *l, size_t i, float *dst, lm_err *err);

/* Bias update (.diff_b) of module i in fp32: dst [shape[0]] (the module's
 * out). Not scaled by λ (the caller does). Errors: LM_EUSAGE (i out of range,
 * or the module has no .diff_b), those of lm_source_read_f32, naming the
 * file and the module. */
int lm_lora_delta_bias(const lm_lora *l, size_t i, float *dst, lm_err *err);

/* Applies module i with weight λ to a base weight W (fp32, row-major,
 * wshape/wndim the target's shape, rows [row0, row0+rows) of it when the
 * target is a packed in_proj_weight, else row0 = 0, rows = wshape[0]).
 * Plain modules: W += λ·ΔW, with ΔW reshaped onto the target when the
 * element counts agree (linear [o,i] onto conv [o,i,1,1], LoKr 2-D onto 4-D).
 * DoRA modules (not linear in λ, so applied one at a time, never summed):
 * W' = m ⊙ V/‖V‖, V = W + λ·ΔW, the norm's axis taken from m's shape.
 * The output dimension must equal `rows` as well, so a transposed layer is
 * never reinterpreted. DoRA: λ scales ΔW inside the norm (PEFT); the norm is
 * per output row for m [out] / [out,1,…] (PEFT, newer LyCORIS) and per input
 * channel over out·kh·kw for m [1,in,…] (older LyCORIS); a packed target's
 * norm covers only the module's rows. At λ = 1 this equals LyCORIS/ComfyUI;
 * for other λ they interpolate W + λ·(W′₁ − W) instead.
 * Errors: LM_EMISMATCH naming both shapes when they cannot agree (or a DoRA
 * magnitude that fits neither axis), LM_EUSAGE (rows outside the target,
 * i out of range), those of lm_lora_delta. */
int lm_lora_apply(const lm_lora *l, size_t i, float lambda, float *W,
                  const int64_t *wshape, int wndim, int64_t row0, int64_t rows, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
