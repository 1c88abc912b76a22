/* lcm-verify compare BAKED --base BASE -l LORA[:λ] … : renders BAKED alone and BASE with
 * the LoRAs applied at load (same prompt, seed, steps) and compares the final latents and
 * the images (lm_verify_compare); -o writes both side by side. Exit 0 / 1 (lcm-verify(1)). */
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

#define PROG "lcm-verify compare"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lcm-verify compare BAKED --base BASE -l LORA[:λ] [-l …] [--lcm LORA[:λ]]\n"
            "                          [--prompt P] [--negative-prompt N] [--seed S] [--steps K] [--guidance G]\n"
            "                          [--size WxH] [--vae FILE] [--text-encoder FILE] [--vocab FILE]\n"
            "                          [--amplification C] [-o SIDE_BY_SIDE.png] [--json]\n"
            "Renders BAKED and BASE + LoRAs at load with the same prompt, seed and steps and\n"
            "compares final latents (max |diff|) and images (PSNR) against thresholds from\n"
            "BAKED's dtype. Defaults: 128x128, 4 steps, seed 0. Exit 0 within the thresholds,\n"
            "1 outside, 2 usage, 3 bad input, 4 I/O. See lcm-verify(1).\n");
}

/* err: the run stopped on it (c then holds what it got, zeros before the renders), or NULL */
static void json_report(const lm_compare_report *c, const char *baked, const char *base, const lm_weighted *l, size_t n,
                        const lm_verify_render *r, const char *png, const lm_err *err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", c->ok && !err);
    cJSON_AddStringToObject(o, "baked", baked);
    cJSON_AddStringToObject(o, "base", base);
    if (err) lm_cli_json_error(o, err);
    cJSON *a = cJSON_AddArrayToObject(o, "loras");
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", l[i].path);
        cJSON_AddNumberToObject(e, "lambda", l[i].lambda);
        cJSON_AddItemToArray(a, e);
    }
    cJSON_AddStringToObject(o, "prompt", r->opts.prompt ? r->opts.prompt : "");
    cJSON_AddNumberToObject(o, "seed", (double)r->opts.seed);
    cJSON_AddNumberToObject(o, "steps", r->opts.steps);
    cJSON_AddNumberToObject(o, "width", c->width);
    cJSON_AddNumberToObject(o, "height", c->height);
    if (c->dtype == LM_DT_INVALID) cJSON_AddNullToObject(o, "dtype");   /* stopped before BAKED was read */
    else cJSON_AddStringToObject(o, "dtype", lm_dtype_name(c->dtype));
    cJSON_AddNumberToObject(o, "latent_max_abs", c->latent_max_abs);
    cJSON_AddNumberToObject(o, "latent_scale", c->latent_scale);
    cJSON_AddNumberToObject(o, "latent_tol", c->latent_tol);
    if (isinf(c->psnr)) cJSON_AddNullToObject(o, "psnr");
    else cJSON_AddNumberToObject(o, "psnr", c->psnr);
    cJSON_AddNumberToObject(o, "psnr_min", c->psnr_min);
    cJSON_AddNumberToObject(o, "amplification", r->amplification > 0 ? r->amplification : LM_COMPARE_AMPLIFICATION);
    if (png && !err) cJSON_AddStringToObject(o, "image", png);
    else cJSON_AddNullToObject(o, "image");
    cJSON_AddNumberToObject(o, "seconds", c->seconds);
    lvp_json_print(o);
}

static int write_side_by_side(const lm_compare_report *c, const char *path, lm_err *err)
{
    const uint8_t *imgs[2] = { c->rgb_baked, c->rgb_runtime };
    const char *labels[2] = { "BAKED", "BASE + LORA" };
    uint8_t *grid = NULL;
    int w = 0, h = 0;
    int rc = lm_png_grid(imgs, 1, 2, c->width, c->height, NULL, labels, &grid, &w, &h, err);
    char text[160];
    snprintf(text, sizeof text, "latent max |diff| %.3g (tol %.3g), PSNR %.2f dB (min %.2f)", c->latent_max_abs,
             c->latent_tol, c->psnr, c->psnr_min);
    lm_png_text t = { "lcm-verify compare", text };
    if (!rc) rc = lm_png_write(path, grid, w, h, &t, 1, err);
    free(grid);
    return rc;
}

int lv_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "base", required_argument, NULL, 'b' }, { "lora", required_argument, NULL, 'l' },
        { "lcm", required_argument, NULL, 'L' }, { "steps", required_argument, NULL, 'k' },
        LVP_RENDER_LONGOPTS,
        { "output", required_argument, NULL, 'o' }, { "json", no_argument, NULL, 'j' },
        { "amplification", required_argument, NULL, 'A' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
    lm_verify_render r;
    lvp_render_init(&r);
    const char *base = NULL, *png = NULL;
    lm_weighted *loras = NULL;
    size_t nl = 0;
    int json = 0, c, st = 0;
    double d;
    while (!st && (c = getopt_long(argc, argv, "b:l:o:jh", longopts, NULL)) != -1) {
        if (lvp_render_option(PROG, c, optarg, &r, &st)) continue;
        switch (c) {
        case 'b': base = optarg; break;
        case 'l': st = lvp_add_weighted(PROG, optarg, "lora", &loras, &nl); break;
        case 'L': st = lvp_add_weighted(PROG, optarg, "lcm", &loras, &nl); break;
        case 'k':
            if (!(st = lvp_parse_double(PROG, "--steps", optarg, &d)) && (d < 1 || d > 50 || d != floor(d)))
                st = lm_cli_usage_error(PROG, "--steps: '%s' is not an integer 1..50", optarg);
            if (!st) r.opts.steps = (int)d;   /* converting d out of int's range is undefined */
            break;
        case 'o': png = optarg; break;
        case 'j': json = 1; break;
        case 'A':
            if (!(st = lvp_parse_double(PROG, "--amplification", optarg, &r.amplification)) && r.amplification <= 0)
                st = lm_cli_usage_error(PROG, "--amplification must be positive");
            break;
        case 'h': usage(stdout); lvp_free_weighted(loras, nl); return 0;
        default: st = LM_EXIT_USAGE;
        }
    }
    if (!st && optind != argc - 1) st = lm_cli_usage_error(PROG, "expected one BAKED file (see --help)");
    if (!st && (!base || !nl)) st = lm_cli_usage_error(PROG, "--base and at least one -l are required");
    if (st) { if (st == LM_EXIT_USAGE) usage(stderr); lvp_free_weighted(loras, nl); return st; }
    const char *baked = argv[optind];
    if (png && (st = lvp_check_output(PROG, png, baked, base, loras, nl, &r))) { lvp_free_weighted(loras, nl); return st; }
    lm_lora **ls = NULL;
    float *lams = NULL;
    lm_compare_report rep;
    lm_err err;
    lm_err_clear(&err);
    memset(&rep, 0, sizeof rep);
    if ((st = lvp_open_loras(PROG, loras, nl, &ls, &lams, &err))) {
        if (json) json_report(&rep, baked, base, loras, nl, &r, png, &err);
        lvp_free_weighted(loras, nl);
        return st;
    }
    int rc = lm_verify_compare(baked, base, (const lm_lora *const *)ls, lams, nl, &r, &rep, &err);
    if (!rc && png) rc = write_side_by_side(&rep, png, &err);
    if (rc) {
        st = lm_cli_fail(PROG, &err);
        if (json) json_report(&rep, baked, base, loras, nl, &r, png, &err);
    } else {
        if (json) json_report(&rep, baked, base, loras, nl, &r, png, NULL);
        else {
            printf("compare: %s vs %s + %zu LoRA%s (seed %llu, %d step%s, %dx%d)\n", baked, base, nl, nl == 1 ? "" : "s",
                   (unsigned long long)r.opts.seed, r.opts.steps, r.opts.steps == 1 ? "" : "s", rep.width, rep.height);
            printf("latent max |diff|: %.4g (tolerance %.4g for %s, latent scale %.3g)\n", rep.latent_max_abs, rep.latent_tol,
                   lm_dtype_name(rep.dtype), rep.latent_scale);
            printf("image PSNR: %.2f dB (minimum %.2f dB)\n", rep.psnr, rep.psnr_min);
            if (png) printf("side by side: %s\n", png);
            printf("%s\n", rep.ok ? "VERIFIED: the baked model renders like base + LoRA" : "FAILED: the baked model renders differently");
        }
        st = rep.ok ? LM_EXIT_OK : LM_EXIT_VERIFY;
    }
    lm_compare_report_free(&rep);
    lvp_close_loras(ls, lams, nl);
    lvp_free_weighted(loras, nl);
    return st;
}
