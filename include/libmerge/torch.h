/* libmerge/torch.h — what a PyTorch source says beyond lm_source.
 *
 * PyTorch files (torch.save zip format since torch 1.6, the legacy format
 * before it) open through lm_source_open like any model file; the pickled
 * object is read by a restricted unpickler that never calls anything (see
 * libmerge(7), PYTORCH FILES). Tensor names are the pickled dicts' keys
 * joined with '.'; a top-level "state_dict" wrapper is dropped from the
 * names, as A1111 (get_state_dict_from_checkpoint) and kohya-ss
 * (load_checkpoint_with_text_encoder_conversion) do when they load an SD
 * checkpoint.
 */
#ifndef LIBMERGE_TORCH_H
#define LIBMERGE_TORCH_H

#include <stddef.h>
#include "libmerge/source.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of non-tensor leaves (ints, floats, strings, opaque objects such as
 * numpy scalars or a Lightning callback's state) the flattening skipped:
 * "global_step" and "epoch" in an SD checkpoint count here. 0 for sources
 * that are not PyTorch files. */
size_t lm_torch_nontensor_count(const lm_source *s);

#ifdef __cplusplus
}
#endif
#endif
