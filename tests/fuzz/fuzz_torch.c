/* libFuzzer harness: the PyTorch reader (zip and legacy formats) and its
 * restricted unpickler. Each input is opened twice: with the default global
 * whitelist, and with skip_unknown (unknown globals read as opaque values).
 * Every tensor is read back. See targets.h. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_err err;
    lmf_source(data, size, &err);
    lmf_source_skip_unknown(data, size, &err);
    return 0;
}
