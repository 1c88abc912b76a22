/* MT19937 and torch.randn's normal sampling on CPU (see rng.h). */
#include <math.h>

#include "libmerge/rng.h"

void lm_rng_seed(lm_rng *r, uint64_t seed)
{
    r->mt[0] = (uint32_t)seed;
    for (int i = 1; i < 624; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->idx = 624;
    r->has_next_normal = 0;
    r->next_normal = 0.0;
}

static void regenerate(lm_rng *r)
{
    for (int i = 0; i < 624; i++) {
        uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
        r->mt[i] = r->mt[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    r->idx = 0;
}

uint32_t lm_rng_u32(lm_rng *r)
{
    if (r->idx >= 624) regenerate(r);
    uint32_t y = r->mt[r->idx++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static float uniform24(lm_rng *r)
{
    return (float)(lm_rng_u32(r) & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
}

static double uniform53(lm_rng *r)
{
    /* at::CPUGeneratorImpl::random64: two 32-bit draws, the first the high word */
    uint64_t hi = lm_rng_u32(r), lo = lm_rng_u32(r);
    uint64_t w = (hi << 32) | lo;
    return (double)(w & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

static void box_muller16(float *d)
{
    const float two_pi = 6.283185307179586f;
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float rad = sqrtf(-2.0f * logf(u1));
        float th = two_pi * u2;
        d[j] = rad * cosf(th);
        d[j + 8] = rad * sinf(th);
    }
}

void lm_rng_randn(lm_rng *r, float *out, size_t n)
{
    if (n >= 16) {
        for (size_t i = 0; i < n; i++) out[i] = uniform24(r);
        for (size_t i = 0; i + 16 <= n; i += 16) box_muller16(out + i);
        if (n % 16) {
            float *d = out + n - 16;
            for (int i = 0; i < 16; i++) d[i] = uniform24(r);
            box_muller16(d);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (r->has_next_normal) {
            r->has_next_normal = 0;
            out[i] = (float)r->next_normal;
            continue;
        }
        double u1 = uniform53(r), u2 = uniform53(r);
        double rad = sqrt(-2.0 * log1p(-u2));
        double th = 2.0 * M_PI * u1;
        r->next_normal = rad * sin(th);
        r->has_next_normal = 1;
        out[i] = (float)(rad * cos(th));
    }
}
