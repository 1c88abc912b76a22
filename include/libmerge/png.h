/* libmerge/png.h — PNG output of the sampler: images through libpng with the
 * generation parameters as stable-diffusion-webui (A1111) writes them, a
 * reader for tests and verification, and comparison grids.
 *
 * Images are 8-bit RGB, row-major [H, W, 3] (what lm_vae_image_to_u8 gives).
 */
#ifndef LIBMERGE_PNG_H
#define LIBMERGE_PNG_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A text chunk: key (1..79 Latin-1 characters, PNG spec §11.3.4) and UTF-8 value. */
typedef struct lm_png_text {
    const char *key;
    const char *value;
} lm_png_text;

/* Writes rgb [height, width, 3] to path as an 8-bit RGB PNG with the given
 * text chunks. Like PIL's PngInfo.add_text (what A1111 uses), a value that
 * fits Latin-1 goes into a tEXt chunk, any other into an uncompressed iTXt
 * chunk (UTF-8). The file is written to a temporary file in the same
 * directory (registered with lm_atomic_register for signal clean-up),
 * fsync'd and renamed into place, so path is never left partial.
 * Errors: LM_EUSAGE (bad size or key), LM_EIO (cannot write/rename),
 * LM_ENOMEM, LM_EINTERNAL (libpng failure). */
int lm_png_write(const char *path, const uint8_t *rgb, int width, int height,
                 const lm_png_text *text, size_t n_text, lm_err *err);

/* Reads a PNG (any bit depth/colour type, converted to 8-bit RGB; alpha
 * dropped) into *rgb (malloc'd [h, w, 3]). When parameters is non-NULL it
 * receives the value of the "parameters" text chunk as malloc'd UTF-8, or
 * NULL when there is none. Errors: LM_EIO, LM_EINPUT (not a PNG, corrupt),
 * LM_ENOMEM. */
int lm_png_read(const char *path, uint8_t **rgb, int *width, int *height, char **parameters,
                lm_err *err);

/* What A1111's infotext carries (modules/processing.py create_infotext). */
typedef struct lm_gen_params {
    const char *prompt;            /* as given; "<lora:NAME:λ>" tags are appended for each LoRA */
    const char *negative_prompt;   /* NULL or "": no "Negative prompt:" line */
    int steps;
    const char *sampler;           /* "LCM" */
    double cfg_scale;
    uint64_t seed;
    int width, height;
    const char *model_hash;        /* AutoV2: first 10 hex digits of the file's SHA-256, or NULL */
    const char *model_name;        /* file name without extension, or NULL */
    int clip_skip;                 /* written when > 1, as A1111 does */
    size_t n_loras;
    const char *const *lora_names; /* file names without extension */
    const float *lora_lambdas;
    const char *const *lora_hashes;/* addnet hash, first 12 hex digits (A1111 "Lora hashes"), or NULL */
    const char *version;           /* "libmerge 0.1.0", or NULL */
} lm_gen_params;

/* The "parameters" text, A1111's format:
 *   PROMPT <lora:a:0.8>
 *   Negative prompt: NEG
 *   Steps: 4, Sampler: LCM, CFG scale: 1, Seed: 42, Size: 512x512, Model hash: 0123456789,
 *   Model: name, Clip skip: 2, Lora hashes: "a: 0123456789ab", Version: libmerge 0.1.0
 * (the last line is one line). Values containing ',', ':' or a newline are
 * JSON-quoted as A1111's quote() does. Returns a malloc'd string or NULL
 * when out of memory. */
char *lm_png_a1111_parameters(const lm_gen_params *p);

/* Comparison grid: rows × cols images, each [h, w, 3], images[r*cols + c]
 * (NULL leaves a cell grey), on a white canvas with 4 px gaps; optional
 * row_labels [rows] (left margin) and col_labels [cols] (top margin), drawn
 * in a built-in 5×7 bitmap font (A–Z, 0–9, space and . , : ; - + = / ( ) _ %
 * ! ? λ x; lower case drawn as upper case; other characters as '?'), scaled
 * with the image size. Output *out (malloc'd [*oh, *ow, 3]).
 * Errors: LM_EUSAGE (bad sizes), LM_ENOMEM. */
int lm_png_grid(const uint8_t *const *images, int rows, int cols, int w, int h,
                const char *const *row_labels, const char *const *col_labels,
                uint8_t **out, int *ow, int *oh, lm_err *err);

#ifdef __cplusplus
}
#endif
#endif
