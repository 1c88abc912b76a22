/* libmerge/cli.h — small helpers every command shares, so that errors read
 * the same everywhere. */
#ifndef LIBMERGE_CLI_H
#define LIBMERGE_CLI_H

#include <stdio.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Prints "PROG: FILE: KEY: at byte N: reason" on stderr (one line) and
 * returns the exit status for e->code (libmerge(7), EXIT STATUS). */
int lm_cli_fail(const char *prog, const lm_err *e);

/* Prints "PROG: message" on stderr and returns LM_EXIT_USAGE. */
int lm_cli_usage_error(const char *prog, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Largest |λ| accepted: a LoRA weight far past this only manufactures
 * overflow (fp16 holds 65504), never a useful model. */
#define LM_LAMBDA_MAX 1000.0

/* Splits "PATH[:λ]" into path (copied to buf, n bytes) and λ (default 1.0).
 * The text after the last ':' is λ when it consists of the characters of a
 * decimal number (or spells nan/inf); it must then parse fully as a finite
 * number with |λ| <= LM_LAMBDA_MAX. Otherwise it is part of the path, so
 * paths containing ':' still work. Returns 0, or LM_EUSAGE for an empty or
 * too long path, an empty λ ("x:"), or a λ that is malformed, not finite or
 * out of range ("x:nan", "x:1e999", "x:2000"). */
int lm_parse_weighted(const char *spec, char *path, size_t n, double *lambda);

/* A report on stdout is part of a command's result (pipelines read --json):
 * a full disk or a closed pipe while writing it is an I/O error, not success.
 * lm_cli_stdout_flush flushes stdout now and keeps the first failure's errno
 * (call it between reports); lm_cli_stdout_status flushes once more and, when
 * any write or flush of stdout failed, prints "PROG: standard output: write
 * error: REASON" on stderr and returns LM_EXIT_IO in place of LM_EXIT_OK
 * (any other status is kept); else it returns status unchanged. */
void lm_cli_stdout_flush(void);
int lm_cli_stdout_status(const char *prog, int status);

/* The failure fields of a command's --json report, added to object o (a
 * cJSON object): "error", the one-line text lm_cli_fail prints after "PROG: "
 * (lm_err_format of e), and "exit_status", lm_exit_status(e->code). The
 * reports of lcm-verify, model-convert and model-inspect carry them when the
 * command stopped on bad input or an I/O error, so that a pipeline reading
 * stdout gets one object either way. Does nothing when o is NULL. */
struct cJSON;
void lm_cli_json_error(struct cJSON *o, const lm_err *e);

/* Parses a --dtype value shared by every command: "keep" (*dt =
 * LM_DT_INVALID, meaning each tensor keeps its own), "fp16", "bf16", "fp32",
 * also spelled as the safetensors names F16/BF16/F32 or f16/f32. Returns 0,
 * or LM_EUSAGE for anything else. */
int lm_cli_parse_dtype(const char *s, lm_dtype *dt);

/* Parses a whole decimal integer in [min, max] (no sign tricks, no empty
 * string, no trailing text). Returns 0, or LM_EUSAGE. */
int lm_cli_parse_int(const char *s, long min, long max, long *v);

/* A progress callback for the library's lm_progress_fn-style hooks: ctx is
 * the program name (const char *). Draws "\rPROG: WHAT done/total" on stderr
 * when the whole percentage changes and at the end (then a newline). Call
 * only when lm_cli_progress_enabled(). */
void lm_cli_progress(void *prog, const char *what, size_t done, size_t total);

/* Non-zero when stderr is a terminal (progress output goes there only then). */
int lm_cli_progress_enabled(void);

#ifdef __cplusplus
}
#endif
#endif
