/* UNet loading: structure inferred from names and shapes, weights to fp32
 * (LoRAs applied by the weight set), q/k/v stacked for one projection. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler/unet_impl.h"
#include "sampler/weights.h"

typedef struct {
    lm_unet *u;
    lm_weights *w;
    lm_err *err;
} ld_ctx;

static int has(ld_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int has(ld_ctx *c, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return lm_weights_find(c->w, name) != NULL;
}

static const lm_entry *entry(ld_ctx *c, const char *name) { return lm_weights_find(c->w, name); }

static int keep(lm_unet *u, float *p)
{
    if (u->n_owned == u->cap_owned) {
        size_t cap = u->cap_owned ? 2 * u->cap_owned : 256;
        float **q = realloc(u->owned, cap * sizeof *q);
        if (!q) return LM_ENOMEM;
        u->owned = q;
        u->cap_owned = cap;
    }
    u->owned[u->n_owned++] = p;
    return 0;
}

/* loads prefix.weight with the given shape (dims ≤ 4, -1 = any) and, when
 * bias is set, prefix.bias [shape[0]] */
static int ld(ld_ctx *c, u_lin *l, const char *prefix, int bias, int ndim, int64_t d0, int64_t d1,
              int64_t d2, int64_t d3)
{
    char name[256];
    int64_t shape[4] = { d0, d1, d2, d3 };
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = lm_weights_load(c->w, name, ndim, shape, &l->w, c->err);
    if (!rc && (rc = keep(c->u, l->w))) { free(l->w); l->w = NULL; }
    if (rc || !bias) return rc;
    int64_t bs[1] = { shape[0] };
    snprintf(name, sizeof name, "%s.bias", prefix);
    rc = lm_weights_load(c->w, name, 1, bs, &l->b, c->err);
    if (!rc && (rc = keep(c->u, l->b))) { free(l->b); l->b = NULL; }
    return rc;
}

static int ld_norm(ld_ctx *c, u_lin *l, const char *prefix, int C)
{
    return ld(c, l, prefix, 1, 1, C, 0, 0, 0);
}

static int ld_resnet(ld_ctx *c, u_resnet *r, const char *p, int cin, int cout)
{
    char n[256];
    int rc = 0, T = c->u->cfg.time_embed_dim;
    r->cin = cin;
    r->cout = cout;
    snprintf(n, sizeof n, "%s.norm1", p);
    if (!rc) rc = ld_norm(c, &r->norm1, n, cin);
    snprintf(n, sizeof n, "%s.conv1", p);
    if (!rc) rc = ld(c, &r->conv1, n, 1, 4, cout, cin, 3, 3);
    snprintf(n, sizeof n, "%s.time_emb_proj", p);
    if (!rc) rc = ld(c, &r->temb, n, 1, 2, cout, T, 0, 0);
    snprintf(n, sizeof n, "%s.norm2", p);
    if (!rc) rc = ld_norm(c, &r->norm2, n, cout);
    snprintf(n, sizeof n, "%s.conv2", p);
    if (!rc) rc = ld(c, &r->conv2, n, 1, 4, cout, cout, 3, 3);
    snprintf(n, sizeof n, "%s.conv_shortcut", p);
    if (!rc && (cin != cout || has(c, "%s.weight", n))) rc = ld(c, &r->shortcut, n, 1, 4, cout, cin, 1, 1);
    return rc;
}

/* loads q, k, v weights [C, in] of an attention into one stacked buffer */
static int ld_stacked(ld_ctx *c, u_lin *dst, const char *p, const char *const *parts, int n_parts,
                      int C, int in)
{
    char name[256];
    float *buf = malloc((size_t)n_parts * C * in * sizeof *buf);
    if (!buf) return lm_err_set(c->err, LM_ENOMEM, NULL, p, LM_ERR_NO_OFFSET, "out of memory");
    for (int i = 0; i < n_parts; i++) {
        u_lin one = { NULL, NULL, NULL };
        int64_t shape[2] = { C, in };
        snprintf(name, sizeof name, "%s.%s.weight", p, parts[i]);
        int rc = lm_weights_load(c->w, name, 2, shape, &one.w, c->err);
        if (rc) { free(buf); return rc; }
        memcpy(buf + (size_t)i * C * in, one.w, (size_t)C * in * sizeof *buf);
        free(one.w);
    }
    int rc = keep(c->u, buf);
    if (rc) { free(buf); return lm_err_set(c->err, LM_ENOMEM, NULL, p, LM_ERR_NO_OFFSET, "out of memory"); }
    dst->w = buf;
    dst->b = NULL;
    return 0;
}

static int ld_transformer(ld_ctx *c, u_transformer *t, const char *p, int C, int depth, int heads)
{
    char n[320], b[256];
    const lm_unet_config *cfg = &c->u->cfg;
    int rc = 0, X = cfg->context_dim;
    t->C = C;
    t->depth = depth;
    t->heads = heads;
    if (heads <= 0 || C % heads)
        return lm_err_set(c->err, LM_EINPUT, NULL, p, LM_ERR_NO_OFFSET,
                          "%d channels do not split into %d heads", C, heads);
    t->blocks = calloc((size_t)depth, sizeof *t->blocks);
    if (!t->blocks || keep(c->u, (float *)t->blocks)) {
        free(t->blocks);
        t->blocks = NULL;
        return lm_err_set(c->err, LM_ENOMEM, NULL, p, LM_ERR_NO_OFFSET, "out of memory");
    }
    snprintf(n, sizeof n, "%s.norm", p);
    if (!rc) rc = ld_norm(c, &t->norm, n, C);
    snprintf(n, sizeof n, "%s.proj_in", p);
    if (!rc) rc = ld(c, &t->proj_in, n, 1, 2, C, C, 0, 0);
    snprintf(n, sizeof n, "%s.proj_out", p);
    if (!rc) rc = ld(c, &t->proj_out, n, 1, 2, C, C, 0, 0);
    static const char *const qkv[3] = { "attn1.to_q", "attn1.to_k", "attn1.to_v" };
    static const char *const kv[2] = { "attn2.to_k", "attn2.to_v" };
    for (int d = 0; d < depth && !rc; d++) {
        u_tblock *k = &t->blocks[d];
        snprintf(b, sizeof b, "%s.transformer_blocks.%d", p, d);
        snprintf(n, sizeof n, "%s.norm1", b);
        if (!rc) rc = ld_norm(c, &k->norm1, n, C);
        if (!rc) rc = ld_stacked(c, &k->qkv, b, qkv, 3, C, C);
        snprintf(n, sizeof n, "%s.attn1.to_out.0", b);
        if (!rc) rc = ld(c, &k->out1, n, 1, 2, C, C, 0, 0);
        snprintf(n, sizeof n, "%s.norm2", b);
        if (!rc) rc = ld_norm(c, &k->norm2, n, C);
        snprintf(n, sizeof n, "%s.attn2.to_q", b);
        if (!rc) rc = ld(c, &k->q2, n, 0, 2, C, C, 0, 0);
        if (!rc) rc = ld_stacked(c, &k->kv2, b, kv, 2, C, X);
        snprintf(n, sizeof n, "%s.attn2.to_out.0", b);
        if (!rc) rc = ld(c, &k->out2, n, 1, 2, C, C, 0, 0);
        snprintf(n, sizeof n, "%s.norm3", b);
        if (!rc) rc = ld_norm(c, &k->norm3, n, C);
        snprintf(n, sizeof n, "%s.ff.net.0.proj", b);
        if (!rc) rc = ld(c, &k->ff1, n, 1, 2, 8 * C, C, 0, 0);
        snprintf(n, sizeof n, "%s.ff.net.2", b);
        if (!rc) rc = ld(c, &k->ff2, n, 1, 2, C, 4 * C, 0, 0);
    }
    return rc;
}

static int count(ld_ctx *c, const char *fmt_with_d)
{
    int n = 0;
    char name[256];
    for (;; n++) {
        snprintf(name, sizeof name, fmt_with_d, n);
        if (!entry(c, name)) return n;
    }
}

static int heads_for(const lm_unet *u, int C)
{
    if (u->opts.num_heads > 0) return u->opts.num_heads;
    if (u->opts.head_dim > 0) return C / u->opts.head_dim;
    if (u->cfg.context_dim == 1024 || u->cfg.context_dim == 2048) return C / 64;
    return 8;
}

/* hyper-parameters from names and shapes */
static int infer(ld_ctx *c)
{
    lm_unet_config *g = &c->u->cfg;
    char name[256];
    const lm_entry *e = entry(c, "conv_in.weight");
    if (!e || e->ndim != 4)
        return lm_err_set(c->err, LM_EINPUT, NULL, "conv_in.weight", LM_ERR_NO_OFFSET,
                          "no UNet in this file (conv_in missing or not a convolution)");
    g->in_channels = (int)e->shape[1];
    g->groups = 32;
    g->levels = count(c, "down_blocks.%d.resnets.0.conv1.weight");
    if (g->levels < 1 || g->levels > LM_UNET_MAX_LEVELS)
        return lm_err_set(c->err, LM_EINPUT, NULL, "down_blocks", LM_ERR_NO_OFFSET,
                          "%d UNet levels (1..%d supported)", g->levels, LM_UNET_MAX_LEVELS);
    g->layers_per_block = count(c, "down_blocks.0.resnets.%d.conv1.weight");
    if (g->layers_per_block < 1 || g->layers_per_block > 3)
        return lm_err_set(c->err, LM_EINPUT, NULL, "down_blocks.0.resnets", LM_ERR_NO_OFFSET,
                          "%d resnets per block (1..3 supported)", g->layers_per_block);
    g->context_dim = 0;
    for (int i = 0; i < g->levels; i++) {
        snprintf(name, sizeof name, "down_blocks.%d.resnets.0.conv1.weight", i);
        g->channels[i] = (int)entry(c, name)->shape[0];
        snprintf(name, sizeof name, "down_blocks.%d.attentions.0.transformer_blocks.%%d.norm1.weight", i);
        g->down_depth[i] = count(c, name);
        snprintf(name, sizeof name, "up_blocks.%d.attentions.0.transformer_blocks.%%d.norm1.weight", i);
        g->up_depth[i] = count(c, name);
        if (!g->context_dim && g->down_depth[i]) {
            snprintf(name, sizeof name, "down_blocks.%d.attentions.0.transformer_blocks.0.attn2.to_k.weight", i);
            const lm_entry *k = entry(c, name);
            if (k && k->ndim == 2) g->context_dim = (int)k->shape[1];
            snprintf(name, sizeof name, "down_blocks.%d.attentions.0.proj_in.weight", i);
            const lm_entry *pin = entry(c, name);
            g->linear_proj = pin && pin->ndim == 2;
        }
    }
    g->mid_depth = count(c, "mid_block.attentions.0.transformer_blocks.%d.norm1.weight");
    if (!g->context_dim && g->mid_depth) {
        const lm_entry *k = entry(c, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
        if (k && k->ndim == 2) g->context_dim = (int)k->shape[1];
        const lm_entry *pin = entry(c, "mid_block.attentions.0.proj_in.weight");
        g->linear_proj = pin && pin->ndim == 2;
    }
    e = entry(c, "time_embedding.linear_1.weight");
    if (!e || e->ndim != 2)
        return lm_err_set(c->err, LM_EINPUT, NULL, "time_embedding.linear_1.weight", LM_ERR_NO_OFFSET,
                          "UNet time embedding missing");
    g->time_embed_dim = (int)e->shape[0];
    g->time_proj_dim = (int)e->shape[1];
    e = entry(c, "add_embedding.linear_1.weight");
    g->adm_in_channels = e && e->ndim == 2 ? (int)e->shape[1] : 0;
    e = entry(c, "conv_out.weight");
    if (!e || e->ndim != 4)
        return lm_err_set(c->err, LM_EINPUT, NULL, "conv_out.weight", LM_ERR_NO_OFFSET, "UNet conv_out missing");
    g->out_channels = (int)e->shape[0];
    for (int i = 0; i < g->levels; i++) g->heads[i] = heads_for(c->u, g->channels[i]);
    g->mid_heads = heads_for(c->u, g->channels[g->levels - 1]);
    return 0;
}

static int load_all(ld_ctx *c)
{
    lm_unet *u = c->u;
    lm_unet_config *g = &u->cfg;
    char p[256];
    int rc = infer(c);
    if (rc) return rc;
    int C0 = g->channels[0], L = g->levels, T = g->time_embed_dim;
    if (!rc) rc = ld(c, &u->time1, "time_embedding.linear_1", 1, 2, T, g->time_proj_dim, 0, 0);
    if (!rc) rc = ld(c, &u->time2, "time_embedding.linear_2", 1, 2, T, T, 0, 0);
    if (!rc && g->adm_in_channels) rc = ld(c, &u->add1, "add_embedding.linear_1", 1, 2, T, g->adm_in_channels, 0, 0);
    if (!rc && g->adm_in_channels) rc = ld(c, &u->add2, "add_embedding.linear_2", 1, 2, T, T, 0, 0);
    if (!rc) rc = ld(c, &u->conv_in, "conv_in", 1, 4, C0, g->in_channels, 3, 3);
    int ch = C0;
    for (int i = 0; i < L && !rc; i++) {
        u_block *b = &u->down[i];
        b->n_res = g->layers_per_block;
        for (int j = 0; j < b->n_res && !rc; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            rc = ld_resnet(c, &b->res[j], p, j ? g->channels[i] : ch, g->channels[i]);
            snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
            if (!rc && g->down_depth[i]) rc = ld_transformer(c, &b->attn[j], p, g->channels[i], g->down_depth[i], g->heads[i]);
        }
        ch = g->channels[i];
        snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
        if (!rc && has(c, "%s.weight", p)) rc = ld(c, &b->sample, p, 1, 4, ch, ch, 3, 3);
    }
    int Cm = g->channels[L - 1];
    if (!rc) rc = ld_resnet(c, &u->mid_res[0], "mid_block.resnets.0", Cm, Cm);
    if (!rc && g->mid_depth) rc = ld_transformer(c, &u->mid_attn, "mid_block.attentions.0", Cm, g->mid_depth, g->mid_heads);
    if (!rc) rc = ld_resnet(c, &u->mid_res[1], "mid_block.resnets.1", Cm, Cm);
    /* up block i works at level L-1-i; resnet j takes [current, skip] */
    int skip_ch[3 * LM_UNET_MAX_LEVELS + 2], ns = 0;
    skip_ch[ns++] = C0;
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < g->layers_per_block; j++) skip_ch[ns++] = g->channels[i];
        if (u->down[i].sample.w) skip_ch[ns++] = g->channels[i];
    }
    ch = Cm;
    for (int i = 0; i < L && !rc; i++) {
        int lvl = L - 1 - i, out = g->channels[lvl];
        u_block *b = &u->up[i];
        b->n_res = g->layers_per_block + 1;
        for (int j = 0; j < b->n_res && !rc; j++) {
            if (ns <= 0) return lm_err_set(c->err, LM_EINPUT, NULL, "up_blocks", LM_ERR_NO_OFFSET, "more up resnets than skips");
            int cin = ch + skip_ch[--ns];
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            rc = ld_resnet(c, &b->res[j], p, cin, out);
            ch = out;
            snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
            if (!rc && g->up_depth[i]) rc = ld_transformer(c, &b->attn[j], p, out, g->up_depth[i], g->heads[lvl]);
        }
        snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
        if (!rc && has(c, "%s.weight", p)) rc = ld(c, &b->sample, p, 1, 4, ch, ch, 3, 3);
    }
    if (!rc && ns != 0) rc = lm_err_set(c->err, LM_EINPUT, NULL, "up_blocks", LM_ERR_NO_OFFSET, "%d skips left unused", ns);
    if (!rc) rc = ld_norm(c, &u->norm_out, "conv_norm_out", ch);
    if (!rc) rc = ld(c, &u->conv_out, "conv_out", 1, 4, g->out_channels, ch, 3, 3);
    return rc;
}

/* Replaces the weights of the 3×3 convolution l [OC, C, 3, 3] by their
 * Winograd transform [16, OC, C] (16/9 the size; the fp32 weights go). */
static int to_winograd(lm_unet *u, u_lin *l, int OC, int C)
{
    if (!l->w) return 0;
    float *U = malloc((size_t)16 * OC * C * sizeof *U);
    if (!U) return LM_ENOMEM;
    lm_conv3x3_winograd_weights(l->w, OC, C, U);
    for (size_t i = 0; i < u->n_owned; i++)
        if (u->owned[i] == l->w) { u->owned[i] = U; break; }
    free(l->w);
    l->w = NULL;
    l->wino = U;
    return 0;
}

/* The resnets' 3×3 convolutions and the upsamplers' convolutions at every
 * level but the lowest (and the mid block) run as Winograd F(2×2, 3×3)
 * (lm_conv3x3_winograd): at 512 px (levels 64², 32², 16²) 1.6–1.9× less CPU
 * than im2col + sgemm. The lowest level (8×8 at 512 px, 4×4 at 256 px) holds
 * 40% of the 3×3 weights and gains least, so it stays on im2col: the
 * transformed weights are 16/9 the size, and the whole UNet stays under 2×
 * its fp32 weights in memory. */
static int prepare_winograd(lm_unet *u)
{
    const lm_unet_config *g = &u->cfg;
    int L = g->levels, rc = 0;
    for (int i = 0; i + 1 < L && !rc; i++)
        for (int j = 0; j < u->down[i].n_res && !rc; j++) {
            u_resnet *r = &u->down[i].res[j];
            rc = to_winograd(u, &r->conv1, r->cout, r->cin);
            if (!rc) rc = to_winograd(u, &r->conv2, r->cout, r->cout);
        }
    for (int i = 1; i < L && !rc; i++)
        for (int j = 0; j < u->up[i].n_res && !rc; j++) {
            u_resnet *r = &u->up[i].res[j];
            rc = to_winograd(u, &r->conv1, r->cout, r->cin);
            if (!rc) rc = to_winograd(u, &r->conv2, r->cout, r->cout);
        }
    for (int i = 0; i + 1 < L && !rc; i++)   /* up[i]'s upsampler runs at level L-2-i */
        if (u->up[i].sample.w) {
            int C = u->up[i].res[u->up[i].n_res - 1].cout;
            rc = to_winograd(u, &u->up[i].sample, C, C);
        }
    return rc;
}

int lm_unet_load(lm_unet **out, const lm_source *src, const lm_unet_opts *opts,
                 const lm_lora *const *loras, const float *lambdas, size_t n_loras, lm_err *err)
{
    *out = NULL;
    lm_unet *u = calloc(1, sizeof *u);
    if (!u) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    lm_unet_opts def = LM_UNET_OPTS_INIT;
    u->opts = opts ? *opts : def;
    ld_ctx c = { u, NULL, err };
    int rc = lm_weights_open(&c.w, src, "unet", loras, lambdas, n_loras, err);
    if (!rc) rc = load_all(&c);
    lm_weights_close(c.w);
    if (!rc && prepare_winograd(u))
        rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory (Winograd weights)");
    if (rc) {
        lm_err_file(err, lm_source_path(src));
        lm_unet_free(u);
        return rc;
    }
    *out = u;
    return 0;
}

void lm_unet_free(lm_unet *u)
{
    if (!u) return;
    for (size_t i = 0; i < u->n_owned; i++) free(u->owned[i]);
    free(u->owned);
    for (size_t i = 0; i < u->n_pool; i++) free(u->pool[i].p);
    free(u->pool);
    lm_work_free(&u->work);
    free(u);
}

const lm_unet_config *lm_unet_config_of(const lm_unet *u) { return &u->cfg; }
