/* libFuzzer harness: the CLIP tokenizer (text clean-up, pre-tokenizer, BPE)
 * on arbitrary bytes as a prompt. Run from the repository root (it loads
 * the vocabulary from fixtures/). See targets.h. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_err err;
    lmf_tokenizer(data, size, &err);
    return 0;
}
