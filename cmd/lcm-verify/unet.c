/* lcm-verify unet MODEL --input IN -o OUT: one UNet evaluation,
 * latent + timestep + context → eps, tensors in and out as safetensors. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/cli.h"
#include "libmerge/unet.h"
#include "libmerge/writer.h"
#include "plumbing.h"
#include "subcommands.h"

#define MAX_LORAS 16

int lv_read(const lm_source *src, const char *name, int required, int min_ndim, int max_ndim,
            lv_tensor *t, lm_err *err)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    int64_t i = lm_source_find(src, name);
    if (i < 0) {
        if (!required) return 0;
        return lm_err_set(err, LM_EINPUT, lm_source_path(src), name, LM_ERR_NO_OFFSET, "tensor missing");
    }
    const lm_entry *e = lm_source_entry(src, (size_t)i);
    if (e->ndim < min_ndim || e->ndim > max_ndim || e->ndim > 4)
        return lm_err_set(err, LM_EINPUT, lm_source_path(src), name, LM_ERR_NO_OFFSET,
                          "%d dimensions, expected %d..%d", e->ndim, min_ndim, max_ndim);
    t->ndim = e->ndim;
    for (int d = 0; d < e->ndim; d++) t->shape[d] = e->shape[d];
    if (e->numel == 0) {  /* an empty batch, sequence or image: nothing to evaluate */
        char sh[96];
        size_t k = (size_t)snprintf(sh, sizeof sh, "[");
        for (int d = 0; d < e->ndim && k < sizeof sh; d++) k += (size_t)snprintf(sh + k, sizeof sh - k, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        if (k < sizeof sh) snprintf(sh + k, sizeof sh - k, "]");
        return lm_err_set(err, LM_EINPUT, lm_source_path(src), name, LM_ERR_NO_OFFSET, "empty tensor, shape %s", sh);
    }
    t->data = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
    if (!t->data) return lm_err_set(err, LM_ENOMEM, lm_source_path(src), name, LM_ERR_NO_OFFSET, "out of memory");
    int rc = lm_source_read_f32(src, (size_t)i, t->data, err);
    if (rc) { free(t->data); t->data = NULL; }
    return rc;
}

int lv_write(const char *path, const lv_tensor *ts, size_t n, const char *const *inputs,
             size_t n_inputs, const char *what, lm_err *err)
{
    lm_wtensor wt[64];
    memset(wt, 0, sizeof wt);
    if (n > 64) return lm_err_set(err, LM_EINTERNAL, path, NULL, LM_ERR_NO_OFFSET, "too many tensors");
    for (size_t i = 0; i < n; i++) {
        wt[i].name = ts[i].name;
        wt[i].dtype = LM_DT_F32;
        wt[i].ndim = ts[i].ndim;
        for (int d = 0; d < ts[i].ndim; d++) wt[i].shape[d] = ts[i].shape[d];
    }
    lm_kv meta[1] = { { "lcm-verify", what } };
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.inputs = inputs;
    o.n_inputs = n_inputs;
    lm_writer *w = NULL;
    int rc = lm_writer_open(&w, path, wt, n, meta, 1, &o, err);
    for (size_t k = 0; k < n && !rc; k++) {
        const lv_tensor *t = &ts[lm_writer_tensor_index(w, k)];
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        rc = lm_writer_write(w, t->data, numel * sizeof(float), err);
    }
    if (rc) { lm_writer_abort(w); return rc; }
    return lm_writer_commit(w, err);
}

int lv_check_output(const char *out, const char *const *paths, size_t n, char *const *specs, int n_specs,
                    lm_err *err)
{
    const char *in[8 + MAX_LORAS];
    char lpath[MAX_LORAS][4096];
    size_t k = 0;
    for (size_t i = 0; i < n && k < 8; i++)
        if (paths[i]) in[k++] = paths[i];
    for (int i = 0; i < n_specs && i < MAX_LORAS; i++) {
        double lambda;
        if (lm_parse_weighted(specs[i], lpath[i], sizeof lpath[i], &lambda))
            return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "bad LoRA spec '%s'", specs[i]);
        in[k++] = lpath[i];
    }
    return lm_output_check(out, in, k, err);
}

int lv_parse_heads(const char *prog, const char *opt, const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 1 || v > 4096) return lm_cli_usage_error(prog, "%s: '%s' is not an integer 1..4096", opt, s);
    *out = (int)v;
    return 0;
}

int lv_parse_band(const char *prog, const char *opt, const char *s, int *out)
{
    long v;
    if (lm_cli_parse_int(s, -1, 4096, &v) || v == 0)
        return lm_cli_usage_error(prog, "bad %s '%s': a band height of 1 to 4096 latent rows, or -1 (never banded)", opt, s);
    *out = (int)v;
    return 0;
}

int lv_open_loras(char **specs, int n, lm_lora **loras, float *lambdas, lm_err *err)
{
    for (int i = 0; i < n; i++) {
        char path[4096];
        double lambda;
        if (lm_parse_weighted(specs[i], path, sizeof path, &lambda))
            return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "bad LoRA spec '%s'", specs[i]);
        int rc = lm_lora_open(&loras[i], path, NULL, err);
        if (rc) return rc;
        lambdas[i] = (float)lambda;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify unet MODEL --input IN -o OUT [-l LORA[:LAMBDA]]... [--heads N | --head-dim D]\n"
               "  IN: latent [N,C,h,w] F32, timestep [N] (F32 or I64), context [N,L,D] F32\n"
               "  OUT: eps [N,C,h,w] F32\n");
}

int lv_unet(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, 0, 'i' }, { "output", required_argument, 0, 'o' },
        { "lora", required_argument, 0, 'l' }, { "heads", required_argument, 0, 'H' },
        { "head-dim", required_argument, 0, 'D' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify unet", *in = NULL, *outp = NULL;
    char *lspec[MAX_LORAS];
    int nl = 0, c;
    lm_unet_opts uo = LM_UNET_OPTS_INIT;
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:o:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': outp = optarg; break;
        case 'l':
            if (nl == MAX_LORAS) return lm_cli_usage_error(prog, "at most %d LoRAs", MAX_LORAS);
            lspec[nl++] = optarg;
            break;
        case 'H': if (lv_parse_heads(prog, "--heads", optarg, &uo.num_heads)) return LM_EXIT_USAGE; break;
        case 'D': if (lv_parse_heads(prog, "--head-dim", optarg, &uo.head_dim)) return LM_EXIT_USAGE; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || !in || !outp) { usage(stderr); return LM_EXIT_USAGE; }
    const char *model = argv[optind];
    lm_atomic_install_signal_handlers();
    lm_err err;
    lm_err_clear(&err);
    lm_source *ms = NULL, *is = NULL;
    lm_unet *u = NULL;
    lm_lora *loras[MAX_LORAS] = { 0 };
    float lambdas[MAX_LORAS];
    lv_tensor lat = { 0 }, ts = { 0 }, ctx = { 0 }, eps = { 0 };
    const char *ins[2] = { model, in };
    int rc = lv_check_output(outp, ins, 2, lspec, nl, &err);
    if (!rc) rc = lm_source_open(&is, in, NULL, &err);
    if (!rc) rc = lv_read(is, "latent", 1, 4, 4, &lat, &err);
    if (!rc) rc = lv_read(is, "timestep", 1, 0, 1, &ts, &err);
    if (!rc) rc = lv_read(is, "context", 1, 3, 3, &ctx, &err);
    int64_t N = lat.shape[0];
    if (!rc && (ts.ndim == 1 ? ts.shape[0] : 1) != N && (ts.ndim == 1 ? ts.shape[0] : 1) != 1)
        rc = lm_err_set(&err, LM_EINPUT, in, "timestep", LM_ERR_NO_OFFSET, "%lld timesteps for a batch of %lld",
                        (long long)ts.shape[0], (long long)N);
    if (!rc && ctx.shape[0] != N)
        rc = lm_err_set(&err, LM_EINPUT, in, "context", LM_ERR_NO_OFFSET, "batch %lld, latent batch %lld",
                        (long long)ctx.shape[0], (long long)N);
    if (!rc) rc = lv_open_loras(lspec, nl, loras, lambdas, &err);
    if (!rc) rc = lm_source_open(&ms, model, NULL, &err);
    if (!rc) rc = lm_unet_load(&u, ms, &uo, (const lm_lora *const *)loras, lambdas, (size_t)nl, &err);
    const lm_unet_config *cfg = u ? lm_unet_config_of(u) : NULL;
    if (!rc && lat.shape[1] != cfg->in_channels)
        rc = lm_err_set(&err, LM_EINPUT, in, "latent", LM_ERR_NO_OFFSET, "%lld channels, the UNet takes %d",
                        (long long)lat.shape[1], cfg->in_channels);
    if (!rc && ctx.shape[2] != cfg->context_dim)
        rc = lm_err_set(&err, LM_EINPUT, in, "context", LM_ERR_NO_OFFSET, "width %lld, the UNet takes %d",
                        (long long)ctx.shape[2], cfg->context_dim);
    float *tv = NULL;
    if (!rc) {
        tv = malloc((size_t)N * sizeof *tv);
        eps = (lv_tensor){ "eps", 4, { N, cfg->out_channels, lat.shape[2], lat.shape[3] }, NULL };
        eps.data = malloc((size_t)(N * cfg->out_channels * lat.shape[2] * lat.shape[3]) * sizeof(float));
        if (!tv || !eps.data) rc = lm_err_set(&err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    if (!rc) {
        for (int64_t n = 0; n < N; n++) tv[n] = ts.data[ts.ndim == 1 && ts.shape[0] == N ? n : 0];
        rc = lm_unet_forward(u, lat.data, (int)N, (int)lat.shape[2], (int)lat.shape[3], tv, ctx.data,
                             (int)ctx.shape[1], NULL, eps.data, &err);
    }
    const char *inputs[2] = { model, in };
    if (!rc) rc = lv_write(outp, &eps, 1, inputs, 2, "unet", &err);
    free(tv);
    free(lat.data); free(ts.data); free(ctx.data); free(eps.data);
    lm_unet_free(u);
    for (int i = 0; i < nl; i++) lm_lora_close(loras[i]);
    lm_source_close(ms);
    lm_source_close(is);
    return rc ? lm_cli_fail(prog, &err) : 0;
}
