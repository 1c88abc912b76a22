/* Test helper: an independent SHA-256 (OpenSSL EVP directly, not libmerge's
 * hash module) of a file's bytes from offset to the end, as lowercase hex. */
#ifndef LIBMERGE_TESTS_DATA_SHA256_H
#define LIBMERGE_TESTS_DATA_SHA256_H
#include <stdint.h>
/* Writes 64 hex digits + NUL into hex; returns 0, or -1 if the file cannot be read. */
int t_sha256_from(const char *path, uint64_t offset, char hex[65]);
#endif
