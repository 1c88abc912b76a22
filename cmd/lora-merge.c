/* lora-merge — combine LoRAs into one (exact or SVD re-rank), or extract a LoRA from two
 * checkpoints (lora-merge(1)). */
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>
#include "libmerge/cli.h"
#include "libmerge/merge.h"
#include "libmerge/writer.h"

#define PROG "lora-merge"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " A[:λ] B[:λ] … -o OUT (--exact | --rank R) [--format kohya|peft]\n"
            "                  [--dtype keep|fp16|bf16|fp32] [--base CKPT] [--threads N] [--json]\n"
            "       " PROG " --extract BASE TUNED --rank R -o OUT [--format kohya|peft] [--dtype …]\n"
            "Writes one LoRA whose ΔW is Σ λ·ΔW (λ defaults to 1), or a LoRA of TUNED − BASE.\n"
            "See lora-merge(1).\n");
}

static void print_json(const char *out, const lm_lmerge_report *r, int ok, const lm_err *err, int rank, const char *warning)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", ok);
    cJSON_AddStringToObject(o, "output", out);
    if (!ok) {
        char buf[1400];
        cJSON_AddStringToObject(o, "error", lm_err_format(err, buf, sizeof buf));
    }
    cJSON_AddNumberToObject(o, "rank", rank);
    cJSON *s = cJSON_AddArrayToObject(o, "input_sha256");
    for (size_t i = 0; i < r->n_inputs; i++) cJSON_AddItemToArray(s, cJSON_CreateString(r->input_sha256[i]));
    cJSON_AddNumberToObject(o, "modules_written", (double)r->n_modules);
    cJSON_AddNumberToObject(o, "max_rel_error", r->max_rel_error);
    cJSON_AddNumberToObject(o, "mean_rel_error", r->mean_rel_error);
    cJSON_AddNumberToObject(o, "min_energy", r->min_energy);
    cJSON_AddNumberToObject(o, "bytes", (double)r->bytes_written);
    cJSON_AddNumberToObject(o, "seconds", r->seconds_total);
    cJSON *a = cJSON_AddArrayToObject(o, "modules");
    for (size_t i = 0; i < r->n_modules; i++) {
        const lm_lmerge_module *m = &r->modules[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", m->name);
        cJSON_AddNumberToObject(e, "rank", m->rank);
        cJSON_AddNumberToObject(e, "out", (double)m->out);
        cJSON_AddNumberToObject(e, "in", (double)m->in);
        cJSON_AddNumberToObject(e, "kh", m->kh);
        cJSON_AddNumberToObject(e, "kw", m->kw);
        cJSON_AddNumberToObject(e, "sources", m->sources);
        cJSON_AddNumberToObject(e, "rel_error", m->rel_error);
        cJSON_AddNumberToObject(e, "energy", m->energy);
        cJSON_AddItemToArray(a, e);
    }
    cJSON *dr = cJSON_AddArrayToObject(o, "dropped");
    for (size_t i = 0; i < r->n_dropped; i++) cJSON_AddItemToArray(dr, cJSON_CreateString(r->dropped[i]));
    cJSON *w = cJSON_AddArrayToObject(o, "warnings");
    if (ok && warning) cJSON_AddItemToArray(w, cJSON_CreateString(warning));
    char *t = cJSON_Print(o);
    puts(t);
    free(t);
    cJSON_Delete(o);
}

static void print_human(const char *out, const lm_lmerge_report *r, int rank)
{
    size_t worst = 0;
    for (size_t i = 1; i < r->n_modules; i++) if (r->modules[i].rel_error > r->modules[worst].rel_error) worst = i;
    printf("%s: %zu modules, %.1f MB, %.2f s\n", out, r->n_modules, (double)r->bytes_written / 1e6, r->seconds_total);
    if (rank && r->n_modules) {
        printf("rank %d: relative Frobenius error mean %.3g, max %.3g (%s); energy kept min %.6f\n", rank,
               r->mean_rel_error, r->max_rel_error, r->modules[worst].name, r->min_energy);
        for (size_t i = 0; i < r->n_modules; i++)
            printf("  %-72s rank %3d  error %.3e  energy %.6f\n", r->modules[i].name, r->modules[i].rank,
                   r->modules[i].rel_error, r->modules[i].energy);
    } else if (r->n_modules) {
        printf("exact: ΔW = Σ λ·ΔW, ranks concatenated (alpha = rank, scale 1)\n");
    }
    if (r->n_dropped) {
        printf("dropped %zu modules whose Σ λ·ΔW is zero (the inputs cancel):", r->n_dropped);
        for (size_t i = 0; i < r->n_dropped && i < 5; i++) printf(" %s", r->dropped[i]);
        printf("%s\n", r->n_dropped > 5 ? " …" : "");
    }
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'o' }, { "exact", no_argument, NULL, 'x' },
        { "rank", required_argument, NULL, 'r' }, { "format", required_argument, NULL, 'f' },
        { "dtype", required_argument, NULL, 'd' }, { "base", required_argument, NULL, 'b' },
        { "threads", required_argument, NULL, 't' }, { "json", no_argument, NULL, 'j' },
        { "extract", no_argument, NULL, 'E' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 }
    };
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    const char *out = NULL;
    int json = 0, exact = 0, extract = 0, have_rank = 0, c;
    while ((c = getopt_long(argc, argv, "o:r:f:d:t:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'x': exact = 1; break;
        case 'r': {
            long v;
            if (lm_cli_parse_int(optarg, 1, 100000, &v)) return lm_cli_usage_error(PROG, "--rank must be an integer from 1 to 100000, not '%s'", optarg);
            o.rank = (int)v;
            have_rank = 1;
            break;
        }
        case 'f':
            if (!strcmp(optarg, "kohya")) o.format = LM_LFMT_KOHYA;
            else if (!strcmp(optarg, "peft")) o.format = LM_LFMT_PEFT;
            else return lm_cli_usage_error(PROG, "--format must be kohya or peft, not '%s'", optarg);
            break;
        case 'd': {
            if (lm_cli_parse_dtype(optarg, &o.out_dtype)) return lm_cli_usage_error(PROG, "--dtype must be keep, fp16, bf16 or fp32, not '%s'", optarg);
            break;
        }
        case 'b': o.base = optarg; break;
        case 't': {
            long v;
            if (lm_cli_parse_int(optarg, 0, 64, &v)) return lm_cli_usage_error(PROG, "--threads must be 0..64, not '%s'", optarg);
            o.threads = (int)v;
            break;
        }
        case 'j': json = 1; break;
        case 'E': extract = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (!out) return lm_cli_usage_error(PROG, "no output: give -o OUT");
    if (exact && have_rank) return lm_cli_usage_error(PROG, "--exact and --rank exclude each other");
    if (!extract && !exact && !have_rank) return lm_cli_usage_error(PROG, "give --exact or --rank R");
    if (extract && (!have_rank || argc - optind != 2))
        return lm_cli_usage_error(PROG, "--extract takes BASE TUNED and --rank R");
    if (!extract && argc - optind < 1) return lm_cli_usage_error(PROG, "no input LoRA");
    lm_atomic_install_signal_handlers();
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    if (!json && lm_cli_progress_enabled()) { o.progress = lm_cli_progress; o.progress_ctx = (void *)PROG; }
    lm_lmerge_report r;
    lm_err err;
    lm_err_clear(&err);
    int rc;
    if (extract) {
        rc = lm_lora_extract(argv[optind], argv[optind + 1], out, &o, &r, &err);
    } else {
        size_t n = (size_t)(argc - optind);
        lm_weighted *in = calloc(n, sizeof *in);
        char (*paths)[4096] = calloc(n, sizeof *paths);
        int bad = !in || !paths ? LM_EXIT_INTERNAL : 0;
        for (size_t i = 0; !bad && i < n; i++) {
            if (lm_parse_weighted(argv[optind + (int)i], paths[i], sizeof paths[i], &in[i].lambda))
                bad = lm_cli_usage_error(PROG, "bad LoRA argument '%s' (PATH[:λ], λ a finite number with |λ| <= 1000)", argv[optind + (int)i]);
            in[i].path = paths[i];
        }
        if (bad) { free(in); free(paths); return bad; }
        rc = lm_lora_merge(in, n, out, &o, &r, &err);
        free(in);
        free(paths);
    }
    /* an empty LoRA is written (a valid file), but never silently */
    const char *warning = NULL;
    if (!rc && r.n_modules == 0)
        warning = extract ? "BASE and TUNED have identical weights: the extracted LoRA has no modules"
                          : "every module's Σ λ·ΔW is zero: the merged LoRA has no modules";
    if (warning) fprintf(stderr, "%s: warning: %s\n", PROG, warning);
    if (json) print_json(out, &r, rc == 0, &err, o.rank, warning);
    else if (!rc) print_human(out, &r, o.rank);
    int status = rc ? lm_cli_fail(PROG, &err) : 0;
    lm_lmerge_report_free(&r);
    return status;
}
