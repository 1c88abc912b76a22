/* Internal to libmerge/merge: helpers shared by bake, lora-merge and extract. */
#ifndef LIBMERGE_MERGE_IMPL_H
#define LIBMERGE_MERGE_IMPL_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/merge.h"
#include "libmerge/writer.h"
#include "libmerge/keymap.h"
#include "libmerge/lora.h"

/* SHA-256 of a whole file, lower-case hex, through lm_hash_file_cached (libmerge/hash.h:
 * the per-user SHA-256 cache, then lm_hash_file; a FIFO, device or directory is refused
 * without blocking); *bytes: the file size.
 * Errors: LM_EIO, LM_ENOMEM. */
int lmm_sha256_file(const char *path, char hex[65], uint64_t *bytes, lm_err *err);

/* AUTOMATIC1111's legacy short model hash (lm_hash_file's AutoV1: the 64 KiB at byte
 * 0x100000, the empty string's hash for a file under 1 MiB). "" on error. */
void lmm_legacy_hash(const char *path, char out[9]);

/* The same from an open source's mapping (safetensors with its tensors end to end from
 * the data start, as the format requires), so that it needs the file's path no more;
 * falls back to lmm_legacy_hash(path) otherwise. */
void lmm_legacy_hash_source(const lm_source *s, const char *path, char out[9]);

/* Number of NaN and ±Inf among n values of float dtype dt at p (any alignment); 0 for
 * other dtypes. */
int64_t lmm_count_nonfinite(const void *p, lm_dtype dt, size_t n);

/* Refuses a LoRA with a NaN or ±Inf anywhere in its float tensors (factors, alpha, DoRA
 * magnitudes): one pass over its bytes, done once when it is opened, so the bake and the
 * merge never produce NaN from it. Errors: LM_EINPUT naming path and the first bad tensor,
 * LM_ENOMEM, those of lm_source_read. */
int lmm_lora_check_finite(const lm_lora *l, const char *path, lm_err *err);

/* Refuses out when it names one of the inputs (same path text, or same device and
 * inode when both exist). Errors: LM_EUSAGE. */
int lmm_check_output(const char *out, const char *const *inputs, size_t n, lm_err *err);

/* Growable list of owned metadata pairs, later handed to the writer as lm_kv. */
typedef struct lmm_meta {
    char **keys, **values;
    size_t n, cap;
} lmm_meta;
int lmm_meta_set(lmm_meta *m, const char *key, const char *value);   /* replaces; LM_ENOMEM */
const char *lmm_meta_get(const lmm_meta *m, const char *key);
lm_kv *lmm_meta_kv(const lmm_meta *m);                               /* malloc'd view */
void lmm_meta_free(lmm_meta *m);

/* modelspec.architecture for a model / a LoRA of it ("stable-diffusion-v1",
 * "stable-diffusion-v1/lora", …); NULL for an unknown architecture. */
const char *lmm_modelspec_arch(lm_arch a, int lora);
const char *lmm_modelspec_impl(lm_arch a);
/* "YYYY-MM-DD" from SOURCE_DATE_EPOCH when set (reproducible builds), else today (UTC). */
void lmm_date(char out[11]);
/* Base name of a path without directories and without its last extension. */
void lmm_title(const char *path, char *out, size_t n);
const char *lmm_basename(const char *path);

/* Drops the pages lying wholly inside [p, p+n) of a read-only file mapping from this
 * process's resident set (madvise MADV_DONTNEED: they are read again from the file if
 * touched again), so streaming a model does not make it resident. */
void lmm_release_pages(const void *p, size_t n);

/* Number of worker threads for opts->threads (0: online CPUs, at most 64). */
int lmm_threads(int requested);

/* One task of lmm_run_tasks: work item i; returns 0 or an LM_E* code with err set. */
typedef int (*lmm_task_fn)(void *ctx, size_t i, lm_err *err);
/* The key (module or tensor name) an error of item i is about. */
typedef const char *(*lmm_task_key_fn)(void *ctx, size_t i);

/* Runs fn(ctx, i) for every i in [0, n) on lmm_threads(threads) workers,
 * OpenBLAS single-threaded meanwhile (tasks call sgemm/LAPACK themselves).
 * After the first failure no new item starts; that failure is returned with
 * key(ctx, i) added to its lm_err. progress (may be NULL) is called under a
 * lock after each item that succeeds ("modules", done, n). */
int lmm_run_tasks(size_t n, int threads, lmm_task_fn fn, lmm_task_key_fn key, void *ctx,
                  lm_progress_fn progress, void *progress_ctx, lm_err *err);

/* Normalised module key for matching LoRAs without a base (lora-merge):
 * "<component>:<path with . → _>", convention prefixes and factor suffixes removed,
 * attention-processor spellings (processor.to_q_lora, to_out_lora) mapped to the
 * module path (to_q, to_out_0). Returns 0, or LM_EINPUT when name is too long. */
int lmm_norm_module_name(const lm_lora_module *m, char *out, size_t n);

/* lora_names.c: kohya name "lora_unet_…"/"lora_te_…"/"lora_te2_…" of a normalised key
 * (te_prefix "lora_te_" or "lora_te1_"); dotted PEFT name "unet.<path>" from the first
 * non-kohya module of mods (NULL if none); PEFT name from the base tensor a
 * "t<tensor>:<row0>" key targets (NULL for packed targets); the architecture of LoRAs
 * from their modules (second text encoder: SDXL; attn2 to_k width 768/1024/2048). */
char *lmm_kohya_name(const char *key, const char *te_prefix);
char *lmm_peft_name(const lm_lora_module *const *mods, size_t n);
char *lmm_peft_from_base(const lm_source *base, const lm_model_info *info, const char *key);
lm_arch lmm_guess_arch(lm_lora **loras, size_t n);

/* Truncated SVD of ΔW = Uc·Dc given as thin factors (Uc [m, r], Dc [r, n], row-major),
 * exact through QR of both factors and the SVD of the r×r core (svd.c); falls back to
 * the dense lm_svd_truncate when r > min(m, n). Outputs as lm_svd_truncate. */
int lmm_svd_lowrank(const float *Uc, const float *Dc, int64_t m, int64_t n, int64_t r, int rank,
                    float *up, float *down, int *k_out, double *rel_error, double *energy, lm_err *err);

/* Randomised truncated SVD of a dense row-major [m, n] A (not modified): Gaussian test
 * matrix of rank + LMM_SVD_OVERSAMPLE columns from a fixed seed, LMM_SVD_POWER subspace
 * iterations, then the exact SVD of the projected [l, n] matrix (Halko, Martinsson &
 * Tropp 2011, algorithms 4.4 and 5.1). Outputs as lm_svd_truncate; rel_error and energy
 * are exact for the factors returned (from ‖A‖_F and the kept σ). */
#define LMM_SVD_OVERSAMPLE 16
#define LMM_SVD_POWER 2
int lmm_svd_randomized(const float *A, int64_t m, int64_t n, int rank, float *up, float *down,
                       int *k_out, double *rel_error, double *energy, lm_err *err);
/* The dense SVD lora-merge and extract use: randomised when rank + oversampling is at
 * most a quarter of min(m, n) (much faster there, and as accurate: tests/test_merge.c),
 * LAPACKE_sgesdd otherwise. A may be overwritten. */
int lmm_svd_auto(float *A, int64_t m, int64_t n, int rank, float *up, float *down,
                 int *k_out, double *rel_error, double *energy, lm_err *err);

#endif
