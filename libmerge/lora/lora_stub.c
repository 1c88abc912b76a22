/* Placeholder so the library links until libmerge/lora lands (issue 4); delete it then. */
#include "libmerge/lora.h"

int lm_lora_open(lm_lora **out, const char *path, const lm_open_opts *opts, lm_err *err)
{ (void)opts; *out = NULL; return lm_err_set(err, LM_EUNSUPPORTED, path, NULL, LM_ERR_NO_OFFSET, "LoRA reader not built yet"); }
void lm_lora_close(lm_lora *l) { (void)l; }
lm_lora_convention lm_lora_convention_of(const lm_lora *l) { (void)l; return LM_LORA_UNKNOWN; }
const char *lm_lora_convention_name(lm_lora_convention c) { (void)c; return "unknown"; }
const lm_source *lm_lora_source(const lm_lora *l) { (void)l; return NULL; }
size_t lm_lora_count(const lm_lora *l) { (void)l; return 0; }
const lm_lora_module *lm_lora_module_at(const lm_lora *l, size_t i) { (void)l; (void)i; return NULL; }
lm_lora_convention lm_lora_detect(const lm_source *s) { (void)s; return LM_LORA_UNKNOWN; }
int lm_lora_delta(const lm_lora *l, size_t i, float *dst, lm_err *err) { (void)l; (void)i; (void)dst; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "not built yet"); }
int lm_lora_delta_bias(const lm_lora *l, size_t i, float *dst, lm_err *err) { (void)l; (void)i; (void)dst; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "not built yet"); }
int lm_lora_apply(const lm_lora *l, size_t i, float lambda, float *W, const int64_t *wshape, int wndim, int64_t row0, int64_t rows, lm_err *err)
{ (void)l; (void)i; (void)lambda; (void)W; (void)wshape; (void)wndim; (void)row0; (void)rows; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "not built yet"); }
