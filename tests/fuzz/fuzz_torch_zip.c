/* libFuzzer harness: a fuzzed data.pkl inside a well-formed PyTorch zip
 * (right CRCs, eight 4 KiB storages), so mutations get past the zip layer
 * to the storage and tensor-record checks and the state-dict flattening.
 * See targets.h. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_err err;
    lmf_torch_zip_pickle(data, size, &err);
    return 0;
}
