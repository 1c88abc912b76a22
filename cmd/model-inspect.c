/* model-inspect — what a model file holds: format, tensor and parameter
 * counts, dtype histogram, sizes, metadata, what it is (LoRA, checkpoint,
 * unknown), hashes, keys (model-inspect(1)). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>
#include "libmerge/cli.h"
#include "libmerge/hash.h"
#include "libmerge/inspect.h"
#include "libmerge/source.h"

#define PROG "model-inspect"
#define META_SHOW 160   /* metadata values longer than this are cut in text output */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " [--hash] [--keys] [--json] [-h|--help] FILE...\n"
            "Prints each model file's format, tensor and parameter counts, dtypes, sizes,\n"
            "metadata and kind (LoRA and its convention, checkpoint and its architecture,\n"
            "or unknown).\n"
            "  --hash   file hashes: SHA-256, AutoV2, AutoV1, addnet, ModelSpec\n"
            "           (with --keys: XXH3-64 of each tensor)\n"
            "  --keys   one line per tensor: NAME DTYPE SHAPE, instead of the summary\n"
            "  --json   one JSON array, an object per file\n"
            "See model-inspect(1).\n");
}

static void shape_str(const lm_entry *e, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < e->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ",%lld" : "%lld", (long long)e->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Print text from a file on one line: tensor names and metadata keys and
 * values may hold newlines, tabs or terminal escape sequences, which would
 * break the one-line-per-entry output (--keys is tab-separated) or drive the
 * terminal. At most max characters are shown (0: all). */
static void print_escaped(const char *v, size_t max)
{
    size_t shown = 0;
    for (const char *p = v; *p && (!max || shown < max); p++, shown++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
}

/* Metadata values may hold newlines, JSON, base64 thumbnails: one line, cut. */
static void print_meta_value(const char *v)
{
    size_t len = strlen(v);
    print_escaped(v, META_SHOW);
    if (len > META_SHOW) printf("… (%zu bytes)", len);
    putchar('\n');
}

static void print_kind(const lm_inspect *in)
{
    if (in->kind == LM_KIND_LORA) {
        printf("kind:        lora (%s convention)", lm_lora_convention_name(in->convention));
        if (in->algo[0]) {
            printf(", algo %s, %zu module%s (unet %zu, te %zu, te2 %zu)", in->algo, in->modules, in->modules == 1 ? "" : "s",
                   in->modules_by_component[LM_COMP_UNET], in->modules_by_component[LM_COMP_TE],
                   in->modules_by_component[LM_COMP_TE2]);
            if (in->rank_max) {
                if (in->rank_min == in->rank_max) printf(", rank %d", in->rank_max);
                else printf(", rank %d..%d", in->rank_min, in->rank_max);
            }
            if (in->ignored) printf(", %zu tensors ignored", in->ignored);
            putchar('\n');
        } else {
            printf("\n             (%s)\n", in->reason);
        }
    } else if (in->kind == LM_KIND_CHECKPOINT) {
        const lm_model_info *m = &in->model;
        printf("kind:        checkpoint, %s, %s layout, parts:%s%s%s%s\n", lm_arch_name(m->arch),
               lm_layout_name(m->layout), m->has_unet ? " unet" : "", m->has_vae ? " vae" : "",
               m->has_te ? " text_encoder" : "", m->has_te2 ? " text_encoder_2" : "");
    } else {
        printf("kind:        unknown (%s)\n", in->reason);
    }
}

static void print_text(const lm_source *s, const lm_inspect *in, const lm_file_hashes *h)
{
    print_escaped(lm_source_path(s), 0);
    putchar('\n');
    printf("format:      %s\n", lm_format_name(in->format));
    print_kind(in);
    printf("tensors:     %zu\n", in->tensors);
    printf("parameters:  %lld\n", (long long)in->params);
    printf("dtypes:     ");
    int first = 1;
    for (int t = 1; t < LM_DT_COUNT; t++) {
        const lm_dtype_count *c = &in->by_dtype[t];
        if (!c->tensors) continue;
        printf("%s %s %lld tensors %lld parameters", first ? "" : ",", lm_dtype_name((lm_dtype)t),
               (long long)c->tensors, (long long)c->params);
        first = 0;
    }
    printf("%s\n", first ? " none" : "");
    printf("bytes:       %llu file, %llu tensor data", (unsigned long long)in->file_bytes,
           (unsigned long long)in->data_bytes);
    if (in->format == LM_FMT_SAFETENSORS) printf(", %llu header", (unsigned long long)in->header_bytes);
    putchar('\n');
    size_t nm = lm_source_meta_count(s);
    printf("metadata:    %zu %s\n", nm, nm == 1 ? "entry" : "entries");
    for (size_t i = 0; i < nm; i++) {
        fputs("  ", stdout);
        print_escaped(lm_source_meta_key(s, i), 0);
        fputs(": ", stdout);
        print_meta_value(lm_source_meta_value(s, i));
    }
    if (h) {
        printf("sha256:      %s\n", h->sha256);
        printf("autov2:      %s\n", h->autov2);
        printf("autov1:      %s\n", h->autov1);
        if (h->have & LM_HASH_ADDNET) {
            printf("addnet:      %s (short %s)\n", h->addnet, h->addnet_short);
            printf("modelspec:   %s\n", h->modelspec);
        }
    }
}

static int print_keys(const lm_source *s, int with_hash, int many, lm_err *err)
{
    if (many) {
        fputs("==> ", stdout);
        print_escaped(lm_source_path(s), 0);
        fputs(" <==\n", stdout);
    }
    for (size_t i = 0; i < lm_source_count(s); i++) {
        const lm_entry *e = lm_source_entry(s, i);
        char shape[LM_MAX_DIMS * 24 + 4];
        shape_str(e, shape, sizeof shape);
        if (with_hash) {
            uint64_t x;
            int rc = lm_hash_tensor_xxh3(s, i, &x, err);
            if (rc) return rc;
            print_escaped(e->name, 0);
            printf("\t%s\t%s\t%016llx\n", lm_dtype_name(e->dtype), shape, (unsigned long long)x);
        } else {
            print_escaped(e->name, 0);
            printf("\t%s\t%s\n", lm_dtype_name(e->dtype), shape);
        }
    }
    return 0;
}

static cJSON *json_file(const lm_source *s, const lm_inspect *in, const lm_file_hashes *h,
                        int keys, int key_hash, lm_err *err, int *rc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", lm_source_path(s));
    cJSON_AddStringToObject(o, "format", lm_format_name(in->format));
    cJSON_AddStringToObject(o, "kind", lm_kind_name(in->kind));
    cJSON_AddStringToObject(o, "reason", in->reason);
    if (in->kind == LM_KIND_LORA) {
        cJSON *l = cJSON_AddObjectToObject(o, "lora");
        cJSON_AddStringToObject(l, "convention", lm_lora_convention_name(in->convention));
        cJSON_AddStringToObject(l, "algo", in->algo);
        cJSON_AddNumberToObject(l, "modules", (double)in->modules);
        cJSON_AddNumberToObject(l, "unet_modules", (double)in->modules_by_component[LM_COMP_UNET]);
        cJSON_AddNumberToObject(l, "te_modules", (double)in->modules_by_component[LM_COMP_TE]);
        cJSON_AddNumberToObject(l, "te2_modules", (double)in->modules_by_component[LM_COMP_TE2]);
        cJSON_AddNumberToObject(l, "rank_min", in->rank_min);
        cJSON_AddNumberToObject(l, "rank_max", in->rank_max);
        cJSON_AddNumberToObject(l, "ignored", (double)in->ignored);
    } else if (in->kind == LM_KIND_CHECKPOINT) {
        const lm_model_info *m = &in->model;
        cJSON *c = cJSON_AddObjectToObject(o, "checkpoint");
        cJSON_AddStringToObject(c, "arch", lm_arch_name(m->arch));
        cJSON_AddStringToObject(c, "layout", lm_layout_name(m->layout));
        cJSON_AddBoolToObject(c, "unet", m->has_unet);
        cJSON_AddBoolToObject(c, "vae", m->has_vae);
        cJSON_AddBoolToObject(c, "text_encoder", m->has_te);
        cJSON_AddBoolToObject(c, "text_encoder_2", m->has_te2);
        cJSON_AddNumberToObject(c, "context_dim", (double)m->context_dim);
        cJSON_AddNumberToObject(c, "model_channels", (double)m->model_channels);
    }
    cJSON_AddNumberToObject(o, "tensors", (double)in->tensors);
    cJSON_AddNumberToObject(o, "parameters", (double)in->params);
    cJSON_AddNumberToObject(o, "file_bytes", (double)in->file_bytes);
    cJSON_AddNumberToObject(o, "data_bytes", (double)in->data_bytes);
    cJSON_AddNumberToObject(o, "header_bytes", (double)in->header_bytes);
    cJSON *d = cJSON_AddObjectToObject(o, "dtypes");
    for (int t = 1; t < LM_DT_COUNT; t++) {
        const lm_dtype_count *c = &in->by_dtype[t];
        if (!c->tensors) continue;
        cJSON *x = cJSON_AddObjectToObject(d, lm_dtype_name((lm_dtype)t));
        cJSON_AddNumberToObject(x, "tensors", (double)c->tensors);
        cJSON_AddNumberToObject(x, "parameters", (double)c->params);
        cJSON_AddNumberToObject(x, "bytes", (double)c->bytes);
    }
    cJSON *m = cJSON_AddObjectToObject(o, "metadata");
    for (size_t i = 0; i < lm_source_meta_count(s); i++)
        cJSON_AddStringToObject(m, lm_source_meta_key(s, i), lm_source_meta_value(s, i));
    if (h) {
        cJSON *x = cJSON_AddObjectToObject(o, "hashes");
        cJSON_AddStringToObject(x, "sha256", h->sha256);
        cJSON_AddStringToObject(x, "autov2", h->autov2);
        cJSON_AddStringToObject(x, "autov1", h->autov1);
        if (h->have & LM_HASH_ADDNET) {
            cJSON_AddStringToObject(x, "addnet", h->addnet);
            cJSON_AddStringToObject(x, "addnet_short", h->addnet_short);
            cJSON_AddStringToObject(x, "modelspec", h->modelspec);
        }
    }
    if (keys) {
        cJSON *a = cJSON_AddArrayToObject(o, "keys");
        for (size_t i = 0; i < lm_source_count(s); i++) {
            const lm_entry *e = lm_source_entry(s, i);
            cJSON *k = cJSON_CreateObject();
            cJSON_AddStringToObject(k, "name", e->name);
            cJSON_AddStringToObject(k, "dtype", lm_dtype_name(e->dtype));
            cJSON *sh = cJSON_AddArrayToObject(k, "shape");
            for (int j = 0; j < e->ndim; j++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[j]));
            if (key_hash) {
                uint64_t xh;
                if ((*rc = lm_hash_tensor_xxh3(s, i, &xh, err))) { cJSON_Delete(k); break; }
                char hex[17];
                snprintf(hex, sizeof hex, "%016llx", (unsigned long long)xh);
                cJSON_AddStringToObject(k, "xxh3", hex);
            }
            cJSON_AddItemToArray(a, k);
        }
    }
    return o;
}

/* Severity order for the final exit status when several files fail. */
static int worse(int a, int b)
{
    static const int order[] = { LM_EXIT_OK, LM_EXIT_VERIFY, LM_EXIT_INPUT, LM_EXIT_IO, LM_EXIT_INTERNAL, LM_EXIT_USAGE };
    int ra = 0, rb = 0;
    for (int i = 0; i < 6; i++) { if (order[i] == a) ra = i; if (order[i] == b) rb = i; }
    return rb > ra ? b : a;
}

int main(int argc, char **argv)
{
    int want_hash = 0, want_keys = 0, want_json = 0;
    static const struct option opts[] = {
        { "hash", no_argument, NULL, 'H' },
        { "keys", no_argument, NULL, 'k' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'H': want_hash = 1; break;
        case 'k': want_keys = 1; break;
        case 'j': want_json = 1; break;
        case 'h': usage(stdout); return LM_EXIT_OK;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (optind >= argc) return lm_cli_usage_error(PROG, "no input file (see --help)");
    int status = LM_EXIT_OK, many = argc - optind > 1;
    cJSON *all = want_json ? cJSON_CreateArray() : NULL;
    for (int a = optind; a < argc; a++) {
        const char *path = argv[a];
        lm_err err;
        lm_err_clear(&err);
        lm_source *s = NULL;
        int rc = lm_source_open(&s, path, NULL, &err);
        lm_inspect in;
        lm_file_hashes h;
        int have_h = 0;
        if (!rc) rc = lm_inspect_source(s, &in, &err);
        if (!rc && want_hash && !(want_keys && !want_json)) {
            rc = lm_hash_file(path, LM_HASH_ALL, &h, &err);
            have_h = !rc;
        }
        if (!rc) {
            if (want_json) {
                cJSON *o = json_file(s, &in, have_h ? &h : NULL, want_keys, want_hash && want_keys, &err, &rc);
                cJSON_AddItemToArray(all, o);
            } else if (want_keys) {
                rc = print_keys(s, want_hash, many, &err);
            } else {
                if (a > optind) putchar('\n');
                print_text(s, &in, have_h ? &h : NULL);
            }
        }
        if (rc) {
            status = worse(status, lm_cli_fail(PROG, &err));
            if (want_json) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "path", path);
                lm_cli_json_error(o, &err);
                cJSON_AddItemToArray(all, o);
            }
        }
        lm_source_close(s);
        lm_cli_stdout_flush();
    }
    if (all) {
        char *txt = cJSON_Print(all);
        if (txt) { puts(txt); free(txt); }
        else status = worse(status, LM_EXIT_INTERNAL);
        cJSON_Delete(all);
    }
    return lm_cli_stdout_status(PROG, status);
}
