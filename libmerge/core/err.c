/* The one error type: see include/libmerge/err.h. */
#include "libmerge/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void copy_field(char *dst, size_t n, const char *src)
{
    if (!src) { dst[0] = '\0'; return; }
    size_t len = strlen(src);
    if (len >= n) len = n - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

int lm_err_set(lm_err *e, int code, const char *file, const char *key,
               int64_t offset, const char *fmt, ...)
{
    if (!e) return code;
    e->code = code;
    e->offset = offset;
    copy_field(e->file, sizeof e->file, file);
    copy_field(e->key, sizeof e->key, key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

void lm_err_clear(lm_err *e)
{
    if (!e) return;
    memset(e, 0, sizeof *e);
    e->offset = LM_ERR_NO_OFFSET;
}

void lm_err_file(lm_err *e, const char *file)
{
    if (e && !e->file[0]) copy_field(e->file, sizeof e->file, file);
}

void lm_err_key(lm_err *e, const char *key)
{
    if (e && !e->key[0]) copy_field(e->key, sizeof e->key, key);
}

const char *lm_err_format(const lm_err *e, char *buf, size_t n)
{
    if (!buf || n == 0) return buf;
    buf[0] = '\0';
    if (!e) return buf;
    size_t used = 0;
#define APPEND(...) do { \
        int k_ = snprintf(buf + used, n - used, __VA_ARGS__); \
        if (k_ < 0) return buf; \
        used += (size_t)k_; if (used >= n) { buf[n - 1] = '\0'; return buf; } \
    } while (0)
    if (e->file[0]) APPEND("%s: ", e->file);
    if (e->key[0]) APPEND("%s: ", e->key);
    if (e->offset >= 0) APPEND("at byte %lld: ", (long long)e->offset);
    APPEND("%s", e->msg[0] ? e->msg : lm_err_name(e->code));
#undef APPEND
    return buf;
}

int lm_exit_status(int code)
{
    switch (code) {
    case LM_OK: return LM_EXIT_OK;
    case LM_EUSAGE: return LM_EXIT_USAGE;
    case LM_EINPUT: case LM_ETRUNCATED: case LM_EMISMATCH: case LM_EUNSUPPORTED: return LM_EXIT_INPUT;
    case LM_EIO: return LM_EXIT_IO;
    case LM_EVERIFY: return LM_EXIT_VERIFY;
    case LM_EINTR: return LM_EXIT_INTR;
    default: return LM_EXIT_INTERNAL;
    }
}

const char *lm_err_name(int code)
{
    switch (code) {
    case LM_OK: return "success";
    case LM_EUSAGE: return "usage error";
    case LM_EINPUT: return "bad input";
    case LM_ETRUNCATED: return "file cut short";
    case LM_EMISMATCH: return "inputs do not match";
    case LM_EUNSUPPORTED: return "unsupported";
    case LM_EIO: return "I/O error";
    case LM_ENOMEM: return "out of memory";
    case LM_EVERIFY: return "verification failed";
    case LM_EINTR: return "interrupted";
    default: return "internal error";
    }
}
