/* Printing the reports of lcm-verify bake and lora: a table for people, JSON for
 * pipelines (schema in lcm-verify(1), JSON REPORT). Implemented in verify_print.c. */
#ifndef LCM_VERIFY_PRINT_H
#define LCM_VERIFY_PRINT_H

#include <cJSON.h>
#include "libmerge/verify.h"

/* The fields every verification report has (ok, output, operation, inputs, problems,
 * seconds) into o; with err (the run stopped on it; NULL when it did not) also "error"
 * and "exit_status" (lm_cli_json_error), so that --json prints one object either way. */
void lvp_json_common(cJSON *o, const lm_verify_report *r, const lm_err *err);
/* Prints cJSON o on stdout (two-space free, one object) and deletes it. */
void lvp_json_print(cJSON *o);
/* Text: the inputs block and the problems block, then the verdict line. */
void lvp_text_inputs(const lm_verify_report *r);
void lvp_text_problems(const lm_verify_report *r);
/* "  " and name left-aligned in 64 columns; a longer name shows "…" and its last 63. */
void lvp_text_name(const char *name);
/* lm_verify_bake or lm_verify_lora. */
typedef int (*lvp_verify_fn)(const char *target, const lm_verify_opts *o, lm_verify_report *r, lm_err *err);
/* Runs fn on target with o (progress on a terminal unless json), prints the report
 * with text or json_out, frees it; when fn fails, the error on stderr and, with json,
 * json_out's report (as far as it got) with the error. Returns the exit status: 0
 * verified, 1 a check failed, or lm_cli_fail's for an error (3 bad input, 4 I/O,
 * 5 internal). */
int lvp_run_verify(const char *prog, lvp_verify_fn fn, const char *target, lm_verify_opts *o, int json,
                   void (*text)(const lm_verify_report *),
                   void (*json_out)(const lm_verify_report *, const lm_err *err));
/* The rendering options of compare and sweep, for their getopt_long tables
 * (include <getopt.h>); lvp_render_option handles them. */
#define LVP_RENDER_LONGOPTS                                                                      \
    { "prompt", required_argument, NULL, 'p' }, { "negative-prompt", required_argument, NULL, 'n' }, \
    { "negative", required_argument, NULL, 'n' }, /* render's spelling first; the old one kept */ \
    { "seed", required_argument, NULL, 'S' }, { "guidance", required_argument, NULL, 'g' },      \
    { "size", required_argument, NULL, 'z' }, { "vae", required_argument, NULL, 'V' },           \
    { "text-encoder", required_argument, NULL, 'T' }, { "vocab", required_argument, NULL, 'c' }
/* compare's and sweep's defaults: 128x128, the astronaut prompt, LM_RENDER_OPTS_INIT's rest. */
void lvp_render_init(lm_verify_render *r);
/* Applies rendering option c (LVP_RENDER_LONGOPTS) with argument arg to r; returns 1 when
 * c was one of them (*st then 0, or 2 after printing a usage error), else 0. */
int lvp_render_option(const char *prog, int c, const char *arg, lm_verify_render *r, int *st);
/* Progress on stderr when it is a terminal. */
void lvp_progress(void *ctx, const char *what, size_t done, size_t total);
/* Collects "-l PATH[:λ]" specs; returns 0 or prints a usage error and returns 2. */
int lvp_add_weighted(const char *prog, const char *spec, const char *role, lm_weighted **v, size_t *n);
void lvp_free_weighted(lm_weighted *v, size_t n);
/* A double finite number or a usage error. */
int lvp_parse_double(const char *prog, const char *opt, const char *s, double *out);



/* "WxH" (multiples of 8, 8..4096) or a usage error. */
int lvp_parse_size(const char *prog, const char *s, int *w, int *h);
/* Opens every LoRA of v (n); closes on error. 0 or the exit status (printed; the
 * error also in *err for a --json report). */
#include "libmerge/lora.h"
int lvp_open_loras(const char *prog, const lm_weighted *v, size_t n, lm_lora ***out, float **lambdas, lm_err *err);
void lvp_close_loras(lm_lora **l, float *lambdas, size_t n);
/* Before any work: the output out must not be an input (model, base, the LoRAs of l,
 * r's VAE, text encoder and vocabulary; same file by name or inode) nor a directory,
 * device, FIFO or socket (lm_output_check). 0, or the exit status (2) after printing. */
int lvp_check_output(const char *prog, const char *out, const char *model, const char *base, const lm_weighted *l,
                     size_t nl, const lm_verify_render *r);
#endif
