/* lcm-verify bake OUT [--base BASE -l LORA[:λ] …]: proves OUT = BASE + Σ λ·ΔW within the
 * output dtype's rounding (lm_verify_bake); table or --json; exit 0 / 1 / 3 (lcm-verify(1)). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>

#include "libmerge/cli.h"
#include "libmerge/verify.h"
#include "subcommands.h"
#include "verify_print.h"

#define PROG "lcm-verify bake"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lcm-verify bake OUT [--base BASE] [-l LORA[:λ] …] [--lcm LORA[:λ]]\n"
            "                       [--search DIR …] [--allow-unmatched] [--no-hash] [--json]\n"
            "Proves OUT = BASE + Σ λ·ΔW tensor by tensor within OUT's rounding bound.\n"
            "Without inputs they come from OUT's recipe (found by file name next to OUT, in\n"
            "each --search DIR, then in .); inputs' SHA-256 are checked against the recipe.\n"
            "Exit 0 verified, 1 a check failed, 2 usage, 3 bad input, 4 I/O. See lcm-verify(1).\n");
}

static void text_report(const lm_verify_report *r)
{
    lvp_text_inputs(r);
    printf("tensors: %zu (%zu touched, %zu untouched: %zu identical to the base)\n", r->tensors, r->touched,
           r->untouched, r->identical);
    if (r->n_t) {
        printf("  %-64s %-5s %4s %10s %10s %9s %s\n", "TENSOR", "DTYPE", "MODS", "MAX|ERR|", "REL", "ERR/BOUND", "");
        for (size_t i = 0; i < r->n_t; i++) {
            const lm_verify_tensor *t = &r->t[i];
            lvp_text_name(t->name);
            printf(" %-5s %4d %10.3g %10.3g %9.3g %s\n", lm_dtype_name(t->dtype), t->modules, t->max_abs, t->rel,
                   t->ratio, t->ok ? "ok" : "FAIL");
        }
    }
    printf("non-finite: %lld NaN, %lld Inf, %lld overflow\n", (long long)r->nan, (long long)r->inf, (long long)r->overflow);
    lvp_text_problems(r);
    printf("%s: worst error/bound %.3g, %zu failed tensor%s, %.2f s\n", r->ok ? "VERIFIED" : "FAILED", r->worst_ratio,
           r->failed, r->failed == 1 ? "" : "s", r->seconds);
}

static void json_report(const lm_verify_report *r, const lm_err *err)
{
    cJSON *o = cJSON_CreateObject();
    lvp_json_common(o, r, err);
    cJSON *t = cJSON_AddObjectToObject(o, "tensors");
    cJSON_AddNumberToObject(t, "total", (double)r->tensors);
    cJSON_AddNumberToObject(t, "touched", (double)r->touched);
    cJSON_AddNumberToObject(t, "untouched", (double)r->untouched);
    cJSON_AddNumberToObject(t, "identical", (double)r->identical);
    cJSON_AddNumberToObject(t, "failed", (double)r->failed);
    cJSON_AddNumberToObject(o, "nan", (double)r->nan);
    cJSON_AddNumberToObject(o, "inf", (double)r->inf);
    cJSON_AddNumberToObject(o, "overflow", (double)r->overflow);
    cJSON_AddNumberToObject(o, "worst_ratio", r->worst_ratio);
    cJSON *a = cJSON_AddArrayToObject(o, "checked");
    for (size_t i = 0; i < r->n_t; i++) {
        const lm_verify_tensor *x = &r->t[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", x->name);
        cJSON_AddStringToObject(e, "dtype", lm_dtype_name(x->dtype));
        cJSON_AddNumberToObject(e, "modules", x->modules);
        cJSON_AddBoolToObject(e, "ok", x->ok);
        cJSON_AddNumberToObject(e, "max_abs", x->max_abs);
        cJSON_AddNumberToObject(e, "rel", x->rel);
        cJSON_AddNumberToObject(e, "ratio", x->ratio);
        cJSON_AddNumberToObject(e, "bound_max", x->bound_max);
        cJSON_AddNumberToObject(e, "over", (double)x->over);
        cJSON_AddNumberToObject(e, "nan", (double)x->nan);
        cJSON_AddNumberToObject(e, "inf", (double)x->inf);
        cJSON_AddNumberToObject(e, "overflow", (double)x->overflow);
        if (x->diagnosis[0]) cJSON_AddStringToObject(e, "diagnosis", x->diagnosis);
        cJSON_AddItemToArray(a, e);
    }
    lvp_json_print(o);
}

int lv_bake(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "base", required_argument, NULL, 'b' }, { "lora", required_argument, NULL, 'l' },
        { "lcm", required_argument, NULL, 'L' }, { "search", required_argument, NULL, 's' },
        { "allow-unmatched", no_argument, NULL, 'u' }, { "no-hash", no_argument, NULL, 'H' },
        { "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    lm_weighted *loras = NULL;
    size_t nl = 0, ns = 0;
    const char **search = calloc((size_t)argc + 1, sizeof *search);
    int json = 0, c, st = 0;
    if (!search) return LM_EXIT_INTERNAL;
    while (!st && (c = getopt_long(argc, argv, "b:l:s:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': o.base = optarg; break;
        case 'l': st = lvp_add_weighted(PROG, optarg, "lora", &loras, &nl); break;
        case 'L': st = lvp_add_weighted(PROG, optarg, "lcm", &loras, &nl); break;
        case 's': search[ns++] = optarg; break;
        case 'u': o.allow_unmatched = 1; break;
        case 'H': o.no_hash = 1; break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); free(search); lvp_free_weighted(loras, nl); return 0;
        default: st = LM_EXIT_USAGE;
        }
    }
    if (!st && optind != argc - 1) st = lm_cli_usage_error(PROG, "expected one OUT file (see --help)");
    if (!st && nl && !o.base) st = lm_cli_usage_error(PROG, "-l needs --base");
    if (st) { if (st == LM_EXIT_USAGE) usage(stderr); free(search); lvp_free_weighted(loras, nl); return st; }
    o.loras = loras;
    o.n_loras = nl;
    o.search = search;
    o.n_search = ns;
    st = lvp_run_verify(PROG, lm_verify_bake, argv[optind], &o, json, text_report, json_report);
    free(search);
    lvp_free_weighted(loras, nl);
    return st;
}
