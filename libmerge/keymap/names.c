/* Small string tools shared by the layout converters: a bounded output
 * buffer and a cursor that consumes literal prefixes and block indices. */
#include "keymap_impl.h"

#include <stdio.h>
#include <string.h>

void km_buf_init(km_buf *b, char *p, size_t n)
{
    b->p = p;
    b->n = n;
    b->len = 0;
    b->over = 0;
    if (n) p[0] = '\0';
}

void km_put(km_buf *b, const char *fmt, ...)
{
    va_list ap;
    size_t room = b->len < b->n ? b->n - b->len : 0;
    va_start(ap, fmt);
    int k = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= room) {
        b->over = 1;
        b->len = b->n;
    } else {
        b->len += (size_t)k;
    }
}

int km_lit(const char **p, const char *s)
{
    size_t k = strlen(s);
    if (strncmp(*p, s, k) != 0) return 0;
    *p += k;
    return 1;
}

int km_num(const char **p, int *v)
{
    const char *q = *p;
    long x = 0;
    if (*q < '0' || *q > '9') return 0;
    if (q[0] == '0' && q[1] >= '0' && q[1] <= '9') return 0; /* no leading zeros: "01" is not an index */
    while (*q >= '0' && *q <= '9') {
        x = x * 10 + (*q++ - '0');
        if (x > 100000) return 0;
    }
    if (*q != '.') return 0;
    *v = (int)x;
    *p = q + 1;
    return 1;
}

int km_is_leaf(const char *p)
{
    return strcmp(p, "weight") == 0 || strcmp(p, "bias") == 0;
}
