/* UNet forward pass, one image at a time: diffusers' UNet2DConditionModel
 * (down blocks with skips, mid block, up blocks concatenating [current,
 * skip]) composed from ops.h. Activations are channels-first [C, H·W];
 * transformer blocks work on tokens [H·W, C]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler/unet_impl.h"

#define GN_EPS_RESNET 1e-5f     /* norm_eps of resnets and conv_norm_out */
#define GN_EPS_ATTN 1e-6f       /* Transformer2DModel's GroupNorm */
#define LN_EPS 1e-5f

static const int PAD1[4] = { 1, 1, 1, 1 }, PAD0[4] = { 0, 0, 0, 0 };

typedef struct {
    lm_unet *u;
    const float *emb_silu;      /* SiLU(time embedding) [time_embed_dim] */
    const float *ctx;           /* [L, context_dim] */
    int L;
    int n;                      /* batch index, for taps */
} fwd;

static void tap(fwd *f, const char *name, const float *x, int C, int H, int W)
{
    if (f->u->opts.tap) f->u->opts.tap(f->u->opts.tap_ctx, name, f->n, x, C, H, W);
}

/* Activation buffers come from a per-UNet pool and go back to it: every
 * forward pass asks for the same sizes in the same order, so after the first
 * pass nothing is allocated (and no fresh page is faulted in) any more. */
static float *ub(lm_unet *u, size_t n)
{
    size_t best = (size_t)-1;
    for (size_t i = 0; i < u->n_pool; i++)
        if (!u->pool[i].used && u->pool[i].cap >= n && (best == (size_t)-1 || u->pool[i].cap < u->pool[best].cap))
            best = i;
    if (best != (size_t)-1) {
        u->pool[best].used = 1;
        return u->pool[best].p;
    }
    if (u->n_pool == u->cap_pool) {
        size_t cap = u->cap_pool ? 2 * u->cap_pool : 64;
        u_buf *q = realloc(u->pool, cap * sizeof *q);
        if (!q) return NULL;
        u->pool = q;
        u->cap_pool = cap;
    }
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) return NULL;
    u->pool[u->n_pool++] = (u_buf){ p, n, 1 };
    return p;
}

static void uf(lm_unet *u, float *p)
{
    if (!p) return;
    for (size_t i = 0; i < u->n_pool; i++)
        if (u->pool[i].p == p) { u->pool[i].used = 0; return; }
}

#define UB(n) ub(f->u, (n))
#define UF(p) uf(f->u, (p))

/* 3×3 convolution, stride 1, padding 1: Winograd when the weights were
 * transformed at load (unet_load.c), im2col + sgemm otherwise */
static int conv3(lm_unet *u, const u_lin *l, const float *x, int C, int H, int W, int OC, float *y)
{
    if (l->wino) return lm_conv3x3_winograd(x, C, H, W, l->wino, l->b, OC, y, &u->work);
    return lm_conv2d(x, C, H, W, l->w, l->b, OC, 3, 1, PAD1, y, &u->work);
}

/* ResnetBlock2D: x [cin, H, W] → out [cout, H, W] */
static int resnet(fwd *f, const u_resnet *r, const float *x, int H, int W, float *out)
{
    lm_unet *u = f->u;
    int64_t HW = (int64_t)H * W;
    int G = u->cfg.groups, rc = LM_ENOMEM;
    float *a = UB((size_t)r->cin * HW), *h = UB((size_t)r->cout * HW);
    float *t = UB((size_t)r->cout);
    if (!a || !h || !t) goto done;
    lm_group_norm(x, r->cin, HW, G, r->norm1.w, r->norm1.b, GN_EPS_RESNET, 1, a);
    if ((rc = conv3(u, &r->conv1, a, r->cin, H, W, r->cout, h))) goto done;
    lm_linear(f->emb_silu, 1, u->cfg.time_embed_dim, r->temb.w, r->temb.b, r->cout, t, 0);
    lm_add_channel(h, r->cout, HW, t);
    lm_group_norm(h, r->cout, HW, G, r->norm2.w, r->norm2.b, GN_EPS_RESNET, 1, h);
    if ((rc = conv3(u, &r->conv2, h, r->cout, H, W, r->cout, out))) goto done;
    if (r->shortcut.w) {
        /* 1×1 shortcut: h is free again and large enough */
        if ((rc = lm_conv2d(x, r->cin, H, W, r->shortcut.w, r->shortcut.b, r->cout, 1, 1, PAD0, h, &u->work))) goto done;
        lm_add(out, h, (size_t)r->cout * HW);
    } else {
        lm_add(out, x, (size_t)r->cout * HW);
    }
    rc = 0;
done:
    UF(a); UF(h); UF(t);
    return rc;
}

/* Attention (self or cross) of one BasicTransformerBlock: tokens n [HW, C]
 * (normed) → h += to_out(attention) */
static int tblock(fwd *f, const u_transformer *tr, const u_tblock *k, float *h, int64_t T)
{
    lm_unet *u = f->u;
    int C = tr->C, X = u->cfg.context_dim, heads = tr->heads, dh = C / heads, L = f->L;
    float scale = 1.0f / sqrtf((float)dh);
    int rc = LM_ENOMEM;
    float *n = UB((size_t)T * C), *att = UB((size_t)T * C);
    float *qkv = UB((size_t)T * 3 * C), *kv = UB((size_t)L * 2 * C);
    float *ff = UB((size_t)T * 8 * C), *g = UB((size_t)T * 4 * C);
    if (!n || !att || !qkv || !kv || !ff || !g) goto done;
    /* self-attention: one projection to [T, 3C] = [q | k | v] */
    lm_layer_norm(h, T, C, k->norm1.w, k->norm1.b, LN_EPS, n);
    lm_linear(n, T, C, k->qkv.w, NULL, 3 * C, qkv, 0);
    if ((rc = lm_attention(qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C, 3 * C, T, T, heads, dh, scale, 0,
                           att, C, &u->work)))
        goto done;
    lm_linear(att, T, C, k->out1.w, k->out1.b, C, h, 1);
    /* cross-attention on the context: k, v [L, 2C] */
    lm_layer_norm(h, T, C, k->norm2.w, k->norm2.b, LN_EPS, n);
    lm_linear(n, T, C, k->q2.w, NULL, C, qkv, 0);
    lm_linear(f->ctx, L, X, k->kv2.w, NULL, 2 * C, kv, 0);
    if ((rc = lm_attention(qkv, C, kv, 2 * C, kv + C, 2 * C, T, L, heads, dh, scale, 0, att, C, &u->work)))
        goto done;
    lm_linear(att, T, C, k->out2.w, k->out2.b, C, h, 1);
    /* feed-forward: GEGLU */
    lm_layer_norm(h, T, C, k->norm3.w, k->norm3.b, LN_EPS, n);
    lm_linear(n, T, C, k->ff1.w, k->ff1.b, 8 * C, ff, 0);
    lm_geglu(ff, T, 4 * C, g);
    lm_linear(g, T, 4 * C, k->ff2.w, k->ff2.b, C, h, 1);
    rc = 0;
done:
    UF(n); UF(att); UF(qkv); UF(kv); UF(ff); UF(g);
    return rc;
}

/* Transformer2DModel, in place on x [C, H, W] (residual included) */
static int transformer(fwd *f, const u_transformer *tr, float *x, int H, int W)
{
    int64_t T = (int64_t)H * W;
    int C = tr->C, rc = LM_ENOMEM;
    float *a = UB((size_t)C * T), *h = UB((size_t)T * C);
    if (!a || !h) goto done;
    lm_group_norm(x, C, T, f->u->cfg.groups, tr->norm.w, tr->norm.b, GN_EPS_ATTN, 0, a);
    lm_proj_to_tokens(a, C, T, tr->proj_in.w, tr->proj_in.b, C, h);
    for (int d = 0; d < tr->depth; d++)
        if ((rc = tblock(f, tr, &tr->blocks[d], h, T))) goto done;
    lm_proj_from_tokens(h, T, C, tr->proj_out.w, tr->proj_out.b, C, x, 1);
    rc = 0;
done:
    UF(a); UF(h);
    return rc;
}

typedef struct { float *p; int C, H, W; } skip_t;

static int forward_one(fwd *f, const float *x, int H, int W, float t, const float *y, float *eps)
{
    lm_unet *u = f->u;
    const lm_unet_config *g = &u->cfg;
    int L = g->levels, rc = LM_ENOMEM, ns = 0, C = g->channels[0];
    skip_t skips[3 * LM_UNET_MAX_LEVELS + 2];
    float *h = NULL, *o = NULL;
    /* time embedding */
    float *tp = UB((size_t)g->time_proj_dim), *e1 = UB((size_t)g->time_embed_dim);
    float *emb = UB((size_t)g->time_embed_dim);
    if (!tp || !e1 || !emb) goto done;
    lm_timestep_embedding(&t, 1, g->time_proj_dim, 1, 0.0f, 10000.0f, tp);
    tap(f, "time_proj", tp, g->time_proj_dim, 1, 1);
    lm_linear(tp, 1, g->time_proj_dim, u->time1.w, u->time1.b, g->time_embed_dim, e1, 0);
    lm_silu(e1, (size_t)g->time_embed_dim);
    lm_linear(e1, 1, g->time_embed_dim, u->time2.w, u->time2.b, g->time_embed_dim, emb, 0);
    tap(f, "time_embedding", emb, g->time_embed_dim, 1, 1);
    if (g->adm_in_channels) {
        /* SDXL: emb += linear_2(SiLU(linear_1(y))) (diffusers' add_embedding, "aug_emb") */
        float *a1 = UB((size_t)g->time_embed_dim), *a2 = UB((size_t)g->time_embed_dim);
        if (!a1 || !a2) { UF(a1); UF(a2); goto done; }
        lm_linear(y, 1, g->adm_in_channels, u->add1.w, u->add1.b, g->time_embed_dim, a1, 0);
        lm_silu(a1, (size_t)g->time_embed_dim);
        lm_linear(a1, 1, g->time_embed_dim, u->add2.w, u->add2.b, g->time_embed_dim, a2, 0);
        tap(f, "add_embedding", a2, g->time_embed_dim, 1, 1);
        lm_add(emb, a2, (size_t)g->time_embed_dim);
        UF(a1); UF(a2);
    }
    lm_silu(emb, (size_t)g->time_embed_dim);
    f->emb_silu = emb;

    h = UB((size_t)C * H * W);
    if (!h) goto done;
    if ((rc = lm_conv2d(x, g->in_channels, H, W, u->conv_in.w, u->conv_in.b, C, 3, 1, PAD1, h, &u->work))) goto done;
    tap(f, "conv_in", h, C, H, W);
    skips[ns++] = (skip_t){ h, C, H, W };
    char name[32];
    for (int i = 0; i < L; i++) {
        const u_block *b = &u->down[i];
        for (int j = 0; j < b->n_res; j++) {
            const u_resnet *r = &b->res[j];
            o = UB((size_t)r->cout * H * W);
            if (!o) { rc = LM_ENOMEM; goto done; }
            if ((rc = resnet(f, r, h, H, W, o))) goto done;
            if (b->attn[j].depth && (rc = transformer(f, &b->attn[j], o, H, W))) goto done;
            h = o; o = NULL; C = r->cout;
            skips[ns++] = (skip_t){ h, C, H, W };
        }
        if (b->sample.w) {
            int OH = (H + 1) / 2, OW = (W + 1) / 2;
            o = UB((size_t)C * OH * OW);
            if (!o) { rc = LM_ENOMEM; goto done; }
            if ((rc = lm_conv2d(h, C, H, W, b->sample.w, b->sample.b, C, 3, 2, PAD1, o, &u->work))) goto done;
            h = o; o = NULL; H = OH; W = OW;
            skips[ns++] = (skip_t){ h, C, H, W };
        }
        snprintf(name, sizeof name, "down_blocks.%d", i);
        tap(f, name, h, C, H, W);
    }
    /* mid block: h is the last skip and must survive, so work on a copy */
    o = UB((size_t)C * H * W);
    if (!o) { rc = LM_ENOMEM; goto done; }
    if ((rc = resnet(f, &u->mid_res[0], h, H, W, o))) goto done;
    h = o; o = NULL;
    if (u->mid_attn.depth && (rc = transformer(f, &u->mid_attn, h, H, W))) goto done;
    o = UB((size_t)C * H * W);
    if (!o) { rc = LM_ENOMEM; goto done; }
    if ((rc = resnet(f, &u->mid_res[1], h, H, W, o))) goto done;
    UF(h); h = o; o = NULL;
    tap(f, "mid_block", h, C, H, W);
    for (int i = 0; i < L; i++) {
        const u_block *b = &u->up[i];
        for (int j = 0; j < b->n_res; j++) {
            const u_resnet *r = &b->res[j];
            skip_t s = skips[--ns];
            size_t HW = (size_t)H * W;
            float *cat = UB((size_t)(C + s.C) * HW);
            if (!cat) { rc = LM_ENOMEM; goto done; }
            memcpy(cat, h, (size_t)C * HW * sizeof *cat);
            memcpy(cat + (size_t)C * HW, s.p, (size_t)s.C * HW * sizeof *cat);
            UF(h); h = cat;
            UF(s.p); skips[ns].p = NULL;
            o = UB((size_t)r->cout * HW);
            if (!o) { rc = LM_ENOMEM; goto done; }
            if ((rc = resnet(f, r, h, H, W, o))) goto done;
            if (b->attn[j].depth && (rc = transformer(f, &b->attn[j], o, H, W))) goto done;
            UF(h); h = o; o = NULL; C = r->cout;
        }
        if (b->sample.w || b->sample.wino) {
            /* 2× nearest, or to the next skip's size when a side is odd
             * (diffusers forwards upsample_size then) */
            int OH = ns ? skips[ns - 1].H : 2 * H, OW = ns ? skips[ns - 1].W : 2 * W;
            float *up = UB((size_t)C * OH * OW);
            if (!up) { rc = LM_ENOMEM; goto done; }
            lm_upsample_nearest(h, C, H, W, OH, OW, up);
            H = OH; W = OW;
            UF(h); h = up;
            o = UB((size_t)C * H * W);
            if (!o) { rc = LM_ENOMEM; goto done; }
            if ((rc = conv3(u, &b->sample, h, C, H, W, C, o))) goto done;
            UF(h); h = o; o = NULL;
        }
        snprintf(name, sizeof name, "up_blocks.%d", i);
        tap(f, name, h, C, H, W);
    }
    lm_group_norm(h, C, (int64_t)H * W, g->groups, u->norm_out.w, u->norm_out.b, GN_EPS_RESNET, 0, h);
    tap(f, "conv_norm_out", h, C, H, W);
    lm_silu(h, (size_t)C * H * W);
    rc = lm_conv2d(h, C, H, W, u->conv_out.w, u->conv_out.b, g->out_channels, 3, 1, PAD1, eps, &u->work);
done:
    /* skips alias h only while h has not moved on; free each buffer once */
    for (int i = 0; i < ns; i++) if (skips[i].p != h) UF(skips[i].p);
    UF(h); UF(o); UF(tp); UF(e1); UF(emb);
    return rc;
}

int lm_unet_forward(lm_unet *u, const float *latent, int N, int h, int w,
                    const float *timesteps, const float *context, int ctx_len,
                    const float *y, float *eps, lm_err *err)
{
    const lm_unet_config *g = &u->cfg;
    if (N < 1 || h < 1 || w < 1)
        return lm_err_set(err, LM_EUSAGE, NULL, "latent", LM_ERR_NO_OFFSET, "empty latent %dx%d", h, w);
    if (ctx_len < 1)
        return lm_err_set(err, LM_EUSAGE, NULL, "context", LM_ERR_NO_OFFSET, "empty context");
    if (g->adm_in_channels && !y)
        return lm_err_set(err, LM_EUSAGE, NULL, "y", LM_ERR_NO_OFFSET,
                          "this UNet needs the added conditioning y [N, %d]", g->adm_in_channels);
    size_t in_n = (size_t)g->in_channels * h * w, out_n = (size_t)g->out_channels * h * w;
    for (int n = 0; n < N; n++) {
        fwd f = { u, NULL, context + (size_t)n * ctx_len * g->context_dim, ctx_len, n };
        const float *yn = g->adm_in_channels ? y + (size_t)n * g->adm_in_channels : NULL;
        int rc = forward_one(&f, latent + n * in_n, h, w, timesteps[n], yn, eps + n * out_n);
        if (rc) return lm_err_set(err, rc, NULL, NULL, LM_ERR_NO_OFFSET, "UNet forward: %s", lm_err_name(rc));
    }
    return 0;
}

/* multiply-adds ×2 of the sgemm-shaped work; elementwise ops are not counted */
static double conv_fl(int cin, int cout, int k, double P) { return 2.0 * cin * cout * k * k * P; }

static double resnet_fl(const u_resnet *r, double P, int T)
{
    return conv_fl(r->cin, r->cout, 3, P) + conv_fl(r->cout, r->cout, 3, P) + 2.0 * T * r->cout +
           (r->shortcut.w ? conv_fl(r->cin, r->cout, 1, P) : 0.0);
}

static double transformer_fl(const u_transformer *t, double P, int L, int X)
{
    double C = t->C, per = 0;
    per += 2 * P * C * 3 * C + 4 * P * P * C + 2 * P * C * C;            /* qkv, QKᵀ and PV, out */
    per += 2 * P * C * C + 2.0 * L * X * 2 * C + 4 * P * L * C + 2 * P * C * C;
    per += 2 * P * C * 8 * C + 2 * P * 4 * C * C;                        /* GEGLU feed-forward */
    return 2 * 2 * P * C * C + t->depth * per;                            /* proj_in, proj_out */
}

int lm_unet_sdxl_y(const lm_unet *u, const float *text_embeds, int pooled_dim, const float *time_ids,
                   int N, float *y, lm_err *err)
{
    int adm = u->cfg.adm_in_channels, d = (adm - pooled_dim) / 6;
    if (!adm || pooled_dim < 0 || d < 2 || d % 2 || pooled_dim + 6 * d != adm)
        return lm_err_set(err, LM_EUSAGE, NULL, "add_embedding", LM_ERR_NO_OFFSET,
                          "added conditioning of width %d does not split into %d + 6 sinusoids", adm, pooled_dim);
    for (int n = 0; n < N; n++) {
        float *o = y + (size_t)n * adm;
        memcpy(o, text_embeds + (size_t)n * pooled_dim, (size_t)pooled_dim * sizeof *o);
        lm_timestep_embedding(time_ids + (size_t)n * 6, 6, d, 1, 0.0f, 10000.0f, o + pooled_dim);
    }
    return 0;
}

double lm_unet_flops(const lm_unet *u, int h, int w, int ctx_len)
{
    const lm_unet_config *g = &u->cfg;
    int T = g->time_embed_dim, X = g->context_dim, L = g->levels;
    double P = (double)h * w, f = conv_fl(g->in_channels, g->channels[0], 3, P);
    for (int i = 0; i < L; i++) {
        const u_block *b = &u->down[i];
        for (int j = 0; j < b->n_res; j++) {
            f += resnet_fl(&b->res[j], P, T);
            if (b->attn[j].depth) f += transformer_fl(&b->attn[j], P, ctx_len, X);
        }
        if (b->sample.w) { P /= 4; f += conv_fl(b->res[0].cout, b->res[0].cout, 3, P); }
    }
    f += resnet_fl(&u->mid_res[0], P, T) + resnet_fl(&u->mid_res[1], P, T);
    if (u->mid_attn.depth) f += transformer_fl(&u->mid_attn, P, ctx_len, X);
    for (int i = 0; i < L; i++) {
        const u_block *b = &u->up[i];
        for (int j = 0; j < b->n_res; j++) {
            f += resnet_fl(&b->res[j], P, T);
            if (b->attn[j].depth) f += transformer_fl(&b->attn[j], P, ctx_len, X);
        }
        if (b->sample.w || b->sample.wino) { P *= 4; f += conv_fl(b->res[0].cout, b->res[0].cout, 3, P); }
    }
    return f + conv_fl(g->channels[0], g->out_channels, 3, P);
}
