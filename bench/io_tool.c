/* bench/io_tool.c — drives the library's I/O paths for bench/io.sh.
 *   io_tool gen OUT MB      a safetensors file of MB MiB: F16 tensors of 16 MiB, pseudo-random bytes
 *   io_tool hash FILE       full-file SHA-256 through lm_hash_file (prints it)
 *   io_tool copy IN OUT     copy-through: open IN as a tensor source, write every tensor through
 *                           lm_writer (header first, data streamed, fsync, rename), the bytes
 *                           moved by lm_writer_copy_from (copy_file_range, as cp does)
 *   io_tool copy-mmap IN OUT  the same, the bytes passed from the mapping to lm_writer_write */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "libmerge/cli.h"
#include "libmerge/hash.h"
#include "libmerge/source.h"
#include "libmerge/writer.h"

static int gen(const char *out, long mb)
{
    const int64_t per = 8 << 20;   /* elements: 16 MiB of F16 */
    size_t n = (size_t)(mb / 16);
    lm_wtensor *t = calloc(n, sizeof *t);
    char (*names)[32] = calloc(n, 32);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 32, "layer.%04zu.weight", i);
        t[i].name = names[i];
        t[i].dtype = LM_DT_F16;
        t[i].ndim = 2;
        t[i].shape[0] = per / 4096;
        t[i].shape[1] = 4096;
    }
    lm_writer *w;
    lm_err err;
    lm_kv kv = { "format", "pt" };
    if (lm_writer_open(&w, out, t, n, &kv, 1, NULL, &err)) return lm_cli_fail("io_tool", &err);
    uint64_t *buf = malloc((size_t)per * 2);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < (size_t)per / 4; j++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; buf[j] = x & 0x3bff3bff3bff3bffull; }
        if (lm_writer_write(w, buf, (size_t)per * 2, &err)) { lm_writer_abort(w); return lm_cli_fail("io_tool", &err); }
    }
    free(buf);
    if (lm_writer_commit(w, &err)) return lm_cli_fail("io_tool", &err);
    free(t);
    free(names);
    return 0;
}

static int copy(const char *in, const char *out, int kernel)
{
    lm_source *s;
    lm_err err;
    if (lm_source_open(&s, in, NULL, &err)) return lm_cli_fail("io_tool", &err);
    size_t n = lm_source_count(s), nm = lm_source_meta_count(s);
    lm_wtensor *t = calloc(n + 1, sizeof *t);
    lm_kv *kv = calloc(nm + 1, sizeof *kv);
    for (size_t i = 0; i < n; i++) {
        const lm_entry *e = lm_source_entry(s, i);
        t[i].name = e->name; t[i].dtype = e->dtype; t[i].ndim = e->ndim;
        memcpy(t[i].shape, e->shape, sizeof t[i].shape);
    }
    for (size_t i = 0; i < nm; i++) { kv[i].key = lm_source_meta_key(s, i); kv[i].value = lm_source_meta_value(s, i); }
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.inputs = &in;
    o.n_inputs = 1;
    lm_writer *w;
    int rc = lm_writer_open(&w, out, t, n, kv, nm, &o, &err);
    for (size_t k = 0; !rc && k < n; k++) {
        size_t i = lm_writer_tensor_index(w, k);
        const lm_entry *e = lm_source_entry(s, i);
        rc = kernel ? lm_writer_copy_from(w, in, e->offset, e->nbytes, &err)
                    : lm_writer_write(w, lm_source_raw(s, i), e->nbytes, &err);
    }
    if (!rc) rc = lm_writer_commit(w, &err);
    else lm_writer_abort(w);
    lm_source_close(s);
    free(t);
    free(kv);
    return rc ? lm_cli_fail("io_tool", &err) : 0;
}

int main(int argc, char **argv)
{
    lm_atomic_install_signal_handlers();
    if (argc == 4 && !strcmp(argv[1], "gen")) return gen(argv[2], atol(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "hash")) {
        lm_file_hashes h;
        lm_err err;
        if (lm_hash_file(argv[2], LM_HASH_SHA256, &h, &err)) return lm_cli_fail("io_tool", &err);
        printf("%s  %s\n", h.sha256, argv[2]);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "copy")) return copy(argv[2], argv[3], 1);
    if (argc == 4 && !strcmp(argv[1], "copy-mmap")) return copy(argv[2], argv[3], 0);
    fprintf(stderr, "usage: io_tool gen OUT MB | hash FILE | copy IN OUT | copy-mmap IN OUT\n");
    return 2;
}
