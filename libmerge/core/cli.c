/* Shared command-line helpers: see include/libmerge/cli.h. */
#include "libmerge/cli.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lm_cli_fail(const char *prog, const lm_err *e)
{
    char buf[1400];
    fprintf(stderr, "%s: %s\n", prog, lm_err_format(e, buf, sizeof buf));
    return lm_exit_status(e ? e->code : LM_EINTERNAL);
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

int lm_parse_weighted(const char *spec, char *path, size_t n, double *lambda)
{
    *lambda = 1.0;
    size_t len = strlen(spec);
    const char *colon = strrchr(spec, ':');
    if (colon && colon[1]) {
        char *end;
        double v = strtod(colon + 1, &end);
        if (*end == '\0' && isfinite(v)) { *lambda = v; len = (size_t)(colon - spec); }
    }
    if (len == 0 || len >= n) return LM_EUSAGE;
    memcpy(path, spec, len);
    path[len] = '\0';
    return 0;
}

int lm_cli_progress_enabled(void)
{
    return isatty(STDERR_FILENO);
}
