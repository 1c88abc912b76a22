/* lcm-verify tokenize --prompt P: the 77 CLIP token ids of a prompt as JSON. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "libmerge/cli.h"
#include "libmerge/tokenizer.h"
#include "subcommands.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify tokenize --prompt P [--pad ID] [--vocab PATH] [--content]\n"
               "  prints the 77 ids (BOS, <= 75 content ids, EOS, padding) as a JSON array;\n"
               "  --pad 49407 (SD1.5, default) or 0 (SD2.x/SDXL encoder 2);\n"
               "  --content prints all content ids instead (no BOS/EOS, no truncation)\n");
}

int lv_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "prompt", required_argument, 0, 'p' }, { "pad", required_argument, 0, 'P' },
        { "vocab", required_argument, 0, 'V' }, { "content", no_argument, 0, 'c' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify tokenize", *prompt = NULL, *vocab = NULL;
    long pad = LM_CLIP_PAD_SD15;
    int content = 0, c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'P':
            pad = strtol(optarg, &end, 10);
            if (!*optarg || *end || pad < 0 || pad >= LM_CLIP_VOCAB) return lm_cli_usage_error(prog, "bad --pad '%s'", optarg);
            break;
        case 'V': vocab = optarg; break;
        case 'c': content = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (!prompt || optind != argc) { usage(stderr); return LM_EXIT_USAGE; }
    lm_err err;
    lm_err_clear(&err);
    char path[4096];
    int rc = 0;
    if (vocab) snprintf(path, sizeof path, "%s", vocab);
    else rc = lm_tokenizer_default_vocab(path, sizeof path, &err);
    lm_tokenizer *t = NULL;
    if (!rc) rc = lm_tokenizer_open(&t, path, &err);
    int32_t ids[LM_CLIP_CTX], *all = NULL;
    size_t n = LM_CLIP_CTX;
    if (!rc) rc = content ? lm_tokenizer_content(t, prompt, &all, &n, &err)
                          : lm_tokenizer_encode(t, prompt, (int32_t)pad, ids, NULL, &err);
    lm_tokenizer_free(t);
    if (rc) return lm_cli_fail(prog, &err);
    const int32_t *v = content ? all : ids;
    putchar('[');
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", v[i]);
    printf("]\n");
    free(all);
    return 0;
}
