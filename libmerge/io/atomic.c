/* Temporary-file bookkeeping for outputs: a fixed table of paths that a
 * SIGINT/SIGTERM/SIGHUP handler unlinks before exiting with 128+signal
 * (SIGBUS, an input mapping losing its pages: exit status 4, I/O error).
 *
 * The handler may only call async-signal-safe functions (unlink, _exit:
 * signal-safety(7)), and may run while another thread is registering a path,
 * so each slot has a state word changed with atomic operations: FREE →
 * CLAIMED (path being copied in) → LIVE (handler may unlink it) → FREE. The
 * handler only touches LIVE slots, whose path is complete. */
#include "libmerge/writer.h"
#include "libmerge/err.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define LM_ATOMIC_SLOTS 64
#define LM_ATOMIC_PATH 4096

enum { SLOT_FREE = 0, SLOT_CLAIMED = 1, SLOT_LIVE = 2 };

static struct {
    int state;
    char path[LM_ATOMIC_PATH];
} g_slots[LM_ATOMIC_SLOTS];

static void unlink_live(void)
{
    for (int i = 0; i < LM_ATOMIC_SLOTS; i++)
        if (__atomic_load_n(&g_slots[i].state, __ATOMIC_SEQ_CST) == SLOT_LIVE)
            unlink(g_slots[i].path);
}

static void on_signal(int sig)
{
    unlink_live();
    _exit(128 + sig);
}

/* SIGBUS: a page of a mapped input is gone (the file was truncated while we
 * read it, or the disk failed). Remove the outputs, say so, exit as an I/O
 * error rather than dying with a half-written temp file left behind. */
static void on_sigbus(int sig)
{
    (void)sig;
    unlink_live();
    static const char m[] = ": an input file shrank or failed while it was being read "
                            "(SIGBUS on its mapping); no output written\n";
    const char *prog = program_invocation_short_name;   /* strlen and write are async-signal-safe */
    ssize_t w = write(2, prog, strlen(prog));
    w = write(2, m, sizeof m - 1);
    (void)w;
    _exit(LM_EXIT_IO);
}

void lm_atomic_install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* block the other termination signals while one is being handled */
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaddset(&sa.sa_mask, SIGHUP);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* a write past RLIMIT_FSIZE would otherwise kill the process before the
     * writer can remove its temp file; ignored, write(2) fails with EFBIG */
    signal(SIGXFSZ, SIG_IGN);
    struct sigaction sb;
    memset(&sb, 0, sizeof sb);
    sb.sa_handler = on_sigbus;
    sigfillset(&sb.sa_mask);
    sigaction(SIGBUS, &sb, NULL);
}

int lm_atomic_register(const char *tmp_path)
{
    size_t n = strlen(tmp_path);
    if (n >= LM_ATOMIC_PATH)
        return LM_EUSAGE;
    for (int i = 0; i < LM_ATOMIC_SLOTS; i++) {
        int expect = SLOT_FREE;
        if (__atomic_compare_exchange_n(&g_slots[i].state, &expect, SLOT_CLAIMED, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            memcpy(g_slots[i].path, tmp_path, n + 1);
            __atomic_store_n(&g_slots[i].state, SLOT_LIVE, __ATOMIC_SEQ_CST);
            return 0;
        }
    }
    return LM_ENOMEM;
}

void lm_atomic_unregister(const char *tmp_path)
{
    for (int i = 0; i < LM_ATOMIC_SLOTS; i++) {
        if (__atomic_load_n(&g_slots[i].state, __ATOMIC_SEQ_CST) != SLOT_LIVE) continue;
        if (strcmp(g_slots[i].path, tmp_path) != 0) continue;
        __atomic_store_n(&g_slots[i].state, SLOT_FREE, __ATOMIC_SEQ_CST);
        return;
    }
}
