/* The SHA-256 cache of whole input files (contract: include/libmerge/hash.h). A 2 GB
 * checkpoint costs ~1.2 s of CPU to hash; publishers bake the same base again and again,
 * so, as AUTOMATIC1111 does with its cache.json, the hash is remembered per file version. */
#include "libmerge/hash.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cJSON.h>

#define CACHE_MAX_BYTES (16u << 20)          /* a bigger file is not ours: a miss */
#define RACY_NS 2000000000LL                 /* FAT's 2 s mtime granularity covers all */

static int enabled(void)
{
    const char *e = getenv("LIBMERGE_HASH_CACHE");
    return !(e && !strcmp(e, "0"));
}

/* dir: "<cache home>/libmerge"; file: dir + "/sha256.json". 0 when there is no home. */
static int cache_paths(char *dir, size_t dn, char *file, size_t fn)
{
    const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (x && x[0] == '/') n = snprintf(dir, dn, "%s/libmerge", x);
    else if (home && home[0] == '/') n = snprintf(dir, dn, "%s/.cache/libmerge", home);
    else return 0;
    if (n < 0 || (size_t)n >= dn) return 0;
    n = snprintf(file, fn, "%s/sha256.json", dir);
    return n > 0 && (size_t)n < fn;
}

static int64_t ts_ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec; }

static void key_of(const struct stat *st, lm_hash_cache_key *k)
{
    k->dev = (uint64_t)st->st_dev;
    k->ino = (uint64_t)st->st_ino;
    k->size = (uint64_t)st->st_size;
    k->mtime_ns = ts_ns(st->st_mtim);
    k->ctime_ns = ts_ns(st->st_ctim);
}

/* the stat part of a key as stored: decimal strings keep all 64 bits (JSON numbers
 * are doubles in cJSON) */
static void stat_string(const lm_hash_cache_key *k, char *s, size_t n)
{
    snprintf(s, n, "%llu %llu %llu %lld %lld", (unsigned long long)k->dev, (unsigned long long)k->ino,
             (unsigned long long)k->size, (long long)k->mtime_ns, (long long)k->ctime_ns);
}

static int is_hex64(const char *s)
{
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

/* the cache's entries array (the whole document in *doc), or NULL on any error */
static cJSON *load(const char *file, cJSON **doc)
{
    *doc = NULL;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return NULL;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size <= CACHE_MAX_BYTES &&
        (buf = malloc((size_t)st.st_size + 1))) {
        size_t got = 0;
        while (got < (size_t)st.st_size) {
            ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            got += (size_t)r;
        }
        buf[got] = 0;
        if (got == (size_t)st.st_size) *doc = cJSON_Parse(buf);
    }
    free(buf);
    close(fd);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(*doc, "version");
    cJSON *e = cJSON_GetObjectItemCaseSensitive(*doc, "entries");
    if (!cJSON_IsObject(*doc) || !cJSON_IsNumber(v) || v->valuedouble != 1 || !cJSON_IsArray(e)) {
        cJSON_Delete(*doc);
        *doc = NULL;
        return NULL;
    }
    return e;
}

static const char *field(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int lm_hash_cache_get(const char *path, lm_hash_cache_key *key, char hex[65])
{
    memset(key, 0, sizeof *key);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    key->taken_ns = ts_ns(now);
    struct stat st;
    char rp[PATH_MAX], dir[PATH_MAX], file[PATH_MAX];
    if (!enabled() || !path || stat(path, &st) || !S_ISREG(st.st_mode) || !realpath(path, rp) ||
        strlen(rp) >= sizeof key->path || !cache_paths(dir, sizeof dir, file, sizeof file))
        return 0;
    key_of(&st, key);
    memcpy(key->path, rp, strlen(rp) + 1);
    key->valid = 1;
    cJSON *doc;
    const cJSON *entries = load(file, &doc);
    char want[128];
    stat_string(key, want, sizeof want);
    int hit = 0;
    for (const cJSON *e = entries ? entries->child : NULL; e && !hit; e = e->next) {
        const char *p = field(e, "path"), *s = field(e, "stat"), *h = field(e, "sha256");
        if (p && s && !strcmp(p, key->path) && !strcmp(s, want) && is_hex64(h)) {
            memcpy(hex, h, 65);
            hit = 1;
        }
    }
    cJSON_Delete(doc);
    return hit;
}

/* writes text to file through a temp file in dir and rename(2) */
static void replace_file(const char *dir, const char *file, const char *text)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/.sha256.json.XXXXXX", dir) >= (int)sizeof tmp) return;
    int fd = mkstemp(tmp);
    if (fd < 0) return;
    size_t n = strlen(text), done = 0;
    while (done < n) {
        ssize_t w = write(fd, text + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    /* no fsync: after a crash the file may be empty or stale-but-whole; an empty or
     * unparsable file is a miss, and a stale entry still has to match the stat key */
    if (close(fd) == 0 && done == n && rename(tmp, file) == 0) return;
    unlink(tmp);
}

void lm_hash_cache_put(const lm_hash_cache_key *key, const char hex[65])
{
    char dir[PATH_MAX], file[PATH_MAX];
    struct stat st;
    if (!key || !key->valid || !is_hex64(hex) || !enabled() || !cache_paths(dir, sizeof dir, file, sizeof file) ||
        stat(key->path, &st) || !S_ISREG(st.st_mode))
        return;
    lm_hash_cache_key now;
    memset(&now, 0, sizeof now);
    key_of(&st, &now);
    if (now.dev != key->dev || now.ino != key->ino || now.size != key->size || now.mtime_ns != key->mtime_ns ||
        now.ctime_ns != key->ctime_ns)
        return;                                   /* changed while hashed */
    if (key->mtime_ns > key->taken_ns - RACY_NS || key->ctime_ns > key->taken_ns - RACY_NS)
        return;                                   /* a write in the same tick could be unseen */

    /* mkdir -p of the cache home's libmerge/ (the home itself at most one level) */
    if (mkdir(dir, 0700) && errno != EEXIST) {
        char parent[PATH_MAX];
        memcpy(parent, dir, strlen(dir) + 1);
        char *sl = strrchr(parent, '/');
        if (!sl || sl == parent) return;
        *sl = 0;
        if (mkdir(parent, 0700) && errno != EEXIST) return;
        if (mkdir(dir, 0700) && errno != EEXIST) return;
    }
    cJSON *doc;
    cJSON *entries = load(file, &doc);
    if (!entries) {                               /* missing or unreadable: start over */
        doc = cJSON_CreateObject();
        if (!doc || !cJSON_AddNumberToObject(doc, "version", 1) || !(entries = cJSON_AddArrayToObject(doc, "entries"))) {
            cJSON_Delete(doc);
            return;
        }
    }
    for (cJSON *e = entries->child, *next; e; e = next) {   /* one entry per path */
        next = e->next;
        const char *p = field(e, "path");
        if (!p || !strcmp(p, key->path)) cJSON_Delete(cJSON_DetachItemViaPointer(entries, e));
    }
    while (cJSON_GetArraySize(entries) >= LM_HASH_CACHE_MAX) cJSON_DeleteItemFromArray(entries, 0);
    char s[128];
    stat_string(key, s, sizeof s);
    cJSON *e = cJSON_CreateObject();
    if (e && cJSON_AddStringToObject(e, "path", key->path) && cJSON_AddStringToObject(e, "stat", s) &&
        cJSON_AddStringToObject(e, "sha256", hex) && cJSON_AddItemToArray(entries, e)) {
        e = NULL;
        char *text = cJSON_PrintUnformatted(doc);
        if (text) replace_file(dir, file, text);
        free(text);
    }
    cJSON_Delete(e);
    cJSON_Delete(doc);
}

int lm_hash_file_cached(const char *path, char hex[65], uint64_t *bytes, lm_err *err)
{
    lm_hash_cache_key key;
    if (lm_hash_cache_get(path, &key, hex)) {      /* key taken before anything is opened */
        if (bytes) *bytes = key.size;
        return 0;
    }
    lm_file_hashes h;
    int rc = lm_hash_file(path, LM_HASH_SHA256, &h, err);
    if (rc) return rc;
    memcpy(hex, h.sha256, 65);
    lm_hash_cache_put(&key, hex);
    if (bytes) {
        struct stat st;
        *bytes = key.valid ? key.size : stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    }
    return 0;
}
