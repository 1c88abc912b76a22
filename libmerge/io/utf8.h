/* Internal: strict UTF-8 validation shared by the safetensors reader and
 * writer (the format's header is UTF-8 JSON; the reference parser rejects
 * anything else with InvalidHeader). */
#ifndef LIBMERGE_IO_UTF8_H
#define LIBMERGE_IO_UTF8_H

#include <stddef.h>

/* Returns the offset of the first byte that does not start a well-formed
 * UTF-8 sequence (overlongs, surrogates and code points above U+10FFFF are
 * refused), or n when all n bytes are valid. */
static inline size_t lm_utf8_check(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) { i++; continue; }
        size_t len; unsigned min, cp;
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; min = 0x80; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; min = 0x800; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

#endif
