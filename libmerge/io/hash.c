/* File hashes (SHA-256, AutoV2, AutoV1, addnet, ModelSpec) and XXH3 per
 * tensor. Definitions and their sources: include/libmerge/hash.h. */
#include "libmerge/hash.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
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
static uint64_t data_start(const char *path, uint64_t size)
{
    lm_format f;
    if (lm_detect_format(path, &f, NULL) || f != LM_FMT_SAFETENSORS) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    unsigned char le[8];
    ssize_t k = pread_full(fd, le, 8, 0);
    close(fd);
    if (k != 8) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | le[i];
    if (n > size - 8) return 0;
    return 8 + n;
}

int lm_hash_file(const char *path, int which, lm_file_hashes *out, lm_err *err)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "not a regular file");
    }
    uint64_t size = (uint64_t)st.st_size;
    uint64_t ds = (which & LM_HASH_ADDNET) && size >= 8 ? data_start(path, size) : 0;
    int want_full = which & LM_HASH_SHA256, want_data = ds != 0;
    int rc = 0;
    unsigned char *buf = NULL;
    EVP_MD_CTX *full = NULL, *data = NULL;
    unsigned char md[32];
    unsigned mdlen;

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
    if (!want_full && !want_data) goto out;

    buf = malloc(HASH_BLOCK);
    full = want_full ? EVP_MD_CTX_new() : NULL;
    data = want_data ? EVP_MD_CTX_new() : NULL;
    if (!buf || (want_full && !full) || (want_data && !data)) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    if ((full && !EVP_DigestInit_ex(full, EVP_sha256(), NULL)) || (data && !EVP_DigestInit_ex(data, EVP_sha256(), NULL))) {
        rc = lm_err_set(err, LM_EINTERNAL, path, NULL, LM_ERR_NO_OFFSET, "libcrypto SHA-256 init failed");
        goto out;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    /* without the full-file hash, start reading at the data area */
    uint64_t off = want_full ? 0 : ds;
    for (;;) {
        ssize_t k = pread_full(fd, buf, HASH_BLOCK, off);
        if (k < 0) { rc = lm_err_set(err, LM_EIO, path, NULL, (int64_t)off, "cannot read: %s", strerror(errno)); goto out; }
        if (k == 0) break;
        if (full) EVP_DigestUpdate(full, buf, (size_t)k);
        if (data && off + (uint64_t)k > ds) {
            uint64_t skip = ds > off ? ds - off : 0;
            EVP_DigestUpdate(data, buf + skip, (size_t)((uint64_t)k - skip));
        }
        off += (uint64_t)k;
    }
    if (off != size) { rc = lm_err_set(err, LM_EIO, path, NULL, (int64_t)off, "file changed size while being hashed"); goto out; }
    if (full) {
        EVP_DigestFinal_ex(full, md, &mdlen);
        to_hex(md, 32, out->sha256);
        memcpy(out->autov2, out->sha256, 10);
        out->autov2[10] = 0;
        out->have |= LM_HASH_SHA256;
    }
    if (data) {
        EVP_DigestFinal_ex(data, md, &mdlen);
        to_hex(md, 32, out->addnet);
        memcpy(out->addnet_short, out->addnet, 12);
        out->addnet_short[12] = 0;
        out->modelspec[0] = '0';
        out->modelspec[1] = 'x';
        memcpy(out->modelspec + 2, out->addnet, 65);
        out->have |= LM_HASH_ADDNET;
    }
out:
    EVP_MD_CTX_free(full);
    EVP_MD_CTX_free(data);
    free(buf);
    close(fd);
    return rc;
}
