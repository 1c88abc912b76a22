/* The legacy torch.save format (before torch 1.6) and bare pickles.
 *
 * Layout (torch/serialization.py _legacy_save): five pickles in a row —
 * the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a
 * sys_info dict {protocol_version, little_endian, type_sizes}, the object
 * (storages as persistent ids), the sorted list of storage keys — then for
 * each key in that order an int64 element count and the storage's bytes.
 * torch writes those bytes little-endian whatever the machine
 * (THPStorage_writeFileRaw converts), so only the count may be big-endian
 * in files from big-endian machines; we accept it in either order when it
 * matches the persistent id's. */
#include "torch_impl.h"

#include <string.h>

static const unsigned char k_magic_le[10] = { 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19 };

/* Loads the next pickle at *pos into a fresh context. */
static int next_pickle(lm_source *s, tt_backend *be, size_t *pos, int skip_unknown, pk_ctx **ctx, pk_value **root, lm_err *err)
{
    size_t used = 0;
    int rc = pk_load(ctx, be->map + *pos, be->map_len - *pos, s->path, (int64_t)*pos, skip_unknown, root, &used, err);
    *pos += used;
    return rc;
}

static int bare_pickle(lm_source *s, tt_backend *be, const lm_open_opts *opts, lm_err *err)
{
    pk_ctx *ctx = NULL;
    pk_value *root;
    size_t pos = 0;
    /* unpickle first, so that a hostile stream is refused by the name of its global */
    int rc = next_pickle(s, be, &pos, opts && opts->skip_unknown, &ctx, &root, err);
    if (!rc) rc = lm_err_set(err, LM_EINPUT, s->path, NULL, LM_ERR_NO_OFFSET,
                             "a pickle stream, not a PyTorch checkpoint (no torch.save magic number or zip archive)");
    pk_free(ctx);
    return rc;
}

static int read_storages(lm_source *s, tt_backend *be, size_t pos, const pk_value *keys, int little, lm_err *err)
{
    for (size_t k = 0; k < keys->n; k++) {
        const pk_value *key = keys->items[k];
        if (key->kind != PK_STR) return lm_err_set(err, LM_EINPUT, s->path, NULL, (int64_t)pos, "storage key list holds a non-string");
        tt_storage *st = tt_find_storage(be, key->s);
        if (!st) return lm_err_set(err, LM_EINPUT, s->path, key->s, (int64_t)pos, "storage listed but never referenced");
        if (st->data) return lm_err_set(err, LM_EINPUT, s->path, key->s, (int64_t)pos, "storage listed twice");
        if (st->nbytes == UINT64_MAX)
            return lm_err_set(err, LM_EUNSUPPORTED, s->path, key->s, (int64_t)pos, "storage type %s is not supported", st->type);
        if (be->map_len - pos < 8) return lm_err_set(err, LM_EINPUT, s->path, key->s, (int64_t)pos, "truncated before the storage's element count");
        uint64_t n = 0, nbe = 0;
        for (int b = 7; b >= 0; b--) n = (n << 8) | be->map[pos + (size_t)b];
        for (int b = 0; b < 8; b++) nbe = (nbe << 8) | be->map[pos + (size_t)b];
        if (n != st->numel && !(little == 0 && nbe == st->numel))
            return lm_err_set(err, LM_EINPUT, s->path, key->s, (int64_t)pos, "storage holds %llu elements, the pickle says %llu",
                              (unsigned long long)n, (unsigned long long)st->numel);
        pos += 8;
        if (be->map_len - pos < st->nbytes)
            return lm_err_set(err, LM_EINPUT, s->path, key->s, (int64_t)pos, "truncated: storage of %llu bytes, %zu left",
                              (unsigned long long)st->nbytes, be->map_len - pos);
        st->data = be->map + pos;
        pos += st->nbytes;
    }
    for (size_t k = 0; k < be->n_st; k++)
        if (!be->st[k].data) return lm_err_set(err, LM_EINPUT, s->path, be->st[k].key, LM_ERR_NO_OFFSET, "storage missing from the file");
    return 0;
}

int tt_legacy_load(lm_source *s, tt_backend *be, const lm_open_opts *opts, lm_err *err)
{
    be->legacy = 1;
    if (s->format == LM_FMT_PICKLE) return bare_pickle(s, be, opts, err);
    pk_ctx *c[5] = { 0 };
    pk_value *v[5] = { 0 };
    size_t pos = 0, at[5];
    int rc = 0;
    for (int k = 0; k < 5 && !rc; k++) {
        at[k] = pos;
        rc = next_pickle(s, be, &pos, k == 3 && opts && opts->skip_unknown, &c[k], &v[k], err);
    }
    if (!rc && (v[0]->kind != PK_BIGINT || v[0]->len != 10 || memcmp(v[0]->s, k_magic_le, 10)))
        rc = lm_err_set(err, LM_EINPUT, s->path, NULL, 0, "not a torch.save legacy file (bad magic number)");
    if (!rc && (v[1]->kind != PK_INT || v[1]->i != 1001))
        rc = lm_err_set(err, LM_EUNSUPPORTED, s->path, NULL, (int64_t)at[1], "legacy protocol version is not 1001");
    int little = 1;
    if (!rc) {
        const pk_value *le = pk_dict_get(v[2], "little_endian");
        if (v[2]->kind != PK_DICT) rc = lm_err_set(err, LM_EINPUT, s->path, NULL, (int64_t)at[2], "legacy sys_info is not a dict");
        else if (le && le->kind == PK_BOOL) little = (int)le->i;
    }
    if (!rc && v[4]->kind != PK_LIST)
        rc = lm_err_set(err, LM_EINPUT, s->path, NULL, (int64_t)at[4], "legacy storage key list is not a list");
    for (size_t k = 0; !rc && k < pk_persid_count(c[3]); k++) rc = tt_add_storage(s, be, pk_persid(c[3], k), err);
    if (!rc) rc = tt_sort_storages(s, be, err);
    if (!rc) rc = read_storages(s, be, pos, v[4], little, err);
    if (!rc) rc = tt_flatten(s, be, v[3], pk_value_count(c[3]), err);
    for (int k = 0; k < 5; k++) pk_free(c[k]);
    return rc;
}
