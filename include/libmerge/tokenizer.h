/* libmerge/tokenizer.h — the CLIP BPE tokenizer as Stable Diffusion 1.5 uses it.
 *
 * Matches Hugging Face transformers' slow CLIPTokenizer with ftfy installed
 * (what diffusers' StableDiffusionPipeline loads from the SD1.5 tokenizer/
 * folder), called as tokenizer(prompt, padding="max_length", max_length=77,
 * truncation=True): the goldens in fixtures/golden/clip/tokenizer_goldens.json.
 *
 * Pipeline, in order:
 *  1. literal "<|startoftext|>" / "<|endoftext|>" (case-sensitive) are cut out
 *     and become 49406 / 49407;
 *  2. every other piece: a subset of ftfy.fix_text (HTML entities when the
 *     prompt has no '<', terminal escapes, UTF-8-read-as-Latin-1/cp1252
 *     mojibake, Latin ligatures, full-width forms, curly quotes, control
 *     characters, NFC), repeated until stable; whitespace runs become one
 *     space; strip; Python str.lower();
 *  3. the pre-tokenizer regex of CLIP,
 *     's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+,
 *     with \p{L} / \p{N} = Unicode general categories L* / N* (tables from
 *     Python's unicodedata, see lm_tokenizer_unicode_version);
 *  4. byte-level BPE (GPT-2 byte-to-unicode map, "</w>" on the last symbol,
 *     lowest-rank merge first) over the 48,894 merges of
 *     bpe_simple_vocab_16e6.txt.gz (openai/CLIP, MIT licence).
 * Known approximations of ftfy: mojibake repair only re-decodes runs that form
 * valid multi-byte UTF-8 (no "badness" scoring); half-width katakana are not
 * widened. A1111 emphasis syntax "(word:1.2)" is tokenized literally, as
 * diffusers does.
 */
#ifndef LIBMERGE_TOKENIZER_H
#define LIBMERGE_TOKENIZER_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_CLIP_BOS 49406        /* <|startoftext|> */
#define LM_CLIP_EOS 49407        /* <|endoftext|> */
#define LM_CLIP_PAD_SD15 49407   /* SD1.5 / SDXL tokenizer 1 pad with EOS */
#define LM_CLIP_PAD_ZERO 0       /* SD2.x / OpenCLIP / SDXL tokenizer 2 pad with 0 */
#define LM_CLIP_CTX 77           /* ids per prompt: BOS + 75 content + EOS */
#define LM_CLIP_VOCAB 49408

typedef struct lm_tokenizer lm_tokenizer;

/* Loads the BPE merges from a gzip'd bpe_simple_vocab_16e6.txt(.gz) (read
 * with zlib; a plain text file works too). Errors: LM_EIO (cannot read),
 * LM_EINPUT (not that vocabulary: too few merges, a merge whose parts are not
 * in the vocabulary), LM_ENOMEM. */
int lm_tokenizer_open(lm_tokenizer **out, const char *vocab_path, lm_err *err);

/* Frees; safe on NULL. */
void lm_tokenizer_free(lm_tokenizer *t);

/* Where the vocabulary is looked for when the caller names none: the
 * environment variable LIBMERGE_CLIP_VOCAB; else, relative to the running
 * executable's directory D, D/../share/libmerge/bpe_simple_vocab_16e6.txt.gz
 * (installed) and D/../fixtures/golden/clip/bpe_simple_vocab_16e6.txt.gz (the
 * source tree). Writes the first that exists into buf and returns 0, or
 * LM_EIO naming the places tried. */
int lm_tokenizer_default_vocab(char *buf, size_t n, lm_err *err);

/* Longest prompt accepted, in bytes: far past what 75 tokens need, and past
 * the 128 KiB a single command-line argument can hold on Linux; it bounds
 * the work a library caller can ask for. */
#define LM_TOKENIZER_MAX_PROMPT (1 << 20)

/* The 77 ids of prompt (UTF-8): BOS, at most 75 content ids, EOS, then pad_id
 * (LM_CLIP_PAD_SD15 for SD1.5). *n_content (may be NULL) receives the number
 * of content ids before truncation. Errors: LM_EINPUT (prompt is not valid
 * UTF-8, the message gives the byte offset; or longer than
 * LM_TOKENIZER_MAX_PROMPT bytes), LM_ENOMEM. */
int lm_tokenizer_encode(const lm_tokenizer *t, const char *prompt, int32_t pad_id,
                        int32_t ids[LM_CLIP_CTX], size_t *n_content, lm_err *err);

/* All content ids of prompt, no BOS/EOS, no truncation: *ids (malloc'd,
 * caller frees) and *n. Same errors as lm_tokenizer_encode. */
int lm_tokenizer_content(const lm_tokenizer *t, const char *prompt, int32_t **ids, size_t *n,
                         lm_err *err);

/* The vocabulary string of id (byte-encoded unicode as in vocab.json, e.g.
 * "cat</w>"), or NULL when id is out of range. */
const char *lm_tokenizer_token(const lm_tokenizer *t, int32_t id);

/* Text clean-up alone (step 2 above, for one piece without special tokens):
 * ftfy subset, whitespace collapse, strip, lower-case. *out is malloc'd
 * UTF-8. Errors: LM_EINPUT (invalid UTF-8), LM_ENOMEM. */
int lm_tokenizer_normalize(const char *text, size_t len, char **out, lm_err *err);

/* Unicode version of the generated character tables ("14.0.0"). */
const char *lm_tokenizer_unicode_version(void);

#ifdef __cplusplus
}
#endif
#endif
