/* Replays every input in tests/regress/ through the parser its name selects
 * (the same calls the fuzz harnesses make, tests/fuzz/targets.h):
 *   safetensors-*  torch-*  pickle-*  torchzip-*  lora-*  tokenizer-*
 * Each must end in a clean result: 0, or a library error code with a reason
 * (never LM_EINTERNAL), without crashing, hanging (REGRESS_TIMEOUT seconds,
 * default 20, times TEST_TIME_SCALE) or leaking (run under ASan or valgrind to see leaks).
 * One "PASS regress/<file>" line per file. */
#include "test.h"
#include "fuzz/targets.h"

#include <dirent.h>
#include <signal.h>


static const char *cur_file = "";

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "FAIL regress: input hangs: ";
    ssize_t w = write(1, m, sizeof m - 1);
    w = write(1, cur_file, strlen(cur_file));
    w = write(1, "\n", 1);
    (void)w;
    _exit(1);
}

static int allowed(int rc)
{
    return rc == 0 || rc == LM_EINPUT || rc == LM_ETRUNCATED || rc == LM_EUNSUPPORTED || rc == LM_EIO ||
           rc == LM_ENOMEM || rc == LM_EMISMATCH || rc == LM_EUSAGE;
}

static char cur_path[1024];

static void replay(void)
{
    size_t n = 0;
    unsigned char *data = t_slurp(cur_path, &n);
    CHECK_MSG(data != NULL, "cannot read %s", cur_path);
    lm_err err;
    lm_err_clear(&err);
    int rc = 0, known = 1;
    if (!strncmp(cur_file, "safetensors-", 12)) rc = lmf_source(data, n, &err);
    else if (!strncmp(cur_file, "torch-", 6)) {
        rc = lmf_source(data, n, &err);
        if (allowed(rc)) rc = lmf_source_skip_unknown(data, n, &err);
    } else if (!strncmp(cur_file, "lora-", 5)) rc = lmf_lora(data, n, &err);
    else if (!strncmp(cur_file, "pickle-", 7)) rc = lmf_pickle(data, n, &err);
    else if (!strncmp(cur_file, "torchzip-", 9)) rc = lmf_torch_zip_pickle(data, n, &err);
    else if (!strncmp(cur_file, "tokenizer-", 10)) rc = lmf_tokenizer(data, n, &err);
    else known = 0;
    free(data);
    CHECK_MSG(known, "%s: file name names no parser (safetensors-, torch-, pickle-, torchzip-, lora-, tokenizer-)", cur_file);
    CHECK_MSG(allowed(rc), "%s: returned %d (%s): %s", cur_file, rc, lm_err_name(rc), err.msg);
    CHECK_MSG(rc == 0 || err.msg[0], "%s: error %d without a reason", cur_file, rc);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
    const char *dir = "tests/regress";
    int timeout = getenv("REGRESS_TIMEOUT") ? atoi(getenv("REGRESS_TIMEOUT")) : 20;
    if (getenv("TEST_TIME_SCALE") && atoi(getenv("TEST_TIME_SCALE")) > 1) timeout *= atoi(getenv("TEST_TIME_SCALE"));
    signal(SIGALRM, on_alarm);
    DIR *d = opendir(dir);
    if (!d) { printf("FAIL regress: cannot open %s (run from the repository root)\n", dir); return 1; }
    char *names[4096];
    size_t k = 0;
    struct dirent *de;
    while ((de = readdir(d)) && k < 4096) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "README")) continue;
        names[k++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, k, sizeof *names, cmp_str);
    static char label[1100];
    for (size_t i = 0; i < k; i++) {
        cur_file = names[i];
        snprintf(cur_path, sizeof cur_path, "%s/%s", dir, names[i]);
        snprintf(label, sizeof label, "regress/%s", names[i]);
        t_name_ = label;
        t_failed_ = 0;
        alarm((unsigned)timeout);
        replay();
        alarm(0);
        if (t_failed_) t_total_fail_++;
        else printf("PASS %s\n", label);
        fflush(stdout);
        free(names[i]);
    }
    TEST_EXIT();
}
