/* lm_lora_extract: a LoRA from TUNED − BASE (merge.h), through the same truncated SVD as
 * lora-merge --rank. The weights extracted are the ones LoRA trainers target (the LCM-LoRA
 * / kohya LoCon set of the UNet — attention q/k/v/out, proj_in/out, feed-forward, resnet
 * convs and time embedding projections, shortcuts, down/upsampler convs — and the text
 * encoder's self-attention and MLP projections), named as kohya-ss/sd-scripts names them:
 * lora_unet_<diffusers path> for SD1/SD2, lora_unet_<original path> for SDXL,
 * lora_te_/lora_te1_<transformers path>. SDXL's OpenCLIP text encoder (fused in_proj) is
 * left out. Tensors equal in both files give no module. */
#include "merge_impl.h"
#include "lora_write.h"
#include "meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct xmod {
    size_t bt, tt;           /* tensor index in base and tuned */
    lmm_outmod om;
    lm_lmerge_module rep;
    int empty;               /* ΔW == 0 */
} xmod;

typedef struct xjob {
    const lm_source *base, *tuned;
    xmod *m;
    size_t n;
    int rank;
} xjob;

static int ends(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int unet_target(const char *path)
{
    static const char *const t[] = { ".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out",
                                     ".ff.net.0.proj", ".ff.net.2", ".conv1", ".conv2", ".conv_shortcut",
                                     ".downsamplers.0.conv", ".upsamplers.0.conv", ".time_emb_proj" };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) if (ends(path, t[i])) return 1;
    return 0;
}

static int te_target(const char *path)
{
    if (strncmp(path, "text_model.encoder.layers.", 26)) return 0;
    static const char *const t[] = { ".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj",
                                     ".self_attn.out_proj", ".mlp.fc1", ".mlp.fc2" };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) if (ends(path, t[i])) return 1;
    return 0;
}

static void underscore(char *s) { for (; *s; s++) if (*s == '.') *s = '_'; }

/* Kohya and PEFT names of base tensor `name` when it is a LoRA target; 0 if not. */
static int names_for(const lm_model_info *info, const char *name, char **kohya, char **peft)
{
    if (!ends(name, ".weight")) return 0;
    char dif[512], path[512], buf[600];
    int reshape = 0;
    if (info->layout == LM_LAYOUT_LDM) {
        if (lm_layout_convert_name(info->arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, name, dif, sizeof dif, &reshape)) return 0;
    } else {
        snprintf(dif, sizeof dif, "%s", name);
    }
    const char *comp = "unet", *p = dif;
    if (!strncmp(p, "unet.", 5)) p += 5;
    else if (!strncmp(p, "text_encoder_2.", 15)) return 0;
    else if (!strncmp(p, "text_encoder.", 13)) { p += 13; comp = "text_encoder"; }
    else if (!strncmp(p, "vae.", 4)) return 0;
    else if (!strncmp(p, "text_model.", 11)) comp = "text_encoder";
    else if (strncmp(p, "down_blocks.", 12) && strncmp(p, "mid_block.", 10) && strncmp(p, "up_blocks.", 10)) return 0;
    snprintf(path, sizeof path, "%s", p);
    path[strlen(path) - 7] = 0;                         /* drop ".weight" */
    int sdxl = info->arch == LM_ARCH_SDXL || info->arch == LM_ARCH_SSD1B;
    if (!strcmp(comp, "unet")) {
        if (!unet_target(path)) return 0;
        if (sdxl && !strncmp(name, "model.diffusion_model.", 22)) {   /* kohya SDXL: original paths */
            snprintf(buf, sizeof buf, "lora_unet_%s", name + 22);
            buf[strlen(buf) - 7] = 0;
        } else {
            snprintf(buf, sizeof buf, "lora_unet_%s", path);
        }
    } else {
        if (!te_target(path)) return 0;
        snprintf(buf, sizeof buf, "%s%s", sdxl ? "lora_te1_" : "lora_te_", path);
    }
    underscore(buf);
    *kohya = strdup(buf);
    snprintf(buf, sizeof buf, "%s.%s", comp, path);
    *peft = strdup(buf);
    return 1;
}

static int extract_one(xjob *J, xmod *x, lm_err *err)
{
    const lm_entry *e = lm_source_entry(J->base, x->bt);
    int64_t out = e->shape[0], N = e->numel / out, p = out < N ? out : N;
    int k = J->rank < p ? J->rank : (int)p;
    float *A = malloc((size_t)e->numel * sizeof *A), *T = malloc((size_t)e->numel * sizeof *T);
    int rc = 0;
    if (!A || !T) { rc = lm_err_set(err, LM_ENOMEM, NULL, e->name, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    if ((rc = lm_source_read_f32(J->base, x->bt, A, err)) || (rc = lm_source_read_f32(J->tuned, x->tt, T, err))) goto out;
    const void *ra = lm_source_raw(J->base, x->bt), *rt = lm_source_raw(J->tuned, x->tt);
    if (ra) lmm_release_pages(ra, e->nbytes);   /* each weight is read once */
    if (rt) lmm_release_pages(rt, lm_source_entry(J->tuned, x->tt)->nbytes);
    int nz = 0;
    for (int64_t i = 0; i < e->numel; i++) { T[i] -= A[i]; nz |= T[i] != 0.0f; }
    if (!nz) { x->empty = 1; goto out; }
    x->om.up = malloc((size_t)(out * k) * sizeof *x->om.up);
    x->om.down = malloc((size_t)(k * N) * sizeof *x->om.down);
    if (!x->om.up || !x->om.down) { rc = lm_err_set(err, LM_ENOMEM, NULL, e->name, LM_ERR_NO_OFFSET, "out of memory"); goto out; }
    rc = lmm_svd_auto(T, out, N, J->rank, x->om.up, x->om.down, &x->om.k, &x->rep.rel_error, &x->rep.energy, err);
    x->rep.rank = x->om.k;
out:
    free(A);
    free(T);
    return rc;
}

static int extract_task(void *ctx, size_t i, lm_err *err)
{
    xjob *J = ctx;
    return extract_one(J, &J->m[i], err);
}

static const char *extract_key(void *ctx, size_t i)
{
    xjob *J = ctx;
    return lm_source_entry(J->base, J->m[i].bt)->name;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int lm_lora_extract(const char *base, const char *tuned, const char *out,
                    const lm_lmerge_opts *opts, lm_lmerge_report *report, lm_err *err)
{
    lm_lmerge_opts o = LM_LMERGE_OPTS_INIT;
    if (opts) o = *opts;
    lm_lmerge_report rl, *rep = report ? report : &rl;
    memset(rep, 0, sizeof *rep);
    double t0 = now();
    if (o.rank <= 0) return lm_err_set(err, LM_EUSAGE, out, NULL, LM_ERR_NO_OFFSET, "extract needs a rank (--rank R)");
    const char *paths[2] = { base, tuned };
    int rc = lmm_check_output(out, paths, 2, err);
    if (rc) return rc;
    lm_source *bs = NULL, *ts = NULL;
    lm_keymap *km = NULL;
    xjob J;
    memset(&J, 0, sizeof J);
    lmm_outmod *om = NULL;
    lmm_meta meta = { 0 };
    lm_recipe recipe = { 0 };
    lm_recipe_input rin[2];
    memset(rin, 0, sizeof rin);
    if ((rc = lm_source_open(&bs, base, NULL, err)) || (rc = lm_source_open(&ts, tuned, NULL, err))) goto done;
    if ((rc = lm_keymap_build(&km, bs, err))) { lm_err_file(err, base); goto done; }
    const lm_model_info *info = lm_keymap_info(km);
    lm_model_info tinfo;
    lm_model_detect(ts, &tinfo);
    if (!info || info->arch == LM_ARCH_UNKNOWN || tinfo.arch != info->arch || tinfo.layout != info->layout) {
        rc = lm_err_set(err, LM_EMISMATCH, tuned, NULL, LM_ERR_NO_OFFSET, "%s %s layout, but the base is %s %s layout",
                        lm_arch_name(tinfo.arch), lm_layout_name(tinfo.layout),
                        lm_arch_name(info ? info->arch : LM_ARCH_UNKNOWN), lm_layout_name(info ? info->layout : LM_LAYOUT_UNKNOWN));
        goto done;
    }
    size_t nb = lm_source_count(bs);
    J.m = calloc(nb ? nb : 1, sizeof *J.m);
    if (!J.m) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    for (size_t t = 0; t < nb; t++) {
        const lm_entry *e = lm_source_entry(bs, t);
        if ((e->ndim != 2 && e->ndim != 4) || !lm_dtype_is_float(e->dtype)) continue;
        char *kn = NULL, *pn = NULL;
        if (!names_for(info, e->name, &kn, &pn)) continue;
        int64_t tt = lm_source_find(ts, e->name);
        const lm_entry *te = tt >= 0 ? lm_source_entry(ts, (size_t)tt) : NULL;
        if (!te || te->ndim != e->ndim || memcmp(te->shape, e->shape, (size_t)e->ndim * sizeof e->shape[0])) {
            free(kn); free(pn);
            rc = lm_err_set(err, LM_EMISMATCH, tuned, e->name, LM_ERR_NO_OFFSET,
                            te ? "shape differs from the base's" : "missing (present in the base)");
            goto done;
        }
        xmod *x = &J.m[J.n++];
        x->bt = t;
        x->tt = (size_t)tt;
        x->om.kohya_name = kn;
        x->om.peft_name = pn;
        x->om.ndim = e->ndim;
        memcpy(x->om.shape, e->shape, sizeof x->om.shape);
        x->rep.out = e->shape[0];
        x->rep.in = e->shape[1];
        x->rep.kh = e->ndim == 4 ? (int)e->shape[2] : 1;
        x->rep.kw = e->ndim == 4 ? (int)e->shape[3] : 1;
        x->rep.sources = 2;
    }
    J.base = bs;
    J.tuned = ts;
    J.rank = o.rank;
    if ((rc = lmm_run_tasks(J.n, o.threads, extract_task, extract_key, &J, o.progress, o.progress_ctx, err))) goto done;

    om = calloc(J.n ? J.n : 1, sizeof *om);
    rep->modules = calloc(J.n ? J.n : 1, sizeof *rep->modules);
    if (!om || !rep->modules) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    size_t no = 0;
    int uniform = -1;
    for (size_t i = 0; i < J.n; i++) {
        if (J.m[i].empty) continue;
        om[no] = J.m[i].om;
        rep->modules[no] = J.m[i].rep;
        rep->modules[no].name = strdup(o.format == LM_LFMT_PEFT ? J.m[i].om.peft_name : J.m[i].om.kohya_name);
        uniform = uniform == -1 ? J.m[i].om.k : uniform == J.m[i].om.k ? uniform : 0;
        no++;
    }
    rep->n_modules = no;
    double sum = 0;
    rep->min_energy = 1;
    for (size_t i = 0; i < no; i++) {
        sum += rep->modules[i].rel_error;
        if (rep->modules[i].rel_error > rep->max_rel_error) rep->max_rel_error = rep->modules[i].rel_error;
        if (rep->modules[i].energy < rep->min_energy) rep->min_energy = rep->modules[i].energy;
    }
    rep->mean_rel_error = no ? sum / (double)no : 0;
    rep->input_sha256 = calloc(2, sizeof *rep->input_sha256);
    rep->n_inputs = 2;
    if (!rep->input_sha256) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto done; }
    for (int i = 0; i < 2; i++) {
        if ((rc = lmm_sha256_file(paths[i], rep->input_sha256[i], &rin[i].bytes, err))) goto done;
        memcpy(rin[i].sha256, rep->input_sha256[i], 65);
        rin[i].name = (char *)lmm_basename(paths[i]);
        rin[i].lambda = i ? 1.0 : -1.0;        /* ΔW = 1·TUNED + (−1)·BASE */
        rin[i].role = i ? "tuned" : "base";
    }
    recipe.tool = "lora-merge";
    recipe.tool_version = LM_TOOL_VERSION;
    recipe.operation = "extract";
    lm_dtype dt = o.out_dtype;
    if (dt == LM_DT_INVALID) {
        dt = LM_DT_F32;
        for (size_t i = 0; i < J.n; i++) { dt = lm_source_entry(ts, J.m[i].tt)->dtype; break; }
        if (dt != LM_DT_F16 && dt != LM_DT_BF16) dt = LM_DT_F32;
    }
    recipe.dtype = (char *)lm_dtype_name(dt);
    recipe.rank = o.rank;
    recipe.format = o.format == LM_LFMT_PEFT ? "peft" : "kohya";
    recipe.inputs = rin;
    recipe.n_inputs = 2;
    char title[256];
    lmm_title(out, title, sizeof title);
    if (lmm_lora_meta(&meta, NULL, &recipe, paths, info->arch, title, uniform > 0 ? uniform : 0)) {
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        goto done;
    }
    rc = lmm_write_lora(out, om, no, o.format, dt, &meta, paths, 2, &rep->bytes_written, err);
done:
    for (size_t i = 0; J.m && i < J.n; i++) {
        free(J.m[i].om.up); free(J.m[i].om.down); free(J.m[i].om.kohya_name); free(J.m[i].om.peft_name);
    }
    free(J.m);
    free(om);
    lmm_meta_free(&meta);
    lm_keymap_free(km);
    lm_source_close(bs);
    lm_source_close(ts);
    rep->seconds_total = now() - t0;
    if (rc || !report) lm_lmerge_report_free(rep);
    return rc;
}
