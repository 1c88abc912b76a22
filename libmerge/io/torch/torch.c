/* PyTorch files as tensor sources: the common part (storages, flattening,
 * reads) and the zip format. Format references: torch/serialization.py
 * (_save/_load: "<archive>/data.pkl", "<archive>/data/<key>", "byteorder")
 * and torch/_utils.py (_rebuild_tensor_v2: storage, offset, size, stride). */
#include "torch_impl.h"
#include "libmerge/torch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- storages ---------------------------------------------------------- */

static int plain_key(const char *k)
{
    if (!*k || strlen(k) > 64) return 0;
    for (; *k; k++)
        if (!((*k >= '0' && *k <= '9') || (*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || *k == '_')) return 0;
    return 1;
}

int tt_add_storage(lm_source *s, tt_backend *be, const pk_value *persid, lm_err *err)
{
    const pk_value *id = persid->items[0];
    if (id->kind != PK_TUPLE || id->n < 5 || id->items[0]->kind != PK_STR || strcmp(id->items[0]->s, "storage"))
        return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "persistent id is not a torch storage reference");
    const pk_value *type = id->items[1], *key = id->items[2], *numel = id->items[4];
    if (type->kind != PK_GLOBAL || key->kind != PK_STR || numel->kind != PK_INT || numel->i < 0)
        return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "malformed torch storage reference");
    if (!plain_key(key->s))
        return lm_err_set(err, LM_EINPUT, s->path, key->s, LM_ERR_NO_OFFSET,
                          "storage key is not a plain name (a path outside the archive?)");
    if (id->n >= 6 && id->items[5]->kind != PK_NONE)
        return lm_err_set(err, LM_EUNSUPPORTED, s->path, key->s, LM_ERR_NO_OFFSET,
                          "storage views (torch before 0.4) are not supported");
    /* duplicates (one storage behind several tensors) are merged by tt_sort_storages */
    if (be->n_st == be->cap_st) {
        size_t cap = be->cap_st ? 2 * be->cap_st : 64;
        tt_storage *p = realloc(be->st, cap * sizeof *p);
        if (!p) return lm_err_set(err, LM_ENOMEM, s->path, NULL, LM_ERR_NO_OFFSET, "out of memory");
        be->st = p;
        be->cap_st = cap;
    }
    tt_storage *st = &be->st[be->n_st];
    memset(st, 0, sizeof *st);
    st->zindex = -1;
    st->dtype = type->dtype;
    st->numel = (uint64_t)numel->i;
    if (!(st->key = strdup(key->s)) || !(st->type = strdup(type->s))) {
        free(st->key);
        return lm_err_set(err, LM_ENOMEM, s->path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    be->n_st++;
    size_t es = st->dtype != LM_DT_INVALID ? lm_dtype_size(st->dtype) : !strcmp(type->s, "torch.UntypedStorage") ? 1 : 0;
    if (es && __builtin_mul_overflow(st->numel, (uint64_t)es, &st->nbytes))
        return lm_err_set(err, LM_EINPUT, s->path, key->s, LM_ERR_NO_OFFSET, "storage size overflows 64 bits");
    if (!es) st->nbytes = UINT64_MAX;   /* unknown element size: refused when a tensor uses it */
    return 0;
}

static int cmp_storage(const void *a, const void *b)
{
    return strcmp(((const tt_storage *)a)->key, ((const tt_storage *)b)->key);
}

int tt_sort_storages(lm_source *s, tt_backend *be, lm_err *err)
{
    if (!be->n_st) return 0;
    qsort(be->st, be->n_st, sizeof *be->st, cmp_storage);
    size_t w = 0;
    for (size_t k = 0; k < be->n_st; k++) {
        tt_storage *st = &be->st[k];
        if (w && !strcmp(be->st[w - 1].key, st->key)) {
            int same = !strcmp(be->st[w - 1].type, st->type) && be->st[w - 1].numel == st->numel;
            int rc = same ? 0 : lm_err_set(err, LM_EINPUT, s->path, st->key, LM_ERR_NO_OFFSET,
                                           "storage referenced with two different types or sizes");
            free(st->key);
            free(st->type);
            if (rc) {   /* keep the table consistent for tt_close */
                for (size_t j = k + 1; j < be->n_st; j++) be->st[w++] = be->st[j];
                be->n_st = w;
                return rc;
            }
            continue;
        }
        be->st[w++] = *st;
    }
    be->n_st = w;
    return 0;
}

tt_storage *tt_find_storage(const tt_backend *be, const char *key)
{
    tt_storage probe = { .key = (char *)key };
    if (!be->n_st) return NULL;
    return bsearch(&probe, be->st, be->n_st, sizeof *be->st, cmp_storage);
}

/* ---- names ------------------------------------------------------------- */

typedef struct name_buf { char *p; size_t len, cap; } name_buf;

static int name_push(name_buf *b, const char *part, size_t *saved)
{
    size_t n = strlen(part), need = b->len + n + 2;
    *saved = b->len;
    if (need > 65536) return -1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (b->len) b->p[b->len++] = '.';
    memcpy(b->p + b->len, part, n + 1);
    b->len += n;
    return 0;
}

static int add_tensor(lm_source *s, tt_backend *be, const char *name, const pk_value *v, lm_err *err)
{
    const pk_tensor *tv = v->t;
    const pk_value *id = tv->storage->items[0];
    if (id->kind != PK_TUPLE || id->n < 3 || id->items[2]->kind != PK_STR)
        return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "tensor without a storage reference");
    tt_storage *st = tt_find_storage(be, id->items[2]->s);
    if (!st) return lm_err_set(err, LM_EINTERNAL, s->path, name, LM_ERR_NO_OFFSET, "storage %s not collected", id->items[2]->s);
    if (v->dtype == LM_DT_INVALID || st->nbytes == UINT64_MAX)
        return lm_err_set(err, LM_EUNSUPPORTED, s->path, name, LM_ERR_NO_OFFSET, "storage type %s is not supported", st->type);
    uint64_t es = lm_dtype_size(v->dtype);
    /* the last element's index, bounded by the storage (torch checks the same on load) */
    uint64_t numel = 1, last = (uint64_t)tv->storage_offset, t;
    int contiguous = 1;
    uint64_t expect = 1;
    for (int d = tv->ndim - 1; d >= 0; d--) {
        numel *= (uint64_t)tv->size[d];
        if (tv->size[d] == 0) continue;
        if (__builtin_mul_overflow((uint64_t)(tv->size[d] - 1), (uint64_t)tv->stride[d], &t) || __builtin_add_overflow(last, t, &last))
            return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "tensor extent overflows 64 bits");
        if (tv->size[d] != 1 && (uint64_t)tv->stride[d] != expect) contiguous = 0;
        if (__builtin_mul_overflow(expect, (uint64_t)tv->size[d], &expect)) contiguous = 0;
    }
    uint64_t end;
    if (numel && (__builtin_add_overflow(last, 1, &end) || __builtin_mul_overflow(end, es, &end) || end > st->nbytes))
        return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET,
                          "tensor reaches past its storage %s (%llu bytes)", st->key, (unsigned long long)st->nbytes);
    size_t idx;
    int rc = lm_source_add(s, name, v->dtype, tv->ndim, tv->size, 0, &idx, err);
    if (rc) return rc;
    if (idx >= be->cap_t) {
        size_t cap = be->cap_t ? 2 * be->cap_t : 64;
        tt_tensor *p = realloc(be->t, cap * sizeof *p);
        if (!p) return lm_err_set(err, LM_ENOMEM, s->path, name, LM_ERR_NO_OFFSET, "out of memory");
        be->t = p;
        be->cap_t = cap;
    }
    tt_tensor *tt = &be->t[idx];
    tt->storage = (size_t)(st - be->st);
    tt->offset = tv->storage_offset;
    tt->ndim = tv->ndim;
    memcpy(tt->size, tv->size, sizeof tt->size);
    memcpy(tt->stride, tv->stride, sizeof tt->stride);
    tt->contiguous = contiguous;
    return 0;
}

/* ---- which prefix the state dict's names lose ------------------------- *
 *
 * The SD tools load a checkpoint's state dict from inside its training
 * wrapper, so the names they match against are the inner ones:
 *  - "state_dict": AUTOMATIC1111 (modules/sd_models.py,
 *    get_state_dict_from_checkpoint), kohya-ss (library/model_util.py,
 *    load_checkpoint_with_text_encoder_conversion) and ComfyUI
 *    (comfy/utils.py, load_torch_file) take checkpoint["state_dict"]
 *    whenever the key is there, whatever sits beside it.
 *  - the other wrappers of model and training checkpoints ("model_state_dict",
 *    "model", "module", "params_ema", "params", "net"): dropped only when the
 *    choice is unambiguous, that is when every tensor of the file lies under
 *    exactly one of them, or under training state (TT_TRAINING_STATE below,
 *    the keys model-convert --prune drops), and all other top-level entries
 *    hold no tensor. basicsr / Real-ESRGAN keep both "params_ema" and
 *    "params" and load "params_ema" when it exists, so that pair resolves to
 *    "params_ema" and the "params.*" copy keeps its names.
 *  - DDP's "module." (torch.nn.parallel.DistributedDataParallel names every
 *    parameter through its .module): dropped when every tensor-holding key of
 *    the state dict carries it, as basicsr's load_network and ComfyUI's
 *    upscale-model loader (state_dict_prefix_replace) strip it.
 * Training state beside the wrapper keeps its own names ("optimizer_state_dict.
 * state.0.momentum_buffer"); EMA copies inside the state dict ("model_ema.*")
 * keep theirs for model-convert --use-ema and --prune. */

static const char *const k_wrappers[] = { "state_dict", "model_state_dict", "model", "module", "params_ema", "params", "net" };
static const char *const k_training_state[] = { "optimizer", "optimizer_states", "optimizer_state_dict",
                                                "lr_scheduler", "lr_schedulers", "callbacks" };

static int in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (!strcmp(key, list[k])) return 1;
    return 0;
}

#define IN_LIST(key, list) in_list(key, list, sizeof list / sizeof list[0])

/* 1 if a tensor lies under v, 0 if none, -1 when the budget or depth runs
 * out (a cycle or a shared-object bomb: the walk itself then reports it). */
static int holds_tensor(const pk_value *v, int depth, size_t *budget)
{
    if (!*budget || depth > PK_MAX_DEPTH) return -1;
    --*budget;
    if (v->kind == PK_TENSOR) return 1;
    if (v->kind != PK_DICT && v->kind != PK_LIST && v->kind != PK_TUPLE) return 0;
    size_t step = v->kind == PK_DICT ? 2 : 1;
    for (size_t k = step - 1; k < v->n; k += step) {
        int h = holds_tensor(v->items[k], depth + 1, budget);
        if (h) return h;
    }
    return 0;
}

typedef struct flat_plan {
    size_t unwrap;               /* root item index (a key) whose name is dropped, or SIZE_MAX */
    const pk_value *sd;          /* the state dict: the unwrapped value or the root */
    int sd_depth;                /* its depth in the walk */
    int strip_module;            /* drop "module." from its keys */
} flat_plan;

static int str_key(const pk_value *d, size_t k) { return d->items[k]->kind == PK_STR; }

static void plan_flattening(const pk_value *root, size_t budget, flat_plan *p)
{
    *p = (flat_plan){ .unwrap = SIZE_MAX, .sd = root, .sd_depth = 0 };
    if (root->kind != PK_DICT) return;
    for (size_t k = 0; k + 1 < root->n; k += 2)   /* the SD tools' rule first */
        if (str_key(root, k) && !strcmp(root->items[k]->s, "state_dict") && root->items[k + 1]->kind == PK_DICT) {
            p->unwrap = k;
            break;
        }
    if (p->unwrap == SIZE_MAX) {
        size_t cand[2], n_cand = 0;
        int ambiguous = 0;
        for (size_t k = 0; k + 1 < root->n && !ambiguous; k += 2) {
            const pk_value *child = root->items[k + 1];
            if (!holds_tensor(child, 1, &budget)) continue;
            const char *key = str_key(root, k) ? root->items[k]->s : NULL;
            if (key && IN_LIST(key, k_wrappers) && child->kind == PK_DICT) {
                if (n_cand == 2) ambiguous = 1;
                else cand[n_cand++] = k;
            } else if (!key || !IN_LIST(key, k_training_state)) ambiguous = 1;
        }
        if (!ambiguous && n_cand == 1) p->unwrap = cand[0];
        if (!ambiguous && n_cand == 2)
            for (int a = 0; a < 2; a++)
                if (!strcmp(root->items[cand[a]]->s, "params_ema") && !strcmp(root->items[cand[1 - a]]->s, "params"))
                    p->unwrap = cand[a];
    }
    if (p->unwrap != SIZE_MAX) {
        p->sd = root->items[p->unwrap + 1];
        p->sd_depth = 1;
    }
    /* DDP: every tensor-holding key of the state dict is "module" or "module.…"
     * (beside an unwrapped wrapper, the root's training state does not count) */
    const pk_value *sd = p->sd;
    if (sd->kind != PK_DICT) return;
    int any = 0;
    for (size_t k = 0; k + 1 < sd->n; k += 2) {
        const char *key = str_key(sd, k) ? sd->items[k]->s : NULL;
        if (sd == root && p->unwrap == SIZE_MAX && key && IN_LIST(key, k_training_state)) continue;
        if (!holds_tensor(sd->items[k + 1], p->sd_depth + 1, &budget)) continue;
        if (!key || strncmp(key, "module", 6)) return;
        if (key[6] ? key[6] != '.' || !key[7] : sd->items[k + 1]->kind != PK_DICT) return;
        any = 1;
    }
    p->strip_module = any;
}

/* ---- flattening -------------------------------------------------------- */

static int walk(lm_source *s, tt_backend *be, const pk_value *v, name_buf *nb, int depth, size_t *visits,
                const flat_plan *plan, lm_err *err)
{
    /* shared sub-objects are walked once per path: bound the total, or
     * lists of lists sharing their children would take 2^depth steps */
    if (!*visits)
        return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "object graph reaches shared objects too many times");
    --*visits;
    if (depth > PK_MAX_DEPTH)
        return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "object nested deeper than %d levels (or a cycle)", PK_MAX_DEPTH);
    if (v->kind == PK_TENSOR) {
        if (!nb->len) return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "a bare tensor, not a state dict");
        return add_tensor(s, be, nb->p, v, err);
    }
    int is_dict = v->kind == PK_DICT;
    if (!is_dict && v->kind != PK_LIST && v->kind != PK_TUPLE) { be->nontensor++; return 0; }
    /* the planned levels: the wrapper key at the root, "module." in the state dict */
    int at_root = depth == 0 && is_dict, at_sd = plan->strip_module && depth == plan->sd_depth && v == plan->sd;
    size_t step = is_dict ? 2 : 1;
    for (size_t k = 0; k + step - 1 < v->n; k += step) {
        char part[32];
        const char *key = part;
        const pk_value *child = v->items[k + step - 1];
        if (!is_dict) snprintf(part, sizeof part, "%zu", k);
        else if (v->items[k]->kind == PK_STR) key = v->items[k]->s;
        else if (v->items[k]->kind == PK_INT) snprintf(part, sizeof part, "%lld", (long long)v->items[k]->i);
        else { be->nontensor++; continue; }   /* e.g. a Lightning callback keyed by its class */
        size_t saved = nb->len;
        int drop = at_root && k == plan->unwrap;
        if (at_sd && !strncmp(key, "module", 6)) {
            if (!key[6]) drop = child->kind == PK_DICT;   /* {"module": {...}} */
            else if (key[6] == '.') key += 7; /* "module.conv.weight" */
        }
        if (!drop && name_push(nb, key, &saved))
            return lm_err_set(err, LM_ENOMEM, s->path, NULL, LM_ERR_NO_OFFSET, "tensor name too long or out of memory");
        int rc = walk(s, be, child, nb, depth + 1, visits, plan, err);
        nb->len = saved;
        if (nb->p) nb->p[saved] = '\0';
        if (rc) return rc;
    }
    return 0;
}

int tt_flatten(lm_source *s, tt_backend *be, const pk_value *root, size_t n_values, lm_err *err)
{
    name_buf nb = { 0 };
    if (root->kind != PK_DICT && root->kind != PK_LIST && root->kind != PK_TUPLE && root->kind != PK_TENSOR)
        return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "the pickled object is not a dict of tensors");
    size_t visits = 4 * n_values + 1024;
    flat_plan plan;
    plan_flattening(root, 2 * visits, &plan);   /* it may test a subtree twice */
    be->dropped[0] = '\0';
    if (plan.unwrap != SIZE_MAX)
        snprintf(be->dropped, sizeof be->dropped, "%s.", root->items[plan.unwrap]->s);
    if (plan.strip_module) {
        size_t n = strlen(be->dropped);
        snprintf(be->dropped + n, sizeof be->dropped - n, "module.");
    }
    int rc = walk(s, be, root, &nb, 0, &visits, &plan, err);
    free(nb.p);
    return rc;
}

/* ---- reads ------------------------------------------------------------- */

static void swap_bytes(unsigned char *p, size_t n, size_t es)
{
    for (size_t k = 0; k + es <= n; k += es)
        for (size_t a = 0, b = es - 1; a < b; a++, b--) {
            unsigned char x = p[k + a];
            p[k + a] = p[k + b];
            p[k + b] = x;
        }
}

/* Copies elements of a strided view in row-major order. */
static void gather(unsigned char *dst, const unsigned char *base, const tt_tensor *t, size_t es, uint64_t numel)
{
    int64_t idx[LM_MAX_DIMS] = { 0 };
    for (uint64_t k = 0; k < numel; k++) {
        int64_t off = t->offset;
        for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
        memcpy(dst + k * es, base + (uint64_t)off * es, es);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->size[d]) break;
            idx[d] = 0;
        }
    }
}

static int read_zip_entry(const lm_source *s, tt_backend *be, int64_t zindex, void *dst, uint64_t n, const char *key, lm_err *err)
{
    pthread_mutex_lock(&be->zip_lock);
    zip_file_t *zf = zip_fopen_index(be->zip, (zip_uint64_t)zindex, 0);
    int rc = 0;
    if (!zf) rc = lm_err_set(err, LM_EINPUT, s->path, key, LM_ERR_NO_OFFSET, "cannot open zip entry: %s", zip_strerror(be->zip));
    else {
        zip_int64_t got = zip_fread(zf, dst, n);
        if (got < 0 || (uint64_t)got != n)
            rc = lm_err_set(err, LM_EINPUT, s->path, key, LM_ERR_NO_OFFSET, "zip entry: %s", got < 0 ? zip_file_strerror(zf) : "shorter than stated");
        zip_fclose(zf);
    }
    pthread_mutex_unlock(&be->zip_lock);
    return rc;
}

static const void *tt_raw(const lm_source *s, size_t i)
{
    tt_backend *be = s->backend;
    const tt_tensor *t = &be->t[i];
    const tt_storage *st = &be->st[t->storage];
    size_t es = lm_dtype_size(s->entries[i].dtype);
    if (!t->contiguous || !st->data || (be->big_endian && es > 1)) return NULL;
    return st->data + (uint64_t)t->offset * es;
}

static int tt_read(const lm_source *s, size_t i, void *dst, lm_err *err)
{
    tt_backend *be = s->backend;
    const lm_entry *e = &s->entries[i];
    const tt_tensor *t = &be->t[i];
    const tt_storage *st = &be->st[t->storage];
    size_t es = lm_dtype_size(e->dtype);
    if (!e->nbytes) return 0;
    const unsigned char *base = st->data;
    unsigned char *tmp = NULL;
    if (!base) {   /* a compressed storage: inflate it whole (rare: torch stores them uncompressed) */
        if (st->nbytes > SIZE_MAX || !(tmp = malloc(st->nbytes)))
            return lm_err_set(err, LM_ENOMEM, s->path, e->name, LM_ERR_NO_OFFSET, "out of memory for a compressed storage");
        int rc = read_zip_entry(s, be, st->zindex, tmp, st->nbytes, e->name, err);
        if (rc) { free(tmp); return rc; }
        base = tmp;
    }
    if (t->contiguous) memcpy(dst, base + (uint64_t)t->offset * es, e->nbytes);
    else gather(dst, base, t, es, (uint64_t)e->numel);
    if (be->big_endian && es > 1) swap_bytes(dst, e->nbytes, es);
    free(tmp);
    return 0;
}

static void tt_close(lm_source *s)
{
    tt_backend *be = s->backend;
    if (!be) return;
    if (be->zip) { zip_discard(be->zip); pthread_mutex_destroy(&be->zip_lock); }
    if (be->map) munmap(be->map, be->map_len);
    for (size_t k = 0; k < be->n_st; k++) { free(be->st[k].key); free(be->st[k].type); }
    free(be->st);
    free(be->t);
    free(be);
    s->backend = NULL;
}

static const lm_source_ops k_torch_ops = { tt_read, tt_raw, tt_close };

size_t lm_torch_nontensor_count(const lm_source *s)
{
    if (!s || s->ops != &k_torch_ops) return 0;
    return ((const tt_backend *)s->backend)->nontensor;
}

const char *lm_torch_dropped_prefix(const lm_source *s)
{
    if (!s || s->ops != &k_torch_ops) return NULL;
    const char *p = ((const tt_backend *)s->backend)->dropped;
    return *p ? p : NULL;
}

/* ---- the zip format ---------------------------------------------------- */

static uint64_t rd(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; k--) v = (v << 8) | p[k];
    return v;
}

/* Data offset of every central-directory entry (libzip does not expose it):
 * EOCD, then the zip64 EOCD when a field is saturated, then each entry's
 * local header (APPNOTE.TXT 4.3). Offsets are checked against the file. */
static int zip_data_offsets(const lm_source *s, const unsigned char *m, size_t len, uint64_t *offs, uint64_t count, lm_err *err)
{
    const char *why = "no end of central directory record";
    if (len < 22) goto bad;
    size_t eocd = len - 22, stop = len > 22 + 65535 ? len - 22 - 65535 : 0;
    while (rd(m + eocd, 4) != 0x06054b50) {
        if (eocd == stop) goto bad;
        eocd--;
    }
    uint64_t n = rd(m + eocd + 10, 2), cd = rd(m + eocd + 16, 4);
    if (n == 0xffff || cd == 0xffffffffu) {
        why = "bad zip64 end of central directory";
        if (eocd < 20 || rd(m + eocd - 20, 4) != 0x07064b50) goto bad;
        uint64_t z = rd(m + eocd - 20 + 8, 8);
        if (z > len - 56 || rd(m + z, 4) != 0x06064b50) goto bad;
        n = rd(m + z + 32, 8);
        cd = rd(m + z + 48, 8);
    }
    why = "central directory disagrees with libzip";
    if (n != count) goto bad;
    uint64_t p = cd;
    for (uint64_t k = 0; k < n; k++) {
        why = "central directory entry out of bounds";
        if (p > len || len - p < 46 || rd(m + p, 4) != 0x02014b50) goto bad;
        uint64_t csize = rd(m + p + 20, 4), usize = rd(m + p + 24, 4), local = rd(m + p + 42, 4);
        uint64_t nl = rd(m + p + 28, 2), xl = rd(m + p + 30, 2), cl = rd(m + p + 32, 2);
        if (len - p - 46 < nl + xl + cl) goto bad;
        for (uint64_t x = p + 46 + nl; x + 4 <= p + 46 + nl + xl;) {   /* zip64 extra field */
            uint64_t id = rd(m + x, 2), sz = rd(m + x + 2, 2), q = x + 4;
            if (x + 4 + sz > p + 46 + nl + xl) break;
            if (id == 1) {
                if (usize == 0xffffffffu && q + 8 <= x + 4 + sz) { usize = rd(m + q, 8); q += 8; }
                if (csize == 0xffffffffu && q + 8 <= x + 4 + sz) { csize = rd(m + q, 8); q += 8; }
                if (local == 0xffffffffu && q + 8 <= x + 4 + sz) { local = rd(m + q, 8); q += 8; }
            }
            x += 4 + sz;
        }
        why = "local file header out of bounds";
        if (local > len || len - local < 30 || rd(m + local, 4) != 0x04034b50) goto bad;
        uint64_t data = local + 30 + rd(m + local + 26, 2) + rd(m + local + 28, 2);
        if (data > len || len - data < csize) goto bad;
        offs[k] = data;
        p += 46 + nl + xl + cl;
    }
    return 0;
bad:
    return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "zip: %s", why);
}

/* A name inside the archive folder, without '..', absolute paths or backslashes. */
static int inside_archive(const char *name, const char *prefix, size_t plen)
{
    if (strncmp(name, prefix, plen) || name[plen] != '/') return 0;
    if (strchr(name, '\\')) return 0;
    for (const char *p = name; *p; ) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if ((n == 2 && p[0] == '.' && p[1] == '.') || (n == 1 && p[0] == '.')) return 0;
        p += n + (e ? 1 : 0);
        if (!e) break;
    }
    return 1;
}

static int read_small_entry(lm_source *s, tt_backend *be, zip_int64_t idx, const char *name, unsigned char **out, uint64_t *n, uint64_t max, lm_err *err)
{
    zip_stat_t zs;
    if (zip_stat_index(be->zip, (zip_uint64_t)idx, 0, &zs) || !(zs.valid & ZIP_STAT_SIZE))
        return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "zip: cannot stat entry");
    if (zs.size > max)
        return lm_err_set(err, LM_ENOMEM, s->path, name, LM_ERR_NO_OFFSET, "zip entry of %llu bytes exceeds the %llu-byte limit",
                          (unsigned long long)zs.size, (unsigned long long)max);
    *n = zs.size;
    if (!(*out = malloc(zs.size ? zs.size : 1))) return lm_err_set(err, LM_ENOMEM, s->path, name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = read_zip_entry(s, be, idx, *out, zs.size, name, err);
    if (rc) { free(*out); *out = NULL; }
    return rc;
}

static int zip_load(lm_source *s, tt_backend *be, const lm_open_opts *opts, lm_err *err)
{
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(be->map, be->map_len, 0, &ze);
    if (src && !(be->zip = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze))) zip_source_free(src);
    if (!be->zip) {
        int rc = lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "zip: %s", zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return rc;
    }
    zip_error_fini(&ze);
    pthread_mutex_init(&be->zip_lock, NULL);
    zip_int64_t n = zip_get_num_entries(be->zip, 0);
    if (n <= 0) return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET, "an empty zip archive, not a PyTorch checkpoint");
    /* the archive folder is the one holding data.pkl (torch.load does the same) */
    char prefix[256] = "";
    zip_int64_t pkl = -1;
    for (zip_int64_t k = 0; k < n; k++) {
        const char *name = zip_get_name(be->zip, (zip_uint64_t)k, ZIP_FL_ENC_RAW);
        const char *slash = name ? strchr(name, '/') : NULL;
        if (slash && !strcmp(slash, "/data.pkl") && (size_t)(slash - name) < sizeof prefix) {
            if (pkl >= 0) return lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "two data.pkl records in one archive");
            memcpy(prefix, name, (size_t)(slash - name));
            prefix[slash - name] = '\0';
            pkl = k;
        }
    }
    if (pkl < 0) return lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET,
                                   "a zip archive, not a PyTorch checkpoint (no <archive>/data.pkl)");
    size_t plen = strlen(prefix);
    uint64_t *offs = calloc((size_t)n, sizeof *offs);
    if (!offs) return lm_err_set(err, LM_ENOMEM, s->path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    int rc = zip_data_offsets(s, be->map, be->map_len, offs, (uint64_t)n, err);
    for (zip_int64_t k = 0; k < n && !rc; k++) {
        const char *name = zip_get_name(be->zip, (zip_uint64_t)k, ZIP_FL_ENC_RAW);
        if (!name || !inside_archive(name, prefix, plen))
            rc = lm_err_set(err, LM_EINPUT, s->path, name ? name : "?", LM_ERR_NO_OFFSET,
                            "zip entry lies outside the archive folder %s/", prefix);
    }
    char name[400];
    zip_int64_t bo = -1;
    if (!rc) {
        snprintf(name, sizeof name, "%s/byteorder", prefix);
        bo = zip_name_locate(be->zip, name, ZIP_FL_ENC_RAW);
    }
    if (!rc && bo >= 0) {
        unsigned char *b = NULL;
        uint64_t bn = 0;
        rc = read_small_entry(s, be, bo, name, &b, &bn, 16, err);
        if (!rc) {
            if (bn == 3 && !memcmp(b, "big", 3)) be->big_endian = 1;
            else if (!(bn == 6 && !memcmp(b, "little", 6)))
                rc = lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "byteorder is neither \"little\" nor \"big\"");
        }
        free(b);
    }
    unsigned char *pk = NULL;
    uint64_t pkn = 0;
    pk_ctx *ctx = NULL;
    pk_value *root = NULL;
    if (!rc) rc = read_small_entry(s, be, pkl, "data.pkl", &pk, &pkn, TT_MAX_PICKLE, err);
    if (!rc) {
        zip_stat_t zs;
        int stored = !zip_stat_index(be->zip, (zip_uint64_t)pkl, 0, &zs) && zs.comp_method == ZIP_CM_STORE;
        rc = pk_load(&ctx, pk, (size_t)pkn, s->path, stored ? (int64_t)offs[pkl] : 0, opts && opts->skip_unknown, &root, NULL, err);
    }
    for (size_t k = 0; !rc && k < pk_persid_count(ctx); k++) rc = tt_add_storage(s, be, pk_persid(ctx, k), err);
    for (size_t k = 0; !rc && k < be->n_st; k++) {   /* locate and size-check every storage record */
        tt_storage *st = &be->st[k];
        snprintf(name, sizeof name, "%s/data/%s", prefix, st->key);
        zip_int64_t zi = zip_name_locate(be->zip, name, ZIP_FL_ENC_RAW);
        zip_stat_t zs;
        if (zi < 0 || zip_stat_index(be->zip, (zip_uint64_t)zi, 0, &zs)) {
            rc = lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "storage record missing from the archive");
            break;
        }
        if (st->nbytes == UINT64_MAX) st->nbytes = zs.size;   /* unknown type: refused per tensor */
        else if (zs.size < st->nbytes) {
            rc = lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET, "storage record holds %llu bytes, the pickle says %llu",
                            (unsigned long long)zs.size, (unsigned long long)st->nbytes);
            break;
        }
        st->zindex = zi;
        if (zs.comp_method == ZIP_CM_STORE) {
            /* the raw pointer is only as good as the sizes: a stored record whose
             * size exceeds its compressed size would be read past its data */
            if (!(zs.valid & ZIP_STAT_COMP_SIZE) || zs.comp_size != zs.size ||
                offs[zi] > be->map_len || be->map_len - offs[zi] < zs.size) {
                rc = lm_err_set(err, LM_EINPUT, s->path, name, LM_ERR_NO_OFFSET,
                                "stored zip record of %llu bytes has %llu bytes of data",
                                (unsigned long long)zs.size, (unsigned long long)zs.comp_size);
                break;
            }
            st->data = be->map + offs[zi];
        }
    }
    if (!rc) rc = tt_sort_storages(s, be, err);
    if (!rc) {
        rc = tt_flatten(s, be, root, pk_value_count(ctx), err);
    }
    pk_free(ctx);
    free(pk);
    free(offs);
    return rc;
}

/* ---- entry point ------------------------------------------------------- */

int lm_torch_open(lm_source **out, const char *path, lm_format fmt, const lm_open_opts *opts, lm_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size <= 0) {
        int e = errno;
        close(fd);
        return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot stat or empty file: %s", strerror(e));
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return lm_err_set(err, LM_EIO, path, NULL, LM_ERR_NO_OFFSET, "cannot map: %s", strerror(e));
    lm_source *s;
    tt_backend *be = calloc(1, sizeof *be);
    int rc = be ? lm_source_new(&s, path, fmt == LM_FMT_ZIP ? LM_FMT_TORCH_ZIP : fmt, err)
                : lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    if (rc) { free(be); munmap(map, (size_t)sb.st_size); return rc; }
    be->map = map;
    be->map_len = (size_t)sb.st_size;
    s->backend = be;
    s->ops = &k_torch_ops;
    s->file_size = (uint64_t)sb.st_size;
    if (fmt == LM_FMT_ZIP) rc = zip_load(s, be, opts, err);
    else rc = tt_legacy_load(s, be, opts, err);
    if (rc) { lm_err_file(err, path); lm_source_close(s); return rc; }
    *out = s;
    return 0;
}
