/* libmerge/verify.h — proving that a baked checkpoint or a merged LoRA is what its
 * recipe says (lcm-verify bake, lora, compare, sweep).
 *
 * Bake: OUT = round_out(BASE + Σ_k λ_k·ΔW_k) (merge.h). For every tensor of OUT, in file
 * order, the error e = (OUT − BASE) − Σ λ_k·ΔW_k is computed element by element in double
 * from fp32 operands, with Σ λ_k·ΔW_k recomputed here from the LoRA factors (lm_lora_delta,
 * placed onto the target by this module, not by lm_lora_apply, so a bake that reshaped or
 * transposed a ΔW wrongly is caught), and judged against
 *     bound_i = ½·ulp_out(|OUT_i|)
 *             + 2·u·[ (K+1)·(|BASE_i| + Σ_k |λ_k·ΔW_k,i|) + Σ_k (r_k+2)·|λ_k|·P_k,i ]
 * u = 2⁻²⁴ (fp32 unit roundoff), K the number of modules on the tensor, r_k their rank,
 * P_k,i = scale_k·‖up_k[row]‖₂·‖down_k[:,col]‖₂ (Cauchy–Schwarz bound of Σ_j |up||down|
 * for plain LoRA; |ΔW_k| max over the module for other kinds). The first term is the one
 * rounding of the output (round to nearest even: at most half a unit in the last place of
 * the stored value); the second covers the fp32 evaluation of the sum by the bake and by
 * this recomputation (K+1 additions and products each, an inner product of length r in
 * sgemm: Higham, Accuracy and Stability of Numerical Algorithms, §3.1, γ_n ≈ n·u), doubled
 * because both sides carry it. Tensors no module touches must equal BASE byte for byte
 * (or lm_convert(BASE) when OUT's dtype differs). Memory: three fp32 buffers of the largest
 * touched tensor, whatever the model size; OUT and BASE are mapped and their pages
 * released after each tensor.
 *
 * LoRA: exact merges must give the same ΔW within the factor rounding of the output dtype
 * plus fp32 slack; SVD merges must reach the Eckart–Young optimum of their rank (the
 * singular values of Σ λ_i·ΔW_i recomputed here) within the rounding of their factors.
 *
 * Every function returns 0 when the verification RAN (report->ok tells whether it
 * passed) and a negative LM_E* code when it could not run (bad inputs, I/O); the file
 * under test being unreadable or truncated is a failed verification, not an error.
 * Thresholds and the JSON schema of the commands: lcm-verify(1).
 */
#ifndef LIBMERGE_VERIFY_H
#define LIBMERGE_VERIFY_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"
#include "libmerge/merge.h"
#include "libmerge/pipeline.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One failed check. kind is one of: "output" (OUT unreadable or truncated), "recipe"
 * (no recipe, inputs or λ differ from it), "hash" (an input's SHA-256 is not the
 * recipe's), "unmatched" (a LoRA module that matched no tensor), "tensor" (error over
 * the bound), "copy" (an untouched tensor that is not the base's bytes), "nonfinite"
 * (NaN/Inf not in the base), "overflow" (finite sum stored as ±Inf), "missing" /
 * "extra" (tensor or module sets differ), "shape", "module" (lora: ΔW differs). */
typedef struct lm_verify_problem {
    char kind[16];
    char *where;               /* file, tensor or module name */
    char *message;             /* one line, lower case */
} lm_verify_problem;

/* One input: the base, or a LoRA with its λ. */
typedef struct lm_verify_input {
    char *path;                /* the file opened */
    char role[8];              /* "base", "lora", "lcm", "source" */
    double lambda;
    char sha256[65];           /* of the file; "" when not hashed */
    char recipe_sha256[65];    /* what the recipe records; "" without a recipe */
    int hash_ok;               /* 1 equal, 0 differs, -1 not checked */
    const char *convention;    /* LoRA naming convention, NULL for the base */
    size_t modules, matched, unmatched;
} lm_verify_input;

/* One tensor of a bake (touched ones, and untouched ones that failed). */
typedef struct lm_verify_tensor {
    char *name;
    lm_dtype dtype;            /* OUT's */
    int modules;               /* updates on it (0: untouched) */
    int ok;
    double max_abs;            /* max |e_i| */
    double rel;                /* ‖e‖₂ / ‖Σ λ ΔW‖₂ (0 when the latter is 0) */
    double ratio;              /* max e_i / bound_i: ≤ 1 passes */
    double bound_max;          /* the largest bound_i */
    int64_t over;              /* elements with e_i > bound_i */
    int64_t nan, inf, overflow;
    char diagnosis[200];       /* for a failure: "ΔW missing", "λ applied twice", … */
} lm_verify_tensor;

/* One LoRA module (lm_verify_lora). */
typedef struct lm_verify_module {
    char *name;                /* normalised: "unet:down_blocks_0_…_to_q" */
    int rank;                  /* merged rank */
    int sources;               /* inputs having it */
    int ok;
    double max_abs;            /* max |ΔW_merged − Σ λ ΔW_i| */
    double ratio;              /* exact: max e/bound; svd: rel / tol */
    double rel;                /* ‖ΔW_merged − Σ λ ΔW_i‖_F / ‖Σ λ ΔW_i‖_F */
    double optimum;            /* svd: Eckart–Young relative error at this rank; exact: 0 */
    double tol;                /* svd: allowed rel; exact: largest element bound */
} lm_verify_module;

typedef struct lm_verify_report {
    int ok;                    /* every check held */
    char *out_path;
    char *operation;           /* recipe operation or "bake" / "lora-merge-exact" / … */
    char inputs_from[16];      /* "recipe" or "command line" */
    int has_recipe;
    lm_verify_input *inputs;   /* base first (bake), then LoRAs */
    size_t n_inputs;
    size_t tensors, touched, untouched, identical;   /* bake */
    size_t failed;             /* tensors or modules that failed */
    int64_t nan, inf, overflow;
    double worst_ratio;        /* over all tensors / modules */
    lm_verify_tensor *t;       /* bake: in file order */
    size_t n_t;
    lm_verify_module *m;       /* lora: in name order */
    size_t n_m;
    lm_verify_problem *problems;
    size_t n_problems;
    double seconds;
} lm_verify_report;

/* Frees what the report holds and empties it; safe on NULL and on an emptied report. */
void lm_verify_report_free(lm_verify_report *r);

typedef struct lm_verify_opts {
    int version;                    /* LM_VERIFY_OPTS_VERSION */
    const char *base;               /* bake: NULL = the recipe's base, found by name */
    const lm_weighted *loras;       /* n_loras = 0: the recipe's, found by name */
    size_t n_loras;
    const char *const *search;      /* directories where recipe inputs are looked up by
                                       name, after OUT's own directory and before "." */
    size_t n_search;
    int allow_unmatched;            /* 1: unmatched LoRA modules are not a failure */
    int no_hash;                    /* 1: do not hash the inputs */
    int mode;                       /* lora: 0 from the recipe (exact without one), 1 exact, 2 svd */
    lm_progress_fn progress;
    void *progress_ctx;
} lm_verify_opts;
#define LM_VERIFY_OPTS_VERSION 1
#define LM_VERIFY_OPTS_INIT { LM_VERIFY_OPTS_VERSION, NULL, NULL, 0, NULL, 0, 0, 0, 0, NULL, NULL }

/* Verifies a baked checkpoint (see the top of this file). Inputs from opts, else from
 * the recipe in out's metadata (LM_RECIPE_KEY), each found by its recorded file name in
 * out's directory, opts->search, then "."; the inputs' SHA-256 are compared with the
 * recipe's whenever it exists. Fills report (free with lm_verify_report_free).
 * Returns 0 when the checks ran (report->ok), or: LM_EINPUT (no recipe and no inputs,
 * a recipe input not found, a base or LoRA that cannot be read), LM_EMISMATCH (a LoRA
 * whose ΔW cannot fit its target), LM_EIO, LM_ENOMEM. */
int lm_verify_bake(const char *out, const lm_verify_opts *opts, lm_verify_report *report, lm_err *err);

/* Verifies a merged LoRA against its sources (opts->loras; else the recipe's), matched by
 * normalised module name (merge.h). mode exact: every element of ΔW_merged within
 *   2·(2·u_out + (R+4)·u)·Σ_i |λ_i|·scale_i·‖up_i[row]‖·‖down_i[:,col]‖
 * of Σ λ_i·ΔW_i (R the merged rank, u_out the unit roundoff of the merged factors' dtype);
 * mode svd: ‖ΔW_merged − Σ λ_i ΔW_i‖_F / ‖Σ λ_i ΔW_i‖_F ≤ ε_R + (2 + 2√R)·u_out
 * + 16·max(m, n)·u, ε_R = sqrt(Σ_{k>R} σ_k²)/‖Σ λ_i ΔW_i‖_F from the singular values.
 * Errors as lm_verify_bake. */
int lm_verify_lora(const char *merged, const lm_verify_opts *opts, lm_verify_report *report, lm_err *err);

/* Unit in the last place of |x| in dtype dt (F16, BF16, F32, F64; subnormal spacing
 * below the smallest normal; the largest finite's spacing for ±Inf). 0 for other dtypes. */
double lm_verify_ulp(lm_dtype dt, double x);

/* Unit roundoff 2^-p of a float dtype (F16 2⁻¹¹, BF16 2⁻⁸, F32 2⁻²⁴, F64 2⁻⁵³). */
double lm_verify_unit_roundoff(lm_dtype dt);

/* ---- rendering: compare and sweep ---------------------------------------------- */

typedef struct lm_verify_render {
    const char *vae;           /* NULL: from the model file */
    const char *text_encoder;  /* NULL: from the model file */
    lm_render_opts opts;       /* prompt, seed, steps, size, vocab, … */
    double amplification;      /* compare: C of the thresholds; 0 = LM_COMPARE_AMPLIFICATION */
} lm_verify_render;

/* How many units of the stored dtype's roundoff the final latent may move, relative to
 * its scale: calibrated on the tiny SD1.5 golden model, where an honest bake moves it by
 * 1.3 (fp16), 1.5 (bf16) and 8.5 (fp32) units and a dropped or doubled LoRA by 45 to 64
 * fp16 units (lcm-verify(1), COMPARE). */
#define LM_COMPARE_AMPLIFICATION 16.0

typedef struct lm_compare_report {
    int ok;
    lm_dtype dtype;            /* the baked file's least precise float dtype */
    double latent_max_abs;     /* max |latent_baked − latent_runtime| */
    double latent_scale;       /* max(1, max |latent_runtime|) */
    double latent_tol;         /* allowed latent_max_abs */
    double psnr;               /* dB of the uint8 images (INFINITY when identical) */
    double psnr_min;           /* threshold */
    int width, height;
    uint8_t *rgb_baked;        /* [h, w, 3] */
    uint8_t *rgb_runtime;
    double seconds;
} lm_compare_report;

/* Thresholds for a baked model whose least precise float dtype is dt, amplification C
 * (0: LM_COMPARE_AMPLIFICATION):
 *   latent_tol = C·u_dt·max(1, max|latent|),   psnr_min = min(48, 20·log10(2 / (C·u_dt)))
 * (derivation in lcm-verify(1), COMPARE). */
void lm_compare_thresholds(lm_dtype dt, double amplification, double latent_scale, double *latent_tol, double *psnr_min);

/* Renders with baked alone and with base + loras (λ each) applied at load, same prompt,
 * seed and steps, and compares the final latents and images. Errors: those of
 * lm_render_sources and lm_source_open. */
int lm_verify_compare(const char *baked, const char *base, const lm_lora *const *loras, const float *lambdas,
                      size_t n, const lm_verify_render *r, lm_compare_report *rep, lm_err *err);
/* Frees the two images of r (the pointers become NULL); safe on NULL. */
void lm_compare_report_free(lm_compare_report *r);

/* Peak signal-to-noise ratio of two uint8 images of n bytes: 10·log10(255² / MSE) dB,
 * INFINITY when equal. */
double lm_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n);

/* One image per (steps[i], lambdas[j]) with every LoRA at its own λ times lambdas[j],
 * assembled by lm_png_grid: rows are steps ("4 STEPS"), columns λ ("λ=0.5").
 * *rgb is malloc'd [*h, *w, 3]. Errors: those of lm_render_sources, lm_png_grid. */
int lm_verify_sweep(const char *model, const lm_lora *const *loras, const float *lora_lambdas, size_t n,
                    const int *steps, size_t n_steps, const double *lambdas, size_t n_lambdas,
                    const lm_verify_render *r, uint8_t **rgb, int *w, int *h, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
