/* libFuzzer harness: the restricted unpickler of the PyTorch reader alone
 * (pk_load, internal API), faster than going through a zip. See targets.h. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_err err;
    lmf_pickle(data, size, &err);
    return 0;
}
