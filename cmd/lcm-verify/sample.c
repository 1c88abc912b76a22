/* lcm-verify sample MODEL --input IN --steps K -o OUT: LCM multistep
 * sampling (UNet + LCM scheduler) from a given x_T and context, with the
 * re-noising noise given (noise_1 … noise_{K-1}) or drawn from the seeded
 * torch-compatible RNG; writes the final latent and every step's denoised. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/cli.h"
#include "libmerge/rng.h"
#include "libmerge/scheduler.h"
#include "libmerge/unet.h"
#include "libmerge/pipeline.h"
#include "libmerge/writer.h"
#include "plumbing.h"
#include "subcommands.h"

#define MAX_LORAS 16
#define MAX_STEPS 50

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify sample MODEL --input IN --steps K -o OUT [-l LORA[:LAMBDA]]...\n"
               "                          [--guidance G] [--seed S] [--original-steps N] [--heads N | --head-dim D]\n"
               "  IN: latent [N,C,h,w] (x_T), context [N,L,D], uncond_context [N,L,D] (with G > 1),\n"
               "      noise_1 ... noise_{K-1} [N,C,h,w] (optional)\n"
               "  OUT: latent (final), denoised_1 ... denoised_K\n");
}

static void progress(void *ctx, const char *stage, int k, int K, double seconds)
{
    (void)ctx;
    (void)stage;
    fprintf(stderr, "\rlcm-verify sample: step %d/%d (%.1f s/step)", k, K, seconds);
}

int lv_sample(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, 0, 'i' }, { "output", required_argument, 0, 'o' },
        { "steps", required_argument, 0, 's' }, { "lora", required_argument, 0, 'l' },
        { "guidance", required_argument, 0, 'g' }, { "seed", required_argument, 0, 'S' },
        { "original-steps", required_argument, 0, 'O' }, { "heads", required_argument, 0, 'H' },
        { "head-dim", required_argument, 0, 'D' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify sample", *in = NULL, *outp = NULL;
    char *lspec[MAX_LORAS], *end;
    int nl = 0, c, steps = 0, orig = 50;
    double guidance = 1.0;
    unsigned long long seed = 0;
    lm_unet_opts uo = LM_UNET_OPTS_INIT;
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:o:s:l:g:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': outp = optarg; break;
        case 's':
            steps = (int)strtol(optarg, &end, 10);
            if (!*optarg || *end || steps < 1 || steps > MAX_STEPS)
                return lm_cli_usage_error(prog, "--steps must be 1..%d", MAX_STEPS);
            break;
        case 'O':
            orig = (int)strtol(optarg, &end, 10);
            if (!*optarg || *end || orig < 1) return lm_cli_usage_error(prog, "bad --original-steps '%s'", optarg);
            break;
        case 'l':
            if (nl == MAX_LORAS) return lm_cli_usage_error(prog, "at most %d LoRAs", MAX_LORAS);
            lspec[nl++] = optarg;
            break;
        case 'g':
            guidance = strtod(optarg, &end);
            if (!*optarg || *end || !(guidance >= 0 && guidance < 100))
                return lm_cli_usage_error(prog, "bad --guidance '%s'", optarg);
            break;
        case 'S':
            errno = 0;
            seed = strtoull(optarg, &end, 10);   /* strtoull takes "-1" as 2^64 - 1 */
            if (!*optarg || *end || *optarg == '-' || errno == ERANGE)
                return lm_cli_usage_error(prog, "bad --seed '%s'", optarg);
            break;
        case 'H': if (lv_parse_heads(prog, "--heads", optarg, &uo.num_heads)) return LM_EXIT_USAGE; break;
        case 'D': if (lv_parse_heads(prog, "--head-dim", optarg, &uo.head_dim)) return LM_EXIT_USAGE; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || !in || !outp || !steps) { usage(stderr); return LM_EXIT_USAGE; }
    const char *model = argv[optind];
    lm_atomic_install_signal_handlers();
    lm_err err;
    lm_err_clear(&err);
    lm_unet *u = NULL;
    lm_lcm sched;
    lm_source *ms = NULL, *is = NULL;
    lm_lora *loras[MAX_LORAS] = { 0 };
    float lambdas[MAX_LORAS];
    lv_tensor lat = { 0 }, ctx = { 0 }, unc = { 0 }, out[MAX_STEPS + 1];
    lv_tensor noise[MAX_STEPS];
    char names[MAX_STEPS + 1][32];
    memset(out, 0, sizeof out);
    memset(noise, 0, sizeof noise);
    float *x = NULL;
    lm_lcm_init(&sched);
    const char *ins[2] = { model, in };
    int rc = lv_check_output(outp, ins, 2, lspec, nl, &err);
    if (!rc) rc = lm_lcm_set_timesteps(&sched, steps, orig, 1.0, &err);
    if (!rc) rc = lm_source_open(&is, in, NULL, &err);
    if (!rc) rc = lv_read(is, "latent", 1, 4, 4, &lat, &err);
    if (!rc) rc = lv_read(is, "context", 1, 3, 3, &ctx, &err);
    if (!rc && guidance > 1.0) rc = lv_read(is, "uncond_context", 1, 3, 3, &unc, &err);
    int64_t N = lat.shape[0];
    size_t n = (size_t)(lat.shape[0] * lat.shape[1] * lat.shape[2] * lat.shape[3]);
    if (!rc && (ctx.shape[0] != N || (unc.data && unc.shape[0] != N) || N > 64))
        rc = lm_err_set(&err, LM_EINPUT, in, ctx.shape[0] != N ? "context" : "uncond_context",
                        LM_ERR_NO_OFFSET, "batch does not match the latent's %lld", (long long)N);
    for (int k = 1; k < steps && !rc; k++) {
        snprintf(names[k], sizeof names[k], "noise_%d", k);
        rc = lv_read(is, names[k], 0, 4, 4, &noise[k], &err);
        if (!rc && noise[k].data)
            for (int d = 0; d < 4 && !rc; d++)
                if (noise[k].shape[d] != lat.shape[d])
                    rc = lm_err_set(&err, LM_EINPUT, in, names[k], LM_ERR_NO_OFFSET, "shape differs from latent's");
    }
    if (!rc) rc = lv_open_loras(lspec, nl, loras, lambdas, &err);
    if (!rc) rc = lm_source_open(&ms, model, NULL, &err);
    if (!rc) rc = lm_unet_load(&u, ms, &uo, (const lm_lora *const *)loras, lambdas, (size_t)nl, &err);
    if (!rc) {
        const lm_unet_config *cfg = lm_unet_config_of(u);
        if (lat.shape[1] != cfg->in_channels || cfg->in_channels != cfg->out_channels)
            rc = lm_err_set(&err, LM_EINPUT, in, "latent", LM_ERR_NO_OFFSET, "%lld channels, the UNet takes %d",
                            (long long)lat.shape[1], cfg->in_channels);
        else if (ctx.shape[2] != cfg->context_dim || (unc.data && unc.shape[2] != cfg->context_dim))
            rc = lm_err_set(&err, LM_EINPUT, in, "context", LM_ERR_NO_OFFSET, "width %lld, the UNet takes %d",
                            (long long)ctx.shape[2], cfg->context_dim);
    }
    if (!rc) {
        x = malloc(n * sizeof *x);
        int oom = !x;
        for (int k = 0; k <= steps; k++) {
            out[k].ndim = 4;
            memcpy(out[k].shape, lat.shape, sizeof lat.shape);
            out[k].data = malloc(n * sizeof(float));
            oom |= !out[k].data;
        }
        if (oom) rc = lm_err_set(&err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    }
    lm_rng rng;
    lm_rng_seed(&rng, seed);
    const float *nz[MAX_STEPS];
    float *dn_out[MAX_STEPS];
    for (int k = 0; k < steps; k++) {
        nz[k] = k + 1 < steps ? noise[k + 1].data : NULL;   /* noise_{i+1} re-noises toward step i+1 */
        dn_out[k] = out[k + 1].data;                        /* denoised_{i+1} */
    }
    if (!rc) {
        memcpy(x, lat.data, n * sizeof *x);
        lm_lcm_sample_args a = { u, &sched, (int)N, (int)lat.shape[1], (int)lat.shape[2], (int)lat.shape[3],
                                 ctx.data, (int)ctx.shape[1], unc.data, unc.data ? (int)unc.shape[1] : 0,
                                 (float)guidance, nz, &rng, dn_out, lm_cli_progress_enabled() ? progress : NULL, NULL };
        rc = lm_lcm_sample(&a, x, &err);
    }
    if (lm_cli_progress_enabled()) fprintf(stderr, "\n");
    if (!rc) {
        static char dn[MAX_STEPS + 1][24];
        out[0].name = "latent";
        memcpy(out[0].data, x, n * sizeof *x);
        for (int k = 1; k <= steps; k++) {
            snprintf(dn[k], sizeof dn[k], "denoised_%d", k);
            out[k].name = dn[k];
        }
        const char *inputs[2] = { model, in };
        rc = lv_write(outp, out, (size_t)steps + 1, inputs, 2, "sample", &err);
    }
    for (int k = 0; k <= steps; k++) free(out[k].data);
    for (int k = 0; k < steps; k++) free(noise[k].data);
    free(lat.data); free(ctx.data); free(unc.data); free(x);
    lm_unet_free(u);
    for (int i = 0; i < nl; i++) lm_lora_close(loras[i]);
    lm_source_close(ms);
    lm_source_close(is);
    return rc ? lm_cli_fail(prog, &err) : 0;
}
