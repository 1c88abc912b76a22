/* Internal: a restricted unpickler for torch.save output.
 *
 * Reads the opcodes of pickle protocols 0-5 (CPython Lib/pickle.py and
 * Lib/pickletools.py describe them) into a tree of inert values. Nothing is
 * ever called: a GLOBAL is looked up in a fixed whitelist and becomes a
 * name; REDUCE/NEWOBJ/BUILD on a whitelisted name are interpreted as data
 * (OrderedDict → dict, torch._utils._rebuild_tensor_v2 → a tensor record,
 * numpy scalars and Lightning callback state → opaque values). A global
 * outside the whitelist is refused (LM_EUNSUPPORTED "refusing global
 * os.system") unless skip_unknown, which reads it as an opaque value.
 *
 * Limits: nesting depth and mark depth PK_MAX_DEPTH, memo PK_MAX_MEMO
 * entries assigned in order, PK_MAX_VALUES objects and PK_MAX_ITEMS
 * container slots (about 600 MB at worst), every length checked against
 * the bytes left.
 * The whitelist covers A1111's modules/safe.py allowlist plus the torch
 * storage types, dtypes and rebuild functions of torch 1.x/2.x.
 */
#ifndef LIBMERGE_IO_TORCH_PICKLE_H
#define LIBMERGE_IO_TORCH_PICKLE_H

#include <stddef.h>
#include <stdint.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"
#include "libmerge/source.h"

#define PK_MAX_DEPTH 1000
#define PK_MAX_MEMO (1u << 24)
#define PK_MAX_VALUES ((size_t)1 << 22)   /* objects in one pickle (an SD checkpoint has ~20,000) */
#define PK_MAX_ITEMS ((size_t)1 << 24)    /* container slots in one pickle */

typedef enum pk_kind {
    PK_NONE, PK_BOOL, PK_INT, PK_BIGINT, PK_FLOAT, PK_STR, PK_BYTES,
    PK_TUPLE, PK_LIST, PK_DICT,   /* DICT items: key0, value0, key1, value1, … */
    PK_GLOBAL,                    /* a whitelisted (or skipped) name: s = "module.name" */
    PK_PERSID,                    /* items[0] = the persistent id (torch: a tuple) */
    PK_TENSOR,                    /* a rebuilt tensor record, see fields below */
    PK_OPAQUE                     /* inert data we do not interpret; s says what */
} pk_kind;

typedef struct pk_value pk_value;

/* A rebuilt tensor record: _rebuild_tensor_v2's arguments, no data. */
typedef struct pk_tensor {
    pk_value *storage;            /* the PK_PERSID */
    int64_t storage_offset;       /* elements */
    int ndim;
    int64_t size[LM_MAX_DIMS], stride[LM_MAX_DIMS];
} pk_tensor;

struct pk_value {
    pk_kind kind;
    int depth;                    /* 1 + deepest child, bounded by PK_MAX_DEPTH */
    int64_t i;                    /* INT, BOOL; GLOBAL: how it is interpreted */
    double f;
    char *s;                      /* STR/BYTES/BIGINT bytes, GLOBAL/OPAQUE name; NUL-terminated */
    size_t len;
    pk_value **items;
    size_t n, cap;
    lm_dtype dtype;               /* GLOBAL: storage type's or dtype's; TENSOR: its dtype */
    pk_tensor *t;                 /* PK_TENSOR */
};

typedef struct pk_ctx pk_ctx;

/* Unpickles buf[0..len) (one pickle, up to STOP). path names the file in
 * errors; base_offset is added to byte offsets in errors (where this pickle
 * starts in the file). *used receives the bytes consumed (through STOP).
 * The values live until pk_free(ctx). Errors: LM_EINPUT (malformed,
 * truncated, too deep, memo out of range), LM_EUNSUPPORTED (a refused
 * global or opcode), LM_ENOMEM. */
int pk_load(pk_ctx **ctx, const unsigned char *buf, size_t len, const char *path,
            int64_t base_offset, int skip_unknown, pk_value **root, size_t *used, lm_err *err);
void pk_free(pk_ctx *ctx);   /* always call it, also after an error */

/* Number of values the pickle created (bounds walks over its object graph). */
size_t pk_value_count(const pk_ctx *ctx);

/* The persistent ids (PK_PERSID values) in stream order. */
size_t pk_persid_count(const pk_ctx *ctx);
pk_value *pk_persid(const pk_ctx *ctx, size_t i);

/* Storage type global ("torch.FloatStorage") → dtype; LM_DT_INVALID if it
 * is not a storage type we read (complex, quantized: refused by name). */
lm_dtype pk_storage_dtype(const char *global_name);

/* Value lookups for interpreting the tree. */
pk_value *pk_dict_get(const pk_value *d, const char *key);

#endif
