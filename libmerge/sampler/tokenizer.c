/* CLIP BPE tokenizer: vocabulary from bpe_simple_vocab_16e6.txt.gz, the
 * pre-tokenizer split, byte-level BPE, BOS/EOS/padding to 77. Follows
 * openai/CLIP simple_tokenizer.py and transformers' CLIPTokenizer (slow);
 * see include/libmerge/tokenizer.h. */
#include "tokenizer_unicode.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "libmerge/tokenizer.h"

#define N_MERGES 48894            /* lines 2..48895 of the file: 49408 - 512 - 2 */

typedef struct { uint64_t key; int32_t rank, result; } pair_slot;   /* key 0 = empty */

struct lm_tokenizer {
    char *arena;                  /* all vocabulary strings, NUL-separated */
    uint32_t off[LM_CLIP_VOCAB];  /* string of id i at arena + off[i] */
    int32_t *str_slots;           /* open addressing: string -> id (-1 empty) */
    size_t str_cap;
    pair_slot *pairs;             /* (left id, right id) -> merge rank, merged id */
    size_t pair_cap;
    int32_t byte_id[256];         /* id of the single-byte symbol; + 256 for "</w>" */
};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

/* id of string s: the last id with that string, as dict(zip(vocab, range)) keeps */
static int32_t str_find(const lm_tokenizer *t, const char *s)
{
    size_t m = t->str_cap - 1;
    for (size_t h = fnv1a(s) & m;; h = (h + 1) & m) {
        int32_t id = t->str_slots[h];
        if (id < 0) return -1;
        if (!strcmp(t->arena + t->off[id], s)) return id;
    }
}

static void str_put(lm_tokenizer *t, int32_t id)
{
    const char *s = t->arena + t->off[id];
    size_t m = t->str_cap - 1;
    for (size_t h = fnv1a(s) & m;; h = (h + 1) & m) {
        int32_t cur = t->str_slots[h];
        if (cur < 0 || !strcmp(t->arena + t->off[cur], s)) { t->str_slots[h] = id; return; }
    }
}

static pair_slot *pair_slot_of(const lm_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    size_t m = t->pair_cap - 1;
    for (size_t h = mix64(key) & m;; h = (h + 1) & m) {
        pair_slot *p = &t->pairs[h];
        if (p->key == key || p->key == 0) return p;
    }
}

static const pair_slot *pair_find(const lm_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    const pair_slot *p = pair_slot_of(t, a, b);
    return p->key == key ? p : NULL;
}

/* GPT-2 bytes_to_unicode(): the code point each byte is written as, in the
 * order that gives ids 0..255. */
static void byte_order(int order[256], uint32_t cp_of[256])
{
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
            order[n++] = b;
            cp_of[b] = (uint32_t)b;
        }
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
            order[n++] = b;
            cp_of[b] = 256u + (uint32_t)extra++;
        }
}

static int read_all_gz(const char *path, char **buf, size_t *len, lm_err *err)
{
    gzFile f = gzopen(path, "rb");
    if (!f) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open vocabulary");
    size_t cap = 1 << 20, n = 0;
    char *b = malloc(cap);
    if (!b) { gzclose(f); return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    for (;;) {
        if (cap - n < (1 << 16)) {
            char *nb = realloc(b, cap * 2);
            if (!nb) { free(b); gzclose(f); return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
            b = nb; cap *= 2;
        }
        int got = gzread(f, b + n, (unsigned)(cap - n - 1));
        if (got < 0) {
            int zerr;
            const char *m = gzerror(f, &zerr);
            int rc = lm_err_set(err, LM_EINPUT, path, NULL, (int64_t)n, "cannot decompress: %s", m);
            free(b); gzclose(f);
            return rc;
        }
        if (got == 0) break;
        n += (size_t)got;
        /* only the first 48,895 lines matter: stop once they are in */
        if (n > (8u << 20)) break;
    }
    gzclose(f);
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

int lm_tokenizer_open(lm_tokenizer **out, const char *path, lm_err *err)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = read_all_gz(path, &text, &len, err);
    if (rc) return rc;
    lm_tokenizer *t = calloc(1, sizeof *t);
    /* arena: byte symbols (<= 2 bytes UTF-8 each, twice, +"</w>"), merges (<= line length), specials */
    size_t arena_cap = 256 * 3 + 256 * 7 + len + 64;
    if (t) t->arena = malloc(arena_cap);
    if (t) { t->str_cap = 1 << 17; t->str_slots = malloc(t->str_cap * sizeof *t->str_slots); }
    if (t) { t->pair_cap = 1 << 17; t->pairs = calloc(t->pair_cap, sizeof *t->pairs); }
    if (!t || !t->arena || !t->str_slots || !t->pairs) {
        free(text); lm_tokenizer_free(t);
        return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    memset(t->str_slots, 0xff, t->str_cap * sizeof *t->str_slots);
    size_t an = 0;
    int order[256];
    uint32_t cp_of[256];
    byte_order(order, cp_of);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 256; i++) {
            int32_t id = w * 256 + i;
            t->off[id] = (uint32_t)an;
            an += (size_t)lm_tok_utf8_put(cp_of[order[i]], t->arena + an);
            if (w) { memcpy(t->arena + an, "</w>", 4); an += 4; }
            t->arena[an++] = 0;
            if (!w) t->byte_id[order[i]] = id;
        }
    /* merges: skip the header line, then N_MERGES lines "left right" */
    char *p = strchr(text, '\n');
    int32_t nm = 0;
    uint32_t *split = malloc(N_MERGES * sizeof *split);   /* length of the left part */
    if (!split) { free(text); lm_tokenizer_free(t); return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    while (p && nm < N_MERGES) {
        char *line = p + 1;
        char *end = strchr(line, '\n');
        size_t ll = end ? (size_t)(end - line) : strlen(line);
        if (ll && line[ll - 1] == '\r') ll--;
        char *sp = memchr(line, ' ', ll);
        if (!sp || sp == line || sp + 1 == line + ll) {
            rc = lm_err_set(err, LM_EINPUT, path, NULL, (int64_t)(line - text), "merge line %d is not \"left right\"", nm + 2);
            free(split); free(text); lm_tokenizer_free(t);
            return rc;
        }
        int32_t id = 512 + nm;
        t->off[id] = (uint32_t)an;
        split[nm] = (uint32_t)(sp - line);
        memcpy(t->arena + an, line, (size_t)(sp - line));
        memcpy(t->arena + an + (sp - line), sp + 1, ll - (size_t)(sp - line) - 1);
        an += ll - 1;
        t->arena[an++] = 0;
        nm++;
        p = end;
    }
    free(text);
    if (nm < N_MERGES) {
        free(split); lm_tokenizer_free(t);
        return lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET,
                          "vocabulary has %d merges, the CLIP BPE vocabulary has %d", nm, N_MERGES);
    }
    t->off[LM_CLIP_BOS] = (uint32_t)an; memcpy(t->arena + an, "<|startoftext|>", 16); an += 16;
    t->off[LM_CLIP_EOS] = (uint32_t)an; memcpy(t->arena + an, "<|endoftext|>", 14); an += 14;
    for (int32_t id = 0; id < LM_CLIP_VOCAB; id++) str_put(t, id);
    /* pair table: (id of left string, id of right string) -> rank (last wins, as dict(zip(merges, range))) */
    for (int32_t r = 0; r < N_MERGES; r++) {
        const char *whole = t->arena + t->off[512 + r];
        char left[256], right[256];
        size_t wl = strlen(whole);
        if (split[r] >= sizeof left || wl - split[r] >= sizeof right) continue;
        memcpy(left, whole, split[r]); left[split[r]] = 0;
        memcpy(right, whole + split[r], wl - split[r] + 1);
        int32_t a = str_find(t, left), b = str_find(t, right);
        if (a < 0 || b < 0) {
            free(split); lm_tokenizer_free(t);
            return lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET,
                              "merge %d (\"%s %s\") has a part not in the vocabulary", r + 2, left, right);
        }
        pair_slot *s = pair_slot_of(t, a, b);
        s->key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
        s->rank = r;
        s->result = str_find(t, whole);
    }
    free(split);
    *out = t;
    return 0;
}

void lm_tokenizer_free(lm_tokenizer *t)
{
    if (!t) return;
    free(t->arena);
    free(t->str_slots);
    free(t->pairs);
    free(t);
}

const char *lm_tokenizer_token(const lm_tokenizer *t, int32_t id)
{
    return id >= 0 && id < LM_CLIP_VOCAB ? t->arena + t->off[id] : NULL;
}

int lm_tokenizer_default_vocab(char *buf, size_t n, lm_err *err)
{
    const char *env = getenv("LIBMERGE_CLIP_VOCAB");
    if (env && *env) {
        if (access(env, R_OK) == 0) { snprintf(buf, n, "%s", env); return 0; }
        return lm_err_set(err, LM_EIO, env, NULL, LM_ERR_NO_OFFSET, "LIBMERGE_CLIP_VOCAB names a file that cannot be read");
    }
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        static const char *const rel[] = { "/../share/libmerge/bpe_simple_vocab_16e6.txt.gz",
                                           "/../fixtures/golden/clip/bpe_simple_vocab_16e6.txt.gz",
                                           "/../../fixtures/golden/clip/bpe_simple_vocab_16e6.txt.gz" };
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            snprintf(buf, n, "%s%s", exe, rel[i]);
            if (access(buf, R_OK) == 0) return 0;
        }
    }
    return lm_err_set(err, LM_EIO, "bpe_simple_vocab_16e6.txt.gz", NULL, LM_ERR_NO_OFFSET,
                      "CLIP vocabulary not found: set LIBMERGE_CLIP_VOCAB or install it in PREFIX/share/libmerge");
}

/* ---------- BPE ---------- */

typedef struct { int32_t *v; size_t n, cap; } ids_buf;

static int ids_push(ids_buf *b, int32_t id)
{
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        int32_t *v = realloc(b->v, nc * sizeof *v);
        if (!v) return -1;
        b->v = v; b->cap = nc;
    }
    b->v[b->n++] = id;
    return 0;
}

/* BPE of one pre-token (its UTF-8 bytes): symbols start as single bytes, the
 * last with "</w>"; the adjacent pair of lowest merge rank is merged,
 * left to right wherever it occurs, until no pair has a rank. */
static int bpe_word(const lm_tokenizer *t, const unsigned char *bytes, size_t n, ids_buf *out)
{
    int32_t stack[64];
    int32_t *w = n <= 64 ? stack : malloc(n * sizeof *w);
    if (!w) return -1;
    for (size_t i = 0; i < n; i++) w[i] = t->byte_id[bytes[i]];
    w[n - 1] += 256;
    size_t len = n;
    while (len > 1) {
        int32_t best = INT32_MAX, ba = 0, bb = 0, res = 0;
        for (size_t i = 0; i + 1 < len; i++) {
            const pair_slot *p = pair_find(t, w[i], w[i + 1]);
            if (p && p->rank < best) { best = p->rank; ba = w[i]; bb = w[i + 1]; res = p->result; }
        }
        if (best == INT32_MAX) break;
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
            if (i + 1 < len && w[i] == ba && w[i + 1] == bb) { w[o++] = res; i++; }
            else w[o++] = w[i];
        }
        len = o;
    }
    int rc = 0;
    for (size_t i = 0; i < len && !rc; i++) rc = ids_push(out, w[i]);
    if (w != stack) free(w);
    return rc;
}

static int match_lit(const uint32_t *v, size_t n, size_t i, const char *lit)
{
    size_t k = strlen(lit);
    if (i + k > n) return 0;
    for (size_t j = 0; j < k; j++)
        if (v[i + j] != (unsigned char)lit[j]) return 0;
    return (int)k;
}

/* Pre-tokenizes a cleaned piece and appends the BPE ids of each pre-token. */
static int encode_piece(const lm_tokenizer *t, const lm_tok_cps *a, ids_buf *out)
{
    static const char *const contractions[] = { "'s", "'t", "'re", "'ve", "'m", "'ll", "'d" };
    unsigned char stackbuf[256];
    size_t i = 0;
    while (i < a->n) {
        uint32_t c = a->v[i];
        size_t j = i;
        int special = 0;
        if (lm_tok_is_space(c)) { i++; continue; }
        int k;
        if ((k = match_lit(a->v, a->n, i, "<|startoftext|>"))) { special = LM_CLIP_BOS; j = i + (size_t)k; }
        else if ((k = match_lit(a->v, a->n, i, "<|endoftext|>"))) { special = LM_CLIP_EOS; j = i + (size_t)k; }
        else {
            for (size_t q = 0; q < 7 && j == i; q++)
                if ((k = match_lit(a->v, a->n, i, contractions[q]))) j = i + (size_t)k;
            if (j == i) {
                if (lm_tok_is_letter(c)) { while (j < a->n && lm_tok_is_letter(a->v[j])) j++; }
                else if (lm_tok_is_number(c)) j = i + 1;
                else {
                    while (j < a->n && !lm_tok_is_space(a->v[j]) && !lm_tok_is_letter(a->v[j]) &&
                           !lm_tok_is_number(a->v[j]))
                        j++;
                }
            }
        }
        if (special) { if (ids_push(out, special)) return -1; i = j; continue; }
        size_t nb = 0;
        unsigned char *bytes = (j - i) * 4 <= sizeof stackbuf ? stackbuf : malloc((j - i) * 4);
        if (!bytes) return -1;
        for (size_t q = i; q < j; q++) nb += (size_t)lm_tok_utf8_put(a->v[q], (char *)bytes + nb);
        int rc = bpe_word(t, bytes, nb, out);
        if (bytes != stackbuf) free(bytes);
        if (rc) return -1;
        i = j;
    }
    return 0;
}

int lm_tokenizer_content(const lm_tokenizer *t, const char *prompt, int32_t **ids, size_t *n, lm_err *err)
{
    ids_buf out = {0};
    lm_tok_cps a = {0};
    size_t len = strlen(prompt), pos = 0;
    *ids = NULL;
    *n = 0;
    if (len > LM_TOKENIZER_MAX_PROMPT)
        return lm_err_set(err, LM_EINPUT, NULL, "prompt", LM_ERR_NO_OFFSET,
                          "prompt is %zu bytes, at most %d are accepted", len, LM_TOKENIZER_MAX_PROMPT);
    /* next occurrence of each special token at or after pos; searched again only
     * once pos has passed it, so a prompt made of special tokens stays linear */
    const char *s1 = NULL, *s2 = NULL;
    int s1_done = 0, s2_done = 0;
    while (pos <= len) {
        /* cut out literal special tokens (case-sensitive), as the added-token trie does */
        if (!s1_done && (!s1 || s1 < prompt + pos)) { s1 = strstr(prompt + pos, "<|startoftext|>"); s1_done = !s1; }
        if (!s2_done && (!s2 || s2 < prompt + pos)) { s2 = strstr(prompt + pos, "<|endoftext|>"); s2_done = !s2; }
        const char *s = (s1 && (!s2 || s1 < s2)) ? s1 : s2;
        size_t end = s ? (size_t)(s - prompt) : len;
        a.n = 0;
        size_t bad = 0;
        int rc = lm_tok_utf8_decode(prompt + pos, end - pos, &a, &bad);
        if (rc > 0) {
            free(a.v); free(out.v);
            return lm_err_set(err, LM_EINPUT, NULL, "prompt", (int64_t)(pos + bad), "prompt is not valid UTF-8");
        }
        if (rc < 0 || lm_tok_clean(&a) || encode_piece(t, &a, &out)) goto oom;
        if (!s) break;
        if (ids_push(&out, s == s1 ? LM_CLIP_BOS : LM_CLIP_EOS)) goto oom;
        pos = end + (s == s1 ? 15 : 13);
    }
    free(a.v);
    *ids = out.v;
    *n = out.n;
    return 0;
oom:
    free(a.v);
    free(out.v);
    return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
}

int lm_tokenizer_encode(const lm_tokenizer *t, const char *prompt, int32_t pad_id,
                        int32_t ids[LM_CLIP_CTX], size_t *n_content, lm_err *err)
{
    int32_t *c;
    size_t n;
    int rc = lm_tokenizer_content(t, prompt, &c, &n, err);
    if (rc) return rc;
    size_t keep = n < LM_CLIP_CTX - 2 ? n : LM_CLIP_CTX - 2;
    ids[0] = LM_CLIP_BOS;
    for (size_t i = 0; i < keep; i++) ids[1 + i] = c[i];
    ids[1 + keep] = LM_CLIP_EOS;
    for (size_t i = keep + 2; i < LM_CLIP_CTX; i++) ids[i] = pad_id;
    free(c);
    if (n_content) *n_content = n;
    return 0;
}
