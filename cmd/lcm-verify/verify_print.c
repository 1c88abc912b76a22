/* Shared printing and option helpers of lcm-verify bake / lora / compare / sweep. */
#include "verify_print.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "libmerge/cli.h"
#include "libmerge/writer.h"

void lvp_json_common(cJSON *o, const lm_verify_report *r, const lm_err *err)
{
    cJSON_AddBoolToObject(o, "ok", r->ok && !err);
    cJSON_AddStringToObject(o, "output", r->out_path ? r->out_path : "");
    if (err) lm_cli_json_error(o, err);
    cJSON_AddStringToObject(o, "operation", r->operation ? r->operation : "");
    cJSON_AddBoolToObject(o, "recipe", r->has_recipe);
    cJSON_AddStringToObject(o, "inputs_from", r->inputs_from);
    cJSON *a = cJSON_AddArrayToObject(o, "inputs");
    for (size_t i = 0; i < r->n_inputs; i++) {
        const lm_verify_input *in = &r->inputs[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "role", in->role);
        cJSON_AddStringToObject(e, "path", in->path);
        cJSON_AddNumberToObject(e, "lambda", in->lambda);
        if (in->sha256[0]) cJSON_AddStringToObject(e, "sha256", in->sha256);
        else cJSON_AddNullToObject(e, "sha256");
        if (in->recipe_sha256[0]) cJSON_AddStringToObject(e, "recipe_sha256", in->recipe_sha256);
        else cJSON_AddNullToObject(e, "recipe_sha256");
        if (in->hash_ok < 0) cJSON_AddNullToObject(e, "hash_ok");
        else cJSON_AddBoolToObject(e, "hash_ok", in->hash_ok);
        if (in->convention) {
            cJSON_AddStringToObject(e, "convention", in->convention);
            cJSON_AddNumberToObject(e, "modules", (double)in->modules);
            cJSON_AddNumberToObject(e, "matched", (double)in->matched);
            cJSON_AddNumberToObject(e, "unmatched", (double)in->unmatched);
        }
        cJSON_AddItemToArray(a, e);
    }
    cJSON *p = cJSON_AddArrayToObject(o, "problems");
    for (size_t i = 0; i < r->n_problems; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "kind", r->problems[i].kind);
        cJSON_AddStringToObject(e, "where", r->problems[i].where);
        cJSON_AddStringToObject(e, "message", r->problems[i].message);
        cJSON_AddItemToArray(p, e);
    }
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
}

void lvp_json_print(cJSON *o)
{
    char *s = cJSON_Print(o);
    if (s) { fputs(s, stdout); putchar('\n'); }
    free(s);
    cJSON_Delete(o);
}

void lvp_text_name(const char *name)
{
    size_t len = strlen(name);
    if (len > 64) printf("  …%-63s", name + len - 63);
    else printf("  %-64s", name);
}

int lvp_run_verify(const char *prog, lvp_verify_fn fn, const char *target, lm_verify_opts *o, int json,
                   void (*text)(const lm_verify_report *),
                   void (*json_out)(const lm_verify_report *, const lm_err *err))
{
    if (lm_cli_progress_enabled() && !json) o->progress = lvp_progress;
    lm_verify_report r;
    lm_err err;
    lm_err_clear(&err);
    int st;
    if (fn(target, o, &r, &err)) {
        st = lm_cli_fail(prog, &err);
        if (json) {
            /* fn leaves the report valid: out_path and whatever inputs it gathered */
            if (!r.out_path) r.out_path = strdup(target);
            json_out(&r, &err);
        }
    } else {
        if (json) json_out(&r, NULL);
        else text(&r);
        st = r.ok ? LM_EXIT_OK : LM_EXIT_VERIFY;
    }
    lm_verify_report_free(&r);
    return st;
}

void lvp_render_init(lm_verify_render *r)
{
    memset(r, 0, sizeof *r);
    r->opts = (lm_render_opts)LM_RENDER_OPTS_INIT;
    r->opts.width = r->opts.height = 128;
    r->opts.prompt = "a photograph of an astronaut riding a horse";
}

int lvp_render_option(const char *prog, int c, const char *arg, lm_verify_render *r, int *st)
{
    double d;
    switch (c) {
    case 'p': r->opts.prompt = arg; return 1;
    case 'n': r->opts.negative_prompt = arg; return 1;
    case 'S':
        if (!(*st = lvp_parse_double(prog, "--seed", arg, &d)) && (d < 0 || d != floor(d) || d > 18446744073709549568.0))
            *st = lm_cli_usage_error(prog, "--seed: '%s' is not a non-negative integer", arg);
        if (!*st) r->opts.seed = (uint64_t)d;   /* d unset or out of range otherwise */
        return 1;
    case 'g':
        if (!(*st = lvp_parse_double(prog, "--guidance", arg, &d))) r->opts.guidance = (float)d;
        return 1;
    case 'z': *st = lvp_parse_size(prog, arg, &r->opts.width, &r->opts.height); return 1;
    case 'V': r->vae = arg; return 1;
    case 'T': r->text_encoder = arg; return 1;
    case 'c': r->opts.vocab = arg; return 1;
    default: return 0;
    }
}

void lvp_text_inputs(const lm_verify_report *r)
{
    /* inputs_from is empty when OUT could not be read far enough to gather any */
    if (r->inputs_from[0]) printf("%s: %s (inputs from the %s)\n", r->operation ? r->operation : "verify", r->out_path, r->inputs_from);
    else printf("%s: %s (no inputs gathered)\n", r->operation ? r->operation : "verify", r->out_path);
    for (size_t i = 0; i < r->n_inputs; i++) {
        const lm_verify_input *in = &r->inputs[i];
        printf("  %-6s %s", in->role, in->path);
        if (strcmp(in->role, "base")) printf("  λ %.6g", in->lambda);
        if (in->convention)
            printf("  %s, %zu module%s, %zu matched, %zu unmatched", in->convention, in->modules, in->modules == 1 ? "" : "s",
                   in->matched, in->unmatched);
        printf("  sha256 %s\n", in->hash_ok < 0 ? (in->sha256[0] ? "not in a recipe" : "not checked")
                                : in->hash_ok ? "= recipe" : "DIFFERS from the recipe");
    }
}

void lvp_text_problems(const lm_verify_report *r)
{
    if (!r->n_problems) { printf("problems: none\n"); return; }
    printf("problems: %zu\n", r->n_problems);
    for (size_t i = 0; i < r->n_problems; i++)
        printf("  %-9s %s: %s\n", r->problems[i].kind, r->problems[i].where, r->problems[i].message);
}

void lvp_progress(void *ctx, const char *what, size_t done, size_t total)
{
    (void)ctx;
    fprintf(stderr, "\r%s %zu/%zu", what, done, total);
    if (done == total) fputc('\n', stderr);
}

int lvp_add_weighted(const char *prog, const char *spec, const char *role, lm_weighted **v, size_t *n)
{
    char path[4096];
    double lam;
    if (lm_parse_weighted(spec, path, sizeof path, &lam))
        return lm_cli_usage_error(prog, "bad LORA[:λ] '%s'", spec);
    lm_weighted *nv = realloc(*v, (*n + 1) * sizeof *nv);
    if (!nv) return lm_cli_usage_error(prog, "out of memory");
    *v = nv;
    nv[*n].path = strdup(path);
    nv[*n].lambda = lam;
    nv[*n].role = role;
    (*n)++;
    return 0;
}

void lvp_free_weighted(lm_weighted *v, size_t n)
{
    for (size_t i = 0; i < n; i++) free((char *)v[i].path);
    free(v);
}

int lvp_parse_double(const char *prog, const char *opt, const char *s, double *out)
{
    char *end;
    *out = strtod(s, &end);
    if (end == s || *end || !isfinite(*out)) return lm_cli_usage_error(prog, "%s: '%s' is not a number", opt, s);
    return 0;
}

int lvp_parse_size(const char *prog, const char *s, int *w, int *h)
{
    char *e1, *e2;
    long a = strtol(s, &e1, 10);
    if (e1 == s || (*e1 != 'x' && *e1 != 'X')) return lm_cli_usage_error(prog, "--size: '%s' is not WxH", s);
    long b = strtol(e1 + 1, &e2, 10);
    if (e2 == e1 + 1 || *e2 || a < 8 || b < 8 || a > 4096 || b > 4096 || a % 8 || b % 8)
        return lm_cli_usage_error(prog, "--size: '%s' is not WxH with multiples of 8 up to 4096", s);
    *w = (int)a;
    *h = (int)b;
    return 0;
}

int lvp_open_loras(const char *prog, const lm_weighted *v, size_t n, lm_lora ***out, float **lambdas, lm_err *err)
{
    *out = calloc(n ? n : 1, sizeof **out);
    *lambdas = calloc(n ? n : 1, sizeof **lambdas);
    if (!*out || !*lambdas) {
        free(*out);
        free(*lambdas);
        *out = NULL;
        *lambdas = NULL;
        lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        return lm_cli_fail(prog, err);
    }
    for (size_t i = 0; i < n; i++) {
        (*lambdas)[i] = (float)v[i].lambda;
        if (lm_lora_open(&(*out)[i], v[i].path, NULL, err)) {
            lm_err_file(err, v[i].path);
            lvp_close_loras(*out, *lambdas, n);
            *out = NULL;
            *lambdas = NULL;
            return lm_cli_fail(prog, err);
        }
    }
    return 0;
}

void lvp_close_loras(lm_lora **l, float *lambdas, size_t n)
{
    for (size_t i = 0; l && i < n; i++) lm_lora_close(l[i]);
    free(l);
    free(lambdas);
}

int lvp_check_output(const char *prog, const char *out, const char *model, const char *base, const lm_weighted *l,
                     size_t nl, const lm_verify_render *r)
{
    const char **in = calloc(nl + 5, sizeof *in);
    if (!in) return LM_EXIT_INTERNAL;
    size_t n = 0;
    const char *fixed[5] = { model, base, r ? r->vae : NULL, r ? r->text_encoder : NULL, r ? r->opts.vocab : NULL };
    for (size_t i = 0; i < 5; i++) if (fixed[i]) in[n++] = fixed[i];
    for (size_t i = 0; i < nl; i++) in[n++] = l[i].path;
    lm_err err;
    lm_err_clear(&err);
    int rc = lm_output_check(out, in, n, &err);
    free(in);
    return rc ? lm_cli_fail(prog, &err) : 0;
}
