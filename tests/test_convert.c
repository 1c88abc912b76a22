/* model-convert engine: dtype change (floats only, overflow per tensor),
 * prune, use-ema, LDM <-> diffusers layout (identical bytes against the
 * golden tiny SD1.5 models), metadata, refusals leaving no output. */
#include "test.h"
#include "libmerge/convert.h"
#include "libmerge/source.h"
#include "libmerge/dtype.h"

#include <stdint.h>
#include <unistd.h>

static char g_dir[64];

static const char *tmp_out(const char *name)
{
    static char p[160];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    return p;
}

static lm_source *open_out(const char *path)
{
    lm_source *s = NULL;
    return lm_source_open(&s, path, NULL, NULL) ? NULL : s;
}

/* every tensor of a and b identical in name, dtype, shape and bytes */
static int same_tensors(const lm_source *a, const lm_source *b, int64_t *bad_at)
{
    if (lm_source_count(a) != lm_source_count(b)) return 0;
    for (size_t i = 0; i < lm_source_count(a); i++) {
        const lm_entry *x = lm_source_entry(a, i);
        int64_t j = lm_source_find(b, x->name);
        *bad_at = (int64_t)i;
        if (j < 0) return 0;
        const lm_entry *y = lm_source_entry(b, (size_t)j);
        if (x->dtype != y->dtype || x->ndim != y->ndim || memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim)) return 0;
        void *p = malloc(x->nbytes + 1), *q = malloc(y->nbytes + 1);
        int eq = !lm_source_read(a, i, p, NULL) && !lm_source_read(b, (size_t)j, q, NULL) && !memcmp(p, q, x->nbytes);
        free(p);
        free(q);
        if (!eq) return 0;
    }
    return 1;
}

static void keep_dtypes_copies_bytes_and_meta(void)
{
    lm_err e;
    lm_convert_report r;
    const char *out = tmp_out("keep.safetensors");
    CHECK_OK(lm_model_convert(FIXTURE("torch/zip_dtypes.pt"), out, NULL, &r, &e), &e);
    CHECK_EQ_INT(r.n_out, 5);
    CHECK_EQ_INT(r.n_converted, 0);
    CHECK_EQ_STR(r.source_sha256, "db24f9eb5844196cffc53b96ba7d00d7074b9a018ae1c5407a83d0589caf40b7");
    lm_source *s = open_out(out), *src = NULL;
    CHECK(s);
    CHECK_OK(lm_source_open(&src, FIXTURE("torch/zip_dtypes.pt"), NULL, &e), &e);
    int64_t at = -1;
    CHECK_MSG(same_tensors(src, s, &at), "tensor %lld differs", (long long)at);
    CHECK_EQ_STR(lm_source_meta_get(s, "format"), "pt");
    CHECK_EQ_STR(lm_source_meta_get(s, "source_sha256"), "db24f9eb5844196cffc53b96ba7d00d7074b9a018ae1c5407a83d0589caf40b7");
    lm_source_close(s);
    lm_source_close(src);
}

static void fp16_converts_floats_only(void)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.dtype = LM_DT_F16;
    lm_convert_report r;
    const char *out = tmp_out("fp16.safetensors");
    CHECK_OK(lm_model_convert(FIXTURE("torch/legacy_dtypes.pt"), out, &o, &r, &e), &e);
    CHECK_EQ_INT(r.n_converted, 3);   /* f32, bf16, scalar; f16 already; i64 copied */
    lm_source *s = open_out(out);
    CHECK(s);
    int64_t i = lm_source_find(s, "f32");
    CHECK(i >= 0 && lm_source_entry(s, (size_t)i)->dtype == LM_DT_F16);
    uint16_t h[12];
    CHECK_OK(lm_source_read(s, (size_t)i, h, &e), &e);
    for (int k = 0; k < 12; k++) CHECK_EQ_INT(h[k], lm_f32_to_f16(k * 0.5f - 1.0f));
    i = lm_source_find(s, "bf16");
    CHECK(i >= 0 && lm_source_entry(s, (size_t)i)->dtype == LM_DT_F16);
    CHECK_OK(lm_source_read(s, (size_t)i, h, &e), &e);
    for (int k = 0; k < 6; k++) CHECK_EQ_INT(h[k], lm_f32_to_f16(k * 0.25f));
    i = lm_source_find(s, "i64");
    CHECK(i >= 0 && lm_source_entry(s, (size_t)i)->dtype == LM_DT_I64);
    int64_t q[5];
    CHECK_OK(lm_source_read(s, (size_t)i, q, &e), &e);
    CHECK_EQ_INT(q[4], 4000000000000LL - 7);
    CHECK_EQ_STR(lm_source_meta_get(s, "source_sha256"), "91a0bd8a7a707996f20c781b183b5e183c92923081d78b88e5a75f716175d79a");
    lm_source_close(s);
}

static char g_ovf_name[256];
static int64_t g_ovf_count;
static int g_ovf_calls;
static void record_overflow(void *ctx, const char *name, int64_t count)
{
    (void)ctx;
    snprintf(g_ovf_name, sizeof g_ovf_name, "%s", name);
    g_ovf_count = count;
    g_ovf_calls++;
}

static void overflow_reported_per_tensor(void)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.dtype = LM_DT_F16;
    o.on_overflow = record_overflow;
    lm_convert_report r;
    CHECK_OK(lm_model_convert(FIXTURE("torch/sd_like.ckpt"), tmp_out("ovf.safetensors"), &o, &r, &e), &e);
    /* 70000 > 65504 becomes +Inf in fp16: one value of one tensor */
    CHECK_EQ_INT(g_ovf_calls, 1);
    CHECK_EQ_STR(g_ovf_name, "cond_stage_model.transformer.text_model.final_layer_norm.weight");
    CHECK_EQ_INT(g_ovf_count, 1);
    CHECK_EQ_INT(r.n_overflow_values, 1);
    CHECK_EQ_INT(r.n_converted, 7);   /* num_updates (I32) is not a float */
}

static void prune_drops_ema_and_training_state(void)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.prune = 1;
    lm_convert_report r;
    CHECK_OK(lm_model_convert(FIXTURE("torch/sd_like.ckpt"), tmp_out("prune.safetensors"), &o, &r, &e), &e);
    CHECK_EQ_INT(r.n_out, 4);
    CHECK_EQ_INT(r.n_pruned, 4);
    lm_source *s = open_out(tmp_out("prune.safetensors"));
    CHECK(s);
    CHECK(lm_source_find(s, "model_ema.decay") < 0);
    CHECK(lm_source_find(s, "first_stage_model.decoder.conv_in.bias") >= 0);
    lm_source_close(s);
    /* a training checkpoint: the optimizer's momentum buffer is training state */
    CHECK_OK(lm_model_convert(FIXTURE("real/zip_checkpoint_model_optimizer.pt"), tmp_out("prune2.safetensors"), &o, &r, &e), &e);
    CHECK_EQ_INT(r.n_out, 4);
    CHECK_EQ_INT(r.n_pruned, 1);
}

static void use_ema_replaces_live_weights(void)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.use_ema = 1;
    lm_convert_report r;
    CHECK_OK(lm_model_convert(FIXTURE("torch/sd_like.ckpt"), tmp_out("ema.safetensors"), &o, &r, &e), &e);
    CHECK_EQ_INT(r.n_ema, 2);
    CHECK_EQ_INT(r.n_out, 4);
    lm_source *s = open_out(tmp_out("ema.safetensors"));
    CHECK(s);
    float w[8], b[3];
    int64_t i = lm_source_find(s, "model.diffusion_model.input_blocks.0.0.weight");
    CHECK(i >= 0);
    CHECK_OK(lm_source_read_f32(s, (size_t)i, w, &e), &e);
    for (int k = 0; k < 8; k++) CHECK_NEAR(w[k], -k, 0);          /* the EMA copy: arange(8) * -1 */
    i = lm_source_find(s, "model.diffusion_model.out.2.bias");
    CHECK(i >= 0);
    CHECK_OK(lm_source_read_f32(s, (size_t)i, b, &e), &e);
    CHECK(b[0] == 10 && b[1] == -10);
    i = lm_source_find(s, "first_stage_model.decoder.conv_in.bias");  /* no EMA copy: live weight */
    CHECK_OK(lm_source_read_f32(s, (size_t)i, b, &e), &e);
    CHECK(b[0] == 0.5f);
    CHECK(lm_source_find(s, "model_ema.diffusion_modelout2bias") < 0);
    lm_source_close(s);
    lm_err_clear(&e);
    CHECK(lm_model_convert(FIXTURE("torch/zip_dtypes.pt"), tmp_out("noema.safetensors"), &o, &r, &e) == LM_EINPUT);
    CHECK(strstr(e.msg, "no model_ema"));
    CHECK(access(tmp_out("noema.safetensors"), F_OK) != 0);
}

static int layout_roundtrip(const char *in, const char *golden, lm_layout to)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.layout = to;
    const char *out = tmp_out("layout.safetensors");
    if (lm_model_convert(in, out, &o, NULL, &e)) { char b[1400]; printf("    %s\n", lm_err_format(&e, b, sizeof b)); return 1; }
    lm_source *a = open_out(out), *g = open_out(golden);
    int64_t at = -1;
    int ok = a && g && same_tensors(a, g, &at);
    if (!ok && a && at >= 0) printf("    %s: tensor %s differs\n", in, lm_source_entry(a, (size_t)at)->name);
    ok = ok && !strcmp(lm_source_meta_get(a, "layout"), to == LM_LAYOUT_LDM ? "ldm" : "diffusers");
    lm_source_close(a);
    lm_source_close(g);
    return !ok;
}

static void layout_unet_ldm_diffusers_identical_bytes(void)
{
    CHECK(!layout_roundtrip(FIXTURE("golden/sd15/unet_ldm.safetensors"), FIXTURE("golden/sd15/unet_diffusers.safetensors"), LM_LAYOUT_DIFFUSERS));
    CHECK(!layout_roundtrip(FIXTURE("golden/sd15/unet_diffusers.safetensors"), FIXTURE("golden/sd15/unet_ldm.safetensors"), LM_LAYOUT_LDM));
}

static void layout_vae_ldm_diffusers_identical_bytes(void)
{
    /* includes the mid-block attention 1x1 conv [C,C,1,1] <-> linear [C,C] */
    CHECK(!layout_roundtrip(FIXTURE("golden/sd15/vae_ldm.safetensors"), FIXTURE("golden/sd15/vae_diffusers.safetensors"), LM_LAYOUT_DIFFUSERS));
    CHECK(!layout_roundtrip(FIXTURE("golden/sd15/vae_diffusers.safetensors"), FIXTURE("golden/sd15/vae_ldm.safetensors"), LM_LAYOUT_LDM));
}

static void layout_unknown_architecture_refused(void)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.layout = LM_LAYOUT_DIFFUSERS;
    lm_err_clear(&e);
    CHECK_EQ_INT(lm_model_convert(FIXTURE("torch/nested.pt"), tmp_out("lay.safetensors"), &o, NULL, &e), LM_EUNSUPPORTED);
    CHECK(strstr(e.msg, "cannot change the layout"));
    CHECK(access(tmp_out("lay.safetensors"), F_OK) != 0);
}

static void safetensors_to_safetensors_bf16(void)
{
    lm_err e;
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.dtype = LM_DT_BF16;
    lm_convert_report r;
    const char *in = FIXTURE("real/st_i64_scalar_offset_order.safetensors");
    CHECK_OK(lm_model_convert(in, tmp_out("bf16.safetensors"), &o, &r, &e), &e);
    CHECK_EQ_INT(r.n_out, 9);
    CHECK_EQ_INT(r.n_converted, 8);
    lm_source *s = open_out(tmp_out("bf16.safetensors")), *src = open_out(in);
    CHECK(s && src);
    int64_t i = lm_source_find(s, "norm1.num_batches_tracked");
    CHECK(i >= 0 && lm_source_entry(s, (size_t)i)->dtype == LM_DT_I64 && lm_source_entry(s, (size_t)i)->ndim == 0);
    i = lm_source_find(s, "conv1.bias");
    int64_t j = lm_source_find(src, "conv1.bias");
    float a[4], b[4];
    uint16_t h[4];
    CHECK_OK(lm_source_read_f32(src, (size_t)j, a, &e), &e);
    CHECK_OK(lm_source_read(s, (size_t)i, h, &e), &e);
    for (int k = 0; k < 4; k++) b[k] = lm_bf16_to_f32(lm_f32_to_bf16(a[k]));
    for (int k = 0; k < 4; k++) CHECK_NEAR(lm_bf16_to_f32(h[k]), b[k], 0);
    lm_source_close(s);
    lm_source_close(src);
}

static void refusals_leave_no_output(void)
{
    lm_err e;
    lm_err_clear(&e);
    const char *in = FIXTURE("torch/zip_dtypes.pt");
    CHECK_EQ_INT(lm_model_convert(in, in, NULL, NULL, &e), LM_EUSAGE);   /* never overwrite the input */
    lm_err_clear(&e);
    CHECK_EQ_INT(lm_model_convert(FIXTURE("torch/hostile_os_system.pt"), tmp_out("h.safetensors"), NULL, NULL, &e), LM_EUNSUPPORTED);
    CHECK_EQ_STR(e.key, "os.system");
    CHECK(access(tmp_out("h.safetensors"), F_OK) != 0);
    lm_convert_opts o = LM_CONVERT_OPTS_INIT;
    o.dtype = LM_DT_I8;
    CHECK_EQ_INT(lm_model_convert(in, tmp_out("i8.safetensors"), &o, NULL, &e), LM_EUSAGE);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/lm_test_convert.XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    RUN(keep_dtypes_copies_bytes_and_meta);
    RUN(fp16_converts_floats_only);
    RUN(overflow_reported_per_tensor);
    RUN(prune_drops_ema_and_training_state);
    RUN(use_ema_replaces_live_weights);
    RUN(layout_unet_ldm_diffusers_identical_bytes);
    RUN(layout_vae_ldm_diffusers_identical_bytes);
    RUN(layout_unknown_architecture_refused);
    RUN(safetensors_to_safetensors_bf16);
    RUN(refusals_leave_no_output);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) {}
    TEST_EXIT();
}
