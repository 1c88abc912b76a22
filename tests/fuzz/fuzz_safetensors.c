/* libFuzzer harness: the safetensors reader. Opens the input as a tensor
 * source (format detected from the bytes) and reads every tensor through
 * lm_source_read, lm_source_raw and lm_source_read_f32. See targets.h. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_err err;
    lmf_source(data, size, &err);
    return 0;
}
