/* Internal to lm_bake (bake.c): the shared state of the planner (bake_plan.c), the
 * workers (bake_worker.c), the hash threads (bake_hash.c) and the writer loop (bake.c). */
#ifndef LIBMERGE_MERGE_BAKE_IMPL_H
#define LIBMERGE_MERGE_BAKE_IMPL_H

#include "merge_impl.h"
#include "libmerge/hash.h"

#include <pthread.h>
#include <time.h>
#include <openssl/evp.h>

typedef struct upd {
    int lora;          /* index into the LoRA list */
    size_t mod;        /* module index in that LoRA */
    int64_t row0, rows;
    int bias;          /* 1: .diff_b onto this (bias) tensor */
    int dora;          /* applied after the plain modules */
} upd;

enum { MODE_COPY = 0, MODE_CONVERT, MODE_UPDATE };

typedef struct result {
    void *buf;
    size_t nbytes;
    int64_t overflow;  /* finite → ±Inf on the cast to the output dtype */
    int64_t nonfinite; /* NaN/±Inf made by the update from finite base values */
    int written;       /* 1: the worker wrote it in place (lm_writer_pwrite) */
    int ready;         /* computed: buf may be hashed (the write may still be going on) */
    int done, rc;      /* done: computed and, if the worker writes it, written */
    lm_err err;
} result;

typedef struct bake {
    const lm_source *src;
    lm_lora **loras;
    const lm_weighted *in;
    size_t nl, nt;
    size_t *uoff;      /* nt + 1: updates of tensor t are upds[uoff[t] .. uoff[t+1]) */
    upd *upds;
    lm_dtype *odt;
    int *mode;
    size_t *jobs, njobs;
    result *res;
    pthread_mutex_t mu;
    pthread_cond_t cv_done, cv_space;
    size_t next_job, consumed;
    size_t freed;      /* jobs below it are written (by their worker, or consumed by the
                          writer loop): with hashed, what the ring may reuse */
    uint8_t *ring;     /* output buffer ring (aligned): job j's region starts at
                          ring + voff[j] % ring_size; released once written and hashed */
    size_t ring_size;  /* bytes, a multiple of LM_WRITER_DIRECT_ALIGN */
    uint64_t ring_head;/* virtual offset where the next job's region starts */
    uint64_t *voff;    /* njobs: virtual offset of each job's region */
    int stop;
    EVP_MD_CTX *md;    /* SHA-256 of the output's data area (its own thread), or NULL */
    size_t hashed;     /* update jobs hashed (SIZE_MAX without hashing) */
    int hash_done;     /* the hash thread went through every tensor */
    lm_writer *w;      /* set (under mu) once the output is open: workers then write their
                          tensors in place, in parallel, instead of the writer thread */
    uint64_t *out_off; /* nt: data-area offset of each tensor in the output */
    int base_fd;       /* the base opened before the output exists (hash_job.fd), or -1:
                          untouched tensors are copied from it, not from its name, so a base
                          removed or replaced mid-bake cannot mix files */
} bake;

typedef struct hash_job {
    const char *path;
    int fd;                 /* the base, opened before the output appears (or -1): the file
                               baked is the file hashed even if its name goes away */
    const lm_source *src;   /* the open base: hashed from its mapping when it can be */
    lm_hash_cache_key key;  /* taken before the base was opened (libmerge/hash.h) */
    int cached;             /* hex came from the SHA-256 cache */
    char hex[65];
    uint64_t bytes;
    int rc;
    lm_err err;
    double seconds;
} hash_job;

#define release_pages lmm_release_pages

static inline double lmb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Resolves every LoRA onto the base and builds the per-tensor update lists (b->uoff,
 * b->upds: plain modules first, DoRA last, each in command-line order); fills the
 * per-LoRA counts of rep. Every shape is checked here. Errors: LM_EMISMATCH, LM_ENOMEM. */
int lmb_plan(bake *b, const lm_keymap *km, const lm_bake_opts *o, lm_bake_report *rep, lm_err *err);

/* Advances b->freed over jobs written by their worker or consumed by the writer loop;
 * call with b->mu held after either changes. */
static inline void lmb_advance_freed(bake *b)
{
    while (b->freed < b->njobs && (b->freed < b->consumed || (b->res[b->freed].done && b->res[b->freed].written)))
        b->freed++;
}

/* Worker thread (arg: bake *): computes update jobs in order, within the output ring. */
void *lmb_worker(void *arg);

/* Thread computing the SHA-256 of the whole base file (arg: hash_job *). */
void *lmb_base_hash_thread(void *arg);

/* Thread computing the SHA-256 of the output's data area in file order (arg: bake *);
 * sets b->hash_done when it went through every tensor. */
void *lmb_out_hash_thread(void *arg);

#endif
