/* model-convert — any model file (.ckpt/.pt/.bin/.safetensors) to safetensors,
 * with dtype change, pruning, EMA weights and layout change (model-convert(1)). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>
#include "libmerge/cli.h"
#include "libmerge/convert.h"
#include "libmerge/writer.h"

#define PROG "model-convert"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " IN -o|--output OUT.safetensors [--dtype keep|fp16|bf16|fp32] [--prune]\n"
            "                     [--use-ema] [--layout ldm|diffusers [--standalone-vae]] [--skip-unknown] [--json]\n"
            "Converts IN (safetensors, or a PyTorch .ckpt/.pt/.bin read without running its pickle)\n"
            "to safetensors. See model-convert(1).\n");
}

typedef struct ui {
    int json, progress;
    int last_pct, on_line;      /* progress: last percentage shown, a line is open */
    cJSON *overflows, *dropped;
} ui;

/* A warning or error must not be glued to an open "\rmodel-convert:  12%" line. */
static void end_progress_line(ui *u)
{
    if (u->on_line) fputc('\n', stderr);
    u->on_line = 0;
    u->last_pct = -1;
}

static void on_overflow(void *ctx, const char *name, int64_t count)
{
    ui *u = ctx;
    if (u->json) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "tensor", name);
        cJSON_AddNumberToObject(e, "count", (double)count);
        cJSON_AddItemToArray(u->overflows, e);
    } else {
        end_progress_line(u);
        fprintf(stderr, PROG ": warning: %s: %lld values overflowed to infinity in the down-cast\n", name, (long long)count);
    }
}

static void on_drop(void *ctx, const char *name, const char *why)
{
    ui *u = ctx;
    if (u->json) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "tensor", name);
        cJSON_AddStringToObject(e, "why", why);
        cJSON_AddItemToArray(u->dropped, e);
    }
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    ui *u = ctx;
    if (!u->progress) return;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct == u->last_pct) return;     /* one write per percent, not per tensor */
    fprintf(stderr, "\r" PROG ": %3d%%", pct);
    u->last_pct = pct;
    u->on_line = 1;
    if (done == total) end_progress_line(u);
}

static void print_json(ui *u, const char *out, const lm_convert_report *r, const lm_err *err, int rc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", rc == 0);
    cJSON_AddStringToObject(o, "output", out);
    if (rc) lm_cli_json_error(o, err);
    cJSON_AddStringToObject(o, "source_sha256", r->source_sha256);
    cJSON_AddNumberToObject(o, "tensors_in", (double)r->n_in);
    cJSON_AddNumberToObject(o, "tensors_out", (double)r->n_out);
    cJSON_AddNumberToObject(o, "converted", (double)r->n_converted);
    cJSON_AddNumberToObject(o, "pruned", (double)r->n_pruned);
    cJSON_AddNumberToObject(o, "ema_used", (double)r->n_ema);
    cJSON_AddNumberToObject(o, "unmapped", (double)r->n_unmapped);
    if (r->to_layout[0]) {
        cJSON_AddStringToObject(o, "from_layout", r->from_layout);
        cJSON_AddStringToObject(o, "to_layout", r->to_layout);
    }
    cJSON_AddNumberToObject(o, "bytes", (double)r->bytes_out);
    cJSON_AddNumberToObject(o, "overflow_total", (double)r->n_overflow_values);
    cJSON_AddItemToObject(o, "overflows", u->overflows);
    cJSON_AddItemToObject(o, "dropped", u->dropped);
    char *s = cJSON_Print(o);
    if (s) puts(s);
    free(s);
    cJSON_Delete(o);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'o' }, { "dtype", required_argument, NULL, 'd' },
        { "prune", no_argument, NULL, 'p' }, { "use-ema", no_argument, NULL, 'e' },
        { "layout", required_argument, NULL, 'L' }, { "skip-unknown", no_argument, NULL, 's' },
        { "standalone-vae", no_argument, NULL, 'V' },
        { "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 }
    };
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    ui u = { 0 };
    u.last_pct = -1;
    const char *out = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'd':
            if (lm_cli_parse_dtype(optarg, &o.dtype)) return lm_cli_usage_error(PROG, "--dtype %s: expected keep, fp16, bf16 or fp32", optarg);
            break;
        case 'p': o.prune = 1; break;
        case 'e': o.use_ema = 1; break;
        case 'L':
            if (!strcmp(optarg, "ldm")) o.layout = LM_LAYOUT_LDM;
            else if (!strcmp(optarg, "diffusers")) o.layout = LM_LAYOUT_DIFFUSERS;
            else return lm_cli_usage_error(PROG, "--layout %s: expected ldm or diffusers", optarg);
            break;
        case 's': o.skip_unknown = 1; break;
        case 'V': o.standalone_vae = 1; break;
        case 'j': u.json = 1; break;
        case 'h': usage(stdout); return LM_EXIT_OK;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        if (optind == argc) return lm_cli_usage_error(PROG, "no input file (see --help)");
        return lm_cli_usage_error(PROG, "one input file only, got %d: %s %s%s (see --help)", argc - optind,
                                  argv[optind], argv[optind + 1], argc - optind > 2 ? " …" : "");
    }
    if (!out) return lm_cli_usage_error(PROG, "no output: give -o OUT.safetensors");
    const char *in = argv[optind];
    lm_atomic_install_signal_handlers();
    u.progress = !u.json && lm_cli_progress_enabled();
    u.overflows = cJSON_CreateArray();
    u.dropped = cJSON_CreateArray();
    o.on_overflow = on_overflow;
    o.on_drop = on_drop;
    o.on_progress = on_progress;
    o.ctx = &u;
    lm_convert_report r;
    lm_err err;
    lm_err_clear(&err);
    int rc = lm_model_convert(in, out, &o, &r, &err);
    end_progress_line(&u);
    if (u.json) {
        print_json(&u, out, &r, &err, rc);
        if (rc) lm_cli_fail(PROG, &err);
        return lm_cli_stdout_status(PROG, rc ? lm_exit_status(rc) : LM_EXIT_OK);
    }
    cJSON_Delete(u.overflows);
    cJSON_Delete(u.dropped);
    if (rc) return lm_cli_fail(PROG, &err);
    printf("%s: %zu tensors (%zu converted", out, r.n_out, r.n_converted);
    if (r.n_pruned) printf(", %zu pruned", r.n_pruned);
    if (r.n_ema) printf(", %zu from EMA", r.n_ema);
    if (r.to_layout[0]) printf(", layout %s -> %s", r.from_layout, r.to_layout);
    if (r.n_unmapped && o.standalone_vae) printf(", %zu not part of the VAE left out", r.n_unmapped);
    else if (r.n_unmapped) printf(", %zu without a %s name left out", r.n_unmapped, r.to_layout);
    if (r.n_overflow_tensors) printf(", %zu tensors overflowed", r.n_overflow_tensors);
    printf("), source sha256 %s\n", r.source_sha256);
    return lm_cli_stdout_status(PROG, LM_EXIT_OK);
}
