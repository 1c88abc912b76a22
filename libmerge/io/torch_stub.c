/* Placeholder until the PyTorch reader lands (issue 3): refuses torch files by name. */
#include "source_impl.h"

int lm_torch_open(lm_source **out, const char *path, lm_format fmt,
                  const lm_open_opts *opts, lm_err *err)
{
    (void)opts;
    *out = NULL;
    return lm_err_set(err, LM_EUNSUPPORTED, path, NULL, 0, "%s files are not supported yet", lm_format_name(fmt));
}
