/* lcm-verify schedule --steps K [--original-steps 50] [--strength S]:
 * the LCM timesteps (and each step's ᾱ, c_skip, c_out) as JSON on stdout. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "libmerge/cli.h"
#include "libmerge/scheduler.h"
#include "subcommands.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: lcm-verify schedule --steps K [--original-steps N] [--strength S]\n");
}

static int parse_int(const char *s, int *v)
{
    char *end;
    long x = strtol(s, &end, 10);
    if (!*s || *end || x < -1000000 || x > 1000000) return -1;
    *v = (int)x;
    return 0;
}

int lv_schedule(int argc, char **argv)
{
    static const struct option opts[] = {
        { "steps", required_argument, 0, 's' }, { "original-steps", required_argument, 0, 'O' },
        { "strength", required_argument, 0, 'S' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *prog = "lcm-verify schedule";
    int steps = 0, orig = 50, c;
    double strength = 1.0;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': if (parse_int(optarg, &steps)) return lm_cli_usage_error(prog, "bad --steps '%s'", optarg); break;
        case 'O': if (parse_int(optarg, &orig)) return lm_cli_usage_error(prog, "bad --original-steps '%s'", optarg); break;
        case 'S':
            strength = strtod(optarg, &end);
            if (!*optarg || *end) return lm_cli_usage_error(prog, "bad --strength '%s'", optarg);
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return LM_EXIT_USAGE;
        }
    }
    if (optind != argc || steps == 0) { usage(stderr); return LM_EXIT_USAGE; }
    if (orig < 1) return lm_cli_usage_error(prog, "--original-steps must be at least 1");
    lm_lcm s;
    lm_err err;
    lm_lcm_init(&s);
    int rc = lm_lcm_set_timesteps(&s, steps, orig, strength, &err);
    if (rc) return lm_cli_fail(prog, &err);
    printf("{\"steps\": %d, \"original_steps\": %d, \"strength\": %.17g, \"timesteps\": [", steps, orig, strength);
    for (int i = 0; i < s.n_steps; i++) printf(i ? ", %d" : "%d", s.timesteps[i]);
    printf("],\n \"alphas_cumprod\": [");
    for (int i = 0; i < s.n_steps; i++) printf(i ? ", %.9g" : "%.9g", s.alphas_cumprod[s.timesteps[i]]);
    printf("],\n \"c_skip\": [");
    for (int i = 0; i < s.n_steps; i++) {
        float k, o;
        lm_lcm_scalings(&s, s.timesteps[i], &k, &o);
        printf(i ? ", %.9g" : "%.9g", k);
    }
    printf("],\n \"c_out\": [");
    for (int i = 0; i < s.n_steps; i++) {
        float k, o;
        lm_lcm_scalings(&s, s.timesteps[i], &k, &o);
        printf(i ? ", %.9g" : "%.9g", o);
    }
    printf("]}\n");
    return fflush(stdout) ? LM_EXIT_IO : 0;
}
