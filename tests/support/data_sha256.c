/* See data_sha256.h: the tests check the library's hashes against this. */
#include "data_sha256.h"

#include <openssl/evp.h>
#include <stdio.h>

int t_sha256_from(const char *path, uint64_t offset, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    if (fseek(f, (long)offset, SEEK_SET)) { fclose(f); return -1; }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(ctx, buf, n);
    int bad = ferror(f);
    fclose(f);
    unsigned char md[32];
    unsigned int mdn;
    EVP_DigestFinal_ex(ctx, md, &mdn);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return bad ? -1 : 0;
}
