/* The seeded string hash behind the name tables; see core/strhash.h. */
#include "core/strhash.h"

#include <sys/random.h>
#include <sys/types.h>
#include <time.h>

/* Per-process random seed, set once (the first caller's value wins). */
static uint64_t hash_seed(void)
{
    static uint64_t seed;
    uint64_t v = __atomic_load_n(&seed, __ATOMIC_ACQUIRE);
    if (v) return v;
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&r;
    r |= 1;
    uint64_t expect = 0;
    if (!__atomic_compare_exchange_n(&seed, &expect, r, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return expect;
    return r;
}

uint64_t lm_strhash(const char *p)
{
    uint64_t h = 1469598103934665603ull ^ hash_seed();
    while (*p) { h ^= (unsigned char)*p++; h *= 1099511628211ull; }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}
