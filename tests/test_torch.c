/* PyTorch readers: zip and legacy torch.save files, the restricted
 * unpickler, flattening, and refusal of hostile pickles.
 * Fixtures: fixtures/torch/ (make_fixtures.py) and fixtures/real/. */
#include "test.h"
#include "libmerge/source.h"
#include "libmerge/torch.h"
#include "libmerge/dtype.h"

#include <stdint.h>
#include <unistd.h>

#define SENTINEL "/tmp/libmerge_hostile_sentinel"

static lm_source *open_ok(const char *path, int skip_unknown, lm_err *e)
{
    lm_open_opts o = LM_OPEN_OPTS_INIT;
    o.skip_unknown = skip_unknown;
    lm_source *s = NULL;
    if (lm_source_open(&s, path, &o, e)) return NULL;
    return s;
}

/* entry named name as fp32 (caller frees), or NULL */
static float *read_named(const lm_source *s, const char *name, const lm_entry **ep)
{
    int64_t i = lm_source_find(s, name);
    if (i < 0) return NULL;
    const lm_entry *e = lm_source_entry(s, (size_t)i);
    float *f = malloc((size_t)e->numel * sizeof *f + 4);
    if (lm_source_read_f32(s, (size_t)i, f, NULL)) { free(f); return NULL; }
    if (ep) *ep = e;
    return f;
}

static double sum_named(const lm_source *s, const char *name)
{
    const lm_entry *e;
    float *f = read_named(s, name, &e);
    if (!f) return NAN;
    double acc = 0;
    for (int64_t k = 0; k < e->numel; k++) acc += f[k];
    free(f);
    return acc;
}

/* fixtures/real/: counts, names, shapes and values computed with torch 1.13
 * (torch.load, then .flatten()[0] and .double().sum()) when the tests were written */
static void real_ddpm_unet_zip(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("real/ddpm_unet_flat_state_dict.pth"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    CHECK_EQ_INT(lm_source_format(s), LM_FMT_TORCH_ZIP);
    CHECK_EQ_INT(lm_source_count(s), 36);
    const lm_entry *en = lm_source_entry(s, 0);
    CHECK_EQ_STR(en->name, "time_mlp.1.weight");
    CHECK_EQ_INT(en->dtype, LM_DT_F32);
    CHECK_EQ_INT(en->shape[0], 512);
    CHECK_EQ_INT(en->shape[1], 128);
    CHECK(lm_source_raw(s, 0) != NULL);
    CHECK_NEAR(sum_named(s, "time_mlp.1.weight"), 72.1480745421681, 1e-3);
    CHECK_NEAR(sum_named(s, "bottleneck.conv1.weight"), -53.636098447134756, 1e-3);
    CHECK_NEAR(sum_named(s, "final.bias"), -0.09832415729761124, 1e-6);
    const lm_entry *c;
    float *f = read_named(s, "dec2.conv1.weight", &c);
    CHECK(f);
    CHECK_EQ_INT(c->ndim, 4);
    CHECK_EQ_INT(c->shape[1], 192);
    CHECK_NEAR(f[0], -0.002575827296823263, 1e-9);
    free(f);
    lm_source_close(s);
}

static void real_legacy_nested(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("real/legacy_nested_state_dict.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    CHECK_EQ_INT(lm_source_format(s), LM_FMT_TORCH_LEGACY);
    CHECK_EQ_INT(lm_source_count(s), 6);
    /* the top-level "state_dict" wrapper is dropped (A1111/kohya/ComfyUI rule) */
    CHECK_EQ_STR(lm_source_entry(s, 0)->name, "hidden_layer0.weight");
    CHECK_EQ_STR(lm_source_entry(s, 5)->name, "output_layer.bias");
    CHECK_EQ_STR(lm_torch_dropped_prefix(s), "state_dict.");
    CHECK(lm_source_find(s, "state_dict.hidden_layer0.weight") < 0);
    CHECK_EQ_INT(lm_source_entry(s, 0)->shape[1], 37);
    CHECK_EQ_INT(lm_torch_nontensor_count(s), 4);   /* input_size, output_size, hidden_layers[0..1] */
    CHECK_NEAR(sum_named(s, "hidden_layer0.weight"), -39.70572974528477, 1e-4);
    CHECK_NEAR(sum_named(s, "output_layer.bias"), 1.027671068906784, 1e-6);
    const lm_entry *c;
    float *f = read_named(s, "hidden_layer1.weight", &c);
    CHECK(f);
    CHECK_NEAR(f[0], 0.1605648249387741, 1e-9);
    CHECK_NEAR(f[1], 0.27619028091430664, 1e-9);
    free(f);
    lm_source_close(s);
}

static void real_zip_checkpoint_model_optimizer(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("real/zip_checkpoint_model_optimizer.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    /* the model's 4 tensors under their own names ("model_state_dict" beside
     * training state is dropped), the optimizer's momentum under its path */
    CHECK_EQ_INT(lm_source_count(s), 5);
    CHECK_EQ_STR(lm_torch_dropped_prefix(s), "model_state_dict.");
    CHECK_EQ_STR(lm_source_entry(s, 0)->name, "fc1.weight");
    CHECK_EQ_STR(lm_source_entry(s, 1)->name, "fc1.bias");
    CHECK_EQ_STR(lm_source_entry(s, 2)->name, "fc2.weight");
    CHECK_EQ_STR(lm_source_entry(s, 3)->name, "fc2.bias");
    CHECK_EQ_STR(lm_source_entry(s, 4)->name, "optimizer_state_dict.state.0.momentum_buffer");
    CHECK(lm_source_find(s, "model_state_dict.fc1.weight") < 0);
    CHECK_EQ_INT(lm_torch_nontensor_count(s), 2);   /* epoch, loss */
    CHECK_NEAR(sum_named(s, "fc1.weight"), -4.601655751466751, 1e-5);
    CHECK_NEAR(sum_named(s, "fc2.bias"), 1.4966664612293243, 1e-6);
    CHECK_NEAR(sum_named(s, "optimizer_state_dict.state.0.momentum_buffer"), -2.562764137983322, 1e-5);
    lm_source_close(s);
}

/* zip_dtypes.pt / legacy_dtypes.pt / deflated.pt hold the same formulas */
static int check_dtypes_file(const char *path, int expect_raw)
{
    lm_err e;
    lm_source *s = open_ok(path, 0, &e);
    if (!s) return 1;
    int bad = lm_source_count(s) != 5;
    const lm_entry *en;
    float *f = read_named(s, "f32", &en);
    bad |= !f || en->dtype != LM_DT_F32 || en->ndim != 2 || en->shape[0] != 3 || en->shape[1] != 4;
    for (int k = 0; f && k < 12; k++) bad |= f[k] != k * 0.5f - 1.0f;
    free(f);
    int64_t i = lm_source_find(s, "f16");
    uint16_t h[8];
    bad |= i < 0 || lm_source_entry(s, (size_t)i)->dtype != LM_DT_F16 || lm_source_read(s, (size_t)i, h, NULL);
    for (int k = 0; !bad && k < 8; k++) bad |= h[k] != lm_f32_to_f16(k * 0.125f - 0.5f);
    bad |= (lm_source_raw(s, (size_t)i) != NULL) != expect_raw;
    i = lm_source_find(s, "bf16");
    uint16_t b[6];
    bad |= i < 0 || lm_source_entry(s, (size_t)i)->dtype != LM_DT_BF16 || lm_source_read(s, (size_t)i, b, NULL);
    for (int k = 0; !bad && k < 6; k++) bad |= b[k] != lm_f32_to_bf16(k * 0.25f);
    i = lm_source_find(s, "i64");
    int64_t q[5];
    bad |= i < 0 || lm_source_entry(s, (size_t)i)->dtype != LM_DT_I64 || lm_source_read(s, (size_t)i, q, NULL);
    for (int k = 0; !bad && k < 5; k++) bad |= q[k] != k * 1000000000000LL - 7;
    f = read_named(s, "scalar", &en);
    bad |= !f || en->ndim != 0 || en->numel != 1 || f[0] != 2.5f;
    free(f);
    lm_source_close(s);
    return bad;
}

static void zip_fp32_fp16_bf16_int64(void) { CHECK(!check_dtypes_file(FIXTURE("torch/zip_dtypes.pt"), 1)); }
static void legacy_fp32_fp16_bf16_int64(void) { CHECK(!check_dtypes_file(FIXTURE("torch/legacy_dtypes.pt"), 1)); }
static void deflated_zip_reads_through_libzip(void) { CHECK(!check_dtypes_file(FIXTURE("torch/deflated.pt"), 0)); }

static void nested_dicts_lists_parameters(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/nested.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    CHECK_EQ_INT(lm_source_count(s), 4);
    CHECK_EQ_STR(lm_source_entry(s, 0)->name, "model.enc.w");
    CHECK_EQ_STR(lm_source_entry(s, 1)->name, "model.p");   /* an nn.Parameter */
    CHECK_EQ_STR(lm_source_entry(s, 2)->name, "layers.0");
    CHECK_EQ_STR(lm_source_entry(s, 3)->name, "layers.1.b");
    CHECK_EQ_INT(lm_torch_nontensor_count(s), 2);
    /* "layers" holds tensors beside the "model" wrapper: nothing is dropped */
    CHECK(lm_torch_dropped_prefix(s) == NULL);
    CHECK_NEAR(sum_named(s, "model.enc.w"), 15, 0);
    CHECK_NEAR(sum_named(s, "model.p"), 6, 0);
    CHECK_NEAR(sum_named(s, "layers.1.b"), 4, 0);
    lm_source_close(s);
}

static int check_shared(const char *path)
{
    lm_err e;
    lm_source *s = open_ok(path, 0, &e);
    if (!s) return 1;
    const lm_entry *en;
    int bad = 0;
    float *a = read_named(s, "a", &en);
    bad |= !a || en->numel != 6;
    for (int k = 0; a && k < 6; k++) bad |= a[k] != 4 + k;
    float *b = read_named(s, "b", &en);
    bad |= !b || en->ndim != 2 || en->shape[0] != 3 || en->shape[1] != 4;
    for (int k = 0; b && k < 12; k++) bad |= b[k] != 10 + k;
    /* views of one storage: their raw pointers sit at the element offsets */
    const float *rb = lm_source_raw(s, (size_t)lm_source_find(s, "base"));
    const char *ra = lm_source_raw(s, (size_t)lm_source_find(s, "a"));
    bad |= !rb || ra != (const char *)rb + 4 * sizeof(float);
    free(a);
    free(b);
    lm_source_close(s);
    return bad;
}

static void shared_storage_offsets_zip(void) { CHECK(!check_shared(FIXTURE("torch/shared.pt"))); }
static void shared_storage_offsets_legacy(void) { CHECK(!check_shared(FIXTURE("torch/shared_legacy.pt"))); }

static void noncontiguous_views_gathered(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/noncontig.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    const lm_entry *en;
    float *t = read_named(s, "t", &en);   /* m.t() of m = arange(12).view(3, 4) */
    CHECK(t && en->shape[0] == 4 && en->shape[1] == 3);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) CHECK_NEAR(t[i * 3 + j], j * 4 + i, 0);
    free(t);
    CHECK(lm_source_raw(s, (size_t)lm_source_find(s, "t")) == NULL);
    float *col = read_named(s, "col", &en);
    CHECK(col && en->numel == 3 && col[0] == 1 && col[1] == 5 && col[2] == 9);
    free(col);
    float *ev = read_named(s, "every2", &en);
    CHECK(ev && en->dtype == LM_DT_F16 && en->numel == 5);
    for (int k = 0; k < 5; k++) CHECK_NEAR(ev[k], 2 * k, 0);
    free(ev);
    lm_source_close(s);
}

static void big_endian_storage_swapped(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/big_endian.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    const lm_entry *en;
    float *x = read_named(s, "x", &en);
    CHECK(x && en->numel == 6);
    for (int k = 0; k < 6; k++) CHECK_NEAR(x[k], k - 2.5, 0);
    CHECK(lm_source_raw(s, 0) == NULL);   /* bytes need swapping: no raw pointer */
    free(x);
    lm_source_close(s);
}

static void sd_checkpoint_wrapper_dropped(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/sd_like.ckpt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    CHECK_EQ_INT(lm_source_count(s), 8);
    CHECK_EQ_STR(lm_source_entry(s, 0)->name, "model.diffusion_model.input_blocks.0.0.weight");
    CHECK(lm_source_find(s, "model_ema.diffusion_modelout2bias") >= 0);
    CHECK(lm_source_find(s, "state_dict.model_ema.decay") < 0);
    /* global_step, epoch and a numpy float64 (numpy scalar + _codecs.encode) */
    CHECK_EQ_INT(lm_torch_nontensor_count(s), 3);
    int64_t i = lm_source_find(s, "model_ema.num_updates");
    CHECK(i >= 0 && lm_source_entry(s, (size_t)i)->dtype == LM_DT_I32);
    lm_source_close(s);
}

/* ---- wrappers (fixtures/torch/make_fixtures.py, wrappers()) ------------- */

/* names in order; NULL ends the list */
static int names_are(const lm_source *s, const char *const *want)
{
    size_t n = 0;
    for (; want[n]; n++)
        if (n >= lm_source_count(s) || strcmp(lm_source_entry(s, n)->name, want[n])) {
            printf("    entry %zu: %s, want %s\n", n, n < lm_source_count(s) ? lm_source_entry(s, n)->name : "(none)", want[n]);
            return 0;
        }
    return n == lm_source_count(s);
}

static void model_wrapper_beside_optimizer_dropped(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/wrap_model.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    static const char *const want[] = { "conv.weight", "conv.bias", "optimizer.state.0.exp_avg", NULL };
    CHECK(names_are(s, want));
    CHECK_EQ_STR(lm_torch_dropped_prefix(s), "model.");
    CHECK_NEAR(sum_named(s, "conv.weight"), 15, 0);
    CHECK_NEAR(sum_named(s, "optimizer.state.0.exp_avg"), 7.5, 0);
    CHECK_EQ_INT(lm_torch_nontensor_count(s), 3);   /* lr, epoch, args */
    lm_source_close(s);
}

static void ddp_module_prefix_stripped(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/ddp_module.pt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    static const char *const want[] = { "conv.weight", "bn.running_mean", "bn.num_batches_tracked", NULL };
    CHECK(names_are(s, want));
    CHECK_EQ_STR(lm_torch_dropped_prefix(s), "module.");
    CHECK_NEAR(sum_named(s, "conv.weight"), 6, 0);
    int64_t q = 0, i = lm_source_find(s, "bn.num_batches_tracked");
    CHECK(i >= 0 && lm_source_entry(s, (size_t)i)->dtype == LM_DT_I64 && !lm_source_read(s, (size_t)i, &q, NULL) && q == 7);
    lm_source_close(s);

    s = open_ok(FIXTURE("torch/ddp_net_wrapped.pt"), 0, &e);   /* {"net": {"module.…"}} */
    CHECK_OK(s ? 0 : e.code, &e);
    static const char *const want2[] = { "body.0.weight", "body.0.bias", NULL };
    CHECK(names_are(s, want2));
    CHECK_EQ_STR(lm_torch_dropped_prefix(s), "net.module.");
    CHECK_NEAR(sum_named(s, "body.0.weight"), 6, 0);
    lm_source_close(s);

    s = open_ok(FIXTURE("torch/ddp_partial.pt"), 0, &e);   /* "module." on one key of two */
    CHECK_OK(s ? 0 : e.code, &e);
    static const char *const want3[] = { "module.a", "head.b", NULL };
    CHECK(names_are(s, want3));
    CHECK(lm_torch_dropped_prefix(s) == NULL);
    lm_source_close(s);
}

/* basicsr / Real-ESRGAN: params_ema is what inference loads; params keeps its prefix */
static void params_ema_preferred_over_params(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/params_ema.pth"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    static const char *const want[] = { "conv_first.weight", "conv_first.bias", "params.conv_first.weight", "params.conv_first.bias", NULL };
    CHECK(names_are(s, want));
    CHECK_EQ_STR(lm_torch_dropped_prefix(s), "params_ema.");
    CHECK_NEAR(sum_named(s, "conv_first.weight"), 1.5, 0);   /* the EMA values: 0.25 × (0+1+2+3) */
    CHECK_NEAR(sum_named(s, "conv_first.bias"), 3, 0);
    CHECK_NEAR(sum_named(s, "params.conv_first.weight"), -6, 0);
    lm_source_close(s);
}

static void two_tensor_holders_nothing_dropped(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/wrap_ambiguous.pt"), 0, &e);   /* "model" and "model_ema" */
    CHECK_OK(s ? 0 : e.code, &e);
    static const char *const want[] = { "model.a", "model_ema.a", NULL };
    CHECK(names_are(s, want));
    CHECK(lm_torch_dropped_prefix(s) == NULL);
    lm_source_close(s);
}

/* sd-v1-4.ckpt's wrapper: a Lightning ModelCheckpoint class as a dict key, numpy
 * scalars through _codecs.encode, a set, empty optimizer_states/lr_schedulers */
static void sd14_lightning_callbacks_read_as_data(void)
{
    lm_err e;
    lm_source *s = open_ok(FIXTURE("torch/sd14_like_callbacks.ckpt"), 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    CHECK_EQ_INT(lm_source_count(s), 2);
    CHECK_EQ_STR(lm_source_entry(s, 0)->name, "model.diffusion_model.out.2.bias");
    CHECK_EQ_INT(lm_source_entry(s, 1)->dtype, LM_DT_F16);
    CHECK_NEAR(sum_named(s, "model.diffusion_model.out.2.bias"), 10, 0);
    /* epoch, global_step, pytorch-lightning_version, the callback keyed by a class */
    CHECK_EQ_INT(lm_torch_nontensor_count(s), 4);
    lm_source_close(s);
}

static void plain_zip_is_not_a_checkpoint(void)
{
    lm_err e;
    lm_err_clear(&e);
    CHECK(!open_ok(FIXTURE("torch/not_torch.zip"), 0, &e));
    CHECK_EQ_INT(e.code, LM_EINPUT);
    CHECK(strstr(e.msg, "a zip archive, not a PyTorch checkpoint"));
}

/* A safetensors header of 384 bytes starts 0x80 0x01, as a pickle's PROTO 1
 * does: it is still read as safetensors (format detection in io/source.c). */
static void safetensors_header_len_0x180_not_a_pickle(void)
{
    char path[] = "/tmp/libmerge_test_torch_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    char head[384];
    int n = snprintf(head, sizeof head, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
    memset(head + n, ' ', sizeof head - (size_t)n);
    unsigned char len[8] = { 0x80, 0x01 };
    float one = 1.5f;
    CHECK(write(fd, len, 8) == 8 && write(fd, head, sizeof head) == (ssize_t)sizeof head && write(fd, &one, 4) == 4);
    close(fd);
    lm_err e;
    lm_source *s = open_ok(path, 0, &e);
    CHECK_OK(s ? 0 : e.code, &e);
    if (s) {
        CHECK_EQ_INT(lm_source_format(s), LM_FMT_SAFETENSORS);
        CHECK_NEAR(sum_named(s, "w"), 1.5, 0);
        lm_source_close(s);
    }
    unlink(path);
}

/* ---- hostile files ----------------------------------------------------- */

static int refused(const char *path, int skip, int code, const char *key, const char *msg)
{
    lm_err e;
    lm_err_clear(&e);
    lm_source *s = open_ok(path, skip, &e);
    if (s) { lm_source_close(s); printf("    %s: opened\n", path); return 1; }
    char b[1400];
    int bad = e.code != code || (key && strcmp(e.key, key)) || !strstr(e.msg, msg) || strcmp(e.file, path);
    if (bad) printf("    %s: got %d %s\n", path, e.code, lm_err_format(&e, b, sizeof b));
    return bad;
}

static void hostile_pickles_refused_nothing_runs(void)
{
    unlink(SENTINEL);
    CHECK(!refused(FIXTURE("torch/hostile_os_system.pt"), 0, LM_EUNSUPPORTED, "os.system", "refusing global os.system"));
    CHECK(!refused(FIXTURE("torch/hostile_eval_legacy.pt"), 0, LM_EUNSUPPORTED, "builtins.eval", "refusing global builtins.eval"));
    CHECK(!refused(FIXTURE("torch/hostile_posix_stack_global.bin"), 0, LM_EUNSUPPORTED, "posix.system", "refusing global posix.system"));
    CHECK(!refused(FIXTURE("torch/hostile_deep.pt"), 0, LM_EINPUT, NULL, "nesting deeper than 1000 levels"));
    CHECK(!refused(FIXTURE("torch/hostile_memo.pt"), 0, LM_EINPUT, NULL, "memo index 5 out of range"));
    CHECK(!refused(FIXTURE("torch/hostile_truncated.pt"), 0, LM_EINPUT, NULL, "truncated"));
    CHECK(!refused(FIXTURE("torch/hostile_zip_path.pt"), 0, LM_EINPUT, "../../tmp/libmerge_evil", "outside the archive folder"));
    CHECK(!refused(FIXTURE("torch/hostile_storage_key.pt"), 0, LM_EINPUT, "../../etc/passwd", "not a plain name"));
    CHECK(!refused(FIXTURE("torch/hostile_cycle.pt"), 0, LM_EINPUT, NULL, "(or a cycle)"));
    CHECK(!refused(FIXTURE("torch/hostile_shared_bomb.pt"), 0, LM_EINPUT, NULL, "shared objects too many times"));
    /* --skip-unknown reads the refused globals as opaque values: still nothing runs,
     * and what is left is not a state dict */
    CHECK(!refused(FIXTURE("torch/hostile_os_system.pt"), 1, LM_EINPUT, NULL, "not a dict of tensors"));
    CHECK(!refused(FIXTURE("torch/hostile_eval_legacy.pt"), 1, LM_EINPUT, NULL, "not a dict of tensors"));
    CHECK(!refused(FIXTURE("torch/hostile_posix_stack_global.bin"), 1, LM_EINPUT, NULL, "not a PyTorch checkpoint"));
    /* the fixtures create this file when Python's pickle loads them (make_fixtures.py checks it) */
    CHECK_MSG(access(SENTINEL, F_OK) != 0, "sentinel %s exists: something ran", SENTINEL);
}

static void errors_name_the_file(void)
{
    lm_err e;
    lm_err_clear(&e);
    CHECK(!open_ok(FIXTURE("torch/hostile_memo.pt"), 0, &e));
    CHECK_EQ_STR(e.file, FIXTURE("torch/hostile_memo.pt"));
    CHECK(e.offset > 0);   /* the opcode's byte offset in the file (data.pkl is stored) */
}

int main(void)
{
    RUN(real_ddpm_unet_zip);
    RUN(real_legacy_nested);
    RUN(real_zip_checkpoint_model_optimizer);
    RUN(zip_fp32_fp16_bf16_int64);
    RUN(legacy_fp32_fp16_bf16_int64);
    RUN(deflated_zip_reads_through_libzip);
    RUN(nested_dicts_lists_parameters);
    RUN(shared_storage_offsets_zip);
    RUN(shared_storage_offsets_legacy);
    RUN(noncontiguous_views_gathered);
    RUN(big_endian_storage_swapped);
    RUN(sd_checkpoint_wrapper_dropped);
    RUN(sd14_lightning_callbacks_read_as_data);
    RUN(model_wrapper_beside_optimizer_dropped);
    RUN(ddp_module_prefix_stripped);
    RUN(params_ema_preferred_over_params);
    RUN(two_tensor_holders_nothing_dropped);
    RUN(plain_zip_is_not_a_checkpoint);
    RUN(safetensors_header_len_0x180_not_a_pickle);
    RUN(hostile_pickles_refused_nothing_runs);
    RUN(errors_name_the_file);
    TEST_EXIT();
}
