/* PNG write/read through libpng, and A1111's "parameters" text. See
 * include/libmerge/png.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libmerge/png.h"
#include "libmerge/writer.h"

/* ---------- UTF-8 <-> Latin-1 for tEXt ---------- */

/* Latin-1 bytes of a UTF-8 string when every character is < U+0100, else NULL. */
static char *utf8_to_latin1(const char *s)
{
    size_t n = strlen(s);
    char *o = malloc(n + 1), *p = o;
    if (!o) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) { *p++ = (char)u[i++]; continue; }
        if ((u[i] == 0xC2 || u[i] == 0xC3) && i + 1 < n && (u[i + 1] & 0xC0) == 0x80) {
            *p++ = (char)(((u[i] & 0x03) << 6) | (u[i + 1] & 0x3F));
            i += 2;
            continue;
        }
        free(o);
        return NULL;
    }
    *p = 0;
    return o;
}

static char *latin1_to_utf8(const char *s, size_t n)
{
    char *o = malloc(2 * n + 1), *p = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) *p++ = (char)c;
        else { *p++ = (char)(0xC0 | (c >> 6)); *p++ = (char)(0x80 | (c & 0x3F)); }
    }
    *p = 0;
    return o;
}

/* ---------- write ---------- */

static void png_err_fn(png_structp png, png_const_charp msg)
{
    char *buf = png_get_error_ptr(png);
    if (buf) snprintf(buf, 200, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warn_fn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static int write_stream(FILE *f, const uint8_t *rgb, int width, int height, const lm_png_text *text,
                        size_t n_text, char *lat[], char msg[200])
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, msg, png_err_fn, png_warn_fn);
    if (!png) return -1;
    png_infop info = png_create_info_struct(png);
    png_textp volatile pt = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, info ? &info : NULL);
        free(pt);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text) {
        pt = calloc(n_text, sizeof *pt);
        if (!pt) png_error(png, "out of memory");
        for (size_t i = 0; i < n_text; i++) {
            pt[i].key = (char *)text[i].key;
            if (lat[i]) {
                pt[i].compression = PNG_TEXT_COMPRESSION_NONE;   /* tEXt, Latin-1 */
                pt[i].text = lat[i];
                pt[i].text_length = strlen(lat[i]);
            } else {
                pt[i].compression = PNG_ITXT_COMPRESSION_NONE;   /* iTXt, UTF-8 */
                pt[i].text = (char *)text[i].value;
                pt[i].itxt_length = strlen(text[i].value);
                pt[i].lang = (char *)"";
                pt[i].lang_key = (char *)"";
            }
        }
        png_set_text(png, info, pt, (int)n_text);
    }
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(pt);
    return 0;
}

int lm_png_write(const char *path, const uint8_t *rgb, int width, int height,
                 const lm_png_text *text, size_t n_text, lm_err *err)
{
    if (width < 1 || height < 1 || width > (1 << 20) || height > (1 << 20))
        return lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET, "image size %dx%d out of range", width, height);
    for (size_t i = 0; i < n_text; i++) {
        size_t kl = strlen(text[i].key);
        if (kl < 1 || kl > 79) return lm_err_set(err, LM_EUSAGE, path, text[i].key, LM_ERR_NO_OFFSET, "PNG text key must be 1..79 characters");
    }
    char **lat = calloc(n_text ? n_text : 1, sizeof *lat);
    if (!lat) return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    for (size_t i = 0; i < n_text; i++) lat[i] = utf8_to_latin1(text[i].value);
    /* temp file next to the target: ".<name>.XXXXXX" */
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    int rc = 0;
    if (!tmp) { rc = lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path) + 1 : 0;
    snprintf(tmp, pl + 16, "%.*s.%s.XXXXXX", (int)dl, path, path + dl);
    int fd = mkstemp(tmp);
    if (fd < 0) { rc = lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot create a temporary file: %s", strerror(errno)); goto out; }
    lm_atomic_register(tmp);
    fchmod(fd, 0644);
    FILE *f = fdopen(fd, "wb");
    char msg[200] = "libpng error";
    if (!f) { close(fd); rc = lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot write: %s", strerror(errno)); goto unlink; }
    if (write_stream(f, rgb, width, height, text, n_text, lat, msg)) {
        fclose(f);
        rc = lm_err_set(err, LM_EINTERNAL, path, NULL, LM_ERR_NO_OFFSET, "libpng: %s", msg);
        goto unlink;
    }
    if (fflush(f) || fsync(fileno(f))) {
        int e = errno;
        fclose(f);
        rc = lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot write: %s", strerror(e));
        goto unlink;
    }
    if (fclose(f)) { rc = lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot write: %s", strerror(errno)); goto unlink; }
    if (rename(tmp, path)) { rc = lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot rename into place: %s", strerror(errno)); goto unlink; }
    lm_atomic_unregister(tmp);
    {
        /* make the rename durable */
        char dir[4096];
        snprintf(dir, sizeof dir, "%.*s", dl ? (int)dl : 1, dl ? path : ".");
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) { fsync(dfd); close(dfd); }
    }
    goto out;
unlink:
    unlink(tmp);
    lm_atomic_unregister(tmp);
out:
    for (size_t i = 0; i < n_text; i++) free(lat[i]);
    free(lat);
    free(tmp);
    return rc;
}

/* ---------- read ---------- */

int lm_png_read(const char *path, uint8_t **rgb, int *width, int *height, char **parameters, lm_err *err)
{
    *rgb = NULL;
    if (parameters) *parameters = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(errno));
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return lm_err_set(err, LM_EINPUT, path, NULL, 0, "not a PNG file");
    }
    char msg[200] = "libpng error";
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, msg, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile buf = NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, info ? &info : NULL, NULL);
        fclose(f);
        free(buf);
        if (parameters) { free(*parameters); *parameters = NULL; }
        return lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET, "corrupt PNG: %s", msg);
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_png(png, info, PNG_TRANSFORM_STRIP_16 | PNG_TRANSFORM_PACKING | PNG_TRANSFORM_EXPAND |
                                PNG_TRANSFORM_STRIP_ALPHA | PNG_TRANSFORM_GRAY_TO_RGB, NULL);
    int w = (int)png_get_image_width(png, info), h = (int)png_get_image_height(png, info);
    int ch = png_get_channels(png, info);
    png_bytepp rows = png_get_rows(png, info);
    if (ch != 3) png_error(png, "unexpected channel count after conversion");
    buf = malloc((size_t)w * h * 3);
    if (!buf) png_error(png, "out of memory");
    for (int y = 0; y < h; y++) memcpy(buf + (size_t)y * w * 3, rows[y], (size_t)w * 3);
    if (parameters) {
        png_textp t;
        int nt = 0;
        png_get_text(png, info, &t, &nt);
        for (int i = 0; i < nt; i++) {
            if (strcmp(t[i].key, "parameters")) continue;
            if (t[i].compression == PNG_ITXT_COMPRESSION_NONE || t[i].compression == PNG_ITXT_COMPRESSION_zTXt)
                *parameters = strndup(t[i].text, t[i].itxt_length);
            else
                *parameters = latin1_to_utf8(t[i].text, t[i].text_length);
            break;
        }
    }
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    *rgb = buf;
    *width = w;
    *height = h;
    return 0;
}

/* ---------- A1111 parameters ---------- */

typedef struct { char *p; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->cap + n + 1) * 2;
        char *q = realloc(b->p, nc);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A1111 infotext_utils.quote: as is unless it holds ',', ':' or '\n', then
 * json.dumps(text, ensure_ascii=False). */
static void sb_quoted(sbuf *b, const char *s)
{
    if (!strpbrk(s, ",:\n")) { sb_str(b, s); return; }
    sb_str(b, "\"");
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') sb_str(b, "\\\"");
        else if (c == '\\') sb_str(b, "\\\\");
        else if (c == '\n') sb_str(b, "\\n");
        else if (c == '\r') sb_str(b, "\\r");
        else if (c == '\t') sb_str(b, "\\t");
        else if (c < 0x20) sb_fmt(b, "\\u%04x", c);
        else sb_add(b, p, 1);
    }
    sb_str(b, "\"");
}

/* A float in its shortest form that reads back to the same float ("0.8"). */
static void sb_float(sbuf *b, float v)
{
    char t[64];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, (double)v);
        if (strtof(t, NULL) == v) break;
    }
    sb_str(b, t);
}

char *lm_png_a1111_parameters(const lm_gen_params *p)
{
    sbuf b = { 0 };
    sb_str(&b, p->prompt ? p->prompt : "");
    for (size_t i = 0; i < p->n_loras; i++) {
        sb_fmt(&b, " <lora:%s:", p->lora_names[i]);
        sb_float(&b, p->lora_lambdas[i]);
        sb_str(&b, ">");
    }
    if (p->negative_prompt && *p->negative_prompt) {
        sb_str(&b, "\nNegative prompt: ");
        sb_str(&b, p->negative_prompt);
    }
    sb_fmt(&b, "\nSteps: %d, Sampler: ", p->steps);
    sb_quoted(&b, p->sampler ? p->sampler : "LCM");
    sb_str(&b, ", CFG scale: ");
    sb_float(&b, (float)p->cfg_scale);   /* slider values: short decimals */
    sb_fmt(&b, ", Seed: %" PRIu64 ", Size: %dx%d", p->seed, p->width, p->height);
    if (p->model_hash && *p->model_hash) { sb_str(&b, ", Model hash: "); sb_quoted(&b, p->model_hash); }
    if (p->model_name && *p->model_name) { sb_str(&b, ", Model: "); sb_quoted(&b, p->model_name); }
    if (p->clip_skip > 1) sb_fmt(&b, ", Clip skip: %d", p->clip_skip);
    int any_hash = 0;
    for (size_t i = 0; i < p->n_loras; i++) any_hash |= p->lora_hashes && p->lora_hashes[i] && *p->lora_hashes[i];
    if (any_hash) {
        sbuf l = { 0 };
        int first = 1;
        for (size_t i = 0; i < p->n_loras; i++) {
            if (!p->lora_hashes[i] || !*p->lora_hashes[i]) continue;
            sb_fmt(&l, "%s%s: %s", first ? "" : ", ", p->lora_names[i], p->lora_hashes[i]);
            first = 0;
        }
        sb_str(&b, ", Lora hashes: ");
        if (l.oom) b.oom = 1;
        else sb_quoted(&b, l.p);
        free(l.p);
    }
    if (p->version && *p->version) { sb_str(&b, ", Version: "); sb_quoted(&b, p->version); }
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}
