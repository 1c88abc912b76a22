/* Text encoder names. CLIP ViT-L (SD1.x, SDXL's first encoder) is stored
 * under Hugging Face transformers' CLIPTextModel names in both layouts, only
 * the prefix changes. OpenCLIP encoders (SD2.x's ViT-H, SDXL's second encoder
 * ViT-bigG) keep OpenCLIP's names in the LDM layout and transformers' in the
 * diffusers layout (mapping of diffusers' convert_open_clip_checkpoint):
 *
 *   positional_embedding                   text_model.embeddings.position_embedding.weight
 *   token_embedding.weight                 text_model.embeddings.token_embedding.weight
 *   transformer.resblocks.N.ln_1/ln_2      text_model.encoder.layers.N.layer_norm1/layer_norm2
 *   transformer.resblocks.N.attn.out_proj  text_model.encoder.layers.N.self_attn.out_proj
 *   transformer.resblocks.N.mlp.c_fc/c_proj text_model.encoder.layers.N.mlp.fc1/fc2
 *   ln_final                               text_model.final_layer_norm
 *   text_projection [d,p]                  text_projection.weight [p,d] (transposed)
 *
 * attn.in_proj_weight/in_proj_bias pack q,k,v as row blocks [3d, d]; one
 * name cannot express that, so both directions answer LM_EUNSUPPORTED for it
 * (and for self_attn.{q,k,v}_proj, logit_scale and position_ids, which have
 * no single counterpart). Callers handle those tensors themselves:
 * model-convert (libmerge/convert/convert.c) splits in_proj into q/k/v_proj
 * and concatenates them back, and leaves logit_scale and position_ids out;
 * the LoRA key map addresses q/k/v as row blocks of in_proj (keymap.c). */
#include "keymap_impl.h"

#include <string.h>

static int leaf(km_buf *o, const char *p)
{
    if (!km_is_leaf(p)) return LM_EINPUT;
    km_put(o, "%s", p);
    return 0;
}

static const char *const LAYER_PARTS[][2] = {   /* OpenCLIP, transformers */
    { "ln_1.", "layer_norm1." }, { "ln_2.", "layer_norm2." },
    { "attn.out_proj.", "self_attn.out_proj." },
    { "mlp.c_fc.", "mlp.fc1." }, { "mlp.c_proj.", "mlp.fc2." },
};

static int layer_part(const char *p, int from, km_buf *o)
{
    for (size_t k = 0; k < sizeof LAYER_PARTS / sizeof LAYER_PARTS[0]; k++) {
        const char *q = p;
        if (km_lit(&q, LAYER_PARTS[k][from])) { km_put(o, "%s", LAYER_PARTS[k][!from]); return leaf(o, q); }
    }
    return LM_EINPUT;
}

int km_openclip_to_hf(const char *p, km_buf *o, int *reshape)
{
    int n;
    if (strcmp(p, "positional_embedding") == 0) { km_put(o, "text_model.embeddings.position_embedding.weight"); return 0; }
    if (strcmp(p, "token_embedding.weight") == 0) { km_put(o, "text_model.embeddings.token_embedding.weight"); return 0; }
    if (strcmp(p, "text_projection") == 0) {
        *reshape = LM_RESHAPE_TRANSPOSE;
        km_put(o, "text_projection.weight");
        return 0;
    }
    if (strcmp(p, "logit_scale") == 0) return LM_EUNSUPPORTED;
    if (km_lit(&p, "ln_final.")) { km_put(o, "text_model.final_layer_norm."); return leaf(o, p); }
    if (km_lit(&p, "transformer.resblocks.") && km_num(&p, &n)) {
        if (strcmp(p, "attn.in_proj_weight") == 0 || strcmp(p, "attn.in_proj_bias") == 0) return LM_EUNSUPPORTED;
        km_put(o, "text_model.encoder.layers.%d.", n);
        return layer_part(p, 0, o);
    }
    return LM_EINPUT;
}

int km_hf_to_openclip(const char *p, km_buf *o, int *reshape)
{
    int n;
    if (strcmp(p, "text_model.embeddings.position_embedding.weight") == 0) { km_put(o, "positional_embedding"); return 0; }
    if (strcmp(p, "text_model.embeddings.token_embedding.weight") == 0) { km_put(o, "token_embedding.weight"); return 0; }
    if (strcmp(p, "text_model.embeddings.position_ids") == 0) return LM_EUNSUPPORTED;
    if (strcmp(p, "text_projection.weight") == 0) {
        *reshape = LM_RESHAPE_TRANSPOSE;
        km_put(o, "text_projection");
        return 0;
    }
    if (km_lit(&p, "text_model.final_layer_norm.")) { km_put(o, "ln_final."); return leaf(o, p); }
    if (km_lit(&p, "text_model.encoder.layers.") && km_num(&p, &n)) {
        const char *q = p;
        if (km_lit(&q, "self_attn.q_proj.") || km_lit(&q, "self_attn.k_proj.") || km_lit(&q, "self_attn.v_proj."))
            return km_is_leaf(q) ? LM_EUNSUPPORTED : LM_EINPUT;
        km_put(o, "transformer.resblocks.%d.", n);
        return layer_part(p, 1, o);
    }
    return LM_EINPUT;
}
