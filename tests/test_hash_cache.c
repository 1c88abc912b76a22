/* The SHA-256 cache (libmerge/hash.h, libmerge/io/hash_cache.c): a hit returns what the
 * cache holds (shown by planting a different value), any change of the file's mtime or
 * contents is a miss, a corrupt cache file is ignored and replaced, LIBMERGE_HASH_CACHE=0
 * bypasses it, it stays bounded, and concurrent writers leave a whole file. Everything
 * under a temp XDG_CACHE_HOME. */
#include "test.h"
#include "libmerge/hash.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cJSON.h>

static char dir[64], cache_file[160];
static const char *const PLANT = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void path_of(char *p, size_t n, const char *name) { snprintf(p, n, "%s/%s", dir, name); }

static void write_file(const char *p, unsigned seed, size_t n)
{
    FILE *f = fopen(p, "wb");
    for (size_t i = 0; f && i < n; i++) fputc((int)((i * 2654435761u + seed) >> 13) & 255, f);
    if (f) fclose(f);
}

static void real_sha(const char *p, char hex[65])
{
    lm_file_hashes h;
    memset(&h, 0, sizeof h);
    lm_hash_file(p, LM_HASH_SHA256, &h, NULL);
    memcpy(hex, h.sha256, 65);
}

/* replaces the sha256 of every entry in the cache file with PLANT */
static void plant(void)
{
    size_t n;
    char *s = t_slurp(cache_file, &n);
    cJSON *doc = s ? cJSON_Parse(s) : NULL;
    free(s);
    cJSON *e = cJSON_GetObjectItem(doc, "entries");
    for (cJSON *x = e ? e->child : NULL; x; x = x->next)
        cJSON_ReplaceItemInObject(x, "sha256", cJSON_CreateString(PLANT));
    char *out = cJSON_PrintUnformatted(doc);
    FILE *f = fopen(cache_file, "wb");
    if (f && out) fputs(out, f);
    if (f) fclose(f);
    free(out);
    cJSON_Delete(doc);
}

static int entries(void)
{
    size_t n;
    char *s = t_slurp(cache_file, &n);
    cJSON *doc = s ? cJSON_Parse(s) : NULL;
    free(s);
    int c = cJSON_IsArray(cJSON_GetObjectItem(doc, "entries")) ? cJSON_GetArraySize(cJSON_GetObjectItem(doc, "entries")) : -1;
    cJSON_Delete(doc);
    return c;
}

static void test_hit_returns_cached_value(void)
{
    char a[128], want[65], got[65];
    path_of(a, sizeof a, "a.bin");
    real_sha(a, want);
    unlink(cache_file);
    uint64_t bytes = 0;
    CHECK_OK(lm_hash_file_cached(a, got, &bytes, NULL), NULL);
    CHECK_EQ_STR(got, want);
    CHECK_EQ_INT(bytes, 3u << 20);
    CHECK_EQ_INT(entries(), 1);
    lm_hash_cache_key k;
    CHECK_EQ_INT(lm_hash_cache_get(a, &k, got), 1);
    CHECK_EQ_STR(got, want);
    plant();                                   /* the next answer can only come from the cache */
    CHECK_OK(lm_hash_file_cached(a, got, NULL, NULL), NULL);
    CHECK_EQ_STR(got, PLANT);
}

static void test_touch_invalidates(void)
{
    char a[128], want[65], got[65];
    path_of(a, sizeof a, "a.bin");
    real_sha(a, want);
    unlink(cache_file);
    CHECK_OK(lm_hash_file_cached(a, got, NULL, NULL), NULL);
    plant();
    struct timespec ts[2] = { { time(NULL) - 500, 0 }, { time(NULL) - 500, 0 } };
    CHECK_EQ_INT(utimensat(AT_FDCWD, a, ts, 0), 0);   /* mtime changes, contents do not */
    lm_hash_cache_key k;
    CHECK_EQ_INT(lm_hash_cache_get(a, &k, got), 0);
    CHECK_OK(lm_hash_file_cached(a, got, NULL, NULL), NULL);
    CHECK_EQ_STR(got, want);
}

static void test_rewrite_invalidates(void)
{
    char b[128], got[65], before[65], after[65];
    path_of(b, sizeof b, "b.bin");
    unlink(cache_file);
    CHECK_OK(lm_hash_file_cached(b, before, NULL, NULL), NULL);
    plant();
    struct stat st;
    CHECK_EQ_INT(stat(b, &st), 0);
    write_file(b, 99, (size_t)st.st_size);             /* same size, new bytes, old mtime */
    struct timespec ts[2] = { st.st_atim, st.st_mtim };
    CHECK_EQ_INT(utimensat(AT_FDCWD, b, ts, 0), 0);
    real_sha(b, after);
    CHECK(strcmp(before, after) != 0);
    CHECK_OK(lm_hash_file_cached(b, got, NULL, NULL), NULL);
    CHECK_EQ_STR(got, after);                          /* the ctime told */
    /* just written: not stored (a write in the same timestamp tick could go unseen) */
    lm_hash_cache_key k;
    CHECK_EQ_INT(lm_hash_cache_get(b, &k, got), 0);
}

static void test_corrupt_cache_ignored_and_replaced(void)
{
    char c[128], want[65], got[65];
    path_of(c, sizeof c, "c0.bin");
    real_sha(c, want);
    static const char *const bad[] = { "{\"version\":1,\"entries\":[{\"path\":", "", "[1,2,3]",
                                       "{\"version\":2,\"entries\":[]}", "\x01\x02garbage" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *f = fopen(cache_file, "wb");
        if (f) { fputs(bad[i], f); fclose(f); }
        lm_hash_cache_key k;
        CHECK_EQ_INT(lm_hash_cache_get(c, &k, got), 0);
        CHECK_OK(lm_hash_file_cached(c, got, NULL, NULL), NULL);
        CHECK_EQ_STR(got, want);
        CHECK_EQ_INT(entries(), 1);                    /* replaced by a whole, valid file */
    }
}

static void test_disabled_by_env(void)
{
    char c[128], want[65], got[65];
    path_of(c, sizeof c, "c1.bin");
    real_sha(c, want);
    unlink(cache_file);
    CHECK_OK(lm_hash_file_cached(c, got, NULL, NULL), NULL);
    plant();
    setenv("LIBMERGE_HASH_CACHE", "0", 1);
    CHECK_OK(lm_hash_file_cached(c, got, NULL, NULL), NULL);
    CHECK_EQ_STR(got, want);
    lm_hash_cache_key k;
    CHECK_EQ_INT(lm_hash_cache_get(c, &k, got), 0);
    unsetenv("LIBMERGE_HASH_CACHE");
    CHECK_OK(lm_hash_file_cached(c, got, NULL, NULL), NULL);
    CHECK_EQ_STR(got, PLANT);                          /* still there, untouched */
    /* not a regular file: hashed, never cached */
    CHECK(lm_hash_file_cached(dir, got, NULL, NULL) != 0);
}

static void test_bounded(void)
{
    FILE *f = fopen(cache_file, "wb");
    if (!f) { CHECK(0); return; }
    fputs("{\"version\":1,\"entries\":[", f);
    for (int i = 0; i < LM_HASH_CACHE_MAX; i++)
        fprintf(f, "%s{\"path\":\"/old/%d\",\"stat\":\"1 2 3 4 5\",\"sha256\":\"%s\"}", i ? "," : "", i, PLANT);
    fputs("]}", f);
    fclose(f);
    char c[128], got[65];
    path_of(c, sizeof c, "c2.bin");
    CHECK_OK(lm_hash_file_cached(c, got, NULL, NULL), NULL);
    size_t n;
    char *s = t_slurp(cache_file, &n);
    cJSON *doc = s ? cJSON_Parse(s) : NULL;
    free(s);
    cJSON *e = cJSON_GetObjectItem(doc, "entries");
    CHECK_EQ_INT(cJSON_GetArraySize(e), LM_HASH_CACHE_MAX);
    cJSON *first = cJSON_GetArrayItem(e, 0);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(first, "path")), "/old/1");   /* oldest dropped */
    lm_hash_cache_key k;
    CHECK_EQ_INT(lm_hash_cache_get(c, &k, got), 1);
    cJSON_Delete(doc);
}

static void test_concurrent_writers_leave_whole_file(void)
{
    unlink(cache_file);
    pid_t pid[4];
    for (int p = 0; p < 4; p++) {
        if ((pid[p] = fork()) == 0) {
            char c[128], hex[65];
            snprintf(c, sizeof c, "%s/c%d.bin", dir, p);
            for (int i = 0; i < 30; i++) {
                lm_hash_cache_key k;
                lm_hash_cache_get(c, &k, hex);
                lm_hash_cache_put(&k, PLANT);
            }
            _exit(0);
        }
    }
    for (int p = 0; p < 4; p++) waitpid(pid[p], NULL, 0);
    int n = entries();
    CHECK(n >= 1 && n <= 4);                           /* lost updates allowed, a torn file not */
    char tmpl[160];
    snprintf(tmpl, sizeof tmpl, "ls -a %s/cache/libmerge | grep -c sha256.json.  >/dev/null", dir);
    CHECK(system(tmpl) != 0);                           /* no temp file left behind */
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/lm_test_hash_cache_XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char home[128];
    snprintf(home, sizeof home, "%s/cache", dir);
    setenv("XDG_CACHE_HOME", home, 1);
    unsetenv("LIBMERGE_HASH_CACHE");
    snprintf(cache_file, sizeof cache_file, "%s/libmerge/sha256.json", home);
    static const char *const names[] = { "a.bin", "b.bin", "c0.bin", "c1.bin", "c2.bin", "c3.bin" };
    for (unsigned i = 0; i < 6; i++) {
        char p[128];
        path_of(p, sizeof p, names[i]);
        write_file(p, i, i == 0 ? 3u << 20 : 4096 + i);
    }
    /* entries are stored only for files whose mtime and ctime are 2 s old */
    struct timespec w = { 2, 100000000 };
    nanosleep(&w, NULL);
    RUN(test_hit_returns_cached_value);
    RUN(test_touch_invalidates);
    RUN(test_rewrite_invalidates);
    RUN(test_corrupt_cache_ignored_and_replaced);
    RUN(test_disabled_by_env);
    RUN(test_bounded);
    RUN(test_concurrent_writers_leave_whole_file);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) {}
    TEST_EXIT();
}
