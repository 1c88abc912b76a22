/* Internal: Unicode tables of the CLIP tokenizer (generated into
 * tokenizer_unicode.c by fixtures/clip/gen_tokenizer_unicode.py from
 * Python's unicodedata and html.entities). All tables are sorted by their
 * first field so they can be binary-searched. */
#ifndef LIBMERGE_SAMPLER_TOKENIZER_UNICODE_H
#define LIBMERGE_SAMPLER_TOKENIZER_UNICODE_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint32_t lo, hi; } lm_tok_range;          /* inclusive code point range */
typedef struct { uint32_t key, a, b; } lm_tok_map3;         /* key -> a [b]; comp: (key,a) -> b */
typedef struct { uint32_t cp; uint8_t ccc; } lm_tok_ccc;    /* canonical combining class */
typedef struct { const char *name; const char *utf8; } lm_tok_entity; /* "amp" -> "&" */

extern const char lm_tok_unicode_version[];
extern const lm_tok_range lm_tok_letters[];   /* general category L* */
extern const size_t lm_tok_letters_n;
extern const lm_tok_range lm_tok_numbers[];   /* general category N* */
extern const size_t lm_tok_numbers_n;
extern const lm_tok_map3 lm_tok_lower[];      /* str.lower(): cp -> a [, b] */
extern const size_t lm_tok_lower_n;
extern const lm_tok_map3 lm_tok_decomp[];     /* canonical decomposition: cp -> a [, b] */
extern const size_t lm_tok_decomp_n;
extern const lm_tok_map3 lm_tok_comp[];       /* primary composites: (key, a) -> b, sorted by (key, a) */
extern const size_t lm_tok_comp_n;
extern const lm_tok_ccc lm_tok_ccc_tab[];     /* non-zero combining classes */
extern const size_t lm_tok_ccc_tab_n;
extern const lm_tok_entity lm_tok_entities[]; /* HTML5 named entities (without ';'), sorted by name */
extern const size_t lm_tok_entities_n;

/* ---- helpers shared by tokenizer.c and tokenizer_text.c ---- */
typedef struct { uint32_t *v; size_t n, cap; } lm_tok_cps;   /* growable code point array */

int lm_tok_cps_push(lm_tok_cps *a, uint32_t cp);      /* 0 or -1 (out of memory) */
int lm_tok_is_letter(uint32_t cp);
int lm_tok_is_number(uint32_t cp);
int lm_tok_is_space(uint32_t cp);                     /* Python str.isspace() */
/* Decodes UTF-8 strictly (no overlongs, surrogates, > U+10FFFF) into a.
 * Returns 0, -1 (out of memory) or 1 with *bad_off = offset of the bad byte. */
int lm_tok_utf8_decode(const char *s, size_t len, lm_tok_cps *a, size_t *bad_off);
/* Appends cp's UTF-8 encoding (1..4 bytes) to buf; returns the byte count. */
int lm_tok_utf8_put(uint32_t cp, char *buf);
/* ftfy subset + whitespace clean + lower on a code point array, in place. */
int lm_tok_clean(lm_tok_cps *a);
#endif
