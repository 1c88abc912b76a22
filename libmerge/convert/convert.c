/* model-convert engine: see include/libmerge/convert.h.
 *
 * Plan first (which tensors, their output names, dtypes and shapes), then
 * open the writer with that list and stream tensors in the writer's order.
 * The input's SHA-256 is computed by a second thread (lm_hash_file) while
 * the first converts; its metadata value is written as a
 * placeholder of the same length and filled in before commit. */
#include "convert_impl.h"
#include "libmerge/convert.h"
#include "libmerge/hash.h"
#include "libmerge/lora.h"
#include "libmerge/source.h"
#include "libmerge/writer.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK_ELEMS ((size_t)1 << 20)


/* ---- SHA-256 of the input, in a thread beside the conversion ---------------- */

typedef struct hash_job {
    const char *path;
    int fd;            /* opened before the output appears: the file converted is the one hashed */
    char hex[65];
    int rc;
    lm_err err;
} hash_job;

static void *hash_thread(void *arg)
{
    hash_job *h = arg;
    lm_file_hashes fh;
    h->rc = h->fd >= 0 ? lm_hash_fd(h->fd, h->path, LM_HASH_SHA256, &fh, &h->err)
                       : lm_hash_file(h->path, LM_HASH_SHA256, &fh, &h->err);
    if (!h->rc) memcpy(h->hex, fh.sha256, sizeof h->hex);
    return NULL;
}

/* ---- planning ------------------------------------------------------------ */

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Training state saved beside the state dict (first name component). */
static int training_state(const char *name)
{
    static const char *const k[] = { "optimizer", "optimizer_states", "optimizer_state_dict",
                                     "lr_scheduler", "lr_schedulers", "callbacks" };
    size_t n = strcspn(name, ".");
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (strlen(k[i]) == n && !strncmp(name, k[i], n)) return 1;
    return 0;
}

/* "model.diffusion_model.x.0.weight" → "model_ema.diffusion_modelx0weight" (LitEma). */
static void ema_name(const char *name, char *out, size_t n)
{
    size_t o = (size_t)snprintf(out, n, "model_ema.");
    for (const char *p = name + strlen("model."); *p && o + 1 < n; p++)
        if (*p != '.') out[o++] = *p;
    out[o < n ? o : n - 1] = '\0';
}



static int add_item(conv *c, size_t src, const char *name, lm_err *err)
{
    const lm_entry *e = lm_source_entry(c->s, src);
    plan_item *it = &c->items[c->n];
    memset(it, 0, sizeof *it);
    if (!(it->name = strdup(name))) return lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), name, LM_ERR_NO_OFFSET, "out of memory");
    c->n++;
    it->src[0] = src;
    it->n_src = 1;
    it->numel = e->numel;
    it->dtype = e->dtype;
    if (c->o->dtype != LM_DT_INVALID && lm_dtype_is_float(e->dtype)) it->dtype = c->o->dtype;
    it->ndim = e->ndim;
    memcpy(it->shape, e->shape, sizeof it->shape);
    return 0;
}

/* Applies the layout change to item it (name and shape). 1: no name there;
 * 2: a tensor no single name expresses (lmc_openclip_item decides). */
static int relayout(conv *c, plan_item *it, lm_err *err)
{
    char out[512];
    int reshape = 0;
    int rc = lm_layout_convert_name(c->arch, c->from, c->to, it->name, out, sizeof out, &reshape);
    if (rc == LM_EINPUT) return 1;
    if (rc == LM_EUNSUPPORTED) return 2;
    if (rc) return lm_err_set(err, rc, lm_source_path(c->s), it->name, LM_ERR_NO_OFFSET,
                              "no %s name for this tensor", lm_layout_name(c->to));
    if (reshape == LM_RESHAPE_CONV1X1) {
        if (c->to == LM_LAYOUT_DIFFUSERS) {
            if (it->ndim != 4 || it->shape[2] != 1 || it->shape[3] != 1)
                return lm_err_set(err, LM_EINPUT, lm_source_path(c->s), it->name, LM_ERR_NO_OFFSET, "expected a [C,C,1,1] 1x1 conv weight");
            it->ndim = 2;
        } else if (it->ndim == 2) {
            it->shape[2] = it->shape[3] = 1;
            it->ndim = 4;
        }
    } else if (reshape == LM_RESHAPE_TRANSPOSE) {
        if (it->ndim != 2) return lm_err_set(err, LM_EINPUT, lm_source_path(c->s), it->name, LM_ERR_NO_OFFSET, "expected a 2-D projection");
        int64_t t = it->shape[0];
        it->shape[0] = it->shape[1];
        it->shape[1] = t;
        it->transpose = 1;
    }
    char *n = strdup(out);
    if (!n) return lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), it->name, LM_ERR_NO_OFFSET, "out of memory");
    free(it->name);
    it->name = n;
    return 0;
}

/* A diffusers output holding one component gets bare names ("down_blocks.…"),
 * as diffusers' own unet/ and vae/ files have. */
static void strip_single_component(conv *c)
{
    if (c->to != LM_LAYOUT_DIFFUSERS || !c->n) return;
    lm_part first = lm_diffusers_part(c->items[0].name, NULL);
    for (size_t k = 0; k < c->n; k++) {
        const char *inner;
        if (lm_diffusers_part(c->items[k].name, &inner) != first || first == LM_PART_NONE || inner == c->items[k].name) return;
    }
    for (size_t k = 0; k < c->n; k++) {
        const char *inner;
        lm_diffusers_part(c->items[k].name, &inner);
        memmove(c->items[k].name, inner, strlen(inner) + 1);
    }
}

/* o->standalone_vae: the VAE's tensors only (the others left out and reported), named
 * without "first_stage_model.", as a standalone LDM VAE file. */
static int standalone_vae(conv *c, lm_err *err)
{
    static const char pre[] = "first_stage_model.";
    static const char *const bare[] = { "encoder.", "decoder.", "quant_conv.", "post_quant_conv." };
    const char *path = lm_source_path(c->s);
    if (c->o->layout != LM_LAYOUT_LDM)
        return lm_err_set(err, LM_EUSAGE, path, NULL, LM_ERR_NO_OFFSET, "a standalone VAE is an LDM-layout file: give --layout ldm");
    size_t w = 0;
    for (size_t k = 0; k < c->n; k++) {
        char *n = c->items[k].name;
        int prefixed = !strncmp(n, pre, sizeof pre - 1), ok = 0;
        const char *inner = prefixed ? n + sizeof pre - 1 : n;
        for (size_t b = 0; b < sizeof bare / sizeof bare[0]; b++) ok |= !strncmp(inner, bare[b], strlen(bare[b]));
        if (!ok) {
            c->r->n_unmapped++;
            lmc_drop(c->o, n, "not part of the VAE (--standalone-vae)");
            free(n);
            continue;
        }
        memmove(n, inner, strlen(inner) + 1);
        c->items[w++] = c->items[k];
    }
    c->n = w;
    if (!w) return lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET, "no VAE tensors to write (--standalone-vae)");
    return 0;
}

static int plan(conv *c, lm_err *err)
{
    const lm_convert_opts *o = c->o;
    size_t n = lm_source_count(c->s);
    c->items = calloc(n ? n : 1, sizeof *c->items);
    if (!c->items) return lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), NULL, LM_ERR_NO_OFFSET, "out of memory");
    char ema[512];
    int any_ema = 0;
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(c->s, i);
        if (starts(e->name, "model_ema.")) {
            any_ema = 1;
            if (o->use_ema) { lmc_drop(o, e->name, "EMA copy used"); continue; }
        }
        if (o->prune && (starts(e->name, "model_ema.") || training_state(e->name))) {
            c->r->n_pruned++;
            lmc_drop(o, e->name, "pruned");
            continue;
        }
        size_t src = i;
        if (o->use_ema && starts(e->name, "model.")) {
            ema_name(e->name, ema, sizeof ema);
            int64_t k = lm_source_find(c->s, ema);
            if (k >= 0) {
                const lm_entry *x = lm_source_entry(c->s, (size_t)k);
                if (x->ndim != e->ndim || memcmp(x->shape, e->shape, sizeof(int64_t) * (size_t)e->ndim) || x->dtype != e->dtype)
                    return lm_err_set(err, LM_EINPUT, lm_source_path(c->s), ema, LM_ERR_NO_OFFSET,
                                      "EMA copy differs in shape or dtype from %s", e->name);
                src = (size_t)k;
                c->r->n_ema++;
            }
        }
        int rc = add_item(c, src, e->name, err);
        if (rc) return rc;
    }
    if (o->use_ema && !any_ema)
        return lm_err_set(err, LM_EINPUT, lm_source_path(c->s), NULL, LM_ERR_NO_OFFSET, "--use-ema: the file has no model_ema.* tensors");
    if (o->layout == LM_LAYOUT_UNKNOWN) return 0;
    lm_model_info info;
    lm_model_detect(c->s, &info);
    c->from = info.layout;
    c->to = o->layout;
    c->arch = info.arch;
    if (c->arch == LM_ARCH_UNKNOWN && info.has_vae && !info.has_unet && !info.has_te && !info.has_te2)
        c->arch = LM_ARCH_SD1;   /* SD1.x, SD2.x and SDXL share the VAE's structure */
    if ((c->from == LM_LAYOUT_UNKNOWN || c->arch == LM_ARCH_UNKNOWN) && lm_lora_detect(c->s) != LM_LORA_UNKNOWN)
        return lm_err_set(err, LM_EUNSUPPORTED, lm_source_path(c->s), NULL, LM_ERR_NO_OFFSET,
                          "cannot change the layout: this is a LoRA (--layout renames checkpoint tensors; "
                          "lora-merge --format kohya|peft rewrites LoRA names)");
    if (c->from == LM_LAYOUT_UNKNOWN || c->arch == LM_ARCH_UNKNOWN)
        return lm_err_set(err, LM_EUNSUPPORTED, lm_source_path(c->s), NULL, LM_ERR_NO_OFFSET,
                          "cannot change the layout: %s", info.reason);
    snprintf(c->r->from_layout, sizeof c->r->from_layout, "%s", lm_layout_name(c->from));
    snprintf(c->r->to_layout, sizeof c->r->to_layout, "%s", lm_layout_name(c->to));
    if (c->from == c->to) return 0;
    /* a packed in_proj becomes three items: at most 3n */
    plan_item *out = calloc(3 * c->n + 1, sizeof *out);
    if (!out) return lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), NULL, LM_ERR_NO_OFFSET, "out of memory");
    size_t w = 0;
    int rc = 0;
    for (size_t k = 0; k < c->n; k++) {
        plan_item *it = &c->items[k];
        if (!rc && (rc = relayout(c, it, err)) == 0) {
            out[w++] = *it;   /* the name moves */
            continue;
        }
        if (rc == 1) {
            c->r->n_unmapped++;
            lmc_drop(o, it->name, "no name in the target layout");
            rc = 0;
        } else if (rc == 2) {
            rc = lmc_openclip_item(c, it, out, &w, err);
        }
        free(it->name);
    }
    free(c->items);
    c->items = out;
    c->n = w;
    if (rc) return rc;
    strip_single_component(c);
    return 0;
}

/* ---- streaming ------------------------------------------------------------ */

static void release_pages(const void *p, size_t n)
{
    static size_t pg;
    if (!pg) pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + pg - 1) & ~(uintptr_t)(pg - 1), z = ((uintptr_t)p + n) & ~(uintptr_t)(pg - 1);
    if (z > a) madvise((void *)a, z - a, MADV_DONTNEED);
}

/* Converts n elements from→to into out, writes them, counts overflow. */
static int emit(lm_writer *w, const void *src, lm_dtype from, lm_dtype to, size_t n, void *out, int64_t *ovf, lm_err *err)
{
    if (from == to) return lm_writer_write(w, src, n * lm_dtype_size(from), err);
    int64_t r = lm_convert(out, to, src, from, n);
    if (r < 0) return lm_err_set(err, (int)r, NULL, NULL, LM_ERR_NO_OFFSET, "cannot convert %s to %s", lm_dtype_name(from), lm_dtype_name(to));
    *ovf += r;
    return lm_writer_write(w, out, n * lm_dtype_size(to), err);
}

/* Writes rows [row0, row0 + rows) of entry src (rows 0: all of it), transposed
 * first if asked, converted to dtype to. Straight from the mapping when the
 * entry lies there; else the entry is read whole (about one tensor in memory). */
static int write_piece(conv *c, lm_writer *w, size_t src, int64_t row0, int64_t rows, int transpose, lm_dtype to,
                       unsigned char *chunk, int64_t *ovf, lm_err *err)
{
    const lm_entry *e = lm_source_entry(c->s, src);
    size_t es = lm_dtype_size(e->dtype);
    size_t row = rows && e->shape[0] ? (size_t)e->numel / (size_t)e->shape[0] : 0;
    size_t off = rows ? (size_t)row0 * row : 0, n = rows ? (size_t)rows * row : (size_t)e->numel;
    int rc = 0;
    const unsigned char *raw = transpose ? NULL : lm_source_raw(c->s, src);
    if (raw) {
        raw += off * es;
        for (size_t k = 0; k < n && !rc; k += CHUNK_ELEMS) {
            size_t m = n - k < CHUNK_ELEMS ? n - k : CHUNK_ELEMS;
            rc = emit(w, raw + k * es, e->dtype, to, m, chunk, ovf, err);
            release_pages(raw + k * es, m * es);   /* resident memory stays about one chunk */
        }
        return rc;
    }
    unsigned char *buf = malloc(e->nbytes ? e->nbytes : 1);
    unsigned char *tmp = transpose ? malloc(e->nbytes ? e->nbytes : 1) : NULL;
    if (!buf || (transpose && !tmp)) rc = lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), e->name, LM_ERR_NO_OFFSET, "out of memory");
    if (!rc) rc = lm_source_read(c->s, src, buf, err);
    if (!rc && tmp) {   /* [r, c] → [c, r] */
        int64_t R = e->shape[0], C = e->shape[1];
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) memcpy(tmp + (size_t)(j * R + i) * es, buf + (size_t)(i * C + j) * es, es);
        unsigned char *x = buf; buf = tmp; tmp = x;
    }
    for (size_t k = 0; k < n && !rc; k += CHUNK_ELEMS) {
        size_t m = n - k < CHUNK_ELEMS ? n - k : CHUNK_ELEMS;
        rc = emit(w, buf + (off + k) * es, e->dtype, to, m, chunk, ovf, err);
    }
    free(buf);
    free(tmp);
    return rc;
}

/* One output tensor: its pieces (one tensor, a row block of one, or q, k, v in turn). */
static int write_item(conv *c, lm_writer *w, const plan_item *it, unsigned char *chunk, lm_err *err)
{
    int64_t ovf = 0;
    int rc = 0;
    for (int p = 0; p < it->n_src && !rc; p++)
        rc = write_piece(c, w, it->src[p], it->row0, it->rows, it->transpose, it->dtype, chunk, &ovf, err);
    if (rc) { lm_err_key(err, it->name); return rc; }
    if (it->dtype != lm_source_entry(c->s, it->src[0])->dtype) c->r->n_converted++;
    if (ovf) {
        c->r->n_overflow_tensors++;
        c->r->n_overflow_values += ovf;
        if (c->o->on_overflow) c->o->on_overflow(c->o->ctx, it->name, ovf);
    }
    return 0;
}

/* Metadata: the input's, "layout" updated, plus format and source_sha256. */
static int build_meta(conv *c, lm_kv **out, size_t *n_out, const char *sha, lm_err *err)
{
    size_t n = lm_source_meta_count(c->s);
    lm_kv *m = calloc(n + 2, sizeof *m);
    if (!m) return lm_err_set(err, LM_ENOMEM, lm_source_path(c->s), NULL, LM_ERR_NO_OFFSET, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *key = lm_source_meta_key(c->s, i), *v = lm_source_meta_value(c->s, i);
        if (!strcmp(key, "format") || !strcmp(key, "source_sha256")) continue;
        if (!strcmp(key, "layout") && c->to != LM_LAYOUT_UNKNOWN && c->from != c->to) v = lm_layout_name(c->to);
        m[k].key = key;
        m[k++].value = v;
    }
    m[k].key = "format";
    m[k++].value = "pt";
    m[k].key = "source_sha256";
    m[k++].value = sha;
    *out = m;
    *n_out = k;
    return 0;
}

int lm_model_convert(const char *in_path, const char *out_path, const lm_convert_opts *opts,
                     lm_convert_report *report, lm_err *err)
{
    lm_convert_opts dflt = LM_CONVERT_OPTS_INIT;
    lm_convert_report rep_local;
    const lm_convert_opts *o = opts ? opts : &dflt;
    lm_convert_report *r = report ? report : &rep_local;
    memset(r, 0, sizeof *r);
    if (o->version != LM_CONVERT_OPTS_VERSION)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "lm_convert_opts version %d (expected %d)", o->version, LM_CONVERT_OPTS_VERSION);
    if (o->dtype != LM_DT_INVALID && o->dtype != LM_DT_F16 && o->dtype != LM_DT_BF16 && o->dtype != LM_DT_F32)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "target dtype %s (F16, BF16 or F32 only)", lm_dtype_name(o->dtype));

    conv c = { .o = o, .r = r };
    lm_open_opts oo = LM_OPEN_OPTS_INIT;
    oo.skip_unknown = o->skip_unknown;
    int rc = lm_source_open(&c.s, in_path, &oo, err);
    if (rc) return rc;
    r->n_in = lm_source_count(c.s);

    hash_job hj = { .path = in_path, .fd = open(in_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) };
    pthread_t th;
    int hashing = pthread_create(&th, NULL, hash_thread, &hj) == 0;
    if (!hashing) hash_thread(&hj);

    lm_wtensor *wt = NULL;
    lm_kv *meta = NULL;
    size_t n_meta = 0;
    lm_writer *w = NULL;
    unsigned char *chunk = malloc(CHUNK_ELEMS * 8);
    char zeros[65];
    memset(zeros, '0', 64);
    zeros[64] = '\0';
    rc = chunk ? plan(&c, err) : lm_err_set(err, LM_ENOMEM, in_path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    if (!rc && o->standalone_vae) rc = standalone_vae(&c, err);
    if (!rc && !(wt = calloc(c.n ? c.n : 1, sizeof *wt))) rc = lm_err_set(err, LM_ENOMEM, in_path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    for (size_t k = 0; !rc && k < c.n; k++) {
        wt[k].name = c.items[k].name;
        wt[k].dtype = c.items[k].dtype;
        wt[k].ndim = c.items[k].ndim;
        memcpy(wt[k].shape, c.items[k].shape, sizeof wt[k].shape);
    }
    if (!rc) rc = build_meta(&c, &meta, &n_meta, zeros, err);
    if (!rc) {
        lm_writer_opts wo = LM_WRITER_OPTS_INIT;
        const char *inputs[1] = { in_path };
        wo.inputs = inputs;
        wo.n_inputs = 1;
        rc = lm_writer_open(&w, out_path, wt, c.n, meta, n_meta, &wo, err);
    }
    uint64_t total = 0, done = 0;
    for (size_t k = 0; !rc && k < c.n; k++) total += (uint64_t)c.items[k].numel * lm_dtype_size(c.items[k].dtype);
    for (size_t k = 0; !rc && k < c.n; k++) {
        const plan_item *it = &c.items[lm_writer_tensor_index(w, k)];
        rc = write_item(&c, w, it, chunk, err);
        done += (uint64_t)it->numel * lm_dtype_size(it->dtype);
        if (o->on_progress) o->on_progress(o->ctx, done, total);
    }
    if (hashing) pthread_join(th, NULL);
    if (hj.fd >= 0) close(hj.fd);
    if (!rc && hj.rc) { rc = hj.rc; if (err) *err = hj.err; }
    if (!rc) {
        memcpy(r->source_sha256, hj.hex, sizeof r->source_sha256);
        meta[n_meta - 1].value = r->source_sha256;
        rc = lm_writer_update_meta(w, meta, n_meta, err);
    }
    if (!rc) rc = lm_writer_commit(w, err);   /* frees w */
    else lm_writer_abort(w);
    r->n_out = c.n;
    r->bytes_out = total;
    free(chunk);
    free(meta);
    free(wt);
    for (size_t k = 0; k < c.n; k++) free(c.items[k].name);
    free(c.items);
    lm_source_close(c.s);
    return rc;
}
