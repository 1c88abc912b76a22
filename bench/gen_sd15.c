/* bench/gen_sd15.c — full-size synthetic SD1.5 models for `make demo` and bench/bake.sh.
 *
 *   gen_sd15 base MANIFEST OUT [SEED]      SD1.5 single-file checkpoint, LDM layout, fp16
 *   gen_sd15 lora KEYS_MANIFEST OUT [SEED]  LCM-LoRA-shaped LoRA (kohya names, rank 64, fp16)
 *
 * Names, dtypes and shapes come from the manifests in fixtures/golden/ (sd15_ldm_manifest.json:
 * every float tensor becomes F16 as in the fp16 releases, position_ids stays I64 = 0..76;
 * lcm_lora_sd15_keys.json: F16 factors, 0-dim F16 alpha = 8.0, the inferred value).
 * Weights are deterministic pseudo-random numbers, a function of (name, seed, element index)
 * only, so the same file comes out whatever the thread count:
 *   base, ndim >= 2: r / sqrt(fan_in)  (fan_in = prod(shape[1:]), unit gain)
 *   base, 1-D *.weight (norm gains): 1 + 0.1 r;  other 1-D (biases): 0.05 r
 *   lora down: r / sqrt(fan_in);  lora up: 0.05 r  (ΔW ≈ 5 % of W at scale alpha/rank)
 * with r ≈ N(0, 1) (Irwin–Hall sum of four uniforms: cheap, bounded by ±2√3).
 * Tensors are laid out as the safetensors reference writer lays them out (alignment
 * descending, then name), header padded with spaces to 8 bytes, metadata {"format":"pt"}.
 * The weights are not a model of anything: only names, shapes and formats are real. */

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cJSON.h>
#include "libmerge/dtype.h"

typedef struct gtensor {
    char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[8];
    int64_t numel;
    uint64_t begin, end;
    int kind;            /* 0 weight, 1 norm gain, 2 bias, 3 position ids, 4 lora down, 5 lora up, 6 alpha */
} gtensor;

static uint64_t fnv1a(const char *s, uint64_t seed)
{
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
    return h;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define CHUNK (1 << 16)   /* elements per PRNG stream: the value of element i depends on i only */

typedef struct job {
    const gtensor *t;
    uint16_t *out;        /* F16 elements */
    uint64_t seed;
    int64_t chunk0, nchunks, stride;
} job;

static void fill_chunk(const gtensor *t, uint16_t *out, uint64_t seed, int64_t c)
{
    int64_t i0 = c * CHUNK, i1 = i0 + CHUNK < t->numel ? i0 + CHUNK : t->numel;
    uint64_t st = fnv1a(t->name, seed) ^ ((uint64_t)c * 0xd1b54a32d192ed03ULL);
    double fan = 1;
    for (int d = 1; d < t->ndim; d++) fan *= (double)t->shape[d];
    float mul, add = 0;
    switch (t->kind) {
    case 1: mul = 0.1f; add = 1.0f; break;
    case 2: mul = 0.05f; break;
    case 5: mul = 0.05f; break;
    default: mul = (float)(1.0 / sqrt(fan)); break;
    }
    const float k = 1.7320508f / 65536.0f;   /* (sum/65536 - 2)·√3 has unit variance */
    for (int64_t i = i0; i < i1; i++) {
        uint64_t u = splitmix(&st);
        float s = (float)((u & 0xffff) + ((u >> 16) & 0xffff) + ((u >> 32) & 0xffff) + (u >> 48));
        float r = s * k - 2.0f * 1.7320508f;
        out[i] = lm_f32_to_f16(add + mul * r);
    }
}

static void *worker(void *arg)
{
    job *j = arg;
    for (int64_t c = j->chunk0; c < j->nchunks; c += j->stride) fill_chunk(j->t, j->out, j->seed, c);
    return NULL;
}

static int nthreads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 16 ? 16 : (int)n;
}

static void fill(const gtensor *t, void *buf, uint64_t seed)
{
    if (t->kind == 3) {              /* position_ids: 0..n-1 as I64 */
        for (int64_t i = 0; i < t->numel; i++) { int64_t v = i; memcpy((char *)buf + 8 * i, &v, 8); }
        return;
    }
    if (t->kind == 6) { uint16_t a = lm_f32_to_f16(8.0f); memcpy(buf, &a, 2); return; }
    int64_t nchunks = (t->numel + CHUNK - 1) / CHUNK;
    int nt = nthreads();
    if (nchunks < 4 || nt == 1) { for (int64_t c = 0; c < nchunks; c++) fill_chunk(t, buf, seed, c); return; }
    pthread_t th[16];
    job jobs[16];
    for (int i = 0; i < nt; i++) {
        jobs[i] = (job){ t, buf, seed, i, nchunks, nt };
        if (pthread_create(&th[i], NULL, worker, &jobs[i])) { worker(&jobs[i]); th[i] = 0; }
    }
    for (int i = 0; i < nt; i++) if (th[i]) pthread_join(th[i], NULL);
}

static int cmp_tensor(const void *a, const void *b)
{
    const gtensor *x = a, *y = b;
    size_t ax = lm_dtype_size(x->dtype), ay = lm_dtype_size(y->dtype);
    if (ax != ay) return ax > ay ? -1 : 1;
    return strcmp(x->name, y->name);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

static int classify(gtensor *t, int lora)
{
    size_t n = strlen(t->name);
    int ends_weight = n > 7 && !strcmp(t->name + n - 7, ".weight");
    if (lora) {
        if (strstr(t->name, ".alpha")) return 6;
        if (strstr(t->name, ".lora_up.")) return 5;
        return 4;
    }
    if (t->dtype == LM_DT_I64) return 3;
    if (t->ndim >= 2) return 0;
    return ends_weight ? 1 : 2;
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "base") && strcmp(argv[1], "lora"))) {
        fprintf(stderr, "usage: gen_sd15 base|lora MANIFEST OUT [SEED]\n");
        return 2;
    }
    int lora = !strcmp(argv[1], "lora");
    uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 10) : (lora ? 2 : 1);
    char *text = slurp(argv[2]);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    cJSON *arr = root ? cJSON_GetObjectItemCaseSensitive(root, "tensors") : NULL;
    if (!cJSON_IsArray(arr)) { fprintf(stderr, "gen_sd15: %s: no \"tensors\" array\n", argv[2]); return 3; }
    size_t n = (size_t)cJSON_GetArraySize(arr), k = 0;
    gtensor *ts = calloc(n, sizeof *ts);
    cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        gtensor *t = &ts[k++];
        const char *nm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "dtype"));
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape"), *d;
        if (!nm || !dt || !cJSON_IsArray(sh)) { fprintf(stderr, "gen_sd15: bad entry %zu\n", k); return 3; }
        t->name = strdup(nm);
        t->dtype = !strncmp(dt, "I64", 3) ? LM_DT_I64 : LM_DT_F16;   /* fp16 release */
        t->numel = 1;
        cJSON_ArrayForEach(d, sh) { t->shape[t->ndim++] = (int64_t)d->valuedouble; t->numel *= (int64_t)d->valuedouble; }
        t->kind = classify(t, lora);
    }
    qsort(ts, n, sizeof *ts, cmp_tensor);

    /* header */
    size_t cap = 256 + n * 256, len = 0;
    char *h = malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        gtensor *t = &ts[i];
        t->begin = off;
        off += (uint64_t)t->numel * lm_dtype_size(t->dtype);
        t->end = off;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
                                lm_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
                                (unsigned long long)t->begin, (unsigned long long)t->end);
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';

    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[3]);
    FILE *f = fopen(tmp, "wb");
    if (!f) { fprintf(stderr, "gen_sd15: %s: %s\n", tmp, strerror(errno)); return 4; }
    uint64_t hl = len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(hl >> (8 * i));
    int bad = fwrite(le, 1, 8, f) != 8 || fwrite(h, 1, len, f) != len;
    size_t bcap = 0;
    void *buf = NULL;
    for (size_t i = 0; i < n && !bad; i++) {
        size_t nb = (size_t)(ts[i].end - ts[i].begin);
        if (nb > bcap) { free(buf); bcap = nb; buf = malloc(bcap); if (!buf) { bad = 1; break; } }
        fill(&ts[i], buf, seed);
        bad = fwrite(buf, 1, nb, f) != nb;
    }
    if (fclose(f) || bad) { fprintf(stderr, "gen_sd15: %s: write failed: %s\n", tmp, strerror(errno)); unlink(tmp); return 4; }
    if (rename(tmp, argv[3])) { fprintf(stderr, "gen_sd15: %s: %s\n", argv[3], strerror(errno)); unlink(tmp); return 4; }
    fprintf(stderr, "gen_sd15: %s: %zu tensors, %.1f MB\n", argv[3], n, (8.0 + (double)len + (double)off) / 1e6);
    for (size_t i = 0; i < n; i++) free(ts[i].name);
    free(ts); free(buf); free(h); cJSON_Delete(root); free(text);
    return 0;
}
