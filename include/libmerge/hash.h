/* libmerge/hash.h — the hashes users compare on model sites, and a fast
 * per-tensor content hash.
 *
 * Definitions (checked against their sources):
 *  - SHA-256: of the whole file. "AutoV2" (stable-diffusion-webui,
 *    modules/hashes.py) is its first 10 hex digits.
 *  - AutoV1: the legacy A1111 model hash (modules/sd_models.py model_hash):
 *    SHA-256 of the 0x10000 bytes at offset 0x100000 (fewer if the file is
 *    shorter; files under 1 MiB hash the empty string), first 8 hex digits.
 *  - addnet: kohya-ss/sd-scripts library/train_util.py addnet_hash_safetensors,
 *    written as the `sshs_model_hash` metadata: SHA-256 of the bytes from
 *    offset 8 + N (N = the header length) to the end, i.e. the tensor data.
 *    A1111 shows its first 12 hex digits for LoRAs. Safetensors files only.
 *  - ModelSpec `modelspec.hash_sha256` (Stability-AI/ModelSpec,
 *    examples/python): "0x" followed by the SHA-256 of the same bytes as addnet.
 *  - XXH3-64 (xxHash, XXH3_64bits, seed 0) of one tensor's raw little-endian
 *    bytes, for fast content comparison; printed as 16 lowercase hex digits.
 * All hex digits are lowercase. SHA-256 is OpenSSL libcrypto's (EVP).
 */
#ifndef LIBMERGE_HASH_H
#define LIBMERGE_HASH_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/source.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What lm_hash_file computes (each full-data hash is one pass of SHA-256
 * over most of the file, so ask only for what you print). */
enum {
    LM_HASH_SHA256 = 1,   /* full file: sha256, autov2 */
    LM_HASH_AUTOV1 = 2,   /* 64 KiB at 1 MiB: autov1 */
    LM_HASH_ADDNET = 4,   /* data area: addnet, addnet_short, modelspec */
    LM_HASH_ALL = 7
};

typedef struct lm_file_hashes {
    int have;              /* LM_HASH_* bits actually computed (ADDNET only for safetensors) */
    char sha256[65];
    char autov2[11];
    char autov1[9];
    char addnet[65];       /* "" when not computed */
    char addnet_short[13];
    char modelspec[67];    /* "0x" + addnet */
} lm_file_hashes;

/* Hashes the file at path (read sequentially in 8 MiB blocks; memory does
 * not grow with file size; SHA256 and ADDNET together run on two threads). `which` is a set of LM_HASH_* bits; ADDNET is
 * skipped (its bit left clear in out->have) when the file is not safetensors
 * or its header length runs past the end. Errors: LM_EIO (cannot open/read),
 * LM_ENOMEM, LM_EINTERNAL (libcrypto failure). */
int lm_hash_file(const char *path, int which, lm_file_hashes *out, lm_err *err);
/* The same over an open descriptor (pread only: its position is left alone), for a
 * caller that must hash the file it opened even if the name is removed or replaced
 * meanwhile; path names it in errors. fd stays open. Errors: as lm_hash_file. */
int lm_hash_fd(int fd, const char *path, int which, lm_file_hashes *out, lm_err *err);

/* SHA-256 of n bytes, as 64 lowercase hex digits plus NUL. */
void lm_sha256_hex(const void *data, size_t n, char hex[65]);

/* XXH3-64 (seed 0) of n bytes. */
uint64_t lm_xxh3_64(const void *data, size_t n);

/* XXH3-64 of entry i's raw bytes (its own dtype, little-endian, contiguous):
 * hashes the mapping in place when lm_source_raw gives it, else reads the
 * tensor into a temporary buffer. Errors: those of lm_source_read, LM_ENOMEM. */
int lm_hash_tensor_xxh3(const lm_source *s, size_t i, uint64_t *out, lm_err *err);

/* ---- SHA-256 cache (libmerge/io/hash_cache.c) -------------------------------------
 * As AUTOMATIC1111 keeps its cache.json of model hashes, the SHA-256 of whole input
 * files is remembered in "$XDG_CACHE_HOME/libmerge/sha256.json" (XDG_CACHE_HOME unset or
 * not absolute: "$HOME/.cache"), keyed by the file's real path, st_dev, st_ino, size,
 * st_mtim and st_ctim in nanoseconds: any change to any of them is a miss. Only regular
 * files are cached; an entry is stored only when the file did not change while it was
 * hashed and its mtime/ctime are at least 2 s older than the hash's start (a write in
 * the same timestamp tick could otherwise go unseen, as with git's "racy" index entries).
 * The file is JSON ({"version":1,"entries":[…]}, oldest first, at most
 * LM_HASH_CACHE_MAX entries, the oldest dropped), rewritten whole through a temp file
 * and rename(2): concurrent writers can lose each other's updates, never tear the file.
 * Any read or parse error is a miss (and the next store replaces the file); failures to
 * write are ignored. LIBMERGE_HASH_CACHE=0 in the environment disables it. */
#define LM_HASH_CACHE_MAX 10000

typedef struct lm_hash_cache_key {
    int valid;                /* 0: not cacheable (disabled, not a regular file, no real path) */
    char path[4096];          /* realpath(3) of the file */
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
    int64_t taken_ns;         /* CLOCK_REALTIME when the key was taken */
} lm_hash_cache_key;

/* Takes the key of the file at path now (stat) and looks it up: returns 1 and the
 * cached hex (64 lowercase digits + NUL) on a hit, 0 on a miss or when uncacheable.
 * Take the key BEFORE opening the file to hash, so that lm_hash_cache_put can tell
 * whether the bytes hashed are the ones the key describes. Never fails. */
int lm_hash_cache_get(const char *path, lm_hash_cache_key *key, char hex[65]);

/* Stores hex for key unless the file's stat differs from key now, or is too recent
 * (see above), or key is not valid. Errors are ignored (a cache only). */
void lm_hash_cache_put(const lm_hash_cache_key *key, const char hex[65]);

/* The file's SHA-256 (lm_hash_file's LM_HASH_SHA256), from the cache when its key
 * matches, else computed and stored. bytes (may be NULL): the file size.
 * Errors: those of lm_hash_file. */
int lm_hash_file_cached(const char *path, char hex[65], uint64_t *bytes, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
