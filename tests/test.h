/* Minimal test harness: each tests/test_*.c is one program whose main calls
 * RUN(fn) for each test function. A test function returns normally; CHECK*
 * macros record a failure and return from it. Output per test:
 *   "PASS name" or "FAIL name: file:line: what"
 * tests/run.sh counts the lines of every program and prints "N passed, N failed". */
#ifndef LIBMERGE_TESTS_TEST_H
#define LIBMERGE_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failed_ = 0;      /* current test failed */
static int t_total_fail_ = 0;  /* tests failed in this program */

#define FAILF(...) do { \
        if (!t_failed_) { printf("FAIL %s: %s:%d: ", t_name_, __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
        t_failed_ = 1; return; } while (0)

#define CHECK(c) do { if (!(c)) FAILF("CHECK(%s)", #c); } while (0)
#define CHECK_MSG(c, ...) do { if (!(c)) FAILF(__VA_ARGS__); } while (0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
        if (a_ != b_) FAILF("%s == %lld, expected %s == %lld", #a, a_, #b, b_); } while (0)
#define CHECK_EQ_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
        if (!a_ || !b_ || strcmp(a_, b_)) FAILF("%s == \"%s\", expected \"%s\"", #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } while (0)
#define CHECK_NEAR(a, b, tol) do { double a_ = (double)(a), b_ = (double)(b); \
        if (!(fabs(a_ - b_) <= (tol))) FAILF("%s == %.9g, expected %.9g within %g", #a, a_, b_, (double)(tol)); } while (0)
/* rc is a libmerge return code; on failure prints the lm_err message */
#define CHECK_OK(rc, errp) do { int rc_ = (rc); if (rc_) { char b_[1400]; \
        FAILF("%s returned %d: %s", #rc, rc_, lm_err_format((errp), b_, sizeof b_)); } } while (0)

static const char *t_name_ = "";
#define RUN(fn) do { t_name_ = #fn; t_failed_ = 0; fn(); \
        if (t_failed_) t_total_fail_++; else printf("PASS %s\n", #fn); fflush(stdout); } while (0)
#define TEST_EXIT() return t_total_fail_ ? 1 : 0

/* The whole file at path in a new buffer (free it), NUL-terminated; its length in
 * *n (n may be NULL). NULL when the file cannot be opened or memory runs out. */
static inline void *t_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0, got;
    char *b = malloc(cap);
    while (b && (got = fread(b + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    fclose(f);
    if (b) b[len] = 0;
    if (n) *n = len;
    return b;
}

/* Path of a fixture relative to the repository root (tests run from there). */
#define FIXTURE(p) ("fixtures/" p)

#endif
