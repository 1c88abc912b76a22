/* Restricted unpickler: see pickle.h. Opcode meanings follow CPython's
 * Lib/pickletools.py; the whitelist follows A1111 modules/safe.py and
 * torch/serialization.py + torch/_utils.py (what torch.save emits). */
#include "pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How a whitelisted global is read when REDUCE/NEWOBJ applies it. */
enum {
    W_UNKNOWN = 0,   /* not whitelisted, read as opaque because of skip_unknown */
    W_ODICT,         /* collections.OrderedDict → dict */
    W_REBUILD,       /* torch._utils._rebuild_tensor(storage, offset, size, stride) */
    W_REBUILD_V2,    /* … _v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) */
    W_REBUILD_V3,    /* … _v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]) */
    W_PARAM,         /* _rebuild_parameter[_with_state](data, …) → data */
    W_FROM_TYPE,     /* torch._tensor._rebuild_from_type_v2(func, type, args, state) → func(args) */
    W_SIZE,          /* torch.Size(tuple) → tuple */
    W_LIST,          /* builtins.set/frozenset/list → list of the argument's items */
    W_TUPLE,         /* builtins.tuple */
    W_DICT,          /* builtins.dict() */
    W_STORAGE,       /* torch.FloatStorage … (names in persistent ids) */
    W_DTYPE,         /* torch.float16 … (the v3 dtype argument) */
    W_INERT          /* numpy scalars/dtypes, _codecs.encode, Lightning callback: opaque data */
};

static const struct { const char *module, *name; int kind; lm_dtype dt; } k_whitelist[] = {
    { "collections", "OrderedDict", W_ODICT, 0 },
    { "typing", "OrderedDict", W_ODICT, 0 },
    { "torch._utils", "_rebuild_tensor", W_REBUILD, 0 },
    { "torch._utils", "_rebuild_tensor_v2", W_REBUILD_V2, 0 },
    { "torch._utils", "_rebuild_tensor_v3", W_REBUILD_V3, 0 },
    { "torch._utils", "_rebuild_parameter", W_PARAM, 0 },
    { "torch._utils", "_rebuild_parameter_with_state", W_PARAM, 0 },
    { "torch._utils", "_rebuild_device_tensor_from_numpy", W_INERT, 0 },
    { "torch._tensor", "_rebuild_from_type_v2", W_FROM_TYPE, 0 },
    { "torch", "Size", W_SIZE, 0 },
    { "torch", "Tensor", W_INERT, 0 },
    { "torch", "device", W_INERT, 0 },
    { "torch.nn.parameter", "Parameter", W_INERT, 0 },
    { "torch.nn.modules.container", "ParameterDict", W_INERT, 0 },
    { "torch", "FloatStorage", W_STORAGE, LM_DT_F32 },
    { "torch", "DoubleStorage", W_STORAGE, LM_DT_F64 },
    { "torch", "HalfStorage", W_STORAGE, LM_DT_F16 },
    { "torch", "BFloat16Storage", W_STORAGE, LM_DT_BF16 },
    { "torch", "LongStorage", W_STORAGE, LM_DT_I64 },
    { "torch", "IntStorage", W_STORAGE, LM_DT_I32 },
    { "torch", "ShortStorage", W_STORAGE, LM_DT_I16 },
    { "torch", "CharStorage", W_STORAGE, LM_DT_I8 },
    { "torch", "ByteStorage", W_STORAGE, LM_DT_U8 },
    { "torch", "BoolStorage", W_STORAGE, LM_DT_BOOL },
    { "torch", "Float8_e4m3fnStorage", W_STORAGE, LM_DT_F8_E4M3 },
    { "torch", "Float8_e5m2Storage", W_STORAGE, LM_DT_F8_E5M2 },
    { "torch", "UntypedStorage", W_STORAGE, LM_DT_INVALID },
    { "torch", "ComplexFloatStorage", W_STORAGE, LM_DT_INVALID },
    { "torch", "ComplexDoubleStorage", W_STORAGE, LM_DT_INVALID },
    { "torch", "QInt8Storage", W_STORAGE, LM_DT_INVALID },
    { "torch", "QUInt8Storage", W_STORAGE, LM_DT_INVALID },
    { "torch", "QInt32Storage", W_STORAGE, LM_DT_INVALID },
    { "torch", "float32", W_DTYPE, LM_DT_F32 }, { "torch", "float", W_DTYPE, LM_DT_F32 },
    { "torch", "float64", W_DTYPE, LM_DT_F64 }, { "torch", "double", W_DTYPE, LM_DT_F64 },
    { "torch", "float16", W_DTYPE, LM_DT_F16 }, { "torch", "half", W_DTYPE, LM_DT_F16 },
    { "torch", "bfloat16", W_DTYPE, LM_DT_BF16 },
    { "torch", "int64", W_DTYPE, LM_DT_I64 }, { "torch", "long", W_DTYPE, LM_DT_I64 },
    { "torch", "int32", W_DTYPE, LM_DT_I32 }, { "torch", "int", W_DTYPE, LM_DT_I32 },
    { "torch", "int16", W_DTYPE, LM_DT_I16 }, { "torch", "short", W_DTYPE, LM_DT_I16 },
    { "torch", "int8", W_DTYPE, LM_DT_I8 }, { "torch", "uint8", W_DTYPE, LM_DT_U8 },
    { "torch", "uint16", W_DTYPE, LM_DT_U16 }, { "torch", "uint32", W_DTYPE, LM_DT_U32 },
    { "torch", "uint64", W_DTYPE, LM_DT_U64 }, { "torch", "bool", W_DTYPE, LM_DT_BOOL },
    { "torch", "float8_e4m3fn", W_DTYPE, LM_DT_F8_E4M3 }, { "torch", "float8_e5m2", W_DTYPE, LM_DT_F8_E5M2 },
    { "numpy.core.multiarray", "scalar", W_INERT, 0 },
    { "numpy.core.multiarray", "_reconstruct", W_INERT, 0 },
    { "numpy._core.multiarray", "scalar", W_INERT, 0 },
    { "numpy._core.multiarray", "_reconstruct", W_INERT, 0 },
    { "numpy", "dtype", W_INERT, 0 },
    { "numpy", "ndarray", W_INERT, 0 },
    { "_codecs", "encode", W_INERT, 0 },
    { "pytorch_lightning.callbacks", "model_checkpoint", W_INERT, 0 },
    { "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", W_INERT, 0 },
    { "__builtin__", "set", W_LIST, 0 }, { "builtins", "set", W_LIST, 0 },
    { "builtins", "frozenset", W_LIST, 0 }, { "builtins", "list", W_LIST, 0 },
    { "builtins", "tuple", W_TUPLE, 0 }, { "builtins", "dict", W_DICT, 0 },
    { "builtins", "bytearray", W_INERT, 0 }, { "builtins", "complex", W_INERT, 0 },
    { "builtins", "slice", W_INERT, 0 },
};

struct pk_ctx {
    pk_value **all;               /* every value, freed together */
    size_t n_all, cap_all;
    size_t n_items;               /* container slots in use, bounded by PK_MAX_ITEMS */
    pk_value **stack;
    size_t sp, cap_stack;
    size_t *marks;
    size_t n_marks, cap_marks;
    pk_value **memo;
    size_t n_memo, cap_memo;
    pk_value **persids;           /* every persistent id, in stream order */
    size_t n_persids, cap_persids;
    const unsigned char *buf;
    size_t len, pos, op_at;
    const char *path;
    int64_t base;
    int skip_unknown;
    lm_err *err;
};

__attribute__((format(printf, 3, 4)))
static int bad(pk_ctx *c, int code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lm_err_set(c->err, code, c->path, NULL, c->base + (int64_t)c->op_at, "pickle: %s", msg);
}

static int oom(pk_ctx *c)
{
    if (c->n_all >= PK_MAX_VALUES) return bad(c, LM_ENOMEM, "more than %zu objects", PK_MAX_VALUES);
    return bad(c, LM_ENOMEM, "out of memory");
}

/* Grows *arr (elements of size sz) to hold at least need. */
static int grow(void **arr, size_t *cap, size_t need, size_t sz)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > SIZE_MAX / 2 / sz) return -1;
        n *= 2;
    }
    void *p = realloc(*arr, n * sz);
    if (!p) return -1;
    *arr = p;
    *cap = n;
    return 0;
}

static pk_value *new_value(pk_ctx *c, pk_kind kind)
{
    if (c->n_all >= PK_MAX_VALUES) return NULL;
    if (grow((void **)&c->all, &c->cap_all, c->n_all + 1, sizeof *c->all)) return NULL;
    pk_value *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->kind = kind;
    v->depth = 1;
    c->all[c->n_all++] = v;
    return v;
}

static int add_item(pk_ctx *c, pk_value *container, pk_value *child)
{
    if (child->depth + 1 > PK_MAX_DEPTH)
        return bad(c, LM_EINPUT, "nesting deeper than %d levels", PK_MAX_DEPTH);
    if (++c->n_items > PK_MAX_ITEMS) return bad(c, LM_ENOMEM, "more than %zu container items", PK_MAX_ITEMS);
    if (grow((void **)&container->items, &container->cap, container->n + 1, sizeof *container->items)) return oom(c);
    container->items[container->n++] = child;
    if (child->depth + 1 > container->depth) container->depth = child->depth + 1;
    return 0;
}

static int push(pk_ctx *c, pk_value *v)
{
    if (!v) return oom(c);
    if (grow((void **)&c->stack, &c->cap_stack, c->sp + 1, sizeof *c->stack)) return oom(c);
    c->stack[c->sp++] = v;
    return 0;
}

/* Bottom of the current frame (values above the last MARK). */
static size_t frame_base(const pk_ctx *c) { return c->n_marks ? c->marks[c->n_marks - 1] : 0; }

static int pop(pk_ctx *c, pk_value **v)
{
    if (c->sp <= frame_base(c)) return bad(c, LM_EINPUT, "stack underflow");
    *v = c->stack[--c->sp];
    return 0;
}

static int top(pk_ctx *c, pk_value **v)
{
    if (c->sp <= frame_base(c)) return bad(c, LM_EINPUT, "stack underflow");
    *v = c->stack[c->sp - 1];
    return 0;
}

static int pop_mark(pk_ctx *c, size_t *start)
{
    if (!c->n_marks) return bad(c, LM_EINPUT, "no MARK on the stack");
    *start = c->marks[--c->n_marks];
    return 0;
}

static int need(pk_ctx *c, size_t n)
{
    if (n > c->len - c->pos)
        return bad(c, LM_EINPUT, "truncated: opcode needs %zu more bytes, %zu left", n, c->len - c->pos);
    return 0;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int read_uint(pk_ctx *c, int n, uint64_t *v)
{
    int rc = need(c, (size_t)n);
    if (rc) return rc;
    *v = le(c->buf + c->pos, n);
    c->pos += (size_t)n;
    return 0;
}

/* A text argument up to '\n' (protocol 0 opcodes and GLOBAL). */
static int read_line(pk_ctx *c, const char **s, size_t *n)
{
    const unsigned char *p = c->buf + c->pos;
    const unsigned char *nl = memchr(p, '\n', c->len - c->pos);
    if (!nl) return bad(c, LM_EINPUT, "truncated: text argument without a newline");
    *s = (const char *)p;
    *n = (size_t)(nl - p);
    c->pos += *n + 1;
    return 0;
}

static pk_value *new_str(pk_ctx *c, pk_kind kind, const void *p, size_t n)
{
    pk_value *v = new_value(c, kind);
    if (!v) return NULL;
    if (!(v->s = malloc(n + 1))) return NULL;
    memcpy(v->s, p, n);
    v->s[n] = '\0';
    v->len = n;
    return v;
}

/* Counted string or bytes: length field of lenbytes, then the data. */
static int op_counted(pk_ctx *c, int lenbytes, int is_signed, pk_kind kind)
{
    uint64_t n;
    int rc = read_uint(c, lenbytes, &n);
    if (rc) return rc;
    if (is_signed && (n & 0x80000000u)) return bad(c, LM_EINPUT, "negative string length");
    if (n > c->len - c->pos)
        return bad(c, LM_EINPUT, "truncated: string of %llu bytes, %zu left", (unsigned long long)n, c->len - c->pos);
    pk_value *v = new_str(c, kind, c->buf + c->pos, (size_t)n);
    c->pos += (size_t)n;
    return push(c, v);
}

/* LONG1/LONG4: little-endian two's complement of n bytes. */
static int op_long_bytes(pk_ctx *c, int lenbytes)
{
    uint64_t n;
    int rc = read_uint(c, lenbytes, &n);
    if (rc) return rc;
    if (lenbytes == 4 && (n & 0x80000000u)) return bad(c, LM_EINPUT, "negative LONG4 length");
    if (n > c->len - c->pos) return bad(c, LM_EINPUT, "truncated: integer of %llu bytes", (unsigned long long)n);
    const unsigned char *p = c->buf + c->pos;
    pk_value *v;
    if (n <= 8) {
        uint64_t u = le(p, (int)n);
        if (n && n < 8 && (p[n - 1] & 0x80)) u |= ~0ull << (8 * n);
        if (!(v = new_value(c, PK_INT))) return oom(c);
        v->i = (int64_t)u;
    } else if (!(v = new_str(c, PK_BIGINT, p, (size_t)n))) {
        return oom(c);
    }
    c->pos += (size_t)n;
    return push(c, v);
}

static int op_text_int(pk_ctx *c, int is_long)
{
    const char *s;
    size_t n;
    int rc = read_line(c, &s, &n);
    if (rc) return rc;
    char tmp[64];
    if (n >= sizeof tmp) { pk_value *v = new_str(c, PK_BIGINT, s, n); return push(c, v); }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (is_long && n && tmp[n - 1] == 'L') tmp[n - 1] = '\0';
    pk_value *v;
    if (!is_long && (!strcmp(tmp, "00") || !strcmp(tmp, "01"))) {
        if (!(v = new_value(c, PK_BOOL))) return oom(c);
        v->i = tmp[1] == '1';
        return push(c, v);
    }
    char *end;
    long long x = strtoll(tmp, &end, 10);
    if (end == tmp || *end) return bad(c, LM_EINPUT, "bad integer literal");
    if (!(v = new_value(c, PK_INT))) return oom(c);
    v->i = x;
    return push(c, v);
}

static int op_text_float(pk_ctx *c)
{
    const char *s;
    size_t n;
    int rc = read_line(c, &s, &n);
    if (rc) return rc;
    char tmp[64];
    if (n >= sizeof tmp) return bad(c, LM_EINPUT, "float literal too long");
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *end;
    pk_value *v = new_value(c, PK_FLOAT);
    if (!v) return oom(c);
    v->f = strtod(tmp, &end);
    if (end == tmp) return bad(c, LM_EINPUT, "bad float literal");
    return push(c, v);
}

static int lookup_global(pk_ctx *c, const char *module, size_t mlen, const char *name, size_t nlen)
{
    char full[256];
    if (mlen + nlen + 2 > sizeof full) return bad(c, LM_EINPUT, "global name longer than %zu bytes", sizeof full);
    memcpy(full, module, mlen);
    full[mlen] = '.';
    memcpy(full + mlen + 1, name, nlen);
    full[mlen + 1 + nlen] = '\0';
    if (memchr(full, '\0', mlen + nlen + 1)) return bad(c, LM_EINPUT, "global name holds a NUL byte");
    int kind = -1;
    lm_dtype dt = LM_DT_INVALID;
    for (size_t k = 0; k < sizeof k_whitelist / sizeof k_whitelist[0]; k++)
        if (strlen(k_whitelist[k].module) == mlen && !memcmp(k_whitelist[k].module, module, mlen) &&
            strlen(k_whitelist[k].name) == nlen && !memcmp(k_whitelist[k].name, name, nlen)) {
            kind = k_whitelist[k].kind;
            dt = k_whitelist[k].dt;
            break;
        }
    if (kind < 0) {
        if (!c->skip_unknown)
            return lm_err_set(c->err, LM_EUNSUPPORTED, c->path, full, c->base + (int64_t)c->op_at,
                              "refusing global %s (not on the unpickler's whitelist; nothing was run)", full);
        kind = W_UNKNOWN;
    }
    pk_value *v = new_str(c, PK_GLOBAL, full, strlen(full));
    if (!v) return oom(c);
    v->i = kind;
    v->dtype = dt;
    return push(c, v);
}

static pk_value *opaque(pk_ctx *c, const char *what)
{
    return new_str(c, PK_OPAQUE, what, strlen(what));
}

static int get_int(const pk_value *v, int64_t *x)
{
    if (!v || (v->kind != PK_INT && v->kind != PK_BOOL)) return -1;
    *x = v->i;
    return 0;
}

static int int_tuple(pk_ctx *c, const pk_value *t, int64_t *out, int *n, const char *what)
{
    if (!t || (t->kind != PK_TUPLE && t->kind != PK_LIST)) return bad(c, LM_EINPUT, "tensor %s is not a tuple", what);
    if (t->n > LM_MAX_DIMS) return bad(c, LM_EUNSUPPORTED, "tensor with %zu dimensions (at most %d)", t->n, LM_MAX_DIMS);
    for (size_t k = 0; k < t->n; k++)
        if (get_int(t->items[k], &out[k]) || out[k] < 0)
            return bad(c, LM_EINPUT, "tensor %s holds a non-integer or negative value", what);
    *n = (int)t->n;
    return 0;
}

/* _rebuild_tensor* arguments → a PK_TENSOR record (no data is touched here). */
static int rebuild_tensor(pk_ctx *c, int kind, const pk_value *args, pk_value **out)
{
    size_t min = kind == W_REBUILD_V3 ? 7 : 4;
    if (args->n < min) return bad(c, LM_EINPUT, "tensor rebuild with %zu arguments (needs %zu)", args->n, min);
    pk_value *st = args->items[0];
    if (st->kind != PK_PERSID) return bad(c, LM_EINPUT, "tensor storage is not a persistent id");
    pk_value *v = new_value(c, PK_TENSOR);
    if (!v || !(v->t = calloc(1, sizeof *v->t))) return oom(c);
    pk_tensor *t = v->t;
    t->storage = st;
    v->dtype = LM_DT_INVALID;
    const pk_value *pid = st->items[0];
    if (pid->kind == PK_TUPLE && pid->n >= 2 && pid->items[1]->kind == PK_GLOBAL)
        v->dtype = pid->items[1]->dtype;
    if (kind == W_REBUILD_V3) {
        const pk_value *d = args->items[6];
        if (d->kind != PK_GLOBAL || d->i != W_DTYPE) return bad(c, LM_EINPUT, "_rebuild_tensor_v3 dtype is not a torch dtype");
        v->dtype = d->dtype;
    }
    if (get_int(args->items[1], &t->storage_offset) || t->storage_offset < 0)
        return bad(c, LM_EINPUT, "tensor storage offset is not a non-negative integer");
    int nd1, nd2;
    int rc = int_tuple(c, args->items[2], t->size, &nd1, "size");
    if (!rc) rc = int_tuple(c, args->items[3], t->stride, &nd2, "stride");
    if (rc) return rc;
    if (nd1 != nd2) return bad(c, LM_EINPUT, "tensor size has %d dimensions, stride %d", nd1, nd2);
    t->ndim = nd1;
    *out = v;
    return 0;
}

/* Applies a whitelisted global to args as data. Nothing is ever called. */
static int apply(pk_ctx *c, pk_value *fn, pk_value *args, int nested, pk_value **out)
{
    if (fn->kind == PK_OPAQUE) { *out = opaque(c, fn->s); return *out ? 0 : oom(c); }
    if (fn->kind != PK_GLOBAL) return bad(c, LM_EINPUT, "REDUCE on a value that is not a global");
    if (args->kind != PK_TUPLE && args->kind != PK_OPAQUE) return bad(c, LM_EINPUT, "REDUCE arguments are not a tuple");
    int kind = (int)fn->i;
    if (args->kind == PK_OPAQUE) kind = W_INERT;
    pk_value *v = NULL;
    int rc = 0;
    switch (kind) {
    case W_ODICT: case W_DICT:
        if (!(v = new_value(c, PK_DICT))) return oom(c);
        if (args->n == 1 && (args->items[0]->kind == PK_LIST || args->items[0]->kind == PK_TUPLE)) {
            pk_value *pairs = args->items[0];
            for (size_t k = 0; k < pairs->n && !rc; k++) {
                pk_value *p = pairs->items[k];
                if ((p->kind != PK_TUPLE && p->kind != PK_LIST) || p->n != 2) return bad(c, LM_EINPUT, "OrderedDict item is not a pair");
                rc = add_item(c, v, p->items[0]);
                if (!rc) rc = add_item(c, v, p->items[1]);
            }
        }
        break;
    case W_REBUILD: case W_REBUILD_V2: case W_REBUILD_V3:
        rc = rebuild_tensor(c, kind, args, &v);
        break;
    case W_PARAM:
        if (args->n < 1) return bad(c, LM_EINPUT, "_rebuild_parameter without data");
        v = args->items[0];
        break;
    case W_FROM_TYPE:
        if (nested || args->n < 3 || args->items[2]->kind != PK_TUPLE)
            return bad(c, LM_EINPUT, "malformed _rebuild_from_type_v2");
        return apply(c, args->items[0], args->items[2], 1, out);
    case W_SIZE: case W_LIST: case W_TUPLE:
        if (!(v = new_value(c, kind == W_LIST ? PK_LIST : PK_TUPLE))) return oom(c);
        if (args->n >= 1 && (args->items[0]->kind == PK_LIST || args->items[0]->kind == PK_TUPLE))
            for (size_t k = 0; k < args->items[0]->n && !rc; k++) rc = add_item(c, v, args->items[0]->items[k]);
        break;
    default: /* W_INERT, W_UNKNOWN, W_STORAGE, W_DTYPE applied: data we keep opaque */
        if (!(v = opaque(c, fn->s))) return oom(c);
        break;
    }
    if (rc) return rc;
    *out = v;
    return 0;
}

static int op_reduce(pk_ctx *c)
{
    pk_value *args, *fn, *v;
    int rc = pop(c, &args);
    if (!rc) rc = pop(c, &fn);
    if (!rc) rc = apply(c, fn, args, 0, &v);
    return rc ? rc : push(c, v);
}

/* Items above the last MARK, removed from the stack into a new container. */
static int op_collect(pk_ctx *c, pk_kind kind)
{
    size_t start = 0;
    int rc = pop_mark(c, &start);
    if (rc) return rc;
    pk_value *v = new_value(c, kind);
    if (!v) return oom(c);
    if (kind == PK_DICT && (c->sp - start) % 2) return bad(c, LM_EINPUT, "DICT with an odd number of items");
    for (size_t k = start; k < c->sp && !rc; k++) rc = add_item(c, v, c->stack[k]);
    c->sp = start;
    return rc ? rc : push(c, v);
}

static int op_tuple_n(pk_ctx *c, size_t n)
{
    if (c->sp < frame_base(c) + n) return bad(c, LM_EINPUT, "stack underflow");
    pk_value *v = new_value(c, PK_TUPLE);
    if (!v) return oom(c);
    int rc = 0;
    for (size_t k = c->sp - n; k < c->sp && !rc; k++) rc = add_item(c, v, c->stack[k]);
    c->sp -= n;
    return rc ? rc : push(c, v);
}

/* APPEND(S)/SETITEM(S)/ADDITEMS: items [start, sp) go into the container below them. */
static int add_to(pk_ctx *c, size_t start, int pairs)
{
    /* the container sits just below start, in the current frame */
    if (start == 0 || start - 1 < frame_base(c)) return bad(c, LM_EINPUT, "stack underflow");
    pk_value *dst = c->stack[start - 1];
    size_t n = c->sp - start;
    int rc = 0;
    if (dst->kind == PK_OPAQUE) {
        /* state of inert or skipped objects: dropped */
    } else if (pairs) {
        if (dst->kind != PK_DICT) return bad(c, LM_EINPUT, "SETITEM on a value that is not a dict");
        if (n % 2) return bad(c, LM_EINPUT, "SETITEMS with an odd number of items");
        for (size_t k = start; k < c->sp && !rc; k++) rc = add_item(c, dst, c->stack[k]);
    } else {
        if (dst->kind != PK_LIST) return bad(c, LM_EINPUT, "APPEND on a value that is not a list");
        for (size_t k = start; k < c->sp && !rc; k++) rc = add_item(c, dst, c->stack[k]);
    }
    c->sp = start;
    return rc;
}

static int op_add_marked(pk_ctx *c, int pairs)
{
    size_t start = 0;
    int rc = pop_mark(c, &start);
    return rc ? rc : add_to(c, start, pairs);
}

static int op_add_one(pk_ctx *c, int pairs)
{
    size_t n = pairs ? 2 : 1;
    if (c->sp < frame_base(c) + n + 1) return bad(c, LM_EINPUT, "stack underflow");
    return add_to(c, c->sp - n, pairs);
}

static int memo_get(pk_ctx *c, uint64_t idx)
{
    if (idx >= c->n_memo || !c->memo[idx])
        return bad(c, LM_EINPUT, "memo index %llu out of range (%zu entries)", (unsigned long long)idx, c->n_memo);
    return push(c, c->memo[idx]);
}

static int memo_put(pk_ctx *c, uint64_t idx)
{
    pk_value *v = NULL;
    int rc = top(c, &v);
    if (rc) return rc;
    if (idx > c->n_memo || idx >= PK_MAX_MEMO)
        return bad(c, LM_EINPUT, "memo index %llu out of order (%zu entries so far)", (unsigned long long)idx, c->n_memo);
    if (idx == c->n_memo) {
        if (grow((void **)&c->memo, &c->cap_memo, c->n_memo + 1, sizeof *c->memo)) return oom(c);
        c->n_memo++;
    }
    c->memo[idx] = v;
    return 0;
}

static int text_index(pk_ctx *c, uint64_t *idx)
{
    const char *s;
    size_t n;
    int rc = read_line(c, &s, &n);
    if (rc) return rc;
    uint64_t v = 0;
    if (!n || n > 10) return bad(c, LM_EINPUT, "bad memo index");
    for (size_t k = 0; k < n; k++) {
        if (s[k] < '0' || s[k] > '9') return bad(c, LM_EINPUT, "bad memo index");
        v = v * 10 + (uint64_t)(s[k] - '0');
    }
    *idx = v;
    return 0;
}

static int new_persid(pk_ctx *c, pk_value *id)
{
    pk_value *v = new_value(c, PK_PERSID);
    if (!v) return oom(c);
    int rc = add_item(c, v, id);
    if (rc) return rc;
    if (grow((void **)&c->persids, &c->cap_persids, c->n_persids + 1, sizeof *c->persids)) return oom(c);
    c->persids[c->n_persids++] = v;
    return push(c, v);
}

static int op_global(pk_ctx *c)
{
    const char *m = NULL, *n = NULL;
    size_t ml = 0, nl = 0;
    int rc = read_line(c, &m, &ml);
    if (!rc) rc = read_line(c, &n, &nl);
    return rc ? rc : lookup_global(c, m, ml, n, nl);
}

static int op_stack_global(pk_ctx *c)
{
    pk_value *name, *module;
    int rc = pop(c, &name);
    if (!rc) rc = pop(c, &module);
    if (rc) return rc;
    if (name->kind != PK_STR || module->kind != PK_STR) return bad(c, LM_EINPUT, "STACK_GLOBAL on non-strings");
    return lookup_global(c, module->s, module->len, name->s, name->len);
}

/* INST (protocol 0) and OBJ (protocol 1): class and arguments after a MARK. */
static int op_inst(pk_ctx *c, int has_name)
{
    int rc = 0;
    if (has_name) {
        rc = op_global(c);   /* pushes the class above the marked items */
        if (rc) return rc;
    }
    pk_value *cls = NULL;
    if (has_name) c->sp--, cls = c->stack[c->sp];
    size_t start = 0;
    if ((rc = pop_mark(c, &start))) return rc;
    if (!has_name) {
        if (start >= c->sp) return bad(c, LM_EINPUT, "OBJ without a class");
        cls = c->stack[start++];
    }
    pk_value *args = new_value(c, PK_TUPLE), *v;
    if (!args) return oom(c);
    for (size_t k = start; k < c->sp && !rc; k++) rc = add_item(c, args, c->stack[k]);
    c->sp = start - (has_name ? 0 : 1);
    if (!rc) rc = apply(c, cls, args, 0, &v);
    return rc ? rc : push(c, v);
}

static int op_newobj(pk_ctx *c, int ex)
{
    pk_value *kw = NULL, *args, *cls, *v;
    int rc = ex ? pop(c, &kw) : 0;
    if (!rc) rc = pop(c, &args);
    if (!rc) rc = pop(c, &cls);
    if (rc) return rc;
    /* an object built by its class's __new__ is inert state for us */
    if (cls->kind == PK_GLOBAL && (cls->i == W_ODICT || cls->i == W_DICT)) rc = apply(c, cls, args, 0, &v);
    else if (cls->kind == PK_GLOBAL || cls->kind == PK_OPAQUE) v = opaque(c, cls->s);
    else return bad(c, LM_EINPUT, "NEWOBJ on a value that is not a class");
    return rc ? rc : push(c, v);
}

static int op_build(pk_ctx *c)
{
    pk_value *state, *obj;
    int rc = pop(c, &state);
    if (!rc) rc = top(c, &obj);
    /* BUILD sets __dict__/__setstate__ state; for the values we keep (dicts,
     * tensors, opaque objects) that state is not needed, so it is dropped */
    return rc;
}

static int step(pk_ctx *c, int *stop)
{
    c->op_at = c->pos;
    int rc = need(c, 1);
    if (rc) return rc;
    unsigned char op = c->buf[c->pos++];
    uint64_t u;
    pk_value *v;
    switch (op) {
    case 0x80: /* PROTO */
        if ((rc = read_uint(c, 1, &u))) return rc;
        if (u > 5) return bad(c, LM_EUNSUPPORTED, "pickle protocol %llu (0-5 supported)", (unsigned long long)u);
        return 0;
    case 0x95: /* FRAME */
        if ((rc = read_uint(c, 8, &u))) return rc;
        if (u > c->len - c->pos) return bad(c, LM_EINPUT, "truncated: frame of %llu bytes", (unsigned long long)u);
        return 0;
    case '.': /* STOP */
        if ((rc = top(c, &v))) return rc;
        *stop = 1;
        return 0;
    case '(': /* MARK */
        if (c->n_marks >= PK_MAX_DEPTH) return bad(c, LM_EINPUT, "MARKs nested deeper than %d levels", PK_MAX_DEPTH);
        if (grow((void **)&c->marks, &c->cap_marks, c->n_marks + 1, sizeof *c->marks)) return oom(c);
        c->marks[c->n_marks++] = c->sp;
        return 0;
    case '0': { /* POP: with an empty frame, pops the MARK (as CPython does) */
        size_t start = 0;
        if (c->sp > frame_base(c)) { c->sp--; return 0; }
        return pop_mark(c, &start);
    }
    case '1': { /* POP_MARK */
        size_t start = 0;
        if ((rc = pop_mark(c, &start))) return rc;
        c->sp = start;
        return 0;
    }
    case '2': /* DUP */
        if ((rc = top(c, &v))) return rc;
        return push(c, v);
    case 'F': return op_text_float(c);
    case 'G': /* BINFLOAT: big-endian double */
        if ((rc = need(c, 8))) return rc;
        u = 0;
        for (int k = 0; k < 8; k++) u = (u << 8) | c->buf[c->pos + k];
        c->pos += 8;
        if (!(v = new_value(c, PK_FLOAT))) return oom(c);
        memcpy(&v->f, &u, 8);
        return push(c, v);
    case 'I': return op_text_int(c, 0);
    case 'L': return op_text_int(c, 1);
    case 'J': case 'K': case 'M': /* BININT, BININT1, BININT2 */
        if ((rc = read_uint(c, op == 'J' ? 4 : op == 'K' ? 1 : 2, &u))) return rc;
        if (!(v = new_value(c, PK_INT))) return oom(c);
        v->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
        return push(c, v);
    case 0x8a: return op_long_bytes(c, 1);
    case 0x8b: return op_long_bytes(c, 4);
    case 'N': return push(c, new_value(c, PK_NONE));
    case 0x88: case 0x89: /* NEWTRUE, NEWFALSE */
        if (!(v = new_value(c, PK_BOOL))) return oom(c);
        v->i = op == 0x88;
        return push(c, v);
    case 'S': case 'V': { /* STRING (quoted), UNICODE (raw-unicode-escape): kept as text */
        const char *s;
        size_t n;
        if ((rc = read_line(c, &s, &n))) return rc;
        if (op == 'S' && n >= 2 && (s[0] == '\'' || s[0] == '"') && s[n - 1] == s[0]) s++, n -= 2;
        return push(c, new_str(c, PK_STR, s, n));
    }
    case 'T': return op_counted(c, 4, 1, PK_STR);    /* BINSTRING */
    case 'U': return op_counted(c, 1, 0, PK_STR);    /* SHORT_BINSTRING */
    case 'X': return op_counted(c, 4, 0, PK_STR);    /* BINUNICODE */
    case 0x8c: return op_counted(c, 1, 0, PK_STR);   /* SHORT_BINUNICODE */
    case 0x8d: return op_counted(c, 8, 0, PK_STR);   /* BINUNICODE8 */
    case 'B': return op_counted(c, 4, 0, PK_BYTES);  /* BINBYTES */
    case 'C': return op_counted(c, 1, 0, PK_BYTES);  /* SHORT_BINBYTES */
    case 0x8e: return op_counted(c, 8, 0, PK_BYTES); /* BINBYTES8 */
    case 0x96: return op_counted(c, 8, 0, PK_BYTES); /* BYTEARRAY8 */
    case 0x97: return bad(c, LM_EUNSUPPORTED, "out-of-band buffer (NEXT_BUFFER)");
    case 0x98: return top(c, &v);                    /* READONLY_BUFFER: no-op for us */
    case ')': return push(c, new_value(c, PK_TUPLE));
    case 't': return op_collect(c, PK_TUPLE);
    case 0x85: return op_tuple_n(c, 1);
    case 0x86: return op_tuple_n(c, 2);
    case 0x87: return op_tuple_n(c, 3);
    case ']': return push(c, new_value(c, PK_LIST));
    case 'l': return op_collect(c, PK_LIST);
    case 'a': return op_add_one(c, 0);
    case 'e': return op_add_marked(c, 0);
    case '}': return push(c, new_value(c, PK_DICT));
    case 'd': return op_collect(c, PK_DICT);
    case 's': return op_add_one(c, 1);
    case 'u': return op_add_marked(c, 1);
    case 0x8f: return push(c, new_value(c, PK_LIST)); /* EMPTY_SET: read as a list */
    case 0x90: return op_add_marked(c, 0);            /* ADDITEMS */
    case 0x91: return op_collect(c, PK_LIST);         /* FROZENSET */
    case 'c': return op_global(c);
    case 0x93: return op_stack_global(c);
    case 'R': return op_reduce(c);
    case 'b': return op_build(c);
    case 'i': return op_inst(c, 1);
    case 'o': return op_inst(c, 0);
    case 0x81: return op_newobj(c, 0);
    case 0x92: return op_newobj(c, 1);
    case 'P': { /* PERSID: text id */
        const char *s;
        size_t n;
        if ((rc = read_line(c, &s, &n))) return rc;
        pk_value *id = new_str(c, PK_STR, s, n);
        return id ? new_persid(c, id) : oom(c);
    }
    case 'Q': { /* BINPERSID */
        pk_value *id;
        if ((rc = pop(c, &id))) return rc;
        return new_persid(c, id);
    }
    case 'g': return (rc = text_index(c, &u)) ? rc : memo_get(c, u);
    case 'h': return (rc = read_uint(c, 1, &u)) ? rc : memo_get(c, u);
    case 'j': return (rc = read_uint(c, 4, &u)) ? rc : memo_get(c, u);
    case 'p': return (rc = text_index(c, &u)) ? rc : memo_put(c, u);
    case 'q': return (rc = read_uint(c, 1, &u)) ? rc : memo_put(c, u);
    case 'r': return (rc = read_uint(c, 4, &u)) ? rc : memo_put(c, u);
    case 0x94: return memo_put(c, c->n_memo);         /* MEMOIZE */
    case 0x82: case 0x83: case 0x84:
        return bad(c, LM_EUNSUPPORTED, "extension registry opcode 0x%02x", op);
    default:
        return bad(c, LM_EINPUT, "unknown opcode 0x%02x", op);
    }
}

int pk_load(pk_ctx **out, const unsigned char *buf, size_t len, const char *path,
            int64_t base_offset, int skip_unknown, pk_value **root, size_t *used, lm_err *err)
{
    pk_ctx *c = calloc(1, sizeof *c);
    *out = c;
    *root = NULL;
    if (!c) return lm_err_set(err, LM_ENOMEM, path, NULL, LM_ERR_NO_OFFSET, "out of memory");
    c->buf = buf;
    c->len = len;
    c->path = path;
    c->base = base_offset;
    c->skip_unknown = skip_unknown;
    c->err = err;
    int stop = 0, rc = 0;
    while (!stop && !rc) rc = step(c, &stop);
    if (rc) return rc;
    *root = c->stack[c->sp - 1];
    if (used) *used = c->pos;
    /* the stack and memo are no longer needed; values stay until pk_free */
    free(c->stack); c->stack = NULL;
    free(c->memo); c->memo = NULL;
    free(c->marks); c->marks = NULL;
    return 0;
}

void pk_free(pk_ctx *c)
{
    if (!c) return;
    for (size_t k = 0; k < c->n_all; k++) {
        free(c->all[k]->s);
        free(c->all[k]->items);
        free(c->all[k]->t);
        free(c->all[k]);
    }
    free(c->all);
    free(c->persids);
    free(c->stack);
    free(c->memo);
    free(c->marks);
    free(c);
}

lm_dtype pk_storage_dtype(const char *name)
{
    for (size_t k = 0; k < sizeof k_whitelist / sizeof k_whitelist[0]; k++) {
        if (k_whitelist[k].kind != W_STORAGE) continue;
        size_t ml = strlen(k_whitelist[k].module);
        if (!strncmp(name, k_whitelist[k].module, ml) && name[ml] == '.' && !strcmp(name + ml + 1, k_whitelist[k].name))
            return k_whitelist[k].dt;
    }
    return LM_DT_INVALID;
}

pk_value *pk_dict_get(const pk_value *d, const char *key)
{
    if (!d || d->kind != PK_DICT) return NULL;
    for (size_t k = 0; k + 1 < d->n; k += 2)
        if (d->items[k]->kind == PK_STR && !strcmp(d->items[k]->s, key)) return d->items[k + 1];
    return NULL;
}

size_t pk_persid_count(const pk_ctx *c) { return c ? c->n_persids : 0; }
pk_value *pk_persid(const pk_ctx *c, size_t i) { return i < c->n_persids ? c->persids[i] : NULL; }
size_t pk_value_count(const pk_ctx *c) { return c ? c->n_all : 0; }
