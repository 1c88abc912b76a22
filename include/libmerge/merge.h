/* libmerge/merge.h — baking LoRAs into a checkpoint, merging LoRAs, extracting a LoRA.
 *
 * Bake (lcm-bake): for every tensor of the base, in file order,
 *     W' = round_out( W + Σ_i λ_i · ΔW_i )
 * with W read as fp32, every ΔW_i in fp32 (scale alpha/rank folded in, lora.h),
 * one rounding to the output dtype (round to nearest even). This is the LCM-LoRA
 * paper's W' = W + λ1·τ' + λ2·τ_LCM (arXiv:2311.05556, eq. for "combination"). DoRA
 * modules are not linear in λ and are applied one at a time, in command-line order,
 * after the plain modules of the same tensor. Tensors no LoRA touches are copied byte
 * for byte when their dtype does not change.
 *
 * LoRA merge (lora-merge): one LoRA whose ΔW is Σ_i λ_i · ΔW_i, either exactly
 * (ranks concatenated, λ_i·scale_i folded into each input's up factor, alpha = new
 * rank) or re-factorised to rank R with a truncated SVD. Extract: a LoRA from the
 * difference TUNED − BASE through the same SVD.
 *
 * Every output carries a recipe (metadata key LM_RECIPE_KEY, JSON described in
 * lcm-bake(1), RECIPE, and in recipe.c) with each input's SHA-256 and λ, so lcm-verify can recompute
 * the file from its inputs alone; see lm_recipe_parse.
 */
#ifndef LIBMERGE_MERGE_H
#define LIBMERGE_MERGE_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"
#include "libmerge/source.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_RECIPE_KEY "libmerge.recipe"
#define LM_RECIPE_FORMAT "libmerge.recipe/1"
#define LM_TOOL_VERSION "0.1.0"

/* One weighted input: a LoRA (bake, lora-merge) with its λ. role is a free label
 * recorded in the recipe ("lora", "lcm"); NULL means "lora". */
typedef struct lm_weighted {
    const char *path;
    double lambda;
    const char *role;
} lm_weighted;

/* Progress callback: done/total units (tensors or modules); may be NULL. */
typedef void (*lm_progress_fn)(void *ctx, const char *what, size_t done, size_t total);

/* ---- bake ---------------------------------------------------------------------- */

typedef struct lm_bake_opts {
    int version;              /* LM_BAKE_OPTS_VERSION */
    lm_dtype out_dtype;       /* LM_DT_INVALID: keep each tensor's dtype; else F16/BF16/F32
                                 for every float tensor (non-float tensors are kept) */
    int threads;              /* workers computing updates; 0: one per online CPU plus one
                                 (a worker waits on the disk while its direct write runs) */
    int allow_unmatched;      /* 1: LoRA modules with no target are skipped and counted */
    int fail_on_overflow;     /* 1: a finite value that becomes ±Inf in the output dtype, or
                                 NaN/±Inf that the update produces from a finite base value,
                                 is an error (LM_EINPUT) and no output is written */
    int hash_output;          /* 1: add modelspec.hash_sha256 (SHA-256 of the data area);
                                 costs one more pass over the output */
    const char *title;        /* modelspec.title; NULL: the output file name without extension */
    lm_progress_fn progress;
    void *progress_ctx;
} lm_bake_opts;
#define LM_BAKE_OPTS_VERSION 1
#define LM_BAKE_OPTS_INIT { LM_BAKE_OPTS_VERSION, LM_DT_INVALID, 0, 0, 0, 0, NULL, NULL, NULL }

typedef struct lm_bake_overflow {
    char *name;               /* output tensor */
    int64_t count;            /* finite fp32 values that became ±Inf in the output dtype */
    int64_t nonfinite;        /* values the update made NaN or ±Inf in fp32 (where the base
                                 value was finite): W + Σ λ·ΔW overflowed fp32 */
} lm_bake_overflow;

typedef struct lm_bake_lora_report {
    char *path;
    char sha256[65];
    uint64_t bytes;           /* file size (the recipe records it with the SHA-256) */
    double lambda;
    const char *role;         /* points at the caller's string or "lora" */
    const char *convention;   /* lm_lora_convention_name */
    size_t modules, matched, unmatched, dora;
} lm_bake_lora_report;

typedef struct lm_bake_report {
    char base_sha256[65];
    const char *arch, *layout;       /* lm_arch_name / lm_layout_name of the base */
    size_t tensors;                  /* written */
    size_t touched;                  /* received at least one update */
    size_t copied;                   /* copied byte for byte */
    size_t converted;                /* untouched but converted to another dtype */
    uint64_t bytes_written;          /* output file size */
    int64_t overflow_total;          /* Σ count */
    int64_t nonfinite_total;         /* Σ nonfinite */
    lm_bake_overflow *overflows;     /* one per tensor with overflow or non-finite values,
                                        in file order */
    size_t n_overflows;
    lm_bake_lora_report *loras;
    size_t n_loras;
    char out_sha256[65];             /* data-area SHA-256 when opts->hash_output, else "" */
    double seconds_total, seconds_hash, seconds_compute;
    double seconds_plan;             /* inputs opened, hashed (LoRAs), checked, planned */
    double seconds_commit;           /* header rewrite, fsync, rename */
} lm_bake_report;

/* Bakes loras (n of them, each with its λ) into base, writing a safetensors file at out.
 * Everything is checked before the first output byte: every LoRA opens and resolves onto
 * the base through the key map (unmatched modules are an error unless allow_unmatched),
 * every ΔW fits its target's shape, no LoRA holds a NaN or ±Inf (LM_EINPUT naming the
 * file and tensor), out is none of the inputs. Memory: about the largest
 * touched tensor per worker plus the LoRAs; the base is streamed (mmap, pages released
 * after use). Output metadata: the base's metadata, then modelspec.* (architecture,
 * title, implementation, resolution, prediction_type, date, optionally hash_sha256),
 * sd_merge_recipe / sd_merge_models (AUTOMATIC1111's convention) and LM_RECIPE_KEY.
 * report (may be NULL) is filled on success and on overflow failure; free it with
 * lm_bake_report_free. Errors: LM_EUSAGE (out is an input, bad option), LM_EMISMATCH
 * (unmatched keys, shape mismatch, LoRA of another architecture), LM_EINPUT
 * (a LoRA with NaN/±Inf values; fail_on_overflow), LM_EIO (read, write, disk full: no output file is left),
 * LM_ENOMEM, LM_EINTR. */
int lm_bake(const char *base, const lm_weighted *loras, size_t n, const char *out,
            const lm_bake_opts *opts, lm_bake_report *report, lm_err *err);
/* Frees what the report holds and empties it; safe on NULL and on an emptied report. */
void lm_bake_report_free(lm_bake_report *r);

/* ---- LoRA merge, extract ----------------------------------------------------------- */

typedef enum lm_lora_format {
    LM_LFMT_KOHYA = 0,     /* lora_unet_… / lora_te_….lora_down.weight, .lora_up.weight, .alpha */
    LM_LFMT_PEFT           /* unet.<path>.lora_A.weight / lora_B.weight, scale folded (no alpha) */
} lm_lora_format;

typedef struct lm_lmerge_opts {
    int version;              /* LM_LMERGE_OPTS_VERSION */
    int rank;                 /* 0: exact rank concatenation; > 0: truncated SVD to this rank */
    lm_lora_format format;
    lm_dtype out_dtype;       /* LM_DT_INVALID: widest float dtype of the inputs' factors
                                 (fp16 + bf16 gives fp32); extract: the tuned model's */
    int threads;              /* 0: one per online CPU */
    const char *base;         /* optional: match modules by their target in this checkpoint
                                 (key map) instead of by normalised name */
    lm_progress_fn progress;
    void *progress_ctx;
} lm_lmerge_opts;
#define LM_LMERGE_OPTS_VERSION 1
#define LM_LMERGE_OPTS_INIT { LM_LMERGE_OPTS_VERSION, 0, LM_LFMT_KOHYA, LM_DT_INVALID, 0, NULL, NULL, NULL }

typedef struct lm_lmerge_module {
    char *name;               /* output module name (kohya or peft spelling) */
    int rank;                 /* rank written */
    int64_t out, in;          /* ΔW as a matrix [out, in·kh·kw] */
    int kh, kw;               /* 1,1 for linear */
    int sources;              /* number of inputs that had this module */
    double rel_error;         /* ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F (0 for exact; 0 when ‖ΔW‖ = 0) */
    double energy;            /* Σ_{k≤R} σ_k² / Σ σ_k² (1 for exact) */
} lm_lmerge_module;

typedef struct lm_lmerge_report {
    lm_lmerge_module *modules;
    size_t n_modules;
    double max_rel_error, mean_rel_error, min_energy;
    uint64_t bytes_written;
    char (*input_sha256)[65];  /* one per input, in the order given */
    size_t n_inputs;
    char **dropped;            /* rank R > 0: modules left out because their Σ λ·ΔW is zero
                                  within fp32 rounding (‖Σ λ·ΔW‖_F ≤ 1e-5 · Σ |λ|·‖ΔW‖_F,
                                  e.g. X and X:-1, or every λ 0); names as written */
    size_t n_dropped;
    double seconds_total;
} lm_lmerge_report;

/* Merges n LoRAs into one at out, ΔW_out = Σ λ_i ΔW_i.
 * Modules are matched across inputs by their normalised name (libmerge(7), LORA NAMES):
 * the component (unet / te / te2) and the module path with '.' turned into '_', after
 * removing the convention's prefix and factor suffix ("unet.down_blocks.0…attn1.to_k",
 * "lora_unet_down_blocks_0_…_attn1_to_k", "down_blocks.0…attn1.processor.to_k_lora" all
 * become unet:down_blocks_0_…_attn1_to_k); with opts->base, by target tensor instead.
 * rank 0 (exact): up = [c_1·up_1 | c_2·up_2 | …], down = [down_1; down_2; …],
 * c_i = λ_i·alpha_i/rank_i, alpha = Σ rank_i (scale 1), so up·down = Σ λ_i·ΔW_i in exact
 * arithmetic (fp32 folding; one rounding per factor element to out_dtype). Plain LoRA
 * modules only (LoHa/LoKr/Tucker/full/DoRA: LM_EUNSUPPORTED naming the module, use a rank).
 * rank R > 0: ΔW = Σ λ_i ΔW_i (any module kind but DoRA) is factorised by a truncated
 * SVD, up = U_R·Σ_R, down = V_Rᵀ, alpha = R: exactly through the thin QR of the
 * concatenated factors when every input module is plain up·down, else on the dense ΔW
 * (LAPACKE sgesdd, or a randomised SVD when R + 16 ≤ min(out, in·k·k)/4); conv k×k as LoCon does: ΔW reshaped to
 * [out, in·k·k], down [R, in, k, k], up [out, R, 1, 1]. R larger than min(out, in·k·k) is
 * clipped for that module. A module whose Σ λ·ΔW cancels to zero (within fp32 rounding of
 * its inputs) is not written and is listed in report->dropped. Errors: LM_EMISMATCH (same module, different shapes; different
 * architectures), LM_EUNSUPPORTED, LM_EUSAGE (out is an input), LM_EIO, LM_ENOMEM. */
int lm_lora_merge(const lm_weighted *inputs, size_t n, const char *out,
                  const lm_lmerge_opts *opts, lm_lmerge_report *report, lm_err *err);

/* Extracts a LoRA of rank opts->rank (> 0) from ΔW = TUNED − BASE for every weight the
 * key map knows a LoRA name for (UNet linear/conv, text encoder linear), written with
 * kohya names (lora_unet_<diffusers path>, lora_te_…) or peft names. Tensors equal in
 * both files are left out. Errors: LM_EMISMATCH (different tensor sets or shapes,
 * different architectures), LM_EUSAGE (rank 0), and those of lm_lora_merge. */
int lm_lora_extract(const char *base, const char *tuned, const char *out,
                    const lm_lmerge_opts *opts, lm_lmerge_report *report, lm_err *err);
/* Frees what the report holds and empties it; safe on NULL and on an emptied report. */
void lm_lmerge_report_free(lm_lmerge_report *r);

/* Truncated SVD of a row-major [m, n] fp32 matrix A (A is overwritten): writes
 * up [m, k] = U_k·Σ_k and down [k, n] = V_kᵀ with k = min(rank, m, n), and returns k
 * through *k_out; *rel_error = ‖A − up·down‖_F / ‖A‖_F and *energy = Σ_{j<k} σ_j² / Σ σ_j²
 * (both from the singular values). LAPACKE_sgesdd (divide and conquer).
 * Errors: LM_ENOMEM, LM_EINTERNAL (LAPACK did not converge, info named). */
int lm_svd_truncate(float *A, int64_t m, int64_t n, int rank, float *up, float *down,
                    int *k_out, double *rel_error, double *energy, lm_err *err);

/* ---- recipe ------------------------------------------------------------------------ */

typedef struct lm_recipe_input {
    char *name;               /* file name (basename) as given */
    char sha256[65];          /* of the whole file, lower-case hex */
    uint64_t bytes;
    double lambda;            /* exact (written with 17 significant digits) */
    char *role;               /* "base", "tuned", "lora", "lcm" */
} lm_recipe_input;

typedef struct lm_recipe {
    char *tool;               /* "lcm-bake" / "lora-merge" */
    char *tool_version;
    char *operation;          /* "bake", "lora-merge-exact", "lora-merge-svd", "extract" */
    char *dtype;              /* "keep" or a safetensors dtype name */
    int rank;                 /* lora-merge-svd / extract; 0 otherwise */
    char *format;             /* lora-merge: "kohya" / "peft"; bake: "safetensors" */
    int allow_unmatched;
    lm_recipe_input *inputs;  /* base first (bake, extract), then LoRAs in application order */
    size_t n_inputs;
} lm_recipe;

/* Parses the JSON value of LM_RECIPE_KEY. Errors: LM_EINPUT naming the field. */
int lm_recipe_parse(const char *json, lm_recipe *out, lm_err *err);
/* Serialises a recipe as the JSON lm_recipe_parse reads (LM_RECIPE_FORMAT; fields in
 * lcm-bake(1), RECIPE) into a malloc'd string the caller frees, or NULL on allocation
 * failure. */
char *lm_recipe_json(const lm_recipe *r);
/* Frees the strings and inputs of r and empties it; safe on NULL. */
void lm_recipe_free(lm_recipe *r);

#ifdef __cplusplus
}
#endif
#endif
