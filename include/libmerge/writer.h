/* libmerge/writer.h — streaming safetensors writer.
 *
 * The header is computed first from names, dtypes and shapes, then tensor
 * data is written one tensor at a time in header order, so memory does not
 * grow with model size. The file is written to a temporary file in the target
 * directory ("<dir>/.<name>.XXXXXX"), fsync'd and renamed into place by
 * lm_writer_commit. On any failure, on lm_writer_abort, and on SIGINT/SIGTERM
 * (see lm_atomic_install_signal_handlers) the temporary file is removed and
 * the target is left as it was.
 *
 * Layout follows the safetensors format description: 8-byte little-endian
 * header length N, N bytes of JSON (padded with spaces to a multiple of 8 as
 * the reference writer pads it), then the data area.
 */
#ifndef LIBMERGE_WRITER_H
#define LIBMERGE_WRITER_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"
#include "libmerge/dtype.h"
#include "libmerge/source.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_writer lm_writer;

typedef struct lm_wtensor {
    const char *name;              /* copied by lm_writer_open */
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];
} lm_wtensor;

typedef struct lm_kv {
    const char *key;
    const char *value;
} lm_kv;

typedef struct lm_writer_opts {
    int version;                   /* LM_WRITER_OPTS_VERSION */
    int keep_order;                /* 1: write tensors in the order given (default 0:
                                      the reference writer's order, see lm_writer_open) */
    const char *const *inputs;     /* paths the output must not be (refused: LM_EUSAGE) */
    size_t n_inputs;
} lm_writer_opts;
#define LM_WRITER_OPTS_VERSION 1
#define LM_WRITER_OPTS_INIT { LM_WRITER_OPTS_VERSION, 0, NULL, 0 }

/* Opens a writer for path with n tensors and n_meta metadata pairs (meta may
 * be NULL). The order in which data must then be supplied is the writer's
 * order: lm_writer_tensor_index(w, k) names the k-th tensor to write. Unless
 * opts->keep_order, that order is the reference writer's (safetensors
 * Rust `prepare`: by dtype alignment descending, then name ascending).
 * Errors: LM_EUSAGE (path is one of opts->inputs, same inode counts; path
 * is empty, an existing directory, or a device/FIFO/socket, which the rename
 * would replace),
 * LM_EIO (cannot create the temp file), LM_EINPUT (bad name/shape). */
int lm_writer_open(lm_writer **out, const char *path, const lm_wtensor *tensors, size_t n,
                   const lm_kv *meta, size_t n_meta, const lm_writer_opts *opts, lm_err *err);

/* Index (into the array given to lm_writer_open) of the k-th tensor to write;
 * (size_t)-1 when k >= n. */
size_t lm_writer_tensor_index(const lm_writer *w, size_t k);

/* Appends nbytes of data for the current tensor (a tensor may be written in
 * several calls). Writing past a tensor's size moves on to the next one.
 * Errors: LM_EIO (ENOSPC, EFBIG, EIO: the temp file is removed), LM_EUSAGE
 * (more bytes than the header declares). */
int lm_writer_write(lm_writer *w, const void *data, size_t nbytes, lm_err *err);

/* Appends nbytes read from the file src_path at byte offset (a tensor's
 * lm_entry.offset in a safetensors source), as lm_writer_write would append
 * them, but copied by the kernel (copy_file_range(2), as cp(1) does) without
 * passing through user space; falls back to pread/write across filesystems.
 * The source stays open between calls with the same path. Errors: as
 * lm_writer_write; LM_EIO naming src_path when it cannot be opened or read
 * (the temp file is removed). */
int lm_writer_copy_from(lm_writer *w, const char *src_path, uint64_t offset, uint64_t nbytes, lm_err *err);
/* The same from src_fd, a descriptor the caller opened on src_path (read with explicit
 * offsets only: its file position is left alone; the writer keeps a duplicate until it is
 * freed): the bytes come from the file that descriptor opened even if src_path is removed
 * or replaced meanwhile, as lm_bake needs while it maps the base. src_path names the file
 * in errors; src_fd < 0 behaves as lm_writer_copy_from. Errors: as lm_writer_copy_from. */
int lm_writer_copy_from_fd(lm_writer *w, int src_fd, const char *src_path, uint64_t offset, uint64_t nbytes, lm_err *err);

/* Writes nbytes at byte off of the data area (0: the first byte after the
 * header) with pwrite(2), from any thread and in any order, without moving the
 * sequential position: for callers that compute tensors in parallel and write
 * each from its worker. The sequential side then steps over those bytes with
 * lm_writer_skip, in order. Changes no writer state (a failure is only
 * returned: the caller aborts). Safe until lm_writer_commit/abort. Errors:
 * LM_EIO (ENOSPC, EFBIG, EIO), LM_EUSAGE (past the declared data). */
int lm_writer_pwrite(lm_writer *w, uint64_t off, const void *data, size_t nbytes, lm_err *err);

/* Whole 4096-byte blocks that lm_writer_pwrite is given at an address aligned as their
 * file offset are written with O_DIRECT (the bytes go from the caller's memory to the
 * disk: no copy into the page cache and no writeback work, about 0.4 s of CPU less for
 * 2 GB here); the partial blocks at either end, and everything on filesystems without
 * O_DIRECT (tmpfs) or with LIBMERGE_DIRECT_IO=0, through the page cache as before. */
#define LM_WRITER_DIRECT_ALIGN 4096u
/* The offset within a block at which data-area byte off lands: a buffer b holding
 * the bytes from off with (uintptr_t)b % LM_WRITER_DIRECT_ALIGN == this value goes
 * out with O_DIRECT. 0 when the writer has no direct descriptor. */
size_t lm_writer_direct_shift(const lm_writer *w, uint64_t off);

/* Moves the sequential position over nbytes already written with
 * lm_writer_pwrite, as lm_writer_write would after appending them. Call only
 * once those pwrites have returned. Errors: as lm_writer_write. */
int lm_writer_skip(lm_writer *w, size_t nbytes, lm_err *err);

/* Checks every byte was written, fsyncs, renames into place, fsyncs the
 * directory, frees w. On error the temp file is removed and w freed. */
int lm_writer_commit(lm_writer *w, lm_err *err);

/* Removes the temp file and frees w; safe on NULL. */
void lm_writer_abort(lm_writer *w);

/* Offset of the data area (8 + header length N, N padded to a multiple of 8) the
 * writer chose, in bytes from the start of the file. */
uint64_t lm_writer_data_start(const lm_writer *w);

/* Replaces the metadata given at open (all pairs, same order) with meta, rewriting
 * the header in place; for values known only once the data is written (a hash of it),
 * given at open as placeholders of the same length. Call before lm_writer_commit.
 * Errors: LM_EUSAGE (the new header's padded length differs), LM_EINPUT (bad
 * metadata), LM_EIO (write failed: the temp file is removed). */
int lm_writer_update_meta(lm_writer *w, const lm_kv *meta, size_t n_meta, lm_err *err);

/* The checks lm_writer_open makes on its output path before any work, for
 * commands whose output is not safetensors (a PNG, a report): refuses, with
 * LM_EUSAGE naming path, an output that is one of inputs[0..n_inputs) (same
 * name, or same st_dev and st_ino, so a symlink or hard link to an input
 * counts), an empty path or one ending in '/', and an existing directory,
 * device, FIFO or socket (a rename would replace it). inputs may be NULL;
 * NULL entries are not allowed. Returns 0 or the error code. */
int lm_output_check(const char *path, const char *const *inputs, size_t n_inputs, lm_err *err);

/* Temporary-file bookkeeping shared by every output writer: registers a path
 * to unlink if the process is interrupted. lm_atomic_install_signal_handlers
 * sets SIGINT/SIGTERM/SIGHUP handlers that unlink every registered path and
 * exit with 128+signal. Commands call it once at start. */
void lm_atomic_install_signal_handlers(void);
/* Registers tmp_path (async-signal-safe bookkeeping: fixed slots, no allocation).
 * Returns 0, LM_EUSAGE when the path is too long for a slot, LM_ENOMEM when every
 * slot is taken. lm_atomic_unregister forgets it (a path never registered is ignored). */
int lm_atomic_register(const char *tmp_path);
void lm_atomic_unregister(const char *tmp_path);

#ifdef __cplusplus
}
#endif
#endif
