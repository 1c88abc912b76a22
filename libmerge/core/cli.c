/* Shared command-line helpers: see include/libmerge/cli.h. */
#include "libmerge/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cJSON.h>

int lm_cli_fail(const char *prog, const lm_err *e)
{
    char buf[1400], line[4 * sizeof buf];
    /* File names, tensor names and metadata keys come from the input and may
     * hold newlines or terminal escapes: keep the message on one line. One
     * write, so that lines from parallel jobs do not interleave. */
    size_t k = 0;
    for (const char *p = lm_err_format(e, buf, sizeof buf); *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n') { line[k++] = '\\'; line[k++] = 'n'; }
        else if (c == '\t') { line[k++] = '\\'; line[k++] = 't'; }
        else if (c < 0x20 || c == 0x7f) k += (size_t)snprintf(line + k, 5, "\\x%02x", c);
        else line[k++] = (char)c;
    }
    line[k] = '\0';
    fprintf(stderr, "%s: %s\n", prog, line);
    return lm_exit_status(e ? e->code : LM_EINTERNAL);
}

void lm_cli_json_error(struct cJSON *o, const lm_err *e)
{
    char buf[1400];
    if (!o) return;
    cJSON_AddStringToObject(o, "error", e ? lm_err_format(e, buf, sizeof buf) : "internal error");
    cJSON_AddNumberToObject(o, "exit_status", lm_exit_status(e ? e->code : LM_EINTERNAL));
}

int lm_cli_usage_error(const char *prog, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return LM_EXIT_USAGE;
}

/* The text after the last ':' is taken as λ when it is made only of the
 * characters a decimal number uses, or spells nan/inf: then it must parse
 * fully, be finite and lie within ±LM_LAMBDA_MAX. Anything else belongs to
 * the path (so "C:dir/x" and "a:b.safetensors" stay paths). */
static int looks_numeric(const char *t)
{
    if (!strcasecmp(t, "nan") || !strcasecmp(t, "inf") || !strcasecmp(t, "infinity") ||
        !strcasecmp(t, "-inf") || !strcasecmp(t, "+inf") || !strcasecmp(t, "-nan"))
        return 1;
    for (; *t; t++)
        if (!strchr("0123456789.eE+-", *t)) return 0;
    return 1;
}

int lm_parse_weighted(const char *spec, char *path, size_t n, double *lambda)
{
    *lambda = 1.0;
    size_t len = strlen(spec);
    const char *colon = strrchr(spec, ':');
    if (colon && looks_numeric(colon + 1)) {
        char *end;
        errno = 0;
        double v = strtod(colon + 1, &end);
        if (!colon[1] || *end != '\0' || errno == ERANGE || !isfinite(v) || fabs(v) > LM_LAMBDA_MAX)
            return LM_EUSAGE;
        *lambda = v;
        len = (size_t)(colon - spec);
    }
    if (len == 0 || len >= n) return LM_EUSAGE;
    memcpy(path, spec, len);
    path[len] = '\0';
    return 0;
}

static int stdout_errno;        /* first error of an earlier fflush(stdout) */

void lm_cli_stdout_flush(void)
{
    if (fflush(stdout) && !stdout_errno) stdout_errno = errno;
}

int lm_cli_stdout_status(const char *prog, int status)
{
    int e = fflush(stdout) ? errno : stdout_errno ? stdout_errno : ferror(stdout) ? EIO : 0;
    if (!e) return status;
    fprintf(stderr, "%s: standard output: write error: %s\n", prog, strerror(e));
    return status == LM_EXIT_OK ? LM_EXIT_IO : status;
}

int lm_cli_parse_dtype(const char *s, lm_dtype *dt)
{
    static const struct { const char *name; lm_dtype dt; } k[] = {
        { "keep", LM_DT_INVALID },
        { "fp16", LM_DT_F16 }, { "f16", LM_DT_F16 },
        { "bf16", LM_DT_BF16 },
        { "fp32", LM_DT_F32 }, { "f32", LM_DT_F32 },
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (!strcasecmp(s, k[i].name)) { *dt = k[i].dt; return 0; }
    return LM_EUSAGE;
}

int lm_cli_parse_int(const char *s, long min, long max, long *v)
{
    char *end;
    if (!*s || !strchr("0123456789-", *s)) return LM_EUSAGE;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (*end || errno == ERANGE || x < min || x > max) return LM_EUSAGE;
    *v = x;
    return 0;
}

void lm_cli_progress(void *prog, const char *what, size_t done, size_t total)
{
    /* redraw only when the percentage moves: a 1,000-tensor model paints 100 times */
    if (done != total && total && (done * 100 / total) == ((done - 1) * 100 / total)) return;
    fprintf(stderr, "\r%s: %s %zu/%zu", (const char *)prog, what, done, total);
    if (done == total) fputc('\n', stderr);
}

int lm_cli_progress_enabled(void)
{
    return isatty(STDERR_FILENO);
}
