/* Comparison grids with labels in a small built-in bitmap font. See
 * include/libmerge/png.h (lm_png_grid). */
#include <stdlib.h>
#include <string.h>

#include "libmerge/png.h"

/* 5×7 glyphs drawn for this project: 7 rows of 5 pixels, '#' = ink. */
static const struct { unsigned cp; const char *rows; } k_font[] = {
    { ' ', "..................................." }, { 'A', ".###.#...##...#######...##...##...#" },
    { 'B', "####.#...##...#####.#...##...#####." }, { 'C', ".###.#...##....#....#....#...#.###." },
    { 'D', "####.#...##...##...##...##...#####." }, { 'E', "######....#....####.#....#....#####" },
    { 'F', "######....#....####.#....#....#...." }, { 'G', ".###.#...##....#.####...##...#.####" },
    { 'H', "#...##...##...#######...##...##...#" }, { 'I', ".###...#....#....#....#....#...###." },
    { 'J', "..###...#....#....#....#.#..#..##.." }, { 'K', "#...##..#.#.#..##...#.#..#..#.#...#" },
    { 'L', "#....#....#....#....#....#....#####" }, { 'M', "#...###.###.#.##.#.##...##...##...#" },
    { 'N', "#...##...###..##.#.##..###...##...#" }, { 'O', ".###.#...##...##...##...##...#.###." },
    { 'P', "####.#...##...#####.#....#....#...." }, { 'Q', ".###.#...##...##...##.#.##..#..##.#" },
    { 'R', "####.#...##...#####.#.#..#..#.#...#" }, { 'S', ".###.#...##.....###.....##...#.###." },
    { 'T', "#####..#....#....#....#....#....#.." }, { 'U', "#...##...##...##...##...##...#.###." },
    { 'V', "#...##...##...##...##...#.#.#...#.." }, { 'W', "#...##...##...##.#.##.#.##.#.#.#.#." },
    { 'X', "#...##...#.#.#...#...#.#.#...##...#" }, { 'Y', "#...##...#.#.#...#....#....#....#.." },
    { 'Z', "#####....#...#...#...#...#....#####" }, { '0', ".###.#...##..###.#.###..##...#.###." },
    { '1', "..#...##....#....#....#....#...###." }, { '2', ".###.#...#....#...#...#...#...#####" },
    { '3', "#####...#...#.....#.....##...#.###." }, { '4', "...#...##..#.#.#..#.#####...#....#." },
    { '5', "######....####.....#....##...#.###." }, { '6', "..##..#...#....####.#...##...#.###." },
    { '7', "#####....#...#...#...#....#....#..." }, { '8', ".###.#...##...#.###.#...##...#.###." },
    { '9', ".###.#...##...#.####....#...#..##.." }, { '.', "..........................##...##.." },
    { ',', ".....................##....#...#..." }, { ':', "......##...##........##...##......." },
    { ';', "......##...##........##....#...#..." }, { '-', "...............#####..............." },
    { '+', ".......#....#..#####..#....#......." }, { '=', "..........#####.....#####.........." },
    { '/', "....#....#...#...#...#...#....#...." }, { '(', "...#...#...#....#....#.....#.....#." },
    { ')', ".#.....#.....#....#....#...#...#..." }, { '_', "..............................#####" },
    { '%', "##..###..#...#...#...#...#..###..##" }, { '!', "..#....#....#....#....#.........#.." },
    { '?', ".###.#...#....#...#...#.........#.." }, { 0x3BB, ".#.....#....#....#...#.#.#...##...#" },
};

static const char *glyph(unsigned cp)
{
    if (cp >= 'a' && cp <= 'z') cp -= 32;
    for (size_t i = 0; i < sizeof k_font / sizeof k_font[0]; i++)
        if (k_font[i].cp == cp) return k_font[i].rows;
    return cp == ' ' ? NULL : glyph('?');
}

/* Next code point of UTF-8 s (invalid bytes read as '?'). */
static unsigned next_cp(const char **s)
{
    const unsigned char *u = (const unsigned char *)*s;
    if (u[0] < 0x80) { (*s)++; return u[0]; }
    int k = u[0] >= 0xF0 ? 3 : u[0] >= 0xE0 ? 2 : u[0] >= 0xC0 ? 1 : 0;
    unsigned cp = u[0] & (0x3F >> k);
    for (int j = 1; j <= k; j++) {
        if ((u[j] & 0xC0) != 0x80) { (*s)++; return '?'; }
        cp = (cp << 6) | (u[j] & 0x3F);
    }
    *s += k + 1;
    return k ? cp : '?';
}

static int text_cols(const char *s)
{
    int n = 0;
    while (*s) { next_cp(&s); n++; }
    return n;
}

/* Draws s at (x, y) with pixel scale sc, black, clipped to the canvas. */
static void draw_text(uint8_t *img, int W, int H, int x, int y, int sc, const char *s)
{
    while (*s) {
        const char *g = glyph(next_cp(&s));
        for (int r = 0; g && r < 7; r++)
            for (int c = 0; c < 5; c++) {
                if (g[r * 5 + c] != '#') continue;
                for (int dy = 0; dy < sc; dy++)
                    for (int dx = 0; dx < sc; dx++) {
                        int px = x + c * sc + dx, py = y + r * sc + dy;
                        if (px >= 0 && px < W && py >= 0 && py < H) memset(img + ((size_t)py * W + px) * 3, 0, 3);
                    }
            }
        x += 6 * sc;
    }
}

int lm_png_grid(const uint8_t *const *images, int rows, int cols, int w, int h,
                const char *const *row_labels, const char *const *col_labels,
                uint8_t **out, int *ow, int *oh, lm_err *err)
{
    *out = NULL;
    if (rows < 1 || cols < 1 || w < 1 || h < 1 || rows > 1024 || cols > 1024 || w > 16384 || h > 16384)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "grid %dx%d of %dx%d images out of range", rows, cols, w, h);
    const int gap = 4, sc = (w < h ? w : h) >= 256 ? (w < h ? w : h) / 128 : 1, pad = 2 * sc;
    int left = 0, top = 0;
    for (int r = 0; row_labels && r < rows; r++) {
        int tw = row_labels[r] ? text_cols(row_labels[r]) * 6 * sc + 2 * pad : 0;
        if (tw > left) left = tw;
    }
    if (col_labels) top = 7 * sc + 2 * pad;
    const int W = left + cols * w + (cols + 1) * gap, H = top + rows * h + (rows + 1) * gap;
    uint8_t *img = malloc((size_t)W * H * 3);
    if (!img) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory for a %dx%d grid", W, H);
    memset(img, 255, (size_t)W * H * 3);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            const uint8_t *src = images ? images[r * cols + c] : NULL;
            int x0 = left + gap + c * (w + gap), y0 = top + gap + r * (h + gap);
            for (int y = 0; y < h; y++) {
                uint8_t *d = img + ((size_t)(y0 + y) * W + x0) * 3;
                if (src) memcpy(d, src + (size_t)y * w * 3, (size_t)w * 3);
                else memset(d, 128, (size_t)w * 3);
            }
        }
    for (int r = 0; row_labels && r < rows; r++)
        if (row_labels[r])
            draw_text(img, W, H, pad, top + gap + r * (h + gap) + (h - 7 * sc) / 2, sc, row_labels[r]);
    for (int c = 0; col_labels && c < cols; c++)
        if (col_labels[c]) {
            int tw = text_cols(col_labels[c]) * 6 * sc - sc;
            draw_text(img, W, H, left + gap + c * (w + gap) + (w - tw) / 2, pad, sc, col_labels[c]);
        }
    *out = img;
    *ow = W;
    *oh = H;
    return 0;
}
