/* Placeholder: replaced by the issue that implements this subcommand. */
#include <stdio.h>
#include "libmerge/err.h"
#include "subcommands.h"

int lv_tokenize(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "lcm-verify: %s: not implemented yet\n", argv[0]);
    return LM_EXIT_INTERNAL;
}
