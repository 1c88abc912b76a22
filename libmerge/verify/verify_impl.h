/* Internal to libmerge/verify. */
#ifndef LIBMERGE_VERIFY_IMPL_H
#define LIBMERGE_VERIFY_IMPL_H

#include "libmerge/verify.h"
#include "libmerge/hash.h"
#include "libmerge/keymap.h"
#include "libmerge/lora.h"

/* Appends a problem (kind, where, message) and clears r->ok. Returns 0 or LM_ENOMEM. */
int lmv_problem(lm_verify_report *r, const char *kind, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Appends an input record (hash_ok = -1); NULL when out of memory. */
lm_verify_input *lmv_add_input(lm_verify_report *r, const char *path, const char *role, double lambda);
/* Finds a recipe input by its recorded file name: out's directory, search[], ".".
 * Returns 1 with path filled, 0 when not found. */
int lmv_find_input(const char *out, const char *name, const char *const *search, size_t n_search,
                   char *path, size_t n);
/* Parses the recipe of s when it has one (*have = 1). Errors: LM_EINPUT (bad recipe). */
int lmv_read_recipe(const lm_source *s, lm_recipe *r, int *have, lm_err *err);
/* Hashes every input of r and compares with rec->inputs[first_rec + i] when have_recipe;
 * a difference is a "hash" problem. Errors: LM_EIO, LM_ENOMEM. */
int lmv_hash_inputs(lm_verify_report *r, const lm_recipe *rec, int have_recipe, size_t first_rec, int no_hash, lm_err *err);
/* madvise(DONTNEED) on the whole pages inside [p, p+n) of a read-only mapping. */
void lmv_release(const void *p, size_t n);

#endif
