/* Internal: the seeded string hash and the open-addressing probe shared by
 * the tensor-name index (io/source.c) and the LoRA key map (keymap/keymap.c).
 * Not a public header.
 *
 * Names come from untrusted files: with a fixed, unmixed FNV-1a a crafted
 * 6.7 MB header of 100,000 names falling in 64 adjacent buckets made
 * lm_source_open take 30 s of linear probing (tests/test_limits.c). So the
 * hash starts FNV-1a from a per-process random basis and finishes with
 * murmur3's fmix64, which makes the low bits the table uses depend on every
 * byte. */
#ifndef LIBMERGE_CORE_STRHASH_H
#define LIBMERGE_CORE_STRHASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Seeded FNV-1a + fmix64 of the NUL-terminated string s. The seed is drawn
 * once per process (getrandom, falling back to time and an address). */
uint64_t lm_strhash(const char *s);

/* Key stored in slot j of a table, or NULL when the slot is empty. */
typedef const char *(*lm_strtab_key_fn)(const void *table, size_t j);

/* Linear probe of a table of cap slots (cap a power of two, at least one
 * slot empty): the slot holding key, or else the first empty slot on its
 * probe sequence (where key would be inserted). */
static inline size_t lm_strtab_probe(const void *table, size_t cap, lm_strtab_key_fn key_at,
                                     const char *key)
{
    size_t mask = cap - 1;
    for (size_t j = lm_strhash(key) & mask;; j = (j + 1) & mask) {
        const char *k = key_at(table, j);
        if (!k || strcmp(k, key) == 0) return j;
    }
}

#endif
