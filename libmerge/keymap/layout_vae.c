/* VAE names, LDM layout (first_stage_model.*) <-> diffusers AutoencoderKL,
 * the rules of diffusers' convert_ldm_vae_checkpoint (table in
 * fixtures/golden/sd15/README.md): 4 levels, encoder 2 resnets per level,
 * decoder 3 with its levels numbered in reverse (decoder.up.{3-i} is
 * up_blocks.i), a mid block resnet/attention/resnet, nin_shortcut =
 * conv_shortcut, norm_out = conv_norm_out. The mid attention's q/k/v/proj_out
 * are 1×1 convs [C,C,1,1] in LDM and Linear [C,C] to_q/to_k/to_v/to_out.0
 * in diffusers (query/key/value/proj_attn before diffusers 0.14): their
 * weights change shape (LM_RESHAPE_CONV1X1). Every SD VAE (SD1.x, SD2.x,
 * SDXL) has this structure. */
#include "keymap_impl.h"

#include <string.h>

#define VAE_LEVELS 4
#define VAE_ENC_RESNETS 2
#define VAE_DEC_RESNETS 3

static int leaf(km_buf *o, const char *p)
{
    if (!km_is_leaf(p)) return LM_EINPUT;
    km_put(o, "%s", p);
    return 0;
}

/* Resnet parts; only the shortcut is renamed. */
static int vae_resnet(const char *p, int to_diffusers, km_buf *o)
{
    const char *same[] = { "norm1.", "conv1.", "norm2.", "conv2." };
    for (size_t k = 0; k < 4; k++)
        if (km_lit(&p, same[k])) { km_put(o, "%s", same[k]); return leaf(o, p); }
    if (km_lit(&p, to_diffusers ? "nin_shortcut." : "conv_shortcut.")) {
        km_put(o, "%s", to_diffusers ? "conv_shortcut." : "nin_shortcut.");
        return leaf(o, p);
    }
    return LM_EINPUT;
}

static const char *const ATTN_PARTS[][3] = {  /* LDM, diffusers, diffusers < 0.14 */
    { "norm.", "group_norm.", "group_norm." },
    { "q.", "to_q.", "query." },
    { "k.", "to_k.", "key." },
    { "v.", "to_v.", "value." },
    { "proj_out.", "to_out.0.", "proj_attn." },
};

static int vae_attn(const char *p, int to_diffusers, km_buf *o, int *reshape)
{
    for (size_t k = 0; k < sizeof ATTN_PARTS / sizeof ATTN_PARTS[0]; k++) {
        const char *q = p;
        int hit = to_diffusers ? km_lit(&q, ATTN_PARTS[k][0])
                               : (km_lit(&q, ATTN_PARTS[k][1]) || km_lit(&q, ATTN_PARTS[k][2]));
        if (!hit) continue;
        km_put(o, "%s", ATTN_PARTS[k][to_diffusers ? 1 : 0]);
        if (k > 0 && strcmp(q, "weight") == 0) *reshape = LM_RESHAPE_CONV1X1;
        return leaf(o, q);
    }
    return LM_EINPUT;
}

/* encoder./decoder. body shared by both directions where names agree. */
static int vae_common(const char **p, km_buf *o, int *done, int *rc)
{
    const char *same[] = { "conv_in.", "conv_out." };
    *done = 1;
    for (size_t k = 0; k < 2; k++)
        if (km_lit(p, same[k])) { km_put(o, "%s", same[k]); *rc = leaf(o, *p); return 1; }
    *done = 0;
    return 0;
}

int km_vae_to_diffusers(const char *p, km_buf *o, int *reshape)
{
    int i, j, done, rc;
    size_t base = o->len;
    if (km_lit(&p, "quant_conv.")) { km_put(o, "quant_conv."); return leaf(o, p); }
    if (km_lit(&p, "post_quant_conv.")) { km_put(o, "post_quant_conv."); return leaf(o, p); }
    int enc = km_lit(&p, "encoder.");
    if (!enc && !km_lit(&p, "decoder.")) return LM_EINPUT;
    km_put(o, enc ? "encoder." : "decoder.");
    if (vae_common(&p, o, &done, &rc)) return rc;
    if (km_lit(&p, "norm_out.")) { km_put(o, "conv_norm_out."); return leaf(o, p); }
    if (km_lit(&p, "mid.block_1.")) { km_put(o, "mid_block.resnets.0."); return vae_resnet(p, 1, o); }
    if (km_lit(&p, "mid.block_2.")) { km_put(o, "mid_block.resnets.1."); return vae_resnet(p, 1, o); }
    if (km_lit(&p, "mid.attn_1.")) { km_put(o, "mid_block.attentions.0."); return vae_attn(p, 1, o, reshape); }
    if (km_lit(&p, enc ? "down." : "up.")) {
        if (!km_num(&p, &i) || i >= VAE_LEVELS) return LM_EINPUT;
        int level = enc ? i : VAE_LEVELS - 1 - i;
        const char *blocks = enc ? "encoder.down_blocks" : "decoder.up_blocks";
        o->len = base;   /* the level prefix is written whole below */
        if (km_lit(&p, "block.")) {
            if (!km_num(&p, &j) || j >= (enc ? VAE_ENC_RESNETS : VAE_DEC_RESNETS)) return LM_EINPUT;
            km_put(o, "%s.%d.resnets.%d.", blocks, level, j);
            return vae_resnet(p, 1, o);
        }
        if (enc && level < VAE_LEVELS - 1 && km_lit(&p, "downsample.conv.")) {
            km_put(o, "%s.%d.downsamplers.0.conv.", blocks, level);
            return leaf(o, p);
        }
        if (!enc && level < VAE_LEVELS - 1 && km_lit(&p, "upsample.conv.")) {
            km_put(o, "%s.%d.upsamplers.0.conv.", blocks, level);
            return leaf(o, p);
        }
    }
    return LM_EINPUT;
}

int km_vae_to_ldm(const char *p, km_buf *o, int *reshape)
{
    int i, j, done, rc;
    if (km_lit(&p, "quant_conv.")) { km_put(o, "quant_conv."); return leaf(o, p); }
    if (km_lit(&p, "post_quant_conv.")) { km_put(o, "post_quant_conv."); return leaf(o, p); }
    int enc = km_lit(&p, "encoder.");
    if (!enc && !km_lit(&p, "decoder.")) return LM_EINPUT;
    km_put(o, enc ? "encoder." : "decoder.");
    if (vae_common(&p, o, &done, &rc)) return rc;
    if (km_lit(&p, "conv_norm_out.")) { km_put(o, "norm_out."); return leaf(o, p); }
    if (km_lit(&p, "mid_block.resnets.0.")) { km_put(o, "mid.block_1."); return vae_resnet(p, 0, o); }
    if (km_lit(&p, "mid_block.resnets.1.")) { km_put(o, "mid.block_2."); return vae_resnet(p, 0, o); }
    if (km_lit(&p, "mid_block.attentions.0.")) { km_put(o, "mid.attn_1."); return vae_attn(p, 0, o, reshape); }
    if (km_lit(&p, enc ? "down_blocks." : "up_blocks.")) {
        if (!km_num(&p, &i) || i >= VAE_LEVELS) return LM_EINPUT;
        int level = enc ? i : VAE_LEVELS - 1 - i;
        if (km_lit(&p, "resnets.")) {
            if (!km_num(&p, &j) || j >= (enc ? VAE_ENC_RESNETS : VAE_DEC_RESNETS)) return LM_EINPUT;
            km_put(o, "%s.%d.block.%d.", enc ? "down" : "up", level, j);
            return vae_resnet(p, 0, o);
        }
        if (i < VAE_LEVELS - 1 && km_lit(&p, enc ? "downsamplers.0.conv." : "upsamplers.0.conv.")) {
            km_put(o, "%s.%d.%s.conv.", enc ? "down" : "up", level, enc ? "downsample" : "upsample");
            return leaf(o, p);
        }
    }
    return LM_EINPUT;
}

int km_vae_bare_is_ldm(const char *name)
{
    const char *p = name;
    if (!km_lit(&p, "encoder.") && !km_lit(&p, "decoder.")) return 0;
    return km_lit(&p, "down.") || km_lit(&p, "up.") || km_lit(&p, "mid.") || km_lit(&p, "norm_out.");
}
