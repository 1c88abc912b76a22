/* CLIP tokenizer text clean-up: UTF-8, a subset of ftfy.fix_text (ftfy 6.x,
 * the fix order of its fix_text_segment, repeated until the text stops
 * changing), Python's whitespace_clean and str.lower(). The goldens in
 * fixtures/golden/clip/tokenizer_goldens.json decide what is needed. */
#include "tokenizer_unicode.h"

#include <stdlib.h>
#include <string.h>

#include "libmerge/tokenizer.h"

int lm_tok_cps_push(lm_tok_cps *a, uint32_t cp)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        uint32_t *v = realloc(a->v, nc * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = nc;
    }
    a->v[a->n++] = cp;
    return 0;
}

static int in_ranges(const lm_tok_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

int lm_tok_is_letter(uint32_t cp)
{
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(lm_tok_letters, lm_tok_letters_n, cp);
}

int lm_tok_is_number(uint32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(lm_tok_numbers, lm_tok_numbers_n, cp);
}

int lm_tok_is_space(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

const char *lm_tokenizer_unicode_version(void) { return lm_tok_unicode_version; }

int lm_tok_utf8_decode(const char *str, size_t len, lm_tok_cps *a, size_t *bad_off)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        uint32_t c = s[i];
        int k;
        uint32_t min;
        if (c < 0x80) { k = 0; min = 0; }
        else if (c >= 0xC2 && c <= 0xDF) { k = 1; c &= 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; c &= 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; c &= 0x07; min = 0x10000; }
        else { *bad_off = i; return 1; }
        if (k && i + (size_t)k >= len) { *bad_off = i; return 1; }
        for (int j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) { *bad_off = i; return 1; }
            c = (c << 6) | (s[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) { *bad_off = i; return 1; }
        if (lm_tok_cps_push(a, c)) return -1;
        i += (size_t)k + 1;
    }
    return 0;
}

int lm_tok_utf8_put(uint32_t cp, char *buf)
{
    unsigned char *b = (unsigned char *)buf;
    if (cp < 0x80) { b[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { b[0] = (unsigned char)(0xC0 | (cp >> 6)); b[1] = (unsigned char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12)); b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F)); return 3;
    }
    b[0] = (unsigned char)(0xF0 | (cp >> 18)); b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); b[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---------- table look-ups ---------- */

static const lm_tok_map3 *map_find(const lm_tok_map3 *t, size_t n, uint32_t key)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (key < t[mid].key) hi = mid;
        else if (key > t[mid].key) lo = mid + 1;
        else return &t[mid];
    }
    return NULL;
}

static int ccc_of(uint32_t cp)
{
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = lm_tok_ccc_tab_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < lm_tok_ccc_tab[mid].cp) hi = mid;
        else if (cp > lm_tok_ccc_tab[mid].cp) lo = mid + 1;
        else return lm_tok_ccc_tab[mid].ccc;
    }
    return 0;
}

/* Hangul syllable arithmetic (Unicode §3.12). */
enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7,
       LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = lm_tok_comp_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const lm_tok_map3 *m = &lm_tok_comp[mid];
        if (a < m->key || (a == m->key && b < m->a)) hi = mid;
        else if (a > m->key || b > m->a) lo = mid + 1;
        else return m->b;
    }
    return 0;
}

static int decompose(uint32_t cp, lm_tok_cps *out)
{
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE;
        if (lm_tok_cps_push(out, LBASE + s / NCOUNT) || lm_tok_cps_push(out, VBASE + (s % NCOUNT) / TCOUNT))
            return -1;
        if (s % TCOUNT && lm_tok_cps_push(out, TBASE + s % TCOUNT)) return -1;
        return 0;
    }
    const lm_tok_map3 *m = cp < 0xC0 ? NULL : map_find(lm_tok_decomp, lm_tok_decomp_n, cp);
    if (!m) return lm_tok_cps_push(out, cp);
    if (decompose(m->a, out)) return -1;
    return m->b ? decompose(m->b, out) : 0;
}

/* Unicode normalisation form C: canonical decomposition, canonical ordering,
 * canonical composition (UAX #15). */
static int nfc(lm_tok_cps *a)
{
    lm_tok_cps d = {0};
    for (size_t i = 0; i < a->n; i++)
        if (decompose(a->v[i], &d)) { free(d.v); return -1; }
    for (size_t i = 1; i < d.n; i++) {            /* stable insertion sort of mark runs */
        int c = ccc_of(d.v[i]);
        if (!c) continue;
        size_t j = i;
        while (j > 0 && ccc_of(d.v[j - 1]) > c) { uint32_t t = d.v[j]; d.v[j] = d.v[j - 1]; d.v[j - 1] = t; j--; }
    }
    a->n = 0;
    if (!d.n) { free(d.v); return 0; }
    size_t starter = 0;
    int have_starter = ccc_of(d.v[0]) == 0;
    int last = have_starter ? 0 : 256;
    a->v[a->n++] = d.v[0];
    for (size_t i = 1; i < d.n; i++) {
        uint32_t ch = d.v[i];
        int c = ccc_of(ch);
        uint32_t comp = have_starter ? compose_pair(a->v[starter], ch) : 0;
        if (comp && (last < c || last == 0)) { a->v[starter] = comp; continue; }
        if (c == 0) { starter = a->n; have_starter = 1; }
        last = c;
        if (lm_tok_cps_push(a, ch)) { free(d.v); return -1; }
    }
    free(d.v);
    return 0;
}

/* ---------- ftfy fixes ---------- */

/* Windows-1252 bytes 0x80..0x9F (0 where the byte is undefined there). */
static const uint16_t k_cp1252[32] = {
    0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0,
    0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
};

/* The byte a character came from if UTF-8 was decoded as sloppy Windows-1252
 * (Latin-1 where 1252 has a hole), or -1. */
static int sloppy_byte(uint32_t cp)
{
    if (cp < 0x100) return (int)cp;
    for (int i = 0; i < 32; i++)
        if (k_cp1252[i] == cp) return 0x80 + i;
    return -1;
}

/* ftfy fix_encoding, reduced: a lead byte character (U+00C2..U+00F4) followed
 * by the continuation characters that make one valid UTF-8 sequence is
 * replaced by the character that sequence encodes ("cafÃ©" -> "café"). */
static void fix_mojibake(lm_tok_cps *a)
{
    size_t o = 0;
    for (size_t i = 0; i < a->n; i++) {
        uint32_t c = a->v[i];
        int k = (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2 : (c >= 0xF0 && c <= 0xF4) ? 3 : 0;
        if (k && i + (size_t)k < a->n) {
            uint32_t v = c & (k == 1 ? 0x1F : k == 2 ? 0x0F : 0x07);
            int ok = 1;
            for (int j = 1; j <= k && ok; j++) {
                int b = sloppy_byte(a->v[i + j]);
                if (b < 0x80 || b > 0xBF) ok = 0;
                else {
                    if (j == 1 && ((c == 0xE0 && b < 0xA0) || (c == 0xED && b > 0x9F) ||
                                   (c == 0xF0 && b < 0x90) || (c == 0xF4 && b > 0x8F))) ok = 0;
                    v = (v << 6) | (uint32_t)(b & 0x3F);
                }
            }
            if (ok) { a->v[o++] = v; i += (size_t)k; continue; }
        }
        a->v[o++] = c;
    }
    a->n = o;
}

static int is_alnum_ascii(uint32_t c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

static int put_utf8_str(lm_tok_cps *out, const char *s)
{
    size_t bad;
    return lm_tok_utf8_decode(s, strlen(s), out, &bad) ? -1 : 0;
}

/* ftfy unescape_html: "&#?[0-9A-Za-z]{1,24};" matches that are HTML5 named
 * entities or numeric references become their characters. */
static int unescape_html(lm_tok_cps *a)
{
    lm_tok_cps out = {0};
    for (size_t i = 0; i < a->n; i++) {
        if (a->v[i] == '&') {
            size_t j = i + 1, start;
            int numeric = j < a->n && a->v[j] == '#';
            if (numeric) j++;
            start = j;
            while (j < a->n && j - start < 25 && is_alnum_ascii(a->v[j])) j++;
            if (j > start && j - start <= 24 && j < a->n && a->v[j] == ';') {
                char name[32];
                size_t n = j - start;
                for (size_t q = 0; q < n; q++) name[q] = (char)a->v[start + q];
                name[n] = 0;
                int done = 0;
                if (!numeric) {
                    size_t lo = 0, hi = lm_tok_entities_n;
                    while (lo < hi) {
                        size_t mid = (lo + hi) / 2;
                        int c = strcmp(name, lm_tok_entities[mid].name);
                        if (c < 0) hi = mid;
                        else if (c > 0) lo = mid + 1;
                        else { if (put_utf8_str(&out, lm_tok_entities[mid].utf8)) goto oom; done = 1; break; }
                    }
                } else {
                    /* html.unescape's numeric rules: decimal or x/X hex */
                    int hex = name[0] == 'x' || name[0] == 'X';
                    char *end;
                    unsigned long v = strtoul(name + hex, &end, hex ? 16 : 10);
                    if (*end == 0 && end != name + hex) {
                        uint32_t cp;
                        if (v >= 0x80 && v <= 0x9F && k_cp1252[v - 0x80]) cp = k_cp1252[v - 0x80];
                        else if (v == 0 || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) cp = 0xFFFD;
                        else cp = (uint32_t)v;
                        if (lm_tok_cps_push(&out, cp)) goto oom;
                        done = 1;
                    }
                }
                if (done) { i = j; continue; }
            }
        }
        if (lm_tok_cps_push(&out, a->v[i])) goto oom;
    }
    free(a->v);
    *a = out;
    return 0;
oom:
    free(out.v);
    return -1;
}

/* ftfy remove_terminal_escapes: ESC '[' [0-9;]* letter. */
static void remove_terminal_escapes(lm_tok_cps *a)
{
    size_t o = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (a->v[i] == 0x1B && i + 1 < a->n && a->v[i + 1] == '[') {
            size_t j = i + 2;
            while (j < a->n && ((a->v[j] >= '0' && a->v[j] <= '9') || a->v[j] == ';')) j++;
            if (j < a->n && (a->v[j] | 0x20) >= 'a' && (a->v[j] | 0x20) <= 'z') { i = j; continue; }
        }
        a->v[o++] = a->v[i];
    }
    a->n = o;
}

/* ftfy fix_latin_ligatures (its LIGATURES table). */
static const char *ligature(uint32_t c)
{
    switch (c) {
    case 0x0132: return "IJ";  case 0x0133: return "ij";  case 0x0149: return "\xca\xbcn";
    case 0x01C4: return "D\xc5\xbd"; case 0x01C5: return "D\xc5\xbe"; case 0x01C6: return "d\xc5\xbe";
    case 0x01C7: return "LJ";  case 0x01C8: return "Lj";  case 0x01C9: return "lj";
    case 0x01CA: return "NJ";  case 0x01CB: return "Nj";  case 0x01CC: return "nj";
    case 0x01F1: return "DZ";  case 0x01F2: return "Dz";  case 0x01F3: return "dz";
    case 0x1E9E: return NULL;
    case 0xFB00: return "ff";  case 0xFB01: return "fi";  case 0xFB02: return "fl";
    case 0xFB03: return "ffi"; case 0xFB04: return "ffl"; case 0xFB05: return "\xc5\xbft";
    case 0xFB06: return "st";
    default: return NULL;
    }
}

/* ftfy fix_character_width (full-width ASCII and ideographic space; the
 * full-width signs U+FFE0..U+FFE6), uncurl_quotes, remove_control_chars and
 * fix_latin_ligatures in one pass. */
static int fix_chars(lm_tok_cps *a)
{
    static const uint16_t k_fw_signs[7] = { 0xA2, 0xA3, 0xAC, 0xAF, 0xA6, 0xA5, 0x20A9 };
    lm_tok_cps out = {0};
    for (size_t i = 0; i < a->n; i++) {
        uint32_t c = a->v[i];
        const char *lig = ligature(c);
        if (lig) { if (put_utf8_str(&out, lig)) goto oom; continue; }
        if (c >= 0xFF01 && c <= 0xFF5E) c = c - 0xFF01 + 0x21;
        else if (c == 0x3000) c = ' ';
        else if (c >= 0xFFE0 && c <= 0xFFE6) c = k_fw_signs[c - 0xFFE0];
        if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
        else if (c >= 0x201C && c <= 0x201F) c = '"';
        if (c <= 8 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
            c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC) || (c >= 0x1D173 && c <= 0x1D17A) ||
            (c >= 0xE0000 && c <= 0xE007F))
            continue;
        if (lm_tok_cps_push(&out, c)) goto oom;
    }
    free(a->v);
    *a = out;
    return 0;
oom:
    free(out.v);
    return -1;
}

static int has_lt(const lm_tok_cps *a)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i] == '<') return 1;
    return 0;
}

/* Python str.lower(), with its Final_Sigma rule. */
static int lower(lm_tok_cps *a)
{
    lm_tok_cps out = {0};
    for (size_t i = 0; i < a->n; i++) {
        uint32_t c = a->v[i];
        if (c < 0x80) { if (lm_tok_cps_push(&out, (c >= 'A' && c <= 'Z') ? c + 32 : c)) goto oom; continue; }
        if (c == 0x03A3) {
            int before = 0, after = 0;
            for (size_t j = i; j-- > 0;) { if (ccc_of(a->v[j])) continue; before = lm_tok_is_letter(a->v[j]); break; }
            for (size_t j = i + 1; j < a->n; j++) { if (ccc_of(a->v[j])) continue; after = lm_tok_is_letter(a->v[j]); break; }
            if (lm_tok_cps_push(&out, before && !after ? 0x03C2 : 0x03C3)) goto oom;
            continue;
        }
        const lm_tok_map3 *m = map_find(lm_tok_lower, lm_tok_lower_n, c);
        if (!m) { if (lm_tok_cps_push(&out, c)) goto oom; continue; }
        if (lm_tok_cps_push(&out, m->a) || (m->b && lm_tok_cps_push(&out, m->b))) goto oom;
    }
    free(a->v);
    *a = out;
    return 0;
oom:
    free(out.v);
    return -1;
}

static int same(const lm_tok_cps *a, const uint32_t *v, size_t n)
{
    return a->n == n && (n == 0 || memcmp(a->v, v, n * sizeof *v) == 0);
}

int lm_tok_clean(lm_tok_cps *a)
{
    int html = !has_lt(a);
    /* ftfy.fix_text: apply the fixes in order until nothing changes */
    for (int round = 0; round < 16; round++) {
        uint32_t *prev = a->n ? malloc(a->n * sizeof *prev) : NULL;
        size_t pn = a->n;
        if (a->n && !prev) return -1;
        if (pn) memcpy(prev, a->v, pn * sizeof *prev);
        int rc = 0;
        if (html) rc = unescape_html(a);
        if (!rc) { remove_terminal_escapes(a); fix_mojibake(a); rc = fix_chars(a); }
        if (!rc) rc = nfc(a);
        int stable = !rc && same(a, prev, pn);
        free(prev);
        if (rc) return -1;
        if (stable) break;
    }
    /* whitespace_clean: re.sub(r"\s+", " ", text).strip() */
    size_t o = 0;
    int in_space = 1;   /* drops leading space */
    for (size_t i = 0; i < a->n; i++) {
        if (lm_tok_is_space(a->v[i])) {
            if (!in_space) a->v[o++] = ' ';
            in_space = 1;
        } else {
            a->v[o++] = a->v[i];
            in_space = 0;
        }
    }
    if (o && a->v[o - 1] == ' ') o--;
    a->n = o;
    return lower(a);
}

int lm_tokenizer_normalize(const char *text, size_t len, char **out, lm_err *err)
{
    lm_tok_cps a = {0};
    size_t bad = 0;
    *out = NULL;
    int rc = lm_tok_utf8_decode(text, len, &a, &bad);
    if (rc > 0) { free(a.v); return lm_err_set(err, LM_EINPUT, NULL, "prompt", (int64_t)bad, "prompt is not valid UTF-8"); }
    if (rc < 0 || lm_tok_clean(&a)) { free(a.v); return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    char *s = malloc(a.n * 4 + 1);
    if (!s) { free(a.v); return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    size_t n = 0;
    for (size_t i = 0; i < a.n; i++) n += (size_t)lm_tok_utf8_put(a.v[i], s + n);
    s[n] = 0;
    free(a.v);
    *out = s;
    return 0;
}
