/* lcm-verify lora MERGED [--from A[:λ] B[:λ] …]: a merged LoRA against its sources
 * (lm_verify_lora): exact mode, same ΔW within the factors' rounding; SVD mode, the
 * Eckart–Young optimum of each module's rank reached. Exit 0 / 1 / 3 (lcm-verify(1)). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>

#include "libmerge/cli.h"
#include "libmerge/verify.h"
#include "subcommands.h"
#include "verify_print.h"

#define PROG "lcm-verify lora"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lcm-verify lora MERGED [--from A[:λ] [B[:λ] …]] [--exact | --svd]\n"
            "                       [--search DIR …] [--no-hash] [--json]\n"
            "Checks each module of MERGED against Σ λ·ΔW of its sources (matched by module\n"
            "name). Without --from the sources and λ come from MERGED's recipe; the mode too\n"
            "(--exact / --svd override it). Exit 0 verified, 1 a check failed, 2 usage,\n"
            "3 bad input, 4 I/O. See lcm-verify(1).\n");
}

static void text_report(const lm_verify_report *r)
{
    lvp_text_inputs(r);
    int svd = r->operation && strstr(r->operation, "svd");
    printf("modules: %zu checked, %zu failed\n", r->n_m, r->failed);
    if (r->n_m) {
        printf("  %-64s %4s %3s %10s %10s %10s %9s\n", "MODULE", "RANK", "SRC", "MAX|ERR|", "REL",
               svd ? "OPTIMUM" : "BOUND", "RATIO");
        for (size_t i = 0; i < r->n_m; i++) {
            const lm_verify_module *m = &r->m[i];
            lvp_text_name(m->name);
            printf(" %4d %3d %10.3g %10.3g %10.3g %9.3g %s\n", m->rank, m->sources, m->max_abs, m->rel,
                   svd ? m->optimum : m->tol, m->ratio, m->ok ? "ok" : "FAIL");
        }
    }
    lvp_text_problems(r);
    printf("%s: worst ratio %.3g, %zu failed module%s, %.2f s\n", r->ok ? "VERIFIED" : "FAILED", r->worst_ratio, r->failed,
           r->failed == 1 ? "" : "s", r->seconds);
}

static void json_report(const lm_verify_report *r, const lm_err *err)
{
    cJSON *o = cJSON_CreateObject();
    lvp_json_common(o, r, err);
    cJSON_AddNumberToObject(o, "failed", (double)r->failed);
    cJSON_AddNumberToObject(o, "worst_ratio", r->worst_ratio);
    cJSON *a = cJSON_AddArrayToObject(o, "modules");
    for (size_t i = 0; i < r->n_m; i++) {
        const lm_verify_module *m = &r->m[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", m->name);
        cJSON_AddNumberToObject(e, "rank", m->rank);
        cJSON_AddNumberToObject(e, "sources", m->sources);
        cJSON_AddBoolToObject(e, "ok", m->ok);
        cJSON_AddNumberToObject(e, "max_abs", m->max_abs);
        cJSON_AddNumberToObject(e, "rel", m->rel);
        cJSON_AddNumberToObject(e, "optimum", m->optimum);
        cJSON_AddNumberToObject(e, "tol", m->tol);
        cJSON_AddNumberToObject(e, "ratio", m->ratio);
        cJSON_AddItemToArray(a, e);
    }
    lvp_json_print(o);
}

int lv_lora(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "from", no_argument, NULL, 'f' }, { "exact", no_argument, NULL, 'e' }, { "svd", no_argument, NULL, 'v' },
        { "search", required_argument, NULL, 's' }, { "no-hash", no_argument, NULL, 'H' },
        { "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
    lm_verify_opts o = LM_VERIFY_OPTS_INIT;
    lm_weighted *from = NULL;
    size_t nf = 0, ns = 0;
    const char **search = calloc((size_t)argc + 1, sizeof *search);
    const char *merged = NULL;
    int json = 0, c, st = 0, in_from = 0;
    if (!search) return LM_EXIT_INTERNAL;
    /* "--from A:λ B:λ …": every operand after --from up to the next option is a source */
    while (!st && (c = getopt_long(argc, argv, "-s:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 1:
            if (in_from) st = lvp_add_weighted(PROG, optarg, "lora", &from, &nf);
            else if (!merged) merged = optarg;
            else st = lm_cli_usage_error(PROG, "unexpected operand '%s' (sources go after --from)", optarg);
            break;
        case 'f': in_from = 1; continue;
        case 'e': o.mode = 1; break;
        case 'v': o.mode = 2; break;
        case 's': search[ns++] = optarg; break;
        case 'H': o.no_hash = 1; break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); free(search); lvp_free_weighted(from, nf); return 0;
        default: st = LM_EXIT_USAGE;
        }
        if (c != 1) in_from = 0;
    }
    if (!st && !merged) st = lm_cli_usage_error(PROG, "expected the MERGED LoRA (see --help)");
    if (st) { if (st == LM_EXIT_USAGE) usage(stderr); free(search); lvp_free_weighted(from, nf); return st; }
    o.loras = from;
    o.n_loras = nf;
    o.search = search;
    o.n_search = ns;
    st = lvp_run_verify(PROG, lm_verify_lora, merged, &o, json, text_report, json_report);
    free(search);
    lvp_free_weighted(from, nf);
    return st;
}
