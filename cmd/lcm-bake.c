/* lcm-bake — bake λ-weighted LoRAs into a checkpoint: W' = W + Σ λ_i ΔW_i (lcm-bake(1)). */
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>
#include "libmerge/cli.h"
#include "libmerge/merge.h"
#include "libmerge/writer.h"

#define PROG "lcm-bake"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " BASE -l|--lora LORA[:λ] [-l LORA[:λ] …] [--lcm LORA[:λ]] -o OUT\n"
            "               [--dtype keep|fp16|bf16|fp32] [--threads N] [--json]\n"
            "               [--allow-unmatched] [--fail-on-overflow] [--hash|--no-hash] [--title TEXT]\n"
            "Bakes each LoRA with weight λ (default 1; negative removes) into BASE and writes\n"
            "OUT as safetensors. See lcm-bake(1).\n");
}

/* One summary line: the total, then the first 5 tensors with a count (field: 0 overflow,
 * 1 nonfinite of lm_bake_overflow). */
static void print_counts(const char *head, const lm_bake_report *r, int64_t total, int field)
{
    size_t nt = 0, shown = 0;
    for (size_t i = 0; i < r->n_overflows; i++) nt += (field ? r->overflows[i].nonfinite : r->overflows[i].count) != 0;
    printf(head, (long long)total, nt);
    for (size_t i = 0; i < r->n_overflows && shown < 5; i++) {
        long long c = field ? r->overflows[i].nonfinite : r->overflows[i].count;
        if (c) { printf(" %s (%lld)", r->overflows[i].name, c); shown++; }
    }
    printf("%s\n", nt > 5 ? " …" : "");
}

static void print_json(const char *out, const lm_bake_report *r, int ok, const lm_err *err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", ok);
    cJSON_AddStringToObject(o, "output", out);
    if (!ok) {
        char buf[1400];
        cJSON_AddStringToObject(o, "error", lm_err_format(err, buf, sizeof buf));
    }
    cJSON_AddStringToObject(o, "base_sha256", r->base_sha256);
    cJSON_AddStringToObject(o, "arch", r->arch ? r->arch : "unknown");
    cJSON_AddStringToObject(o, "layout", r->layout ? r->layout : "unknown");
    cJSON *a = cJSON_AddArrayToObject(o, "loras");
    for (size_t i = 0; i < r->n_loras; i++) {
        const lm_bake_lora_report *l = &r->loras[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", l->path ? l->path : "");
        cJSON_AddStringToObject(e, "sha256", l->sha256);
        cJSON_AddNumberToObject(e, "lambda", l->lambda);
        cJSON_AddStringToObject(e, "role", l->role ? l->role : "lora");
        cJSON_AddStringToObject(e, "convention", l->convention ? l->convention : "unknown");
        cJSON_AddNumberToObject(e, "modules", (double)l->modules);
        cJSON_AddNumberToObject(e, "matched", (double)l->matched);
        cJSON_AddNumberToObject(e, "unmatched", (double)l->unmatched);
        cJSON_AddNumberToObject(e, "dora", (double)l->dora);
        cJSON_AddItemToArray(a, e);
    }
    cJSON_AddNumberToObject(o, "tensors", (double)r->tensors);
    cJSON_AddNumberToObject(o, "touched", (double)r->touched);
    cJSON_AddNumberToObject(o, "copied", (double)r->copied);
    cJSON_AddNumberToObject(o, "converted", (double)r->converted);
    cJSON_AddNumberToObject(o, "bytes", (double)r->bytes_written);
    cJSON_AddNumberToObject(o, "overflow_total", (double)r->overflow_total);
    cJSON_AddNumberToObject(o, "nonfinite_total", (double)r->nonfinite_total);
    cJSON *ov = cJSON_AddArrayToObject(o, "overflows");
    for (size_t i = 0; i < r->n_overflows; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "tensor", r->overflows[i].name);
        cJSON_AddNumberToObject(e, "count", (double)r->overflows[i].count);
        cJSON_AddNumberToObject(e, "nonfinite", (double)r->overflows[i].nonfinite);
        cJSON_AddItemToArray(ov, e);
    }
    if (r->out_sha256[0]) cJSON_AddStringToObject(o, "sha256_data", r->out_sha256);
    cJSON_AddNumberToObject(o, "seconds", r->seconds_total);
    cJSON *ph = cJSON_AddObjectToObject(o, "seconds_phase");   /* wall seconds per phase */
    cJSON_AddNumberToObject(ph, "plan", r->seconds_plan);
    cJSON_AddNumberToObject(ph, "pipeline", r->seconds_compute);
    cJSON_AddNumberToObject(ph, "base_hash_wait", r->seconds_hash);
    cJSON_AddNumberToObject(ph, "commit", r->seconds_commit);
    char *s = cJSON_Print(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
}

/* written = 0 when the bake failed after planning (--fail-on-overflow): the
 * report still says what overflowed, and that no output exists */
static void print_human(const char *base, const char *out, const lm_bake_report *r, int written)
{
    printf("base      %s (%s, %s layout) sha256 %.16s…\n", base, r->arch, r->layout, r->base_sha256);
    for (size_t i = 0; i < r->n_loras; i++) {
        const lm_bake_lora_report *l = &r->loras[i];
        printf("%-9s %s  λ = %g  %s, %zu modules, %zu baked", l->role, l->path, l->lambda,
               l->convention, l->modules, l->matched);
        if (l->unmatched) printf(", %zu unmatched (skipped)", l->unmatched);
        if (l->dora) printf(", %zu DoRA", l->dora);
        printf("\n");
    }
    if (written)
        printf("output    %s: %zu tensors, %zu updated, %zu copied, %zu converted, %.1f MB\n", out, r->tensors,
               r->touched, r->copied, r->converted, (double)r->bytes_written / 1e6);
    else
        printf("output    %s: not written\n", out);
    if (r->overflow_total) print_counts("overflow  %lld values in %zu tensors became ±Inf:", r, r->overflow_total, 0);
    if (r->nonfinite_total)
        print_counts("nonfinite %lld values in %zu tensors became NaN or ±Inf in fp32:", r, r->nonfinite_total, 1);
    printf("time      %.2f s\n", r->seconds_total);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "lora", required_argument, NULL, 'l' }, { "lcm", required_argument, NULL, 'L' },
        { "output", required_argument, NULL, 'o' }, { "dtype", required_argument, NULL, 'd' },
        { "threads", required_argument, NULL, 't' }, { "json", no_argument, NULL, 'j' },
        { "allow-unmatched", no_argument, NULL, 'u' }, { "fail-on-overflow", no_argument, NULL, 'F' },
        { "hash", no_argument, NULL, 'H' }, { "no-hash", no_argument, NULL, 'N' },
        { "title", required_argument, NULL, 'T' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 }
    };
    lm_bake_opts o = LM_BAKE_OPTS_INIT;
    o.hash_output = 1;          /* modelspec.hash_sha256 unless --no-hash */
    const char *out = NULL;
    int json = 0;
    lm_weighted *in = calloc((size_t)argc, sizeof *in);
    char (*paths)[4096] = calloc((size_t)argc, sizeof *paths);
    size_t n = 0;
    int status = 0;
    if (!in || !paths) { status = LM_EXIT_INTERNAL; goto finish; }
    int c;
    while ((c = getopt_long(argc, argv, "l:o:d:t:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': case 'L':
            if (lm_parse_weighted(optarg, paths[n], sizeof paths[n], &in[n].lambda))
                { status = lm_cli_usage_error(PROG, "bad LoRA argument '%s' (PATH[:λ], λ a finite number with |λ| <= 1000)", optarg); goto finish; }
            in[n].path = paths[n];
            in[n].role = c == 'L' ? "lcm" : "lora";
            n++;
            break;
        case 'o': out = optarg; break;
        case 'd': {
            if (lm_cli_parse_dtype(optarg, &o.out_dtype)) { status = lm_cli_usage_error(PROG, "--dtype must be keep, fp16, bf16 or fp32, not '%s'", optarg); goto finish; }
            break;
        }
        case 't': {
            long v;
            if (lm_cli_parse_int(optarg, 0, 64, &v)) { status = lm_cli_usage_error(PROG, "--threads must be 0..64, not '%s'", optarg); goto finish; }
            o.threads = (int)v;
            break;
        }
        case 'j': json = 1; break;
        case 'u': o.allow_unmatched = 1; break;
        case 'F': o.fail_on_overflow = 1; break;
        case 'H': o.hash_output = 1; break;
        case 'N': o.hash_output = 0; break;
        case 'T': o.title = optarg; break;
        case 'h': usage(stdout); goto finish;
        default: usage(stderr); status = LM_EXIT_USAGE; goto finish;
        }
    }
    if (optind != argc - 1) { usage(stderr); status = LM_EXIT_USAGE; goto finish; }
    if (!out) { status = lm_cli_usage_error(PROG, "no output: give -o OUT"); goto finish; }
    if (n == 0) { status = lm_cli_usage_error(PROG, "no LoRA: give -l LORA[:λ] or --lcm LORA[:λ]"); goto finish; }
    const char *base = argv[optind];
    lm_atomic_install_signal_handlers();
    /* tensor-sized buffers come and go: keep them out of the heap, so freed memory
     * goes back to the system instead of raising glibc's dynamic mmap threshold */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    if (!json && lm_cli_progress_enabled()) { o.progress = lm_cli_progress; o.progress_ctx = (void *)PROG; }
    lm_bake_report r;
    lm_err err;
    lm_err_clear(&err);
    int rc = lm_bake(base, in, n, out, &o, &r, &err);
    if (json) print_json(out, &r, rc == 0, &err);
    else if (!rc) print_human(base, out, &r, 1);
    if (rc) {
        if (!json && r.n_overflows) print_human(base, out, &r, 0);
        status = lm_cli_fail(PROG, &err);
    }
    lm_bake_report_free(&r);
finish:
    free(in);
    free(paths);
    return status;
}
