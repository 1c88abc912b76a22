/* lcm-verify render MODEL [-l LORA:λ …] --prompt P --seed S --steps K -o OUT.png:
 * text to image with LCM, LoRAs applied at load, A1111 parameters in the PNG. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/cli.h"
#include "libmerge/merge.h"
#include "libmerge/pipeline.h"
#include "libmerge/png.h"
#include "libmerge/writer.h"
#include "plumbing.h"
#include "subcommands.h"

#define MAX_LORAS 16

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify render MODEL [-l LORA[:LAMBDA]]... --prompt P [--negative-prompt N]\n"
               "                  --seed S --steps K [--guidance G] [--size WxH] [--clip-skip N]\n"
               "                  [--vae FILE] [--text-encoder FILE] [--vocab PATH] [--vae-tile N]\n"
               "                  [--latents OUT.safetensors] [--no-hash] -o OUT.png\n"
               "  defaults: --guidance 1 (no classifier-free guidance), --size 512x512, --clip-skip 1\n"
               "  --vae-tile N: decode in exact bands of N latent rows, 1..4096 (bounded memory, temporary\n"
               "      files in $TMPDIR); default: automatic above 512 px; -1: never\n");
}

static void progress(void *ctx, const char *stage, int k, int K, double sec)
{
    (void)ctx;
    if (!strcmp(stage, "step")) fprintf(stderr, "\rstep %d/%d  %.2f s/step", k, K, sec);
    else fprintf(stderr, "%s%s: %.2f s\n", !strcmp(stage, "vae") ? "\n" : "", stage, sec);
}

int lv_render(int argc, char **argv)
{
    static const struct option opts[] = {
        { "lora", required_argument, 0, 'l' }, { "prompt", required_argument, 0, 'p' },
        { "negative-prompt", required_argument, 0, 'n' }, { "negative", required_argument, 0, 'n' },
        { "seed", required_argument, 0, 's' },
        { "steps", required_argument, 0, 'k' }, { "guidance", required_argument, 0, 'g' },
        { "size", required_argument, 0, 'z' }, { "clip-skip", required_argument, 0, 'c' },
        { "vae", required_argument, 0, 'V' }, { "text-encoder", required_argument, 0, 'T' },
        { "vocab", required_argument, 0, 'B' }, { "vae-tile", required_argument, 0, 'E' },
        { "latents", required_argument, 0, 'L' }, { "no-hash", no_argument, 0, 'H' },
        { "output", required_argument, 0, 'o' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify render", *outp = NULL, *vae_path = NULL, *te_path = NULL, *lat_out = NULL;
    char *lspec[MAX_LORAS], *end;
    int nl = 0, c, have_seed = 0, have_steps = 0, hash = 1;
    lm_render_opts o = LM_RENDER_OPTS_INIT;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:p:n:s:k:g:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (nl == MAX_LORAS) return lm_cli_usage_error(prog, "at most %d LoRAs", MAX_LORAS);
            lspec[nl++] = optarg;
            break;
        case 'p': o.prompt = optarg; break;
        case 'n': o.negative_prompt = optarg; break;
        case 's':
            errno = 0;
            o.seed = strtoull(optarg, &end, 10);
            if (!*optarg || *end || *optarg == '-' || errno == ERANGE) return lm_cli_usage_error(prog, "bad --seed '%s'", optarg);
            have_seed = 1;
            break;
        case 'k':
            o.steps = (int)strtol(optarg, &end, 10);
            if (!*optarg || *end || o.steps < 1 || o.steps > 50) return lm_cli_usage_error(prog, "--steps must be 1..50");
            have_steps = 1;
            break;
        case 'g':
            o.guidance = strtof(optarg, &end);
            if (!*optarg || *end || !(o.guidance >= 0 && o.guidance <= 100)) return lm_cli_usage_error(prog, "bad --guidance '%s'", optarg);
            break;
        case 'z':
            if (sscanf(optarg, "%dx%d%c", &o.width, &o.height, (char[1]){ 0 }) != 2 || o.width < 8 || o.height < 8 ||
                o.width % 8 || o.height % 8)
                return lm_cli_usage_error(prog, "bad --size '%s' (WxH, sides multiples of 8)", optarg);
            break;
        case 'c':
            o.clip_skip = (int)strtol(optarg, &end, 10);
            if (!*optarg || *end || o.clip_skip < 1 || o.clip_skip > 64) return lm_cli_usage_error(prog, "bad --clip-skip '%s'", optarg);
            break;
        case 'V': vae_path = optarg; break;
        case 'T': te_path = optarg; break;
        case 'B': o.vocab = optarg; break;
        case 'E': if (lv_parse_band(prog, "--vae-tile", optarg, &o.vae_tile)) return LM_EXIT_USAGE; break;
        case 'L': lat_out = optarg; break;
        case 'H': hash = 0; break;
        case 'o': outp = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (!o.prompt || !have_seed || !have_steps || !outp || optind != argc - 1) { usage(stderr); return LM_EXIT_USAGE; }
    const char *model = argv[optind];
    if (lm_cli_progress_enabled()) o.progress = progress;
    lm_atomic_install_signal_handlers();
    lm_err err;
    lm_err_clear(&err);
    lm_lora *loras[MAX_LORAS] = { 0 };
    float lambdas[MAX_LORAS];
    char lpath[MAX_LORAS][4096];
    lm_source *ms = NULL, *vs = NULL, *ts = NULL;
    lm_render_result r;
    memset(&r, 0, sizeof r);
    int rc = 0;
    /* neither output may be an input (the vocabulary included) nor a directory, device or FIFO */
    const char *ins[5] = { model, vae_path, te_path, o.vocab, outp };
    rc = lv_check_output(outp, ins, 4, lspec, nl, &err);
    if (!rc && lat_out) rc = lv_check_output(lat_out, ins, 5, lspec, nl, &err);
    for (int i = 0; i < nl && !rc; i++) {
        double l;
        if (lm_parse_weighted(lspec[i], lpath[i], sizeof lpath[i], &l))
            rc = lm_err_set(&err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "bad LoRA spec '%s'", lspec[i]);
    }
    if (!rc) rc = lv_open_loras(lspec, nl, loras, lambdas, &err);
    if (!rc) rc = lm_source_open(&ms, model, NULL, &err);
    if (!rc && vae_path) rc = lm_source_open(&vs, vae_path, NULL, &err);
    if (!rc && te_path) rc = lm_source_open(&ts, te_path, NULL, &err);
    lm_render_models m = { ms, vs, ts };
    if (!rc) rc = lm_render_sources(&m, (const lm_lora *const *)loras, lambdas, (size_t)nl, &o, &r, &err);
    /* A1111 "parameters" */
    char *params = NULL;
    const char *lpp[MAX_LORAS];
    for (int i = 0; i < nl; i++) lpp[i] = lpath[i];
    if (!rc) rc = lm_render_infotext(model, lpp, lambdas, (size_t)nl, &o, hash, &params, &err);
    lm_png_text txt[1] = { { "parameters", params } };
    if (!rc) rc = lm_png_write(outp, r.rgb, r.width, r.height, txt, 1, &err);
    if (!rc && lat_out) {
        lv_tensor lt = { "latent", 4, { 1, 4, r.latent_h, r.latent_w }, r.latent };
        const char *inputs[2] = { model, outp };
        rc = lv_write(lat_out, &lt, 1, inputs, 2, "render", &err);
    }
    if (!rc && o.progress)
        fprintf(stderr, "text %.2f s, unet %.2f s, vae %.2f s\n", r.seconds_text, r.seconds_unet, r.seconds_vae);
    free(params);
    lm_render_result_free(&r);
    for (int i = 0; i < nl; i++) lm_lora_close(loras[i]);
    lm_source_close(ms);
    lm_source_close(vs);
    lm_source_close(ts);
    return rc ? lm_cli_fail(prog, &err) : 0;
}
