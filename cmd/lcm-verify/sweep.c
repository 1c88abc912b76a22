/* lcm-verify sweep MODEL -l LORA … --steps 1,2,4,8 --lambda 0,0.5,1 -o grid.png: one image
 * per (steps, λ) in a labelled grid (lm_verify_sweep, lm_png_grid), the layout of the
 * LCM-LoRA paper's combination figure, for eyeballing a merge (lcm-verify(1)). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>

#include "libmerge/cli.h"
#include "libmerge/png.h"
#include "libmerge/verify.h"
#include "subcommands.h"
#include "verify_print.h"

#define PROG "lcm-verify sweep"
#define MAX_LIST 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lcm-verify sweep MODEL [-l LORA[:λ] …] [--lcm LORA[:λ]] [--steps 1,2,4,8] [--lambda 0,0.5,1] -o GRID.png\n"
            "                        [--prompt P] [--negative-prompt N] [--seed S] [--guidance G] [--size WxH]\n"
            "                        [--vae FILE] [--text-encoder FILE] [--vocab FILE] [--json]\n"
            "Renders one image per (steps, λ) pair, every LoRA at its own λ times the column's\n"
            "λ, into a grid: rows are steps, columns λ. Defaults: steps 1,2,4,8, λ 0,0.5,1,\n"
            "128x128 per image, seed 0. See lcm-verify(1).\n");
}

/* "a,b,c" into out (at most MAX_LIST finite numbers). */
static int parse_list(const char *opt, const char *s, double *out, size_t *n)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST) return lm_cli_usage_error(PROG, "%s: at most %d values", opt, MAX_LIST);
        int st = lvp_parse_double(PROG, opt, t, &out[*n]);
        if (st) return st;
        (*n)++;
    }
    return *n ? 0 : lm_cli_usage_error(PROG, "%s: empty list", opt);
}

/* --json when the sweep stopped on err: the same object, "ok": false, no image. */
static void json_error(const char *model, const lm_err *err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "model", model);
    lm_cli_json_error(o, err);
    cJSON_AddNullToObject(o, "image");
    lvp_json_print(o);
}

int lv_sweep(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "lora", required_argument, NULL, 'l' }, { "lcm", required_argument, NULL, 'L' },
        { "steps", required_argument, NULL, 'k' }, { "lambda", required_argument, NULL, 'a' },
        LVP_RENDER_LONGOPTS,
        { "output", required_argument, NULL, 'o' }, { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
    lm_verify_render r;
    lvp_render_init(&r);
    double sd[MAX_LIST] = { 1, 2, 4, 8 }, lam[MAX_LIST] = { 0, 0.5, 1 };
    size_t nsd = 4, nlam = 3, nl = 0;
    lm_weighted *loras = NULL;
    const char *png = NULL;
    int json = 0, c, st = 0;
    while (!st && (c = getopt_long(argc, argv, "l:o:jh", longopts, NULL)) != -1) {
        if (lvp_render_option(PROG, c, optarg, &r, &st)) continue;
        switch (c) {
        case 'l': st = lvp_add_weighted(PROG, optarg, "lora", &loras, &nl); break;
        case 'L': st = lvp_add_weighted(PROG, optarg, "lcm", &loras, &nl); break;
        case 'k': st = parse_list("--steps", optarg, sd, &nsd); break;
        case 'a': st = parse_list("--lambda", optarg, lam, &nlam); break;
        case 'o': png = optarg; break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); lvp_free_weighted(loras, nl); return 0;
        default: st = LM_EXIT_USAGE;
        }
    }
    int steps[MAX_LIST];
    for (size_t i = 0; !st && i < nsd; i++) {
        if (sd[i] < 1 || sd[i] > 50 || sd[i] != floor(sd[i])) st = lm_cli_usage_error(PROG, "--steps: %g is not an integer 1..50", sd[i]);
        else steps[i] = (int)sd[i];   /* converting sd[i] out of int's range is undefined */
    }
    if (!st && optind != argc - 1) st = lm_cli_usage_error(PROG, "expected one MODEL file (see --help)");
    if (!st && !png) st = lm_cli_usage_error(PROG, "-o GRID.png is required");
    if (st) { if (st == LM_EXIT_USAGE) usage(stderr); lvp_free_weighted(loras, nl); return st; }
    if ((st = lvp_check_output(PROG, png, argv[optind], NULL, loras, nl, &r))) { lvp_free_weighted(loras, nl); return st; }
    lm_lora **ls = NULL;
    float *lams = NULL;
    uint8_t *grid = NULL;
    int w = 0, h = 0;
    lm_err err;
    lm_err_clear(&err);
    if ((st = lvp_open_loras(PROG, loras, nl, &ls, &lams, &err))) {
        if (json) json_error(argv[optind], &err);
        lvp_free_weighted(loras, nl);
        return st;
    }
    int rc = lm_verify_sweep(argv[optind], (const lm_lora *const *)ls, lams, nl, steps, nsd, lam, nlam, &r, &grid, &w, &h, &err);
    char text[256];
    snprintf(text, sizeof text, "rows: steps; columns: lambda; prompt: %s; seed %llu", r.opts.prompt ? r.opts.prompt : "",
             (unsigned long long)r.opts.seed);
    lm_png_text t = { "lcm-verify sweep", text };
    if (!rc) rc = lm_png_write(png, grid, w, h, &t, 1, &err);
    if (rc) {
        st = lm_cli_fail(PROG, &err);
        if (json) json_error(argv[optind], &err);
    } else if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        cJSON_AddStringToObject(o, "model", argv[optind]);
        cJSON_AddStringToObject(o, "image", png);
        cJSON_AddNumberToObject(o, "width", w);
        cJSON_AddNumberToObject(o, "height", h);
        cJSON_AddItemToObject(o, "steps", cJSON_CreateIntArray(steps, (int)nsd));
        cJSON_AddItemToObject(o, "lambda", cJSON_CreateDoubleArray(lam, (int)nlam));
        lvp_json_print(o);
    } else {
        printf("wrote %s: %zu x %zu images (rows: steps, columns: λ), %dx%d\n", png, nsd, nlam, w, h);
    }
    free(grid);
    lvp_close_loras(ls, lams, nl);
    lvp_free_weighted(loras, nl);
    return st;
}
