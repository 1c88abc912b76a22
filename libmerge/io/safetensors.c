/* Placeholder: the safetensors reader (issue 2) replaces this file. */
#include "source_impl.h"

int lm_safetensors_open(lm_source **out, const char *path, lm_err *err)
{
    *out = NULL;
    return lm_err_set(err, LM_EUNSUPPORTED, path, NULL, 0, "safetensors reader not built yet");
}
