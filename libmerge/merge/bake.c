/* lm_bake: W' = round(W + Σ λ_i ΔW_i) for every tensor of a base, streamed in file order.
 *
 * Pipeline (merge.h): the main thread plans (every input opened and resolved, every shape
 * checked, the output path checked) before the first byte is written; then worker threads
 * compute the tensors that change (W as fp32 a block of rows at a time when every module
 * is a plain up·down, else whole; + λ·ΔW per module; round once to the output dtype) up
 * to a bounded distance ahead (the output ring) and write each in place (lm_writer_pwrite: whole 4 KiB blocks
 * with O_DIRECT from the worker's buffer, the rest through the page cache, all workers at
 * once), while the main thread goes
 * through the file in order, copying untouched tensors (copy_file_range) and stepping over
 * the updated ones (lm_writer_skip). OpenBLAS runs one thread per
 * call (openblas_set_num_threads(1)) so workers × BLAS threads never exceed the workers.
 * Base pages are released (madvise DONTNEED) once written, so resident memory stays about
 * the ring, not the model. The base's SHA-256 for the recipe is computed by its own
 * thread (lm_hash_file), started once planning has passed, overlapping the bake; the output's data hash by
 * another, next to the writes. Files: bake_plan.c, bake_worker.c, bake_hash.c. */
#include "bake_impl.h"
#include "meta.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cblas.h>

/* ---- the bake ------------------------------------------------------------------- */

/* Writes bytes of the output data area (the output hash thread reads the same bytes). */
static int emit(bake *b, lm_writer *w, const void *p, size_t n, lm_err *err)
{
    (void)b;
    return lm_writer_write(w, p, n, err);
}

static int write_copy(bake *b, lm_writer *w, size_t t, lm_err *err)
{
    const lm_source *src = b->src;
    const lm_entry *e = lm_source_entry(src, t);
    const void *raw = lm_source_raw(src, t);
    if (raw && lm_source_format(src) == LM_FMT_SAFETENSORS) {
        /* copied by the kernel (copy_file_range), as cp does */
        return lm_writer_copy_from_fd(w, b->base_fd, lm_source_path(src), e->offset, e->nbytes, err);
    }
    if (raw) {
        int rc = emit(b, w, raw, e->nbytes, err);
        release_pages(raw, e->nbytes);
        return rc;
    }
    void *tmp = malloc(e->nbytes ? e->nbytes : 1);
    if (!tmp) return lm_err_set(err, LM_ENOMEM, lm_source_path(src), e->name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_source_read(src, t, tmp, err);
    if (!rc) rc = emit(b, w, tmp, e->nbytes, err);
    free(tmp);
    return rc;
}

static int add_overflow(lm_bake_report *rep, const char *name, int64_t count, int64_t nonfinite);

/* An untouched tensor whose dtype changes: converted in 1 Mi-element chunks here. */
static int write_convert(bake *b, lm_writer *w, size_t t, lm_bake_report *rep, const lm_bake_opts *o, lm_err *err)
{
    const lm_entry *e = lm_source_entry(b->src, t);
    lm_dtype odt = b->odt[t];
    size_t isz = lm_dtype_size(e->dtype), osz = lm_dtype_size(odt), chunk = 1u << 20;
    const uint8_t *raw = lm_source_raw(b->src, t);
    void *tmp = NULL;
    int rc = 0;
    if (!raw) {
        if (!(tmp = malloc(e->nbytes ? e->nbytes : 1))) return lm_err_set(err, LM_ENOMEM, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "out of memory");
        if ((rc = lm_source_read(b->src, t, tmp, err))) { free(tmp); return rc; }
        raw = tmp;
    }
    void *buf = malloc(chunk * osz);
    if (!buf) { free(tmp); return lm_err_set(err, LM_ENOMEM, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "out of memory"); }
    int64_t ov = 0;
    for (size_t i = 0; i < (size_t)e->numel && !rc; i += chunk) {
        size_t m = (size_t)e->numel - i < chunk ? (size_t)e->numel - i : chunk;
        int64_t c = lm_convert(buf, odt, raw + i * isz, e->dtype, m);
        if (c < 0) { rc = lm_err_set(err, (int)c, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET, "cannot convert %s to %s", lm_dtype_name(e->dtype), lm_dtype_name(odt)); break; }
        ov += c;
        rc = emit(b, w, buf, m * osz, err);
    }
    if (!tmp) release_pages(raw, e->nbytes);
    free(buf);
    free(tmp);
    if (!rc && ov) {
        if (add_overflow(rep, e->name, ov, 0)) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        if (o->fail_on_overflow)
            return lm_err_set(err, LM_EINPUT, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                              "%lld values overflow %s (--fail-on-overflow)", (long long)ov, lm_dtype_name(odt));
    }
    return rc;
}

static int add_overflow(lm_bake_report *rep, const char *name, int64_t count, int64_t nonfinite)
{
    lm_bake_overflow *o = realloc(rep->overflows, (rep->n_overflows + 1) * sizeof *o);
    if (!o) return LM_ENOMEM;
    rep->overflows = o;
    o[rep->n_overflows].name = strdup(name);
    o[rep->n_overflows].count = count;
    o[rep->n_overflows].nonfinite = nonfinite;
    if (!o[rep->n_overflows].name) return LM_ENOMEM;
    rep->n_overflows++;
    rep->overflow_total += count;
    rep->nonfinite_total += nonfinite;
    return 0;
}

static int run_pipeline(bake *b, lm_writer *w, const lm_bake_opts *o, lm_bake_report *rep, lm_err *err)
{
    size_t j = 0;
    int rc = 0;
    for (size_t k = 0; k < b->nt && !rc; k++) {
        size_t t = lm_writer_tensor_index(w, k);
        if (b->mode[t] == MODE_COPY) {
            rc = write_copy(b, w, t, err);
        } else if (b->mode[t] == MODE_CONVERT) {
            rc = write_convert(b, w, t, rep, o, err);
        } else {
            if (b->jobs[j] != t) return lm_err_set(err, LM_EINTERNAL, NULL, NULL, LM_ERR_NO_OFFSET, "writer order is not file order");
            pthread_mutex_lock(&b->mu);
            while (!b->res[j].done) pthread_cond_wait(&b->cv_done, &b->mu);
            pthread_mutex_unlock(&b->mu);
            result *r = &b->res[j];
            if (r->rc) { *err = r->err; rc = r->rc; break; }
            const lm_entry *e = lm_source_entry(b->src, t);
            if (r->overflow || r->nonfinite) {
                if (add_overflow(rep, e->name, r->overflow, r->nonfinite)) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); break; }
                if (o->fail_on_overflow && r->nonfinite) {
                    rc = lm_err_set(err, LM_EINPUT, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                                    "%lld values became NaN or ±Inf in fp32 (W + Σ λ·ΔW overflows; --fail-on-overflow)",
                                    (long long)r->nonfinite);
                    break;
                }
                if (o->fail_on_overflow && r->overflow) {
                    rc = lm_err_set(err, LM_EINPUT, lm_source_path(b->src), e->name, LM_ERR_NO_OFFSET,
                                    "%lld values overflow %s (|x| too large for the output dtype; --fail-on-overflow)",
                                    (long long)r->overflow, lm_dtype_name(b->odt[t]));
                    break;
                }
            }
            rc = r->written ? lm_writer_skip(w, r->nbytes, err) : emit(b, w, r->buf, r->nbytes, err);
            const void *raw = lm_source_raw(b->src, t);
            if (raw) release_pages(raw, e->nbytes);
            /* r->buf is in the ring: its region is reused once written and hashed */
            pthread_mutex_lock(&b->mu);
            b->consumed = ++j;
            lmb_advance_freed(b);
            pthread_cond_broadcast(&b->cv_space);
            pthread_mutex_unlock(&b->mu);
        }
        if (o->progress) o->progress(o->progress_ctx, "bake", k + 1, b->nt);
    }
    return rc;
}

static int fill_recipe(lm_recipe *r, const char *base, const hash_job *hb, const lm_weighted *loras, size_t n,
                       const lm_bake_report *rep, const lm_bake_opts *o, char **paths_store)
{
    r->tool = "lcm-bake";
    r->tool_version = LM_TOOL_VERSION;
    r->operation = "bake";
    r->dtype = o->out_dtype == LM_DT_INVALID ? "keep" : (char *)lm_dtype_name(o->out_dtype);
    r->format = "safetensors";
    r->allow_unmatched = o->allow_unmatched;
    r->n_inputs = n + 1;
    r->inputs = calloc(n + 1, sizeof *r->inputs);
    if (!r->inputs) return LM_ENOMEM;
    r->inputs[0] = (lm_recipe_input){ (char *)lmm_basename(base), "", hb->bytes, 1.0, "base" };
    memcpy(r->inputs[0].sha256, hb->hex, 65);
    paths_store[0] = (char *)base;
    for (size_t i = 0; i < n; i++) {
        r->inputs[i + 1] = (lm_recipe_input){ (char *)lmm_basename(loras[i].path), "", rep->loras[i].bytes, loras[i].lambda,
                                              (char *)(loras[i].role ? loras[i].role : "lora") };
        memcpy(r->inputs[i + 1].sha256, rep->loras[i].sha256, 65);
        paths_store[i + 1] = (char *)loras[i].path;
    }
    return 0;
}

static int build_kv(lmm_meta *meta, lm_kv **kv, const lm_source *src, const lm_recipe *recipe, const char **legacy,
                    const lm_model_info *info, const char *title, const char *out_hash)
{
    if (lmm_build_meta(meta, src, recipe, legacy, info ? info->arch : LM_ARCH_UNKNOWN, 0, title))
        return LM_ENOMEM;
    if (out_hash && lmm_meta_set(meta, "modelspec.hash_sha256", out_hash)) return LM_ENOMEM;
    return (*kv = lmm_meta_kv(meta)) ? 0 : LM_ENOMEM;
}

int lm_bake(const char *base, const lm_weighted *loras, size_t n, const char *out,
            const lm_bake_opts *opts, lm_bake_report *report, lm_err *err)
{
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    if (opts) o = *opts;
    lm_bake_report rep_local, *rep = report ? report : &rep_local;
    memset(rep, 0, sizeof *rep);
    double t0 = lmb_now();
    int rc = 0;
    if (o.out_dtype != LM_DT_INVALID && o.out_dtype != LM_DT_F16 && o.out_dtype != LM_DT_BF16 && o.out_dtype != LM_DT_F32)
        return lm_err_set(err, LM_EUSAGE, out, NULL, LM_ERR_NO_OFFSET, "output dtype must be keep, F16, BF16 or F32");

    /* the output must be none of the inputs: refused before anything is read */
    const char **inputs = calloc(n + 1, sizeof *inputs);
    char **paths = calloc(n + 1, sizeof *paths);
    /* A1111 legacy hashes, taken while each input is open: the metadata is built twice
     * (placeholders, then final) and must not change length if an input goes away */
    char (*lh)[9] = calloc(n + 1, sizeof *lh);
    const char **legacy = calloc(n + 1, sizeof *legacy);
    bake b;
    memset(&b, 0, sizeof b);
    b.base_fd = -1;
    lm_source *src = NULL;
    lm_keymap *km = NULL;
    lm_writer *w = NULL;
    lmm_meta meta = { 0 };
    lm_kv *kv = NULL;
    lm_recipe recipe = { 0 };
    pthread_t *th = NULL, hth, oth;
    int out_hash_started = 0;
    int nth = 0, hash_started = 0, mu_init = 0;
    hash_job hb, hb_final;
    memset(&hb, 0, sizeof hb);
    hb.fd = -1;
    memset(&hb_final, 0, sizeof hb_final);
    if (!inputs || !paths || !lh || !legacy) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    inputs[0] = base;
    for (size_t i = 0; i < n; i++) inputs[i + 1] = loras[i].path;
    if ((rc = lmm_check_output(out, inputs, n + 1, err))) goto done;

    /* the SHA-256 cache key is taken before the base is opened, so a hit or a store
     * describes the file the source maps (libmerge/hash.h) */
    hb.cached = lm_hash_cache_get(base, &hb.key, hb.hex);
    struct stat pre, fst;
    int have_pre = stat(base, &pre) == 0;
    if ((rc = lm_source_open(&src, base, NULL, err))) goto done;
    hb.fd = open(base, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* before the output exists */
    if (hb.fd >= 0 && have_pre && fstat(hb.fd, &fst) == 0 && (fst.st_dev != pre.st_dev || fst.st_ino != pre.st_ino)) {
        /* the name now points at another file than the one mapped just before */
        rc = lm_err_set(err, LM_EIO, base, NULL, LM_ERR_NO_OFFSET, "replaced while being opened; run again");
        goto done;
    }
    b.base_fd = hb.fd;
    lmm_legacy_hash_source(src, base, lh[0]);
    legacy[0] = lh[0];
    if ((rc = lm_keymap_build(&km, src, err))) { lm_err_file(err, base); goto done; }
    const lm_model_info *info = lm_keymap_info(km);
    rep->arch = lm_arch_name(info ? info->arch : LM_ARCH_UNKNOWN);
    rep->layout = lm_layout_name(info ? info->layout : LM_LAYOUT_UNKNOWN);

    b.src = src;
    b.in = loras;
    b.nl = n;
    b.nt = lm_source_count(src);
    b.loras = calloc(n ? n : 1, sizeof *b.loras);
    rep->loras = calloc(n ? n : 1, sizeof *rep->loras);
    rep->n_loras = n;
    if (!b.loras || !rep->loras) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    for (size_t i = 0; i < n; i++) {
        rep->loras[i].path = strdup(loras[i].path);
        rep->loras[i].lambda = loras[i].lambda;
        rep->loras[i].role = loras[i].role ? loras[i].role : "lora";
        if (!isfinite(loras[i].lambda)) { rc = lm_err_set(err, LM_EUSAGE, loras[i].path, NULL, LM_ERR_NO_OFFSET, "λ is not finite"); goto done; }
        if ((rc = lm_lora_open(&b.loras[i], loras[i].path, NULL, err))) { lm_err_file(err, loras[i].path); goto done; }
        if ((rc = lmm_lora_check_finite(b.loras[i], loras[i].path, err))) goto done;
        if ((rc = lmm_sha256_file(loras[i].path, rep->loras[i].sha256, &rep->loras[i].bytes, err))) goto done;
        lmm_legacy_hash(loras[i].path, lh[i + 1]);
        legacy[i + 1] = lh[i + 1];
    }
    if ((rc = lmb_plan(&b, km, &o, rep, err))) goto done;
    rep->seconds_plan = lmb_now() - t0;

    /* every input is open and checked (the base is a regular file the source could map):
     * the base's SHA-256 for the recipe runs on its own thread next to the bake; it is not
     * cancellable, so it starts only once the refusals that need no output are behind */
    hb.path = base;
    hb.src = src;
    if (pthread_create(&hth, NULL, lmb_base_hash_thread, &hb) == 0) hash_started = 1;
    else lmb_base_hash_thread(&hb);

    /* output dtypes, modes and the job list */
    b.odt = calloc(b.nt ? b.nt : 1, sizeof *b.odt);
    b.mode = calloc(b.nt ? b.nt : 1, sizeof *b.mode);
    b.jobs = calloc(b.nt ? b.nt : 1, sizeof *b.jobs);
    b.res = calloc(b.nt ? b.nt : 1, sizeof *b.res);
    lm_wtensor *wt = calloc(b.nt ? b.nt : 1, sizeof *wt);
    if (!b.odt || !b.mode || !b.jobs || !b.res || !wt) { free(wt); rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    size_t max_out = 0;
    for (size_t t = 0; t < b.nt; t++) {
        const lm_entry *e = lm_source_entry(src, t);
        b.odt[t] = (o.out_dtype != LM_DT_INVALID && lm_dtype_is_float(e->dtype)) ? o.out_dtype : e->dtype;
        b.mode[t] = b.uoff[t + 1] > b.uoff[t] ? MODE_UPDATE : b.odt[t] != e->dtype ? MODE_CONVERT : MODE_COPY;
        if (b.mode[t] == MODE_UPDATE) rep->touched++;
        else if (b.mode[t] == MODE_CONVERT) rep->converted++;
        else rep->copied++;
        if (b.mode[t] == MODE_UPDATE) {
            b.jobs[b.njobs++] = t;
            if ((size_t)e->numel * lm_dtype_size(b.odt[t]) > max_out) max_out = (size_t)e->numel * lm_dtype_size(b.odt[t]);
        }
        wt[t].name = e->name;
        wt[t].dtype = b.odt[t];
        wt[t].ndim = e->ndim;
        memcpy(wt[t].shape, e->shape, sizeof wt[t].shape);
    }
    rep->tensors = b.nt;

    /* workers start now: they overlap the base hash */
    /* by default one worker more than CPUs: a worker waits on the disk while its
     * O_DIRECT write runs (measured on 2 CPUs: 3 workers 2.17 s, 2 workers 2.26 s) */
    nth = o.threads > 0 ? lmm_threads(o.threads) : lmm_threads(0) + 1;
    if ((size_t)nth > b.njobs) nth = b.njobs ? (int)b.njobs : 0;
    b.hashed = o.hash_output ? 0 : (size_t)-1;
    /* the output ring: resident memory ≈ the ring + per worker a block (blocked tensors)
     * or the largest fp32 tensor and its ΔW (the others). Sized in bytes, not tensors, so
     * the workers run far ahead over small tensors while the in-order threads (copies,
     * output hash) go through a stretch of untouched ones. A job's region is its size
     * rounded to whole blocks plus one, so its bytes can sit at its output offset's place
     * in a block (lm_writer_direct_shift: the writer sends its whole blocks O_DIRECT). */
    const size_t A = LM_WRITER_DIRECT_ALIGN;
    size_t all = 0;                   /* every job's region: a small bake needs no more */
    for (size_t j = 0; j < b.njobs; j++)
        all += ((size_t)lm_source_entry(src, b.jobs[j])->numel * lm_dtype_size(b.odt[b.jobs[j]]) + A - 1) / A * A + A;
    b.ring_size = all < ((size_t)192 << 20) ? all : (size_t)192 << 20;
    if (b.ring_size < (max_out + 2 * A) / A * A) b.ring_size = (max_out + 2 * A) / A * A;
    b.voff = calloc(b.njobs ? b.njobs : 1, sizeof *b.voff);
    if (posix_memalign((void **)&b.ring, A, b.ring_size)) b.ring = NULL;
    if (!b.voff || !b.ring) { free(wt); rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv_done, NULL);
    pthread_cond_init(&b.cv_space, NULL);
    mu_init = 1;
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    th = calloc(nth ? (size_t)nth : 1, sizeof *th);
    for (int i = 0; th && i < nth; i++)
        if (pthread_create(&th[i], NULL, lmb_worker, &b)) { nth = i; break; }
    if (!th || (nth == 0 && b.njobs)) {
        free(wt);
        openblas_set_num_threads(blas_threads);
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "cannot start worker threads");
        goto done;
    }

    /* the header goes out first with placeholders of the same length for the hashes
     * still being computed (base SHA-256, output data SHA-256), rewritten before commit */
    char title[256];
    if (o.title) snprintf(title, sizeof title, "%s", o.title);
    else lmm_title(out, title, sizeof title);
    const char *zeros = "0000000000000000000000000000000000000000000000000000000000000000";
    char zeros0x[67];
    snprintf(zeros0x, sizeof zeros0x, "0x%s", zeros);
    memcpy(hb_final.hex, zeros, 65);
    hb_final.bytes = lm_source_file_size(src);
    if (fill_recipe(&recipe, base, &hb_final, loras, n, rep, &o, paths) ||
        build_kv(&meta, &kv, src, &recipe, legacy, info, title, o.hash_output ? zeros0x : NULL)) {
        free(wt);
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        goto stop;
    }
    lm_writer_opts wo = LM_WRITER_OPTS_INIT;
    wo.keep_order = 1;
    wo.inputs = inputs;
    wo.n_inputs = n + 1;
    rc = lm_writer_open(&w, out, wt, b.nt, kv, meta.n, &wo, err);
    free(wt);
    if (rc) goto stop;
    if ((b.out_off = calloc(b.nt ? b.nt : 1, sizeof *b.out_off))) {
        uint64_t off = 0;
        for (size_t k = 0; k < b.nt; k++) {
            size_t t = lm_writer_tensor_index(w, k);
            b.out_off[t] = off;
            off += (uint64_t)lm_source_entry(src, t)->numel * lm_dtype_size(b.odt[t]);
        }
        pthread_mutex_lock(&b.mu);
        b.w = w;                       /* no out_off: the writer thread writes everything */
        pthread_mutex_unlock(&b.mu);
    }
    if (o.hash_output) {
        if (!(b.md = EVP_MD_CTX_new())) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto stop; }
        EVP_DigestInit_ex(b.md, EVP_sha256(), NULL);
        if (pthread_create(&oth, NULL, lmb_out_hash_thread, &b)) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "cannot start a thread"); goto stop; }
        out_hash_started = 1;
    }
    double tc = lmb_now();
    rc = run_pipeline(&b, w, &o, rep, err);
    rep->seconds_compute = lmb_now() - tc;
    if (!rc) {
        double th0 = lmb_now();
        if (hash_started) { pthread_join(hth, NULL); hash_started = 0; }
        rep->seconds_hash = lmb_now() - th0;
        if (hb.rc) { *err = hb.err; rc = hb.rc; goto stop; }
        memcpy(rep->base_sha256, hb.hex, 65);
        char out_hex[2 + 65] = "";
        if (out_hash_started) { pthread_join(oth, NULL); out_hash_started = 0; }
        if (b.md && !b.hash_done) { rc = lm_err_set(err, LM_EIO, base, NULL, LM_ERR_NO_OFFSET, "cannot read the base to hash the output"); goto stop; }
        if (b.md) {
            unsigned char md[32];
            unsigned int mdn = 0;
            EVP_DigestFinal_ex(b.md, md, &mdn);
            strcpy(out_hex, "0x");
            for (int i = 0; i < 32; i++) snprintf(out_hex + 2 + 2 * i, 3, "%02x", md[i]);
            memcpy(rep->out_sha256, out_hex + 2, 65);
        }
        free(kv);
        kv = NULL;
        lmm_meta_free(&meta);
        memcpy(recipe.inputs[0].sha256, hb.hex, 65);
        recipe.inputs[0].bytes = hb.bytes;
        if (build_kv(&meta, &kv, src, &recipe, legacy, info, title, b.md ? out_hex : NULL)) {
            rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
            goto stop;
        }
        if ((rc = lm_writer_update_meta(w, kv, meta.n, err))) goto stop;
        rep->bytes_written = lm_writer_data_start(w);
        for (size_t t = 0; t < b.nt; t++)
            rep->bytes_written += (uint64_t)lm_source_entry(src, t)->numel * lm_dtype_size(b.odt[t]);
        double tm = lmb_now();
        rc = lm_writer_commit(w, err);
        w = NULL;
        rep->seconds_commit = lmb_now() - tm;
    }
stop:
    pthread_mutex_lock(&b.mu);
    b.stop = 1;
    pthread_cond_broadcast(&b.cv_space);
    pthread_cond_broadcast(&b.cv_done);
    pthread_mutex_unlock(&b.mu);
    if (out_hash_started) pthread_join(oth, NULL);
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    openblas_set_num_threads(blas_threads);
done:
    if (hash_started) pthread_join(hth, NULL);
    if (hb.fd >= 0) close(hb.fd);
    lm_writer_abort(w);
    free(b.ring);
    free(b.voff);
    if (mu_init) {
        pthread_mutex_destroy(&b.mu);
        pthread_cond_destroy(&b.cv_done);
        pthread_cond_destroy(&b.cv_space);
    }
    free(th);
    EVP_MD_CTX_free(b.md);
    free(kv);
    lmm_meta_free(&meta);
    free(recipe.inputs);
    for (size_t i = 0; b.loras && i < n; i++) lm_lora_close(b.loras[i]);
    free(b.out_off);
    free(b.loras); free(b.uoff); free(b.upds); free(b.odt); free(b.mode); free(b.jobs); free(b.res);
    lm_keymap_free(km);
    lm_source_close(src);
    free(inputs);
    free(paths);
    free(lh);
    free(legacy);
    rep->seconds_total = lmb_now() - t0;
    if (rc && !(rc == LM_EINPUT && rep->n_overflows)) { lm_bake_report_free(rep); }
    else if (!report) lm_bake_report_free(rep);
    return rc;
}

void lm_bake_report_free(lm_bake_report *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_overflows; i++) free(r->overflows[i].name);
    free(r->overflows);
    for (size_t i = 0; i < r->n_loras; i++) free(r->loras[i].path);
    free(r->loras);
    memset(r, 0, sizeof *r);
}
