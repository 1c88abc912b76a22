/* lcm-verify text-encode MODEL --prompt P [--clip-skip N] -o OUT: CLIP text
 * encoder hidden states (tokens [1,77] I64, context [1,77,C] F32). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/cli.h"
#include "libmerge/clip.h"
#include "libmerge/tokenizer.h"
#include "libmerge/writer.h"
#include "plumbing.h"
#include "subcommands.h"

#define MAX_LORAS 16

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify text-encode MODEL --prompt P [--clip-skip N] [--no-final-ln]\n"
               "                  [-l LORA[:LAMBDA]]... [--vocab PATH] -o OUT.safetensors\n"
               "  OUT: tokens [1,77] I64, context [1,77,C] F32 (the last hidden state after the\n"
               "  final layer norm; --clip-skip 2 takes the penultimate layer, as A1111 counts)\n");
}

static int write_out(const char *path, const int32_t *ids, const float *ctx, int C, const char *const *inputs,
                     size_t n_inputs, lm_err *err)
{
    lm_wtensor wt[2] = { { "tokens", LM_DT_I64, 2, { 1, LM_CLIP_CTX } },
                         { "context", LM_DT_F32, 3, { 1, LM_CLIP_CTX, C } } };
    lm_kv meta[1] = { { "lcm-verify", "text-encode" } };
    lm_writer_opts o = LM_WRITER_OPTS_INIT;
    o.inputs = inputs;
    o.n_inputs = n_inputs;
    lm_writer *w = NULL;
    int64_t ids64[LM_CLIP_CTX];
    for (int i = 0; i < LM_CLIP_CTX; i++) ids64[i] = ids[i];
    int rc = lm_writer_open(&w, path, wt, 2, meta, 1, &o, err);
    for (size_t k = 0; k < 2 && !rc; k++) {
        if (lm_writer_tensor_index(w, k) == 0) rc = lm_writer_write(w, ids64, sizeof ids64, err);
        else rc = lm_writer_write(w, ctx, (size_t)LM_CLIP_CTX * C * sizeof(float), err);
    }
    if (rc) { lm_writer_abort(w); return rc; }
    return lm_writer_commit(w, err);
}

int lv_text_encode(int argc, char **argv)
{
    static const struct option opts[] = {
        { "prompt", required_argument, 0, 'p' }, { "clip-skip", required_argument, 0, 'k' },
        { "no-final-ln", no_argument, 0, 'N' }, { "lora", required_argument, 0, 'l' },
        { "vocab", required_argument, 0, 'V' }, { "output", required_argument, 0, 'o' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify text-encode", *prompt = NULL, *vocab = NULL, *outp = NULL;
    char *lspec[MAX_LORAS], *end;
    int nl = 0, c, final_ln = 1;
    long skip = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:l:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'k':
            skip = strtol(optarg, &end, 10);
            if (!*optarg || *end || skip < 1 || skip > 64) return lm_cli_usage_error(prog, "bad --clip-skip '%s'", optarg);
            break;
        case 'N': final_ln = 0; break;
        case 'l':
            if (nl == MAX_LORAS) return lm_cli_usage_error(prog, "at most %d LoRAs", MAX_LORAS);
            lspec[nl++] = optarg;
            break;
        case 'V': vocab = optarg; break;
        case 'o': outp = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (!prompt || !outp || optind != argc - 1) { usage(stderr); return LM_EXIT_USAGE; }
    const char *model = argv[optind];
    lm_atomic_install_signal_handlers();
    lm_err err;
    lm_err_clear(&err);
    char vpath[4096];
    int rc = 0;
    if (vocab) snprintf(vpath, sizeof vpath, "%s", vocab);
    else rc = lm_tokenizer_default_vocab(vpath, sizeof vpath, &err);
    const char *ins[2] = { model, vpath };
    if (!rc) rc = lv_check_output(outp, ins, 2, lspec, nl, &err);
    lm_tokenizer *t = NULL;
    int32_t ids[LM_CLIP_CTX];
    if (!rc) rc = lm_tokenizer_open(&t, vpath, &err);
    if (!rc) rc = lm_tokenizer_encode(t, prompt, LM_CLIP_PAD_SD15, ids, NULL, &err);
    lm_tokenizer_free(t);
    lm_lora *loras[MAX_LORAS] = { 0 };
    float lambdas[MAX_LORAS];
    lm_source *src = NULL;
    lm_clip *clip = NULL;
    float *ctx = NULL;
    if (!rc) rc = lv_open_loras(lspec, nl, loras, lambdas, &err);
    if (!rc) rc = lm_source_open(&src, model, NULL, &err);
    if (!rc) rc = lm_clip_load_source(&clip, src, (const lm_lora *const *)loras, lambdas, (size_t)nl, &err);
    int C = clip ? lm_clip_config_of(clip)->hidden : 0;
    if (!rc && !(ctx = malloc((size_t)LM_CLIP_CTX * C * sizeof *ctx)))
        rc = lm_err_set(&err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    if (!rc) rc = lm_clip_encode(clip, ids, LM_CLIP_CTX, (int)skip, final_ln, ctx, &err);
    const char *inputs[1] = { model };
    if (!rc) rc = write_out(outp, ids, ctx, C, inputs, 1, &err);
    free(ctx);
    lm_clip_free(clip);
    for (int i = 0; i < nl; i++) lm_lora_close(loras[i]);
    lm_source_close(src);
    return rc ? lm_cli_fail(prog, &err) : 0;
}
