/* libmerge/torch.h — what a PyTorch source says beyond lm_source.
 *
 * PyTorch files (torch.save zip format since torch 1.6, the legacy format
 * before it) open through lm_source_open like any model file; the pickled
 * object is read by a restricted unpickler that never calls anything (see
 * libmerge(7), PYTORCH FILES). Tensor names are the pickled dicts' keys
 * joined with '.', less the wrapper the SD tools load the state dict from:
 * a top-level "state_dict" always (A1111 get_state_dict_from_checkpoint,
 * kohya-ss load_checkpoint_with_text_encoder_conversion, ComfyUI
 * load_torch_file); "model_state_dict", "model", "module", "params_ema",
 * "params" or "net" when all of the file's tensors lie under that one key or
 * under training state (optimizer…, lr_scheduler…, callbacks), with
 * "params_ema" chosen over "params" as basicsr does; then DDP's "module."
 * when every tensor key of the state dict carries it. Training state and
 * "model_ema.*" keep their names.
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

/* The prefix the flattening dropped from the state dict's tensor names, as
 * it would have read ("state_dict.", "model_state_dict.", "params_ema.",
 * "module.", "model.module.", …), or NULL when nothing was dropped or s is
 * not a PyTorch file. Valid until lm_source_close(s). */
const char *lm_torch_dropped_prefix(const lm_source *s);

#ifdef __cplusplus
}
#endif
#endif
