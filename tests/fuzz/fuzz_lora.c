/* libFuzzer harness: LoRA parsing, convention detection, key mapping onto a
 * full-size SD1.5 base (names and shapes from the fixtures manifest), ΔW and
 * its application to a weight. Run from the repository root. See targets.h. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_err err;
    lmf_lora(data, size, &err);
    return 0;
}
