/* CLIP text encoder on the sampler ops. See include/libmerge/clip.h. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libmerge/clip.h"
#include "libmerge/ops.h"
#include "sampler/weights.h"

typedef struct {
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    float *qkv_w, *qkv_b;        /* q, k, v projections packed: [3C, C], [3C] */
    float *out_w, *out_b;        /* [C, C], [C] */
    float *fc1_w, *fc1_b;        /* [I, C], [I] */
    float *fc2_w, *fc2_b;        /* [C, I], [C] */
} clip_layer;

struct lm_clip {
    lm_clip_config cfg;
    float *tok;                  /* [vocab, C] */
    float *pos;                  /* [positions, C] */
    clip_layer *layer;
    float *fln_w, *fln_b;        /* final_layer_norm */
};

/* Loads canonical (diffusers, component-relative) name with shape [d0] or
 * [d0, d1]; the weight set finds it in any layout and applies LoRAs. */
static int get(lm_weights *w, const char *prefix, const char *name, int ndim, int64_t d0,
               int64_t d1, float **out, lm_err *err)
{
    char full[256];
    int64_t shape[2] = { d0, d1 };
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return lm_weights_load(w, full, ndim, shape, out, err);
}

/* Reads num_attention_heads / hidden_act / layer_norm_eps from a JSON
 * "config" metadata entry (the fixtures and some exporters carry one). */
static void config_from_meta(const lm_source *s, lm_clip_config *c)
{
    const char *js = lm_source_meta_get(s, "config");
    if (!js) return;
    cJSON *j = cJSON_Parse(js);
    if (!j) return;
    cJSON *h = cJSON_GetObjectItem(j, "num_attention_heads");
    if (cJSON_IsNumber(h) && h->valueint > 0 && c->hidden % h->valueint == 0) c->heads = h->valueint;
    cJSON *a = cJSON_GetObjectItem(j, "hidden_act");
    if (cJSON_IsString(a) && !strcmp(a->valuestring, "gelu")) c->act = LM_CLIP_GELU;
    cJSON *e = cJSON_GetObjectItem(j, "layer_norm_eps");
    if (cJSON_IsNumber(e) && e->valuedouble > 0) c->eps = (float)e->valuedouble;
    cJSON_Delete(j);
}

void lm_clip_free(lm_clip *c)
{
    if (!c) return;
    free(c->tok);
    free(c->pos);
    for (int l = 0; c->layer && l < c->cfg.layers; l++) {
        clip_layer *L = &c->layer[l];
        free(L->ln1_w); free(L->ln1_b); free(L->ln2_w); free(L->ln2_b);
        free(L->qkv_w); free(L->qkv_b); free(L->out_w); free(L->out_b);
        free(L->fc1_w); free(L->fc1_b); free(L->fc2_w); free(L->fc2_b);
    }
    free(c->layer);
    free(c->fln_w);
    free(c->fln_b);
    free(c);
}

const lm_clip_config *lm_clip_config_of(const lm_clip *c) { return &c->cfg; }

static int load_layer(lm_weights *w, const char *pf, int l, const lm_clip_config *cfg,
                      clip_layer *L, lm_err *err)
{
    char p[160];
    const int64_t C = cfg->hidden, I = cfg->intermediate;
    snprintf(p, sizeof p, "%sencoder.layers.%d.", pf, l);
    int rc;
    if ((rc = get(w, p, "layer_norm1.weight", 1, C, 0, &L->ln1_w, err)) ||
        (rc = get(w, p, "layer_norm1.bias", 1, C, 0, &L->ln1_b, err)) ||
        (rc = get(w, p, "layer_norm2.weight", 1, C, 0, &L->ln2_w, err)) ||
        (rc = get(w, p, "layer_norm2.bias", 1, C, 0, &L->ln2_b, err)) ||
        (rc = get(w, p, "self_attn.out_proj.weight", 2, C, C, &L->out_w, err)) ||
        (rc = get(w, p, "self_attn.out_proj.bias", 1, C, 0, &L->out_b, err)) ||
        (rc = get(w, p, "mlp.fc1.weight", 2, I, C, &L->fc1_w, err)) ||
        (rc = get(w, p, "mlp.fc1.bias", 1, I, 0, &L->fc1_b, err)) ||
        (rc = get(w, p, "mlp.fc2.weight", 2, C, I, &L->fc2_w, err)) ||
        (rc = get(w, p, "mlp.fc2.bias", 1, C, 0, &L->fc2_b, err)))
        return rc;
    L->qkv_w = malloc((size_t)(3 * C * C) * sizeof(float));
    L->qkv_b = malloc((size_t)(3 * C) * sizeof(float));
    if (!L->qkv_w || !L->qkv_b) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    static const char *const qkv[3] = { "q", "k", "v" };
    for (int i = 0; i < 3; i++) {
        char n[64];
        float *t;
        snprintf(n, sizeof n, "self_attn.%s_proj.weight", qkv[i]);
        if ((rc = get(w, p, n, 2, C, C, &t, err))) return rc;
        memcpy(L->qkv_w + i * C * C, t, (size_t)(C * C) * sizeof(float));
        free(t);
        snprintf(n, sizeof n, "self_attn.%s_proj.bias", qkv[i]);
        if ((rc = get(w, p, n, 1, C, 0, &t, err))) return rc;
        memcpy(L->qkv_b + i * C, t, (size_t)C * sizeof(float));
        free(t);
    }
    return 0;
}

int lm_clip_load(lm_clip **out, lm_weights *w, const lm_source *src, lm_err *err)
{
    const char *pf = "text_model.";
    *out = NULL;
    char n[256];
    const lm_entry *e = lm_weights_find(w, "text_model.embeddings.token_embedding.weight");
    const lm_entry *pe = lm_weights_find(w, "text_model.embeddings.position_embedding.weight");
    const lm_entry *fe = lm_weights_find(w, "text_model.encoder.layers.0.mlp.fc1.weight");
    if (!e)
        return lm_err_set(err, LM_EINPUT, src ? lm_source_path(src) : NULL, "text_model.embeddings.token_embedding.weight",
                          LM_ERR_NO_OFFSET, "no CLIP text encoder in this file");
    if (e->ndim != 2 || !pe || !fe || fe->ndim != 2)
        return lm_err_set(err, LM_EINPUT, src ? lm_source_path(src) : NULL, e->name, LM_ERR_NO_OFFSET,
                          "text encoder incomplete (position embedding or layer 0 MLP missing, or not 2-D)");
    lm_clip *c = calloc(1, sizeof *c);
    if (!c) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    lm_clip_config *cfg = &c->cfg;
    /* the stored name minus the canonical suffix: the prefix actually found */
    size_t keep = strlen(e->name) - strlen("embeddings.token_embedding.weight");
    snprintf(cfg->prefix, sizeof cfg->prefix, "%.*s", (int)keep, e->name);
    cfg->vocab = (int)e->shape[0];
    cfg->hidden = (int)e->shape[1];
    cfg->positions = (int)pe->shape[0];
    cfg->intermediate = (int)fe->shape[0];
    cfg->heads = cfg->hidden % 64 == 0 ? cfg->hidden / 64 : 1;
    cfg->act = LM_CLIP_QUICK_GELU;
    cfg->eps = 1e-5f;
    for (cfg->layers = 0;; cfg->layers++) {
        snprintf(n, sizeof n, "%sencoder.layers.%d.self_attn.q_proj.weight", pf, cfg->layers);
        if (!lm_weights_find(w, n)) break;
    }
    if (src) config_from_meta(src, cfg);
    int rc;
    c->layer = calloc((size_t)cfg->layers, sizeof *c->layer);
    if (!c->layer) { rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory"); goto fail; }
    if ((rc = get(w, pf, "embeddings.token_embedding.weight", 2, cfg->vocab, cfg->hidden, &c->tok, err)) ||
        (rc = get(w, pf, "embeddings.position_embedding.weight", 2, cfg->positions, cfg->hidden, &c->pos, err)) ||
        (rc = get(w, pf, "final_layer_norm.weight", 1, cfg->hidden, 0, &c->fln_w, err)) ||
        (rc = get(w, pf, "final_layer_norm.bias", 1, cfg->hidden, 0, &c->fln_b, err)))
        goto fail;
    for (int l = 0; l < cfg->layers; l++)
        if ((rc = load_layer(w, pf, l, cfg, &c->layer[l], err))) goto fail;
    *out = c;
    return 0;
fail:
    lm_clip_free(c);
    return rc;
}

int lm_clip_load_source(lm_clip **out, const lm_source *src, const lm_lora *const *loras,
                        const float *lambdas, size_t n_loras, lm_err *err)
{
    lm_weights *w = NULL;
    *out = NULL;
    int rc = lm_weights_open(&w, src, "text_encoder", loras, lambdas, n_loras, err);
    if (!rc) rc = lm_clip_load(out, w, src, err);
    lm_weights_close(w);
    return rc;
}

int lm_clip_embed(const lm_clip *c, const int32_t *ids, int T, float *out, lm_err *err)
{
    const int C = c->cfg.hidden;
    if (T < 1 || T > c->cfg.positions)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "%d tokens, the encoder takes 1..%d", T, c->cfg.positions);
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= c->cfg.vocab)
            return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "token id %d at %d out of range", ids[t], t);
        const float *te = c->tok + (size_t)ids[t] * C, *pe = c->pos + (size_t)t * C;
        for (int i = 0; i < C; i++) out[(size_t)t * C + i] = te[i] + pe[i];
    }
    return 0;
}

int lm_clip_encode(const lm_clip *c, const int32_t *ids, int T, int clip_skip, int final_ln,
                   float *out, lm_err *err)
{
    const lm_clip_config *cfg = &c->cfg;
    const int C = cfg->hidden, I = cfg->intermediate, dh = C / cfg->heads;
    if (clip_skip < 1 || clip_skip > cfg->layers)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "clip skip %d, this encoder has %d layers", clip_skip, cfg->layers);
    int rc = lm_clip_embed(c, ids, T, out, err);
    if (rc) return rc;
    lm_work work = LM_WORK_INIT;
    size_t need = (size_t)T * (size_t)(C + 3 * C + C + I);
    float *buf = malloc(need * sizeof *buf);
    if (!buf) return lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
    float *h = buf, *qkv = h + (size_t)T * C, *att = qkv + (size_t)T * 3 * C, *mlp = att + (size_t)T * C;
    float *x = out;
    const int n_run = cfg->layers - clip_skip + 1;
    for (int l = 0; l < n_run; l++) {
        const clip_layer *L = &c->layer[l];
        lm_layer_norm(x, T, C, L->ln1_w, L->ln1_b, cfg->eps, h);
        lm_linear(h, T, C, L->qkv_w, L->qkv_b, 3 * C, qkv, 0);
        if ((rc = lm_attention(qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C, 3 * C, T, T, cfg->heads, dh,
                               1.0f / sqrtf((float)dh), 1, att, C, &work))) {
            rc = lm_err_set(err, LM_ENOMEM, NULL, NULL, LM_ERR_NO_OFFSET, "out of memory");
            break;
        }
        lm_linear(att, T, C, L->out_w, L->out_b, C, x, 1);
        lm_layer_norm(x, T, C, L->ln2_w, L->ln2_b, cfg->eps, h);
        lm_linear(h, T, C, L->fc1_w, L->fc1_b, I, mlp, 0);
        if (cfg->act == LM_CLIP_GELU) lm_gelu(mlp, (size_t)T * I);
        else lm_quick_gelu(mlp, (size_t)T * I);
        lm_linear(mlp, T, I, L->fc2_w, L->fc2_b, C, x, 1);
    }
    if (!rc && final_ln) lm_layer_norm(x, T, C, c->fln_w, c->fln_b, cfg->eps, x);
    free(buf);
    lm_work_free(&work);
    return rc;
}
