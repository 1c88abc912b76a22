/* LoRA module names across conventions (lora-merge without a base matches modules by
 * these), and the names written for merged modules: kohya (lora_unet_…), PEFT
 * (unet.<path>), from the inputs or from the base's tensor names. */
#include "merge_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *strip_prefix(const char *s, const char *p)
{
    size_t n = strlen(p);
    return strncmp(s, p, n) ? s : s + n;
}

/* The module path without convention prefix, attention-processor spelling mapped to the
 * module (processor.to_q_lora → to_q, to_out_lora → to_out.0); dots kept as in the file. */
static void module_path(const lm_lora_module *m, char *out, size_t n)
{
    const char *s = m->name;
    if (m->convention == LM_LORA_KOHYA) {
        const char *pre[] = { "lora_unet_", "lora_te1_", "lora_te2_", "lora_te_" };
        for (size_t i = 0; i < 4; i++) if (!strncmp(s, pre[i], strlen(pre[i]))) { s += strlen(pre[i]); break; }
        snprintf(out, n, "%s", s);
        return;
    }
    s = strip_prefix(s, "base_model.model.");
    const char *pre[] = { "unet.", "text_encoder_2.", "text_encoder.", "transformer." };
    for (size_t i = 0; i < 4; i++) if (!strncmp(s, pre[i], strlen(pre[i]))) { s += strlen(pre[i]); break; }
    snprintf(out, n, "%s", s);
    char *p = strstr(out, ".processor.");
    if (p) memmove(p, p + 10, strlen(p + 10) + 1);    /* drop ".processor" */
    size_t len = strlen(out);
    if (len > 5 && !strcmp(out + len - 5, "_lora")) {
        out[len - 5] = 0;
        len -= 5;
        if (len >= 6 && !strcmp(out + len - 6, "to_out") && len + 2 < n) strcat(out, ".0");
    }
}

static const char *comp_tag(lm_component c)
{
    return c == LM_COMP_TE ? "te" : c == LM_COMP_TE2 ? "te2" : "unet";
}

int lmm_norm_module_name(const lm_lora_module *m, char *out, size_t n)
{
    char path[512];
    module_path(m, path, sizeof path);
    for (char *p = path; *p; p++) if (*p == '.') *p = '_';
    int k = snprintf(out, n, "%s:%s", comp_tag(m->component), path);
    return k < 0 || (size_t)k >= n ? LM_EINPUT : 0;
}

char *lmm_kohya_name(const char *key, const char *te_prefix)
{
    const char *colon = strchr(key, ':');
    char buf[600];
    if (!strncmp(key, "te2:", 4)) snprintf(buf, sizeof buf, "lora_te2_%s", colon + 1);
    else if (!strncmp(key, "te:", 3)) snprintf(buf, sizeof buf, "%s%s", te_prefix, colon + 1);
    else snprintf(buf, sizeof buf, "lora_unet_%s", colon + 1);
    return strdup(buf);
}

/* A dotted path from the first of modules whose file spelling has dots (diffusers, PEFT,
 * attention processor); NULL when all are kohya-named. */
char *lmm_peft_name(const lm_lora_module *const *mods, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        const lm_lora_module *m = mods[k];
        if (m->convention == LM_LORA_KOHYA) continue;
        char path[512], buf[600];
        module_path(m, path, sizeof path);
        snprintf(buf, sizeof buf, "%s.%s", m->component == LM_COMP_TE ? "text_encoder" :
                 m->component == LM_COMP_TE2 ? "text_encoder_2" : "unet", path);
        return strdup(buf);
    }
    return NULL;
}

/* PEFT name from the base tensor a group targets (key "t<tensor>:<row0>"): the diffusers
 * name of the weight without ".weight"; NULL for packed (row-sliced) targets. */
char *lmm_peft_from_base(const lm_source *base, const lm_model_info *info, const char *key)
{
    long long t = -1, row0 = -1;
    if (!info || sscanf(key, "t%lld:%lld", &t, &row0) != 2 || t < 0 || row0 != 0) return NULL;
    const lm_entry *e = lm_source_entry(base, (size_t)t);
    char buf[600];
    int reshape = 0;
    if (info->layout == LM_LAYOUT_LDM) {
        if (lm_layout_convert_name(info->arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, e->name, buf, sizeof buf, &reshape))
            return NULL;
    } else if (!strncmp(e->name, "unet.", 5) || !strncmp(e->name, "text_encoder", 12)) {
        snprintf(buf, sizeof buf, "%s", e->name);
    } else {
        snprintf(buf, sizeof buf, "unet.%s", e->name);
    }
    size_t n = strlen(buf);
    if (n > 7 && !strcmp(buf + n - 7, ".weight")) buf[n - 7] = 0;
    return strdup(buf);
}

/* Architecture of LoRAs without a base: a second text encoder means SDXL; else the
 * cross-attention width (in-features of an attn2 to_k module): 768 SD1, 1024 SD2, 2048 SDXL. */
lm_arch lmm_guess_arch(lm_lora **loras, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t m = 0; m < lm_lora_count(loras[i]); m++) {
            const lm_lora_module *mod = lm_lora_module_at(loras[i], m);
            if (mod->component == LM_COMP_TE2) return LM_ARCH_SDXL;
            char key[544];
            if (mod->component != LM_COMP_UNET || lmm_norm_module_name(mod, key, sizeof key)) continue;
            size_t k = strlen(key);
            if (k < 10 || strcmp(key + k - 10, "attn2_to_k") != 0 || mod->ndim != 2) continue;
            return mod->shape[1] == 768 ? LM_ARCH_SD1 : mod->shape[1] == 1024 ? LM_ARCH_SD2 :
                   mod->shape[1] == 2048 ? LM_ARCH_SDXL : LM_ARCH_UNKNOWN;
        }
    return LM_ARCH_UNKNOWN;
}

