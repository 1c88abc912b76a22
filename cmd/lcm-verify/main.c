/* lcm-verify: dispatch to a subcommand; each lives in its own file here. */
#include <stdio.h>
#include <string.h>

#include "libmerge/err.h"
#include "subcommands.h"

static const struct { const char *name; int (*fn)(int, char **); const char *what; } k_subs[] = {
    { "bake", lv_bake, "prove OUT = BASE + sum of lambda * dW" },
    { "lora", lv_lora, "check a merged LoRA against its sources" },
    { "compare", lv_compare, "render baked vs base + runtime LoRA and compare" },
    { "sweep", lv_sweep, "grid of images over steps and lambda" },
    { "unet", lv_unet, "one UNet evaluation: latent, timestep, context -> eps" },
    { "schedule", lv_schedule, "print the LCM timesteps as JSON" },
    { "sample", lv_sample, "LCM multistep sampling from given latents and noise" },
    { "tokenize", lv_tokenize, "CLIP token ids of a prompt as JSON" },
    { "text-encode", lv_text_encode, "CLIP text encoder hidden states" },
    { "vae-decode", lv_vae_decode, "VAE decoder: latent -> image" },
    { "render", lv_render, "text to image with LCM, LoRAs applied at load" },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify SUBCOMMAND [options]\n\nsubcommands:\n");
    for (size_t i = 0; i < sizeof k_subs / sizeof k_subs[0]; i++)
        fprintf(f, "  %-12s %s\n", k_subs[i].name, k_subs[i].what);
    fprintf(f, "\nSee lcm-verify(1).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) { usage(stderr); return LM_EXIT_USAGE; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) { usage(stdout); return 0; }
    for (size_t i = 0; i < sizeof k_subs / sizeof k_subs[0]; i++)
        if (!strcmp(argv[1], k_subs[i].name)) {
            /* getopt names argv[0] in its messages: "lcm-verify compare: unrecognized
             * option", like the subcommands' own errors, not "compare: …" */
            static char prog[64];
            snprintf(prog, sizeof prog, "lcm-verify %s", k_subs[i].name);
            argv[1] = prog;
            return k_subs[i].fn(argc - 1, argv + 1);
        }
    fprintf(stderr, "lcm-verify: unknown subcommand '%s' (see lcm-verify --help)\n", argv[1]);
    return LM_EXIT_USAGE;
}
