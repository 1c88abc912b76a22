/* Shared by the plumbing subcommands (unet, sample): named fp32 tensors in
 * and out of safetensors files, and LoRA options. Implemented in unet.c. */
#ifndef LCM_VERIFY_PLUMBING_H
#define LCM_VERIFY_PLUMBING_H

#include <stdint.h>
#include "libmerge/err.h"
#include "libmerge/source.h"
#include "libmerge/lora.h"

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[4];
    float *data;            /* owned */
} lv_tensor;

/* Reads tensor `name` of src as fp32 (any float or integer dtype); required
 * = 0 returns 0 with t->data NULL when absent. Checks ndim when min/max say.
 * Errors: LM_EINPUT naming src and name (missing, wrong ndim, a zero dimension). */
int lv_read(const lm_source *src, const char *name, int required, int min_ndim, int max_ndim,
            lv_tensor *t, lm_err *err);

/* Writes n F32 tensors to path (temp file + rename), never over an input. */
int lv_write(const char *path, const lv_tensor *ts, size_t n, const char *const *inputs,
             size_t n_inputs, const char *what, lm_err *err);

/* Before any work: out must not be one of paths[0..n) (NULL entries skipped) nor
 * the file of a "-l LORA[:λ]" spec (same name or inode), nor a directory, device,
 * FIFO or socket (lm_output_check). Errors: LM_EUSAGE naming out (or the bad spec). */
int lv_check_output(const char *out, const char *const *paths, size_t n, char *const *specs, int n_specs,
                    lm_err *err);

/* --heads / --head-dim: an integer 1..4096 into *out, or a usage error (exit status 2). */
int lv_parse_heads(const char *prog, const char *opt, const char *s, int *out);
/* --tile / --vae-tile: a band height of 1..4096 latent rows or -1 (never banded) into
 * *out, or a usage error (exit status 2) naming the option and the valid values. */
int lv_parse_band(const char *prog, const char *opt, const char *s, int *out);

/* Opens every "-l LORA[:λ]" spec: loras[i], lambdas[i]. */
int lv_open_loras(char **specs, int n, lm_lora **loras, float *lambdas, lm_err *err);

#endif
