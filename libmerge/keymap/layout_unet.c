/* UNet names, LDM (original/sgm) layout <-> diffusers layout, from the block
 * structure rules (the rules of diffusers' convert_ldm_unet_checkpoint and
 * scripts/convert_diffusers_to_original_{stable_diffusion,sdxl}.py; tables in
 * fixtures/golden/sd15/README.md and fixtures/golden/sdxl/README.md):
 *
 *   input_blocks.0.0                    conv_in
 *   input_blocks.{(L+1)i+j+1}.0         down_blocks.i.resnets.j        (j < L)
 *   input_blocks.{(L+1)i+j+1}.1         down_blocks.i.attentions.j     (levels with attention)
 *   input_blocks.{(L+1)i+L+1}.0.op      down_blocks.i.downsamplers.0.conv (all but the last level)
 *   middle_block.0 / .1 / .2            mid_block.resnets.0 / attentions.0 / resnets.1
 *   output_blocks.{(L+1)i+j}.0          up_blocks.i.resnets.j          (j <= L)
 *   output_blocks.{(L+1)i+j}.1          up_blocks.i.attentions.j
 *   output_blocks.{(L+1)i+L}.{2|1}.conv up_blocks.i.upsamplers.0.conv  (.2 after an attention)
 *   time_embed.0/.2, label_emb.0.0/.0.2 time_embedding.linear_1/2, add_embedding.linear_1/2
 *   out.0 / out.2                       conv_norm_out / conv_out
 * Resnet parts: in_layers.0 norm1, in_layers.2 conv1, emb_layers.1
 * time_emb_proj, out_layers.0 norm2, out_layers.3 conv2, skip_connection
 * conv_shortcut. Attention blocks keep their inner names in both layouts. */
#include "keymap_impl.h"

#include <string.h>

static const km_unet_struct SD_UNET = { 4, 2, 0x7u, 1, 0 };
static const km_unet_struct SDXL_UNET = { 3, 2, 0x6u, 1, 1 };
static const km_unet_struct SSD1B_UNET = { 3, 2, 0x6u, 0, 1 };

const km_unet_struct *km_unet_struct_of(lm_arch arch)
{
    switch (arch) {
    case LM_ARCH_SD1: case LM_ARCH_SD2: return &SD_UNET;
    case LM_ARCH_SDXL: return &SDXL_UNET;
    case LM_ARCH_SSD1B: return &SSD1B_UNET;
    default: return NULL;
    }
}

static const char *const RESNET_PARTS[][2] = {   /* LDM, diffusers */
    { "in_layers.0.", "norm1." }, { "in_layers.2.", "conv1." }, { "emb_layers.1.", "time_emb_proj." },
    { "out_layers.0.", "norm2." }, { "out_layers.3.", "conv2." }, { "skip_connection.", "conv_shortcut." },
};

/* A resnet's parameter, from layout `from` (0 LDM, 1 diffusers) to the other. */
static int resnet_part(const char *p, int from, km_buf *o)
{
    for (size_t k = 0; k < sizeof RESNET_PARTS / sizeof RESNET_PARTS[0]; k++) {
        const char *q = p;
        if (km_lit(&q, RESNET_PARTS[k][from]) && km_is_leaf(q)) {
            km_put(o, "%s%s", RESNET_PARTS[k][!from], q);
            return 0;
        }
    }
    return LM_EINPUT;
}

/* Inner name of a Transformer2DModel block: same in both layouts. */
static int attn_part(const char *p, km_buf *o)
{
    const char *q = p;
    int n;
    size_t len = strlen(p);
    int leaf_ok = (len > 7 && strcmp(p + len - 7, ".weight") == 0) || (len > 5 && strcmp(p + len - 5, ".bias") == 0);
    if (!leaf_ok) return LM_EINPUT;
    if (!(km_lit(&q, "norm.") || km_lit(&q, "proj_in.") || km_lit(&q, "proj_out.") ||
          (km_lit(&q, "transformer_blocks.") && km_num(&q, &n))))
        return LM_EINPUT;
    km_put(o, "%s", p);
    return 0;
}

static int leaf(km_buf *o, const char *p)
{
    if (!km_is_leaf(p)) return LM_EINPUT;
    km_put(o, "%s", p);
    return 0;
}

static int has_attn(const km_unet_struct *u, int down_level)
{
    return down_level >= 0 && down_level < u->levels && ((u->attn_down >> down_level) & 1u);
}

int km_unet_to_diffusers(const km_unet_struct *u, const char *p, km_buf *o)
{
    int L = u->layers, k, s;
    if (km_lit(&p, "time_embed.0.")) { km_put(o, "time_embedding.linear_1."); return leaf(o, p); }
    if (km_lit(&p, "time_embed.2.")) { km_put(o, "time_embedding.linear_2."); return leaf(o, p); }
    if (u->label_emb && km_lit(&p, "label_emb.0.0.")) { km_put(o, "add_embedding.linear_1."); return leaf(o, p); }
    if (u->label_emb && km_lit(&p, "label_emb.0.2.")) { km_put(o, "add_embedding.linear_2."); return leaf(o, p); }
    if (km_lit(&p, "out.0.")) { km_put(o, "conv_norm_out."); return leaf(o, p); }
    if (km_lit(&p, "out.2.")) { km_put(o, "conv_out."); return leaf(o, p); }
    if (km_lit(&p, "input_blocks.")) {
        if (!km_num(&p, &k) || !km_num(&p, &s)) return LM_EINPUT;
        if (k == 0) {
            if (s != 0) return LM_EINPUT;
            km_put(o, "conv_in.");
            return leaf(o, p);
        }
        int i = (k - 1) / (L + 1), j = (k - 1) % (L + 1);
        if (i >= u->levels) return LM_EINPUT;
        if (j < L && s == 0) { km_put(o, "down_blocks.%d.resnets.%d.", i, j); return resnet_part(p, 0, o); }
        if (j < L && s == 1 && has_attn(u, i)) { km_put(o, "down_blocks.%d.attentions.%d.", i, j); return attn_part(p, o); }
        if (j == L && s == 0 && i < u->levels - 1 && km_lit(&p, "op.")) {
            km_put(o, "down_blocks.%d.downsamplers.0.conv.", i);
            return leaf(o, p);
        }
        return LM_EINPUT;
    }
    if (km_lit(&p, "middle_block.")) {
        if (!km_num(&p, &s)) return LM_EINPUT;
        if (s == 0) { km_put(o, "mid_block.resnets.0."); return resnet_part(p, 0, o); }
        if (s == 1 && u->mid_attn) { km_put(o, "mid_block.attentions.0."); return attn_part(p, o); }
        if (s == 2 && u->mid_attn) { km_put(o, "mid_block.resnets.1."); return resnet_part(p, 0, o); }
        return LM_EINPUT;
    }
    if (km_lit(&p, "output_blocks.")) {
        if (!km_num(&p, &k) || !km_num(&p, &s)) return LM_EINPUT;
        int i = k / (L + 1), j = k % (L + 1);
        int attn = has_attn(u, u->levels - 1 - i);
        if (i >= u->levels) return LM_EINPUT;
        if (s == 0) { km_put(o, "up_blocks.%d.resnets.%d.", i, j); return resnet_part(p, 0, o); }
        if (s == 1 && attn) { km_put(o, "up_blocks.%d.attentions.%d.", i, j); return attn_part(p, o); }
        if (s == (attn ? 2 : 1) && j == L && i < u->levels - 1 && km_lit(&p, "conv.")) {
            km_put(o, "up_blocks.%d.upsamplers.0.conv.", i);
            return leaf(o, p);
        }
        return LM_EINPUT;
    }
    return LM_EINPUT;
}

int km_unet_to_ldm(const km_unet_struct *u, const char *p, km_buf *o)
{
    int L = u->layers, i, j;
    if (km_lit(&p, "time_embedding.linear_1.")) { km_put(o, "time_embed.0."); return leaf(o, p); }
    if (km_lit(&p, "time_embedding.linear_2.")) { km_put(o, "time_embed.2."); return leaf(o, p); }
    if (u->label_emb && km_lit(&p, "add_embedding.linear_1.")) { km_put(o, "label_emb.0.0."); return leaf(o, p); }
    if (u->label_emb && km_lit(&p, "add_embedding.linear_2.")) { km_put(o, "label_emb.0.2."); return leaf(o, p); }
    if (km_lit(&p, "conv_in.")) { km_put(o, "input_blocks.0.0."); return leaf(o, p); }
    if (km_lit(&p, "conv_norm_out.")) { km_put(o, "out.0."); return leaf(o, p); }
    if (km_lit(&p, "conv_out.")) { km_put(o, "out.2."); return leaf(o, p); }
    if (km_lit(&p, "down_blocks.")) {
        if (!km_num(&p, &i) || i >= u->levels) return LM_EINPUT;
        if (km_lit(&p, "resnets.")) {
            if (!km_num(&p, &j) || j >= L) return LM_EINPUT;
            km_put(o, "input_blocks.%d.0.", (L + 1) * i + j + 1);
            return resnet_part(p, 1, o);
        }
        if (km_lit(&p, "attentions.")) {
            if (!km_num(&p, &j) || j >= L || !has_attn(u, i)) return LM_EINPUT;
            km_put(o, "input_blocks.%d.1.", (L + 1) * i + j + 1);
            return attn_part(p, o);
        }
        if (km_lit(&p, "downsamplers.0.conv.") && i < u->levels - 1) {
            km_put(o, "input_blocks.%d.0.op.", (L + 1) * i + L + 1);
            return leaf(o, p);
        }
        return LM_EINPUT;
    }
    if (km_lit(&p, "mid_block.")) {
        if (km_lit(&p, "resnets.0.")) { km_put(o, "middle_block.0."); return resnet_part(p, 1, o); }
        if (u->mid_attn && km_lit(&p, "attentions.0.")) { km_put(o, "middle_block.1."); return attn_part(p, o); }
        if (u->mid_attn && km_lit(&p, "resnets.1.")) { km_put(o, "middle_block.2."); return resnet_part(p, 1, o); }
        return LM_EINPUT;
    }
    if (km_lit(&p, "up_blocks.")) {
        if (!km_num(&p, &i) || i >= u->levels) return LM_EINPUT;
        int attn = has_attn(u, u->levels - 1 - i);
        if (km_lit(&p, "resnets.")) {
            if (!km_num(&p, &j) || j > L) return LM_EINPUT;
            km_put(o, "output_blocks.%d.0.", (L + 1) * i + j);
            return resnet_part(p, 1, o);
        }
        if (km_lit(&p, "attentions.")) {
            if (!km_num(&p, &j) || j > L || !attn) return LM_EINPUT;
            km_put(o, "output_blocks.%d.1.", (L + 1) * i + j);
            return attn_part(p, o);
        }
        if (km_lit(&p, "upsamplers.0.conv.") && i < u->levels - 1) {
            km_put(o, "output_blocks.%d.%d.conv.", (L + 1) * i + L, attn ? 2 : 1);
            return leaf(o, p);
        }
        return LM_EINPUT;
    }
    return LM_EINPUT;
}
