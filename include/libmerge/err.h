/* libmerge/err.h — the one error type of the library.
 *
 * Every fallible function returns int: 0 on success or a negative LM_E* code,
 * and fills the caller's lm_err (which may be NULL) with the file, the tensor
 * key, the byte offset and a reason. Callers add context (lm_err_file /
 * lm_err_key) only where it is still empty; they never re-word the reason.
 * Pattern after libgit2's error model.
 */
#ifndef LIBMERGE_ERR_H
#define LIBMERGE_ERR_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (negative) returned by library functions. */
enum {
    LM_OK = 0,
    LM_EUSAGE = -1,      /* bad argument from the caller (bad flag value, λ not a number) */
    LM_EINPUT = -2,      /* malformed or hostile input file (bad header, bad pickle, bad shape) */
    LM_EMISMATCH = -3,   /* inputs that do not go together (unmatched LoRA keys, shape mismatch) */
    LM_EUNSUPPORTED = -4,/* well-formed input using a feature we refuse by name (dtype, global) */
    LM_EIO = -5,         /* read/write/rename/fsync failure, disk full, file too large */
    LM_ENOMEM = -6,      /* allocation failed or a stated limit on allocation size was hit */
    LM_EVERIFY = -7,     /* a verification found a difference (lcm-verify) */
    LM_EINTR = -8,       /* interrupted by a signal (SIGINT/SIGTERM); outputs removed */
    LM_EINTERNAL = -9,   /* a bug: an invariant did not hold */
    LM_ETRUNCATED = -10  /* a file ends before its own header says it does (a write or copy
                            cut short); bad input like LM_EINPUT (exit status 3), told apart
                            so a verifier can name it without parsing the file again */
};

/* Process exit statuses, used by every command (documented in libmerge(7)). */
enum {
    LM_EXIT_OK = 0,
    LM_EXIT_VERIFY = 1,   /* verification ran and failed (like cmp(1): "differs") */
    LM_EXIT_USAGE = 2,    /* bad command line */
    LM_EXIT_INPUT = 3,    /* bad, hostile, unsupported or mismatched input */
    LM_EXIT_IO = 4,       /* I/O error: cannot read, write, disk full */
    LM_EXIT_INTERNAL = 5, /* out of memory or internal error */
    LM_EXIT_INTR = 130    /* interrupted (128 + SIGINT) */
};

#define LM_ERR_NO_OFFSET (-1)

typedef struct lm_err {
    int code;           /* LM_E* */
    int64_t offset;     /* byte offset in file, or LM_ERR_NO_OFFSET */
    char file[512];     /* the file the error is about, "" if none */
    char key[256];      /* the tensor key / pickle global / JSON field, "" if none */
    char msg[512];      /* the reason, lower case, no trailing period */
} lm_err;

/* Sets *e (if e is non-NULL) and returns code, so callers write
 *   return lm_err_set(e, LM_EINPUT, path, key, off, "unknown dtype %s", s);
 * file and key may be NULL. */
int lm_err_set(lm_err *e, int code, const char *file, const char *key,
               int64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Clears *e to LM_OK with empty fields. */
void lm_err_clear(lm_err *e);

/* Fills e->file / e->key only when they are empty (adds context, never re-words). */
void lm_err_file(lm_err *e, const char *file);
void lm_err_key(lm_err *e, const char *key);

/* Formats the one-line message "FILE: KEY: at byte N: reason" into buf
 * (parts that are empty are left out). Returns buf. */
const char *lm_err_format(const lm_err *e, char *buf, size_t n);

/* Maps an LM_E* code to an LM_EXIT_* status. */
int lm_exit_status(int code);

/* Short name of a code ("bad input", "I/O error", …). */
const char *lm_err_name(int code);

#ifdef __cplusplus
}
#endif
#endif
