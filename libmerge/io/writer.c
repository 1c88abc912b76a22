/* Placeholder: the streaming safetensors writer (issue 2) replaces this file. */
#include "libmerge/writer.h"

int lm_writer_open(lm_writer **out, const char *path, const lm_wtensor *tensors, size_t n,
                   const lm_kv *meta, size_t n_meta, const lm_writer_opts *opts, lm_err *err)
{
    (void)tensors; (void)n; (void)meta; (void)n_meta; (void)opts;
    *out = NULL;
    return lm_err_set(err, LM_EUNSUPPORTED, path, NULL, LM_ERR_NO_OFFSET, "writer not built yet");
}
size_t lm_writer_tensor_index(const lm_writer *w, size_t k) { (void)w; return k; }
int lm_writer_write(lm_writer *w, const void *d, size_t n, lm_err *err) { (void)w; (void)d; (void)n; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "writer not built yet"); }
int lm_writer_commit(lm_writer *w, lm_err *err) { (void)w; return lm_err_set(err, LM_EUNSUPPORTED, NULL, NULL, LM_ERR_NO_OFFSET, "writer not built yet"); }
void lm_writer_abort(lm_writer *w) { (void)w; }
uint64_t lm_writer_data_start(const lm_writer *w) { (void)w; return 0; }
void lm_atomic_install_signal_handlers(void) {}
int lm_atomic_register(const char *p) { (void)p; return 0; }
void lm_atomic_unregister(const char *p) { (void)p; }
