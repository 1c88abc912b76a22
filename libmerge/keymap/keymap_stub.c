/* Placeholder so the library links until libmerge/keymap lands (issue 4); delete it then. */
#include <string.h>
#include "libmerge/keymap.h"

const char *lm_arch_name(lm_arch a) { (void)a; return "unknown"; }
const char *lm_layout_name(lm_layout l) { (void)l; return "unknown"; }
void lm_model_detect(const lm_source *s, lm_model_info *out) { (void)s; memset(out, 0, sizeof *out); }
int lm_layout_convert_name(lm_arch arch, lm_layout from, lm_layout to, const char *name, char *out, size_t n, int *reshape)
{ (void)arch; (void)from; (void)to; (void)out; (void)n; (void)reshape; return lm_err_set(NULL, LM_EUNSUPPORTED, NULL, name, LM_ERR_NO_OFFSET, "not built yet"); }
int lm_keymap_build(lm_keymap **out, const lm_source *base, lm_err *err) { (void)base; *out = NULL; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "key map not built yet"); }
void lm_keymap_free(lm_keymap *m) { (void)m; }
const lm_model_info *lm_keymap_info(const lm_keymap *m) { (void)m; return NULL; }
int lm_keymap_resolve(const lm_keymap *m, const lm_lora *lora, int allow_unmatched, lm_target *targets, size_t *n_unmatched, lm_err *err)
{ (void)m; (void)lora; (void)allow_unmatched; (void)targets; (void)n_unmatched; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "key map not built yet"); }
