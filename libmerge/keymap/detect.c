/* lm_model_detect: architecture and layout from tensor names and shapes.
 *
 * Evidence used (one pass over the entries):
 *   layout      LDM prefixes (model.diffusion_model., first_stage_model.,
 *               cond_stage_model., conditioner.embedders.) vs diffusers names
 *               (unet./vae./text_encoder[_2]. prefixes or bare component names);
 *   levels      highest input_blocks / down_blocks index (SD 4 levels, SDXL 3);
 *   label_emb   SDXL's pooled-text/size embedding (label_emb / add_embedding);
 *   mid block   SSD-1B has a single resnet (no middle_block.1 / mid_block.attentions.0);
 *   context     in-features of the first attn2.to_k (768 SD1.x, 1024 SD2.x, 2048 SDXL);
 *   channels    out-features of conv_in (input_blocks.0.0);
 *   encoders    token_embedding width (768 CLIP ViT-L, 1024 OpenCLIP ViT-H, 1280 bigG).
 * The same rules as ComfyUI's model detection and stable-diffusion.cpp's
 * version check, reduced to what the supported architectures need. */
#include "keymap_impl.h"

#include <stdio.h>
#include <string.h>

typedef struct feats {
    size_t n_ldm, n_dif;
    size_t n_vae_bare, n_vae_bare_ldm;   /* bare encoder./decoder./quant_conv. names; of them LDM-only */
    int unet, vae, te, te2;
    int label, mid_attn, proj_ndim;
    int max_block;          /* LDM input_blocks index or diffusers down_blocks index, -1 none */
    int64_t ctx, ch, te_width, te2_width;
} feats;

static int ends(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static void unet_name(feats *f, const char *r, const lm_entry *e, int ldm)
{
    const char *p = r;
    int k;
    f->unet = 1;
    if (ldm ? km_lit(&p, "input_blocks.") : km_lit(&p, "down_blocks.")) {
        if (km_num(&p, &k) && k > f->max_block) f->max_block = k;
    }
    if (!strncmp(r, ldm ? "label_emb." : "add_embedding.", ldm ? 10 : 14)) f->label = 1;
    if (!strncmp(r, ldm ? "middle_block.1." : "mid_block.attentions.0.", ldm ? 15 : 23)) f->mid_attn = 1;
    if (!f->ctx && ends(r, "attn2.to_k.weight") && e->ndim == 2) f->ctx = e->shape[1];
    if (!f->proj_ndim && ends(r, ".proj_in.weight")) f->proj_ndim = e->ndim;
    if (!f->ch && !strcmp(r, ldm ? "input_blocks.0.0.weight" : "conv_in.weight") && e->ndim == 4) f->ch = e->shape[0];
}

static void te_name(feats *f, lm_part part, const char *r, const lm_entry *e)
{
    if (part == LM_PART_TE2) f->te2 = 1; else f->te = 1;
    if (e->ndim == 2 && (ends(r, "token_embedding.weight"))) {
        if (part == LM_PART_TE2) f->te2_width = e->shape[1]; else f->te_width = e->shape[1];
    }
}

static void scan(const lm_source *s, feats *f)
{
    memset(f, 0, sizeof *f);
    f->max_block = -1;
    for (size_t i = 0; i < lm_source_count(s); i++) {
        const lm_entry *e = lm_source_entry(s, i);
        const char *r = e->name;
        lm_part part = lm_ldm_part(r);
        if (part != LM_PART_NONE) {
            f->n_ldm++;
            if (part == LM_PART_UNET) unet_name(f, r + strlen("model.diffusion_model."), e, 1);
            else if (part == LM_PART_VAE) f->vae = 1;
            else te_name(f, part, r, e);
            continue;
        }
        const char *bare = r;
        part = lm_diffusers_part(r, &r);
        if (part == LM_PART_NONE) continue;   /* schedule buffers, model_ema.*, … */
        f->n_dif++;
        if (part == LM_PART_VAE && r == bare) {
            f->n_vae_bare++;
            if (km_vae_bare_is_ldm(bare)) f->n_vae_bare_ldm++;
        }
        if (part == LM_PART_UNET) unet_name(f, r, e, 0);
        else if (part == LM_PART_VAE) f->vae = 1;
        else te_name(f, part, r, e);
    }
    /* A standalone VAE in the LDM layout (vae-ft-mse-840000-ema-pruned,
     * sdxl_vae) has bare names, encoder.down.0.block.0…, that only the LDM
     * layout spells that way: when every name is such a bare VAE name and
     * some are LDM-only, the file is LDM. */
    if (f->n_vae_bare_ldm && f->n_vae_bare == f->n_dif && !f->n_ldm) {
        f->n_ldm = f->n_dif;
        f->n_dif = 0;
    }
    /* a bare single-encoder file of width 1280 is SDXL's second encoder */
    if (f->te && !f->te2 && f->te_width == 1280) { f->te = 0; f->te2 = 1; f->te2_width = 1280; f->te_width = 0; }
}

static void unet_arch(const feats *f, lm_model_info *out)
{
    int levels = f->max_block < 0 ? 0 : (out->layout == LM_LAYOUT_LDM ? f->max_block / 3 + 1 : f->max_block + 1);
    char *why = out->reason;
    size_t n = sizeof out->reason;
    if (!f->ctx) { snprintf(why, n, "UNet without cross-attention (no attn2.to_k): no known architecture"); return; }
    if (f->label) {
        if (levels != 3) {
            snprintf(why, n, "UNet with label_emb and %d levels, context %lld (an SDXL refiner?): not supported",
                     levels, (long long)f->ctx);
            return;
        }
        out->arch = f->mid_attn ? LM_ARCH_SDXL : LM_ARCH_SSD1B;
        snprintf(why, n, "3-level UNet with label_emb, %s mid block, context %lld%s",
                 f->mid_attn ? "cross-attention" : "single-resnet", (long long)f->ctx,
                 f->ctx == 2048 ? "" : " (not 2048: a test-size model?)");
        return;
    }
    if (levels != 4) {
        snprintf(why, n, "UNet with %d levels and no label_emb (context %lld) matches no known architecture",
                 levels, (long long)f->ctx);
        return;
    }
    if (f->ctx == 768 || f->ctx == 1024) {
        out->arch = f->ctx == 768 ? LM_ARCH_SD1 : LM_ARCH_SD2;
        snprintf(why, n, "4-level UNet, context %lld", (long long)f->ctx);
    } else {
        /* test-size models: SD1.x convolves proj_in/proj_out, SD2.x uses Linear */
        out->arch = f->proj_ndim == 2 ? LM_ARCH_SD2 : LM_ARCH_SD1;
        snprintf(why, n, "4-level UNet, %s proj_in, context %lld (not %s: a test-size model?)",
                 f->proj_ndim == 2 ? "Linear" : "1x1 conv", (long long)f->ctx, f->proj_ndim == 2 ? "1024" : "768");
    }
}

void lm_model_detect(const lm_source *s, lm_model_info *out)
{
    feats f;
    memset(out, 0, sizeof *out);
    scan(s, &f);
    out->has_unet = f.unet;
    out->has_vae = f.vae;
    out->has_te = f.te;
    out->has_te2 = f.te2;
    out->context_dim = f.unet ? f.ctx : 0;
    out->model_channels = f.unet ? f.ch : 0;
    if (f.n_ldm && f.n_dif) {
        snprintf(out->reason, sizeof out->reason, "mixes %zu LDM-layout and %zu diffusers-layout names", f.n_ldm, f.n_dif);
        return;
    }
    if (!f.n_ldm && !f.n_dif) {
        snprintf(out->reason, sizeof out->reason, "no UNet, VAE or text encoder tensor names");
        return;
    }
    out->layout = f.n_ldm ? LM_LAYOUT_LDM : LM_LAYOUT_DIFFUSERS;
    if (f.unet) {
        unet_arch(&f, out);
        return;
    }
    if (f.te2) {
        out->arch = LM_ARCH_SDXL;
        snprintf(out->reason, sizeof out->reason, "no UNet; second text encoder (width %lld) present", (long long)f.te2_width);
    } else if (f.te && (f.te_width == 768 || f.te_width == 1024)) {
        out->arch = f.te_width == 768 ? LM_ARCH_SD1 : LM_ARCH_SD2;
        snprintf(out->reason, sizeof out->reason, "no UNet; one text encoder of width %lld", (long long)f.te_width);
    } else if (f.te) {
        snprintf(out->reason, sizeof out->reason, "no UNet; text encoder of width %lld matches no known architecture",
                 (long long)f.te_width);
    } else {
        snprintf(out->reason, sizeof out->reason, "VAE only: SD1.x, SD2.x and SDXL VAEs share one structure");
    }
}
