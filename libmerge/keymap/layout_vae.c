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

enum { PART_LEAF, PART_RESNET, PART_ATTN };

/* The names outside the levels, one to one: LDM, diffusers, what follows. */
static const struct { const char *ldm, *diffusers; int part; } FIXED[] = {
    { "conv_in.", "conv_in.", PART_LEAF },
    { "conv_out.", "conv_out.", PART_LEAF },
    { "norm_out.", "conv_norm_out.", PART_LEAF },
    { "mid.block_1.", "mid_block.resnets.0.", PART_RESNET },
    { "mid.block_2.", "mid_block.resnets.1.", PART_RESNET },
    { "mid.attn_1.", "mid_block.attentions.0.", PART_ATTN },
};

/* quant_conv., post_quant_conv. and the FIXED names under encoder./decoder.,
 * either direction: returns 1 with *rc the result when p is one of them or
 * neither under encoder. nor decoder. (*rc = LM_EINPUT); else returns 0 with
 * p past "encoder."/"decoder.", that prefix written and *enc set. */
static int vae_fixed(const char **p, int to_diffusers, km_buf *o, int *reshape, int *enc, int *rc)
{
    const char *top[] = { "quant_conv.", "post_quant_conv." };
    for (size_t k = 0; k < 2; k++)
        if (km_lit(p, top[k])) { km_put(o, "%s", top[k]); *rc = leaf(o, *p); return 1; }
    *enc = km_lit(p, "encoder.");
    if (!*enc && !km_lit(p, "decoder.")) { *rc = LM_EINPUT; return 1; }
    km_put(o, *enc ? "encoder." : "decoder.");
    for (size_t k = 0; k < sizeof FIXED / sizeof FIXED[0]; k++) {
        if (!km_lit(p, to_diffusers ? FIXED[k].ldm : FIXED[k].diffusers)) continue;
        km_put(o, "%s", to_diffusers ? FIXED[k].diffusers : FIXED[k].ldm);
        if (FIXED[k].part == PART_RESNET) *rc = vae_resnet(*p, to_diffusers, o);
        else if (FIXED[k].part == PART_ATTN) *rc = vae_attn(*p, to_diffusers, o, reshape);
        else *rc = leaf(o, *p);
        return 1;
    }
    return 0;
}

int km_vae_to_diffusers(const char *p, km_buf *o, int *reshape)
{
    int i, j, enc, rc;
    size_t base = o->len;
    if (vae_fixed(&p, 1, o, reshape, &enc, &rc)) return rc;
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
    int i, j, enc, rc;
    if (vae_fixed(&p, 0, o, reshape, &enc, &rc)) return rc;
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
