/* lm_layout_convert_name: splits a name into component prefix and the name
 * inside the component, converts that with the component's rules
 * (layout_unet.c, layout_vae.c, layout_clip.c) and puts the other layout's
 * prefix in front. */
#include "keymap_impl.h"

#include <string.h>

const char *lm_arch_name(lm_arch a)
{
    switch (a) {
    case LM_ARCH_SD1: return "sd1";
    case LM_ARCH_SD2: return "sd2";
    case LM_ARCH_SDXL: return "sdxl";
    case LM_ARCH_SSD1B: return "ssd-1b";
    default: return "unknown";
    }
}

const char *lm_layout_name(lm_layout l)
{
    switch (l) {
    case LM_LAYOUT_LDM: return "ldm";
    case LM_LAYOUT_DIFFUSERS: return "diffusers";
    default: return "unknown";
    }
}

const char *lm_part_name(lm_part p)
{
    switch (p) {
    case LM_PART_UNET: return "unet";
    case LM_PART_VAE: return "vae";
    case LM_PART_TE: return "text_encoder";
    case LM_PART_TE2: return "text_encoder_2";
    default: return "none";
    }
}

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

lm_part lm_diffusers_part(const char *name, const char **inner)
{
    static const struct { const char *prefix; lm_part part; } pre[] = {
        { "unet.", LM_PART_UNET }, { "vae.", LM_PART_VAE },
        { "text_encoder_2.", LM_PART_TE2 }, { "text_encoder.", LM_PART_TE },
    };
    for (size_t k = 0; k < sizeof pre / sizeof pre[0]; k++)
        if (starts(name, pre[k].prefix)) {
            if (inner) *inner = name + strlen(pre[k].prefix);
            return pre[k].part;
        }
    if (inner) *inner = name;
    static const char *const unet[] = { "conv_in.", "conv_out.", "conv_norm_out.", "time_embedding.",
                                        "add_embedding.", "down_blocks.", "mid_block.", "up_blocks." };
    for (size_t k = 0; k < sizeof unet / sizeof unet[0]; k++)
        if (starts(name, unet[k])) return LM_PART_UNET;
    if (starts(name, "encoder.") || starts(name, "decoder.") || starts(name, "quant_conv.") ||
        starts(name, "post_quant_conv."))
        return LM_PART_VAE;
    if (starts(name, "text_model.") || starts(name, "text_projection.")) return LM_PART_TE;
    return LM_PART_NONE;
}

lm_part lm_ldm_part(const char *name)
{
    if (starts(name, "model.diffusion_model.")) return LM_PART_UNET;
    if (starts(name, "first_stage_model.")) return LM_PART_VAE;
    if (starts(name, "cond_stage_model.") || starts(name, "conditioner.embedders.0.")) return LM_PART_TE;
    if (starts(name, "conditioner.embedders.1.")) return LM_PART_TE2;
    return LM_PART_NONE;
}

/* LDM prefix of a text encoder and whether it holds OpenCLIP names. */
static const char *ldm_te_prefix(lm_arch arch, lm_part part, int *openclip)
{
    *openclip = 0;
    if (arch == LM_ARCH_SD1 && part == LM_PART_TE) return "cond_stage_model.transformer.";
    if (arch == LM_ARCH_SD2 && part == LM_PART_TE) { *openclip = 1; return "cond_stage_model.model."; }
    if ((arch == LM_ARCH_SDXL || arch == LM_ARCH_SSD1B) && part == LM_PART_TE) return "conditioner.embedders.0.transformer.";
    if ((arch == LM_ARCH_SDXL || arch == LM_ARCH_SSD1B) && part == LM_PART_TE2) { *openclip = 1; return "conditioner.embedders.1.model."; }
    return NULL;
}

static int hf_clip_name(const char *r, km_buf *o)
{
    if (!starts(r, "text_model.") && strcmp(r, "text_projection.weight") != 0) return LM_EINPUT;
    km_put(o, "%s", r);
    return 0;
}

static int to_diffusers(lm_arch arch, const char *name, km_buf *o, int *reshape)
{
    const km_unet_struct *u = km_unet_struct_of(arch);
    const char *r = name;
    if (km_lit(&r, "model.diffusion_model.")) { km_put(o, "unet."); return km_unet_to_diffusers(u, r, o); }
    if (km_lit(&r, "first_stage_model.")) { km_put(o, "vae."); return km_vae_to_diffusers(r, o, reshape); }
    /* a standalone LDM VAE names its tensors without first_stage_model. */
    if (lm_ldm_part(name) == LM_PART_NONE && lm_diffusers_part(name, NULL) == LM_PART_VAE) {
        km_put(o, "vae.");
        return km_vae_to_diffusers(name, o, reshape);
    }
    for (lm_part part = LM_PART_TE; part <= LM_PART_TE2; part++) {
        int openclip;
        const char *pre = ldm_te_prefix(arch, part, &openclip);
        r = name;
        if (!pre || !km_lit(&r, pre)) continue;
        km_put(o, "%s.", lm_part_name(part));
        return openclip ? km_openclip_to_hf(r, o, reshape) : hf_clip_name(r, o);
    }
    return LM_EINPUT;
}

static int to_ldm(lm_arch arch, const char *name, km_buf *o, int *reshape)
{
    const char *r;
    lm_part part = lm_diffusers_part(name, &r);
    int openclip;
    const char *pre;
    switch (part) {
    case LM_PART_UNET: km_put(o, "model.diffusion_model."); return km_unet_to_ldm(km_unet_struct_of(arch), r, o);
    case LM_PART_VAE: km_put(o, "first_stage_model."); return km_vae_to_ldm(r, o, reshape);
    case LM_PART_TE: case LM_PART_TE2:
        if (!(pre = ldm_te_prefix(arch, part, &openclip))) return LM_EINPUT;
        km_put(o, "%s", pre);
        return openclip ? km_hf_to_openclip(r, o, reshape) : hf_clip_name(r, o);
    default: return LM_EINPUT;
    }
}

int lm_layout_convert_name(lm_arch arch, lm_layout from, lm_layout to, const char *name,
                           char *out, size_t n, int *reshape)
{
    int dummy, rc;
    km_buf o;
    if (!reshape) reshape = &dummy;
    *reshape = LM_RESHAPE_NONE;
    if (!out || !n || from == LM_LAYOUT_UNKNOWN || to == LM_LAYOUT_UNKNOWN)
        return lm_err_set(NULL, LM_EUSAGE, NULL, name, LM_ERR_NO_OFFSET, "bad arguments");
    km_buf_init(&o, out, n);
    if (!km_unet_struct_of(arch)) {
        rc = LM_EINPUT;
    } else if (from == to) {
        km_put(&o, "%s", name);
        rc = 0;
    } else {
        rc = from == LM_LAYOUT_LDM ? to_diffusers(arch, name, &o, reshape) : to_ldm(arch, name, &o, reshape);
    }
    if (rc == 0 && o.over) rc = LM_EUSAGE;
    if (rc) {
        out[0] = '\0';
        *reshape = LM_RESHAPE_NONE;
    }
    return rc;
}
