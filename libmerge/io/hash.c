/* File hashes (SHA-256, AutoV2, AutoV1, addnet, ModelSpec) and XXH3 per
 * tensor. Definitions and their sources: include/libmerge/hash.h. */
#include "libmerge/hash.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define HASH_BLOCK (8u << 20)
#define AUTOV1_OFFSET 0x100000u
#define AUTOV1_LEN 0x10000u

static void to_hex(const unsigned char *md, size_t n, char *hex)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = d[md[i] >> 4];
        hex[2 * i + 1] = d[md[i] & 15];
    }
    hex[2 * n] = 0;
}

void lm_sha256_hex(const void *data, size_t n, char hex[65])
{
    unsigned char md[32];
    unsigned len = 0;
    EVP_Digest(data, n, md, &len, EVP_sha256(), NULL);
    to_hex(md, 32, hex);
}

uint64_t lm_xxh3_64(const void *data, size_t n)
{
    return XXH3_64bits(data, n);
}

int lm_hash_tensor_xxh3(const lm_source *s, size_t i, uint64_t *out, lm_err *err)
{
    const lm_entry *e = lm_source_entry(s, i);
    if (!e) return lm_err_set(err, LM_EUSAGE, lm_source_path(s), NULL, LM_ERR_NO_OFFSET, "tensor index %zu out of range", i);
    const void *raw = lm_source_raw(s, i);
    if (raw) { *out = XXH3_64bits(raw, (size_t)e->nbytes); return 0; }
    void *buf = malloc(e->nbytes ? (size_t)e->nbytes : 1);
    if (!buf) return lm_err_set(err, LM_ENOMEM, lm_source_path(s), e->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_source_read(s, i, buf, err);
    if (!rc) *out = XXH3_64bits(buf, (size_t)e->nbytes);
    free(buf);
    return rc;
}

static ssize_t pread_full(int fd, unsigned char *p, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, p + got, n - got, (off_t)(off + got));
        if (k < 0) { if (errno == EINTR) continue; return -1; }
        if (k == 0) break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

/* Data area start of a safetensors file (8 + N), or 0 when the file does not
 * look like one (its first bytes, not its name, decide: as lm_detect_format). */
static uint64_t data_start(int fd, const char *path, uint64_t size)
{
    lm_format f;
    if (lm_detect_format_fd(fd, path, &f, NULL) || f != LM_FMT_SAFETENSORS) return 0;
    unsigned char le[8];
    if (pread_full(fd, le, 8, 0) != 8) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | le[i];
    if (n > size - 8) return 0;
    return 8 + n;
}

/* SHA-256 of [off, end) of fd, read in HASH_BLOCK preads. */
typedef struct range_job {
    int fd;
    uint64_t off, end;
    unsigned char md[32];
    int err;          /* errno, or -1 when the file ended early */
    uint64_t at;      /* offset of the failure */
    int oom;
} range_job;

static void *hash_range(void *arg)
{
    range_job *j = arg;
    unsigned char *buf = malloc(HASH_BLOCK);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!buf || !c || !EVP_DigestInit_ex(c, EVP_sha256(), NULL)) { j->oom = 1; goto out; }
    for (uint64_t off = j->off; off < j->end;) {
        size_t want = j->end - off < HASH_BLOCK ? (size_t)(j->end - off) : HASH_BLOCK;
        ssize_t k = pread_full(j->fd, buf, want, off);
        if (k < 0) { j->err = errno; j->at = off; goto out; }
        if ((size_t)k < want) { j->err = -1; j->at = off + (uint64_t)k; goto out; }
        EVP_DigestUpdate(c, buf, (size_t)k);
        off += (uint64_t)k;
    }
    unsigned len;
    EVP_DigestFinal_ex(c, j->md, &len);
out:
    EVP_MD_CTX_free(c);
    free(buf);
    return NULL;
}

static int job_error(const range_job *j, const char *path, lm_err *err)
{
    if (j->oom) return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    if (j->err > 0) return lm_err_set(err, LM_EIO, path, NULL, (int64_t)j->at, "cannot read: %s", strerror(j->err));
    if (j->err < 0) return lm_err_set(err, LM_EIO, path, NULL, (int64_t)j->at, "file changed size while being hashed");
    return 0;
}

int lm_hash_file(const char *path, int which, lm_file_hashes *out, lm_err *err)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block the open */
    if (fd < 0) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(errno));
    int rc = lm_hash_fd(fd, path, which, out, err);
    close(fd);
    return rc;
}

int lm_hash_fd(int fd, const char *path, int which, lm_file_hashes *out, lm_err *err)
{
    memset(out, 0, sizeof *out);
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    uint64_t ds = (which & LM_HASH_ADDNET) && size >= 8 ? data_start(fd, path, size) : 0;
    int rc = 0;

    if (which & LM_HASH_AUTOV1) {
        unsigned char b[AUTOV1_LEN];
        ssize_t k = size > AUTOV1_OFFSET ? pread_full(fd, b, AUTOV1_LEN, AUTOV1_OFFSET) : 0;
        if (k < 0) { rc = lm_err_set(err, LM_EIO, path, NULL, AUTOV1_OFFSET, "cannot read: %s", strerror(errno)); goto out; }
        char hex[65];
        lm_sha256_hex(b, (size_t)k, hex);
        memcpy(out->autov1, hex, 8);
        out->autov1[8] = 0;
        out->have |= LM_HASH_AUTOV1;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    /* The full-file and data-area digests are two passes of SHA-256 over
     * nearly the same bytes: run them on two threads, reading the same pages
     * at about the same time (one disk read, two cores). */
    range_job full = { fd, 0, size, {0}, 0, 0, 0 }, data = { fd, ds, size, {0}, 0, 0, 0 };
    int want_full = which & LM_HASH_SHA256, want_data = ds != 0;
    pthread_t th;
    int threaded = want_full && want_data && pthread_create(&th, NULL, hash_range, &data) == 0;
    if (want_full) hash_range(&full);
    if (threaded) pthread_join(th, NULL);
    else if (want_data) hash_range(&data);
    if (want_full && (rc = job_error(&full, path, err))) goto out;
    if (want_data && (rc = job_error(&data, path, err))) goto out;
    if (want_full) {
        to_hex(full.md, 32, out->sha256);
        memcpy(out->autov2, out->sha256, 10);
        out->autov2[10] = 0;
        out->have |= LM_HASH_SHA256;
    }
    if (want_data) {
        to_hex(data.md, 32, out->addnet);
        memcpy(out->addnet_short, out->addnet, 12);
        out->addnet_short[12] = 0;
        out->modelspec[0] = '0';
        out->modelspec[1] = 'x';
        memcpy(out->modelspec + 2, out->addnet, 65);
        out->have |= LM_HASH_ADDNET;
    }
out:
    return rc;
}
