/* VAE decoder (AutoencoderKL) on the sampler ops. See include/libmerge/vae.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/ops.h"
#include "libmerge/vae.h"
#include "sampler/vae_impl.h"
#include "sampler/weights.h"

int lm_vae_conv3(int wino, const float *x, int C, int H, int W, const float *w, const float *b, int OC,
                 float *y, lm_work *work)
{
    static const int pad1[4] = { 1, 1, 1, 1 };
    if (wino) return lm_conv3x3_winograd(x, C, H, W, w, b, OC, y, work);
    return lm_conv2d(x, C, H, W, w, b, OC, 3, 1, pad1, y, work);
}

/* Winograd F(2×2, 3×3) (ops' lm_conv3x3_winograd, parallel transforms) where
 * it pays: SD1.5 decoder at 512 px, CPU seconds at load ~3: 23.3 with it at
 * >= 256 channels, 21.4 at every resnet/upsampler width (128 included). Below
 * 128 channels (tiny test VAEs) im2col stays the default. The filters take
 * 16/9 of the weights' memory. LIBMERGE_VAE_CONV=im2col turns it off,
 * =winograd uses it at every width (tests run the goldens through it so). */
static int use_wino(int OC, int C)
{
    const char *mode = getenv("LIBMERGE_VAE_CONV");   /* "im2col", "winograd" (every resnet/upsampler conv) */
    if (mode && !strcmp(mode, "im2col")) return 0;
    if (mode && !strcmp(mode, "winograd")) return 1;
    return OC >= 128 && C >= 128;
}

/* Replaces *w [OC, C, 3, 3] by its Winograd filters when use_wino says so;
 * *flag records which form *w holds. */
static int to_wino(float **w, int OC, int C, int *flag, lm_err *err)
{
    *flag = 0;
    if (!use_wino(OC, C)) return 0;
    *flag = 1;
    float *u = malloc((size_t)16 * OC * C * sizeof *u);
    if (!u) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    lm_conv3x3_winograd_weights(*w, OC, C, u);
    free(*w);
    *w = u;
    return 0;
}

static const int k_pad0[4] = { 0, 0, 0, 0 };

/* ---------- names ---------- */

/* Canonical (diffusers, component-relative) resnet parameter name. mid >= 0:
 * mid block resnet mid; else up block i, resnet j. param: norm1, conv1,
 * norm2, conv2, conv_shortcut; what: weight or bias. The weight set finds
 * the LDM spelling (decoder.up.{L-1-i}.block.j, mid.block_{k+1},
 * nin_shortcut) through the key map. */
static void resnet_name(char *o, size_t n, int mid, int i, int j, const char *param, const char *what)
{
    if (mid >= 0) snprintf(o, n, "decoder.mid_block.resnets.%d.%s.%s", mid, param, what);
    else snprintf(o, n, "decoder.up_blocks.%d.resnets.%d.%s.%s", i, j, param, what);
}

static int vae_get(lm_weights *w, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                   int64_t d3, float **out, lm_err *err)
{
    int64_t s[4] = { d0, d1, d2, d3 };
    return lm_weights_load(w, name, ndim, s, out, err);
}

static int load_resnet(lm_weights *w, int mid, int i, int j, int cin, int cout, vae_resnet *r, lm_err *err)
{
    char n[256];
    int rc;
    r->cin = cin;
    r->cout = cout;
#define RN(param, what, nd, a, b, cc, d, dst) \
    (resnet_name(n, sizeof n, mid, i, j, param, what), vae_get(w, n, nd, a, b, cc, d, dst, err))
    if ((rc = RN("norm1", "weight", 1, cin, 0, 0, 0, &r->n1w)) || (rc = RN("norm1", "bias", 1, cin, 0, 0, 0, &r->n1b)) ||
        (rc = RN("conv1", "weight", 4, cout, cin, 3, 3, &r->c1w)) || (rc = RN("conv1", "bias", 1, cout, 0, 0, 0, &r->c1b)) ||
        (rc = RN("norm2", "weight", 1, cout, 0, 0, 0, &r->n2w)) || (rc = RN("norm2", "bias", 1, cout, 0, 0, 0, &r->n2b)) ||
        (rc = RN("conv2", "weight", 4, cout, cout, 3, 3, &r->c2w)) || (rc = RN("conv2", "bias", 1, cout, 0, 0, 0, &r->c2b)))
        return rc;
    if (cin != cout &&
        ((rc = RN("conv_shortcut", "weight", 4, cout, cin, 1, 1, &r->scw)) ||
         (rc = RN("conv_shortcut", "bias", 1, cout, 0, 0, 0, &r->scb))))
        return rc;
#undef RN
    return 0;
}

static void free_resnet(vae_resnet *r)
{
    free(r->n1w); free(r->n1b); free(r->c1w); free(r->c1b);
    free(r->n2w); free(r->n2b); free(r->c2w); free(r->c2b);
    free(r->scw); free(r->scb);
}

void lm_vae_free(lm_vae *v)
{
    if (!v) return;
    free(v->pq_w); free(v->pq_b); free(v->in_w); free(v->in_b);
    free_resnet(&v->mid[0]);
    free_resnet(&v->mid[1]);
    vae_attn *a = &v->attn;
    free(a->nw); free(a->nb); free(a->qw); free(a->qb); free(a->kw); free(a->kb);
    free(a->vw); free(a->vb); free(a->ow); free(a->ob);
    for (int i = 0; v->up && i < v->cfg.levels * v->cfg.resnets; i++) free_resnet(&v->up[i]);
    free(v->up);
    for (int i = 0; i < LM_VAE_MAX_LEVELS; i++) { free(v->ups_w[i]); free(v->ups_b[i]); }
    free(v->no_w); free(v->no_b); free(v->out_w); free(v->out_b);
    free(v);
}

const lm_vae_config *lm_vae_config_of(const lm_vae *v) { return &v->cfg; }

static const lm_entry *findf(lm_weights *w, char *n, size_t nn, const char *fmt, int a, int b)
{
    snprintf(n, nn, fmt, a, b);
    return lm_weights_find(w, n);
}

/* Reads the sizes from the shapes. */
static int detect(lm_vae *v, lm_weights *w, const char *path, lm_err *err)
{
    lm_vae_config *c = &v->cfg;
    char n[256];
    const lm_entry *e = lm_weights_find(w, "decoder.conv_in.weight");
    if (!e)
        return lm_err_set(err, LM_EINPUT, path, "decoder.conv_in.weight", LM_ERR_NO_OFFSET,
                          "no VAE decoder in this file");
    size_t keep = strlen(e->name) - strlen("decoder.conv_in.weight");
    snprintf(c->prefix, sizeof c->prefix, "%.*s", (int)keep, e->name);
    c->ldm = strstr(e->name, "first_stage_model.") == e->name;
    if (e->ndim != 4 || e->shape[2] != 3 || e->shape[3] != 3)
        return lm_err_set(err, LM_EINPUT, path, e->name, LM_ERR_NO_OFFSET, "decoder.conv_in is not a 3x3 conv");
    c->latent_channels = (int)e->shape[1];
    int ctop = (int)e->shape[0];
    const char *rfmt = "decoder.up_blocks.%d.resnets.%d.conv1.weight";
    for (c->levels = 0; c->levels < LM_VAE_MAX_LEVELS; c->levels++)
        if (!findf(w, n, sizeof n, rfmt, c->levels, 0)) break;
    if (c->levels == 0)
        return lm_err_set(err, LM_EINPUT, path, n, LM_ERR_NO_OFFSET, "VAE decoder has no up blocks");
    for (c->resnets = 0; c->resnets < 16; c->resnets++)
        if (!findf(w, n, sizeof n, rfmt, 0, c->resnets)) break;
    /* block_out_channels: output channels of each up block's first resnet */
    for (int i = 0; i < c->levels; i++)
        c->ch[c->levels - 1 - i] = (int)findf(w, n, sizeof n, rfmt, i, 0)->shape[0];
    if (c->ch[c->levels - 1] != ctop)
        return lm_err_set(err, LM_EINPUT, path, e->name, LM_ERR_NO_OFFSET,
                          "conv_in gives %d channels, the widest up block has %d", ctop, c->ch[c->levels - 1]);
    c->groups = 32;
    c->eps = 1e-6f;
    c->scaling_factor = LM_VAE_SCALING_SD;
    for (int i = 0; i < c->levels; i++)
        if (c->ch[i] % c->groups)
            return lm_err_set(err, LM_EINPUT, path, NULL, LM_ERR_NO_OFFSET,
                              "VAE channel count %d is not a multiple of %d groups", c->ch[i], c->groups);
    /* attention spelling: diffusers >= 0.14 (to_q …) or older (query …) */
    static const char *const spell[2][5] = {
        { "group_norm", "to_q", "to_k", "to_v", "to_out.0" },
        { "group_norm", "query", "key", "value", "proj_attn" } };
    int si = lm_weights_find(w, "decoder.mid_block.attentions.0.to_q.weight") ? 0 : 1;
    for (int i = 0; i < 5; i++) v->attn_names[i] = spell[si][i];
    return 0;
}

int lm_vae_load(lm_vae **out, lm_weights *w, const char *path, lm_err *err)
{
    *out = NULL;
    lm_vae *v = calloc(1, sizeof *v);
    if (!v) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    int rc = detect(v, w, path, err);
    if (rc) { lm_vae_free(v); return rc; }
    const lm_vae_config *c = &v->cfg;
    const int lc = c->latent_channels, L = c->levels, top = c->ch[L - 1];
    char n[256];
#define GET(nd, a, b, cc, d, dst, ...) (snprintf(n, sizeof n, __VA_ARGS__), vae_get(w, n, nd, a, b, cc, d, dst, err))
    if ((rc = GET(4, lc, lc, 1, 1, &v->pq_w, "post_quant_conv.weight")) ||
        (rc = GET(1, lc, 0, 0, 0, &v->pq_b, "post_quant_conv.bias")) ||
        (rc = GET(4, top, lc, 3, 3, &v->in_w, "decoder.conv_in.weight")) ||
        (rc = GET(1, top, 0, 0, 0, &v->in_b, "decoder.conv_in.bias")) ||
        (rc = GET(1, c->ch[0], 0, 0, 0, &v->no_w, "decoder.conv_norm_out.weight")) ||
        (rc = GET(1, c->ch[0], 0, 0, 0, &v->no_b, "decoder.conv_norm_out.bias")) ||
        (rc = GET(4, 3, c->ch[0], 3, 3, &v->out_w, "decoder.conv_out.weight")) ||
        (rc = GET(1, 3, 0, 0, 0, &v->out_b, "decoder.conv_out.bias")))
        goto fail;
    for (int k = 0; k < 2; k++)
        if ((rc = load_resnet(w, k, 0, 0, top, top, &v->mid[k], err))) goto fail;
    vae_attn *a = &v->attn;
    a->c = top;
    float **dst[5][2] = { { &a->nw, &a->nb }, { &a->qw, &a->qb }, { &a->kw, &a->kb }, { &a->vw, &a->vb }, { &a->ow, &a->ob } };
    for (int k = 0; k < 5; k++) {
        /* q/k/v/out: [C, C] linear (diffusers) or [C, C, 1, 1] conv (LDM): same numbers */
        if ((rc = GET(k ? 2 : 1, top, top, 0, 0, dst[k][0], "decoder.mid_block.attentions.0.%s.weight", v->attn_names[k])) ||
            (rc = GET(1, top, 0, 0, 0, dst[k][1], "decoder.mid_block.attentions.0.%s.bias", v->attn_names[k])))
            goto fail;
    }
    v->up = calloc((size_t)(L * c->resnets), sizeof *v->up);
    if (!v->up) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto fail; }
    int cin = top;
    for (int i = 0; i < L; i++) {
        int cout = c->ch[L - 1 - i];
        for (int j = 0; j < c->resnets; j++)
            if ((rc = load_resnet(w, -1, i, j, j ? cout : cin, cout, &v->up[i * c->resnets + j], err))) goto fail;
        cin = cout;
        if (i < L - 1 &&
            ((rc = GET(4, cout, cout, 3, 3, &v->ups_w[i], "decoder.up_blocks.%d.upsamplers.0.conv.weight", i)) ||
             (rc = GET(1, cout, 0, 0, 0, &v->ups_b[i], "decoder.up_blocks.%d.upsamplers.0.conv.bias", i))))
            goto fail;
    }
#undef GET
    for (int k = 0; k < 2; k++) {
        vae_resnet *r = &v->mid[k];
        if ((rc = to_wino(&r->c1w, top, top, &r->wino1, err)) || (rc = to_wino(&r->c2w, top, top, &r->wino2, err))) goto fail;
    }
    for (int i = 0; i < L * c->resnets; i++) {
        vae_resnet *r = &v->up[i];
        if ((rc = to_wino(&r->c1w, r->cout, r->cin, &r->wino1, err)) ||
            (rc = to_wino(&r->c2w, r->cout, r->cout, &r->wino2, err)))
            goto fail;
    }
    for (int i = 0; i < L - 1; i++) {
        int ch = c->ch[L - 1 - i];
        if ((rc = to_wino(&v->ups_w[i], ch, ch, &v->ups_wino[i], err))) goto fail;
    }
    *out = v;
    return 0;
fail:
    lm_vae_free(v);
    return rc;
}

int lm_vae_load_source(lm_vae **out, const lm_source *src, lm_err *err)
{
    lm_weights *w = NULL;
    *out = NULL;
    int rc = lm_weights_open(&w, src, "vae", NULL, NULL, 0, err);
    if (!rc) rc = lm_vae_load(out, w, lm_source_path(src), err);
    if (rc) lm_err_file(err, lm_source_path(src));
    lm_weights_close(w);
    return rc;
}

/* ---------- forward ---------- */


static void swap(float **a, float **b) { float *t = *a; *a = *b; *b = t; }

static int resnet_fwd(const vae_resnet *r, vae_fwd *f, int H, int W, const lm_vae_config *c)
{
    const int64_t HW = (int64_t)H * W;
    const size_t n = (size_t)(r->cout * HW);
    lm_group_norm(f->X, r->cin, HW, c->groups, r->n1w, r->n1b, c->eps, 1, f->T);
    if (lm_vae_conv3(r->wino1, f->T, r->cin, H, W, r->c1w, r->c1b, r->cout, f->Y, &f->work)) return -1;
    lm_group_norm(f->Y, r->cout, HW, c->groups, r->n2w, r->n2b, c->eps, 1, f->Y);
    if (lm_vae_conv3(r->wino2, f->Y, r->cout, H, W, r->c2w, r->c2b, r->cout, f->T, &f->work)) return -1;
    if (r->scw) {
        if (lm_conv2d(f->X, r->cin, H, W, r->scw, r->scb, r->cout, 1, 1, k_pad0, f->Y, &f->work)) return -1;
        lm_add(f->T, f->Y, n);
    } else {
        lm_add(f->T, f->X, n);
    }
    swap(&f->X, &f->T);
    return 0;
}

/* Self-attention over the H·W positions, one head of C channels, residual. */
static int attn_fwd(const vae_attn *a, vae_fwd *f, int H, int W, const lm_vae_config *c)
{
    const int C = a->c;
    const int64_t HW = (int64_t)H * W;
    float *tok = malloc((size_t)(4 * HW * C) * sizeof *tok);
    if (!tok) return -1;
    float *q = tok, *k = q + HW * C, *v = k + HW * C, *o = v + HW * C;
    lm_group_norm(f->X, C, HW, c->groups, a->nw, a->nb, c->eps, 0, f->T);
    lm_proj_to_tokens(f->T, C, HW, a->qw, a->qb, C, q);
    lm_proj_to_tokens(f->T, C, HW, a->kw, a->kb, C, k);
    lm_proj_to_tokens(f->T, C, HW, a->vw, a->vb, C, v);
    int rc = lm_attention(q, C, k, C, v, C, HW, HW, 1, C, 1.0f / sqrtf((float)C), 0, o, C, &f->work);
    if (!rc) lm_proj_from_tokens(o, HW, C, a->ow, a->ob, C, f->X, 1);
    free(tok);
    return rc ? -1 : 0;
}

int lm_vae_front(const lm_vae *v, const float *z, int h, int w, vae_fwd *f)
{
    const lm_vae_config *c = &v->cfg;
    if (lm_conv2d(z, c->latent_channels, h, w, v->pq_w, v->pq_b, c->latent_channels, 1, 1, k_pad0, f->T, &f->work) ||
        lm_vae_conv3(0, f->T, c->latent_channels, h, w, v->in_w, v->in_b, c->ch[c->levels - 1], f->X, &f->work) ||
        resnet_fwd(&v->mid[0], f, h, w, c) || attn_fwd(&v->attn, f, h, w, c) || resnet_fwd(&v->mid[1], f, h, w, c))
        return -1;
    return 0;
}

/* Largest C·H·W any buffer holds while decoding an h×w latent. */
static size_t buffer_floats(const lm_vae_config *c, int h, int w)
{
    const int L = c->levels;
    size_t hw = (size_t)h * w, m = (size_t)(c->latent_channels > c->ch[L - 1] ? c->latent_channels : c->ch[L - 1]) * hw;
    int cin = c->ch[L - 1];
    for (int i = 0; i < L; i++) {
        int cout = c->ch[L - 1 - i];
        size_t need = (size_t)(cin > cout ? cin : cout) * hw;
        if (need > m) m = need;
        if (i < L - 1) {
            hw *= 4;
            if ((size_t)cout * hw > m) m = (size_t)cout * hw;
        }
        cin = cout;
    }
    return m;
}

/* Untiled decode of z (already scaled as the caller wants) [lc, h, w] → img [3, H, W]. */
static int decode_full(const lm_vae *v, const float *z, int h, int w, float *img, lm_err *err)
{
    const lm_vae_config *c = &v->cfg;
    const int L = c->levels;
    size_t cap = buffer_floats(c, h, w);
    vae_fwd f = { NULL, NULL, NULL, LM_WORK_INIT };
    f.X = malloc(cap * sizeof(float));
    f.T = malloc(cap * sizeof(float));
    f.Y = malloc(cap * sizeof(float));
    int rc = 0, H = h, W = w;
    if (!f.X || !f.T || !f.Y) goto oom;
    if (lm_vae_front(v, z, h, w, &f)) goto oom;
    for (int i = 0; i < L; i++) {
        int cout = c->ch[L - 1 - i];
        for (int j = 0; j < c->resnets; j++)
            if (resnet_fwd(&v->up[i * c->resnets + j], &f, H, W, c)) goto oom;
        if (i < L - 1 && v->ups_wino[i]) {   /* upsample + conv in one op: 9 of Winograd's 16 products */
            if (lm_conv3x3_winograd_up2(f.X, cout, H, W, v->ups_w[i], v->ups_b[i], cout, f.Y, &f.work)) goto oom;
            swap(&f.X, &f.Y);
            H *= 2;
            W *= 2;
        } else if (i < L - 1) {
            lm_upsample_nearest2x(f.X, cout, H, W, f.Y);
            H *= 2;
            W *= 2;
            if (lm_vae_conv3(0, f.Y, cout, H, W, v->ups_w[i], v->ups_b[i], cout, f.X, &f.work)) goto oom;
        }
    }
    lm_group_norm(f.X, c->ch[0], (int64_t)H * W, c->groups, v->no_w, v->no_b, c->eps, 1, f.T);
    if (lm_vae_conv3(0, f.T, c->ch[0], H, W, v->out_w, v->out_b, 3, img, &f.work)) goto oom;
    goto done;
oom:
    rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory decoding a %dx%d latent (%zu MiB per buffer)",
                    h, w, cap * sizeof(float) >> 20);
done:
    free(f.X);
    free(f.T);
    free(f.Y);
    lm_work_free(&f.work);
    return rc;
}

int lm_vae_decode(const lm_vae *v, const float *z, int h, int w, const lm_vae_decode_opts *opts,
                  float *img, lm_err *err)
{
    lm_vae_decode_opts o = LM_VAE_DECODE_OPTS_INIT;
    if (opts) o = *opts;
    const lm_vae_config *c = &v->cfg;
    if (h < 1 || w < 1 || h > 4096 || w > 4096)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "latent size %dx%d out of range", h, w);
    /* opts.overlap is ignored: bands are exact, nothing to blend */
    int tile = o.tile == 0 ? ((int64_t)h * w > 64 * 64 ? 0 : -1) : o.tile;
    if (tile >= h) tile = -1;    /* one band: untiled needs less (no temporary files) */
    const size_t n = (size_t)c->latent_channels * h * w;
    float *zs = NULL;
    if (o.scaled) {
        zs = malloc(n * sizeof *zs);
        if (!zs) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
        /* latents / scaling_factor, a float32 division as diffusers does it */
        for (size_t i = 0; i < n; i++) zs[i] = z[i] / c->scaling_factor;
        z = zs;
    }
    int rc = tile >= 0 ? lm_vae_decode_banded(v, z, h, w, tile, 0, img, err) : decode_full(v, z, h, w, img, err);
    free(zs);
    return rc;
}

double lm_vae_flops(const lm_vae *v, int h, int w)
{
    const lm_vae_config *c = &v->cfg;
    const int L = c->levels;
    double hw = (double)h * w, f = 0;
    const double lc = c->latent_channels, top = c->ch[L - 1];
    f += 2 * lc * lc * hw + 2 * top * lc * 9 * hw;                       /* post_quant_conv, conv_in */
    f += 2 * (2 * 2 * top * top * 9 * hw);                               /* mid resnets */
    f += 4 * 2 * hw * top * top + 2 * 2 * hw * hw * top;                 /* mid attention */
    double cin = top;
    for (int i = 0; i < L; i++) {
        double cout = c->ch[L - 1 - i];
        for (int j = 0; j < c->resnets; j++) {
            double ci = j ? cout : cin;
            f += 2 * cout * ci * 9 * hw + 2 * cout * cout * 9 * hw + (ci != cout ? 2 * cout * ci * hw : 0);
        }
        cin = cout;
        if (i < L - 1) { hw *= 4; f += 2 * cout * cout * 9 * hw; }
    }
    return f + 2 * 3 * c->ch[0] * 9 * hw;                                /* conv_out */
}

void lm_vae_image_to_u8(const float *img, int H, int W, uint8_t *rgb)
{
    const size_t HW = (size_t)H * W;
    for (size_t p = 0; p < HW; p++)
        for (int ch = 0; ch < 3; ch++) {
            float x = img[ch * HW + p] / 2.0f + 0.5f;
            x = x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x;
            rgb[p * 3 + ch] = (uint8_t)rintf(x * 255.0f);   /* numpy round: half to even */
        }
}
