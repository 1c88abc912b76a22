/* The LoRA key map: every LoRA spelling of every base weight, built forward
 * from the base's real tensor names (never by turning '_' back into '.',
 * since to_q, in_layers, transformer_blocks contain '_' themselves), in one
 * hash table; resolution is a lookup per module name.
 *
 * Spellings registered per base weight (diffusers module path Pd, LDM path
 * Pl, both without component prefix and without ".weight"):
 *   UNet   lora_unet_<Pd, '.'→'_'>   kohya SD1.x/SD2.x, diffusers-exported LCM-LoRAs (all archs)
 *          lycoris_<Pd, '.'→'_'>     LyCORIS' own network prefix (as ComfyUI's key map)
 *          lora_unet_<Pl, '.'→'_'>   kohya SDXL (sd-scripts builds the sgm UNet)
 *          unet.<Pd>, <Pd>           diffusers (.lora.down.weight) and attention-processor files
 *          base_model.model.<Pd>, unet.base_model.model.<Pd>   PEFT
 *          diffusion_model.<Pl>, model.diffusion_model.<Pl>    LDM-path files (ComfyUI style)
 *   TE     lora_te_<Pd>, lora_te1_<Pd>, text_encoder.<Pd>, <Pd>,
 *          base_model.model.<Pd>, text_encoder.base_model.model.<Pd>
 *   TE2    lora_te2_<Pd>, text_encoder_2.<Pd>, text_encoder_2.base_model.model.<Pd>
 * (kohya-ss/sd-scripts networks/lora.py and sdxl naming; diffusers
 * lora_conversion_utils; peft's state-dict prefixes.) The VAE gets no
 * spellings: LoRAs do not target it. An OpenCLIP attn.in_proj_weight [3d,d]
 * (SD2.x text encoder, SDXL's second, LDM layout) is registered three times,
 * as self_attn.q_proj/k_proj/v_proj with rows [0,d), [d,2d), [2d,3d). */
#include "keymap_impl.h"
#include "core/strhash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KM_NAME_MAX 512

typedef struct km_slot {
    char *key;
    lm_target t;
} km_slot;

struct lm_keymap {
    const lm_source *base;
    lm_model_info info;
    km_slot *tab;
    size_t cap, n;
};

/* Key in slot j (NULL when empty), for lm_strtab_probe. */
static const char *slot_key(const void *table, size_t j)
{
    return ((const km_slot *)table)[j].key;
}

static const km_slot *lookup(const lm_keymap *m, const char *key)
{
    const km_slot *s = &m->tab[lm_strtab_probe(m->tab, m->cap, slot_key, key)];
    return s->key ? s : NULL;
}

static int grow(lm_keymap *m)
{
    size_t cap = m->cap ? 2 * m->cap : 4096;
    km_slot *tab = calloc(cap, sizeof *tab);
    if (!tab) return LM_ENOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->tab[i].key) tab[lm_strtab_probe(tab, cap, slot_key, m->tab[i].key)] = m->tab[i];
    free(m->tab);
    m->tab = tab;
    m->cap = cap;
    return 0;
}

/* Registers key → t; the first registration of a spelling wins (the order
 * UNet, first encoder, second encoder makes a bare "text_model.…" the first
 * encoder's). */
static int add(lm_keymap *m, const char *key, const lm_target *t)
{
    if (2 * (m->n + 1) > m->cap && grow(m)) return LM_ENOMEM;
    size_t j = lm_strtab_probe(m->tab, m->cap, slot_key, key);
    if (m->tab[j].key) return 0;
    if (!(m->tab[j].key = strdup(key))) return LM_ENOMEM;
    m->tab[j].t = *t;
    m->n++;
    return 0;
}

static int addf(lm_keymap *m, const lm_target *t, const char *pre, const char *path, int underscores)
{
    char key[KM_NAME_MAX];
    int k = snprintf(key, sizeof key, "%s%s", pre, path);
    if (k < 0 || (size_t)k >= sizeof key) return 0;   /* no LoRA names a module this long */
    if (underscores)
        for (char *c = key + strlen(pre); *c; c++) if (*c == '.') *c = '_';
    return add(m, key, t);
}

static int ends(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Module path: name without its component prefix and trailing ".weight". */
static void module_path(char *dst, size_t n, const char *inner)
{
    snprintf(dst, n, "%s", inner);
    size_t len = strlen(dst);
    if (len > 7 && strcmp(dst + len - 7, ".weight") == 0) dst[len - 7] = '\0';
}

static int add_spellings(lm_keymap *m, lm_part part, const char *pd, const char *pl, const lm_target *t)
{
    int rc = 0;
    switch (part) {
    case LM_PART_UNET:
        rc |= addf(m, t, "lora_unet_", pd, 1);
        rc |= addf(m, t, "lycoris_", pd, 1);
        if (pl) rc |= addf(m, t, "lora_unet_", pl, 1);
        rc |= addf(m, t, "unet.", pd, 0);
        rc |= addf(m, t, "", pd, 0);
        rc |= addf(m, t, "base_model.model.", pd, 0);
        rc |= addf(m, t, "unet.base_model.model.", pd, 0);
        if (pl) rc |= addf(m, t, "diffusion_model.", pl, 0);
        if (pl) rc |= addf(m, t, "model.diffusion_model.", pl, 0);
        break;
    case LM_PART_TE:
        rc |= addf(m, t, "lora_te_", pd, 1);
        rc |= addf(m, t, "lora_te1_", pd, 1);
        rc |= addf(m, t, "text_encoder.", pd, 0);
        rc |= addf(m, t, "", pd, 0);
        rc |= addf(m, t, "base_model.model.", pd, 0);
        rc |= addf(m, t, "text_encoder.base_model.model.", pd, 0);
        break;
    case LM_PART_TE2:
        rc |= addf(m, t, "lora_te2_", pd, 1);
        rc |= addf(m, t, "text_encoder_2.", pd, 0);
        rc |= addf(m, t, "text_encoder_2.base_model.model.", pd, 0);
        break;
    default:
        break;
    }
    return rc ? LM_ENOMEM : 0;
}

/* Index of the bias that goes with weight `name` (".weight" → ".bias",
 * "in_proj_weight" → "in_proj_bias"), or -1. */
static int64_t bias_of(const lm_source *s, const char *name)
{
    char b[KM_NAME_MAX];
    size_t len = strlen(name);
    if (len >= sizeof b) return -1;
    memcpy(b, name, len + 1);
    if (ends(b, "in_proj_weight")) { strcpy(b + len - 6, "bias"); return lm_source_find(s, b); }
    if (ends(b, ".weight")) { strcpy(b + len - 6, "bias"); return lm_source_find(s, b); }
    return -1;
}

/* OpenCLIP packed q/k/v (LDM layout): three row-block targets. */
static int add_packed(lm_keymap *m, size_t i, const lm_entry *e)
{
    const char *p = strstr(e->name, "transformer.resblocks.");
    int layer;
    if (!p || e->ndim != 2 || e->shape[0] != 3 * e->shape[1]) return 0;
    p += strlen("transformer.resblocks.");
    if (!km_num(&p, &layer) || strcmp(p, "attn.in_proj_weight") != 0) return 0;
    lm_part part = lm_ldm_part(e->name);
    int64_t d = e->shape[1];
    static const char qkv[3] = { 'q', 'k', 'v' };
    for (int c = 0; c < 3; c++) {
        char pd[128];
        snprintf(pd, sizeof pd, "text_model.encoder.layers.%d.self_attn.%c_proj", layer, qkv[c]);
        lm_target t = { (int64_t)i, bias_of(m->base, e->name), c * d, d };
        int rc = add_spellings(m, part, pd, NULL, &t);
        if (rc) return rc;
    }
    return 0;
}

static int add_entry(lm_keymap *m, size_t i)
{
    const lm_entry *e = lm_source_entry(m->base, i);
    lm_arch arch = m->info.arch;
    char other[KM_NAME_MAX], pd[KM_NAME_MAX], pl[KM_NAME_MAX];
    const char *dname, *lname, *inner;
    if (m->info.layout == LM_LAYOUT_LDM) {
        int rc = lm_layout_convert_name(arch, LM_LAYOUT_LDM, LM_LAYOUT_DIFFUSERS, e->name, other, sizeof other, NULL);
        if (rc == LM_EUNSUPPORTED && ends(e->name, "attn.in_proj_weight")) return add_packed(m, i, e);
        if (rc || !ends(e->name, ".weight")) return 0;
        lname = e->name;
        dname = other;
    } else {
        if (!ends(e->name, ".weight")) return 0;
        dname = e->name;
        lname = lm_layout_convert_name(arch, LM_LAYOUT_DIFFUSERS, LM_LAYOUT_LDM, e->name, other, sizeof other, NULL)
                ? NULL : other;
    }
    lm_part part = lm_diffusers_part(dname, &inner);
    if (part != LM_PART_UNET && part != LM_PART_TE && part != LM_PART_TE2) return 0;
    if (m->info.layout == LM_LAYOUT_DIFFUSERS && part == LM_PART_TE && inner == dname && m->info.has_te2 && !m->info.has_te)
        part = LM_PART_TE2;   /* a bare file of SDXL's second encoder */
    module_path(pd, sizeof pd, inner);
    if (lname && part == LM_PART_UNET) module_path(pl, sizeof pl, lname + strlen("model.diffusion_model."));
    lm_target t = { (int64_t)i, bias_of(m->base, e->name), 0, e->ndim ? e->shape[0] : 1 };
    return add_spellings(m, part, pd, lname && part == LM_PART_UNET ? pl : NULL, &t);
}

int lm_keymap_build(lm_keymap **out, const lm_source *base, lm_err *err)
{
    *out = NULL;
    lm_keymap *m = calloc(1, sizeof *m);
    if (!m) return lm_err_set(err, LM_ENOMEM, lm_source_path(base), NULL, LM_ERR_NO_OFFSET, "out of memory");
    m->base = base;
    lm_model_detect(base, &m->info);
    if (m->info.arch == LM_ARCH_UNKNOWN || m->info.layout == LM_LAYOUT_UNKNOWN) {
        int rc = lm_err_set(err, LM_EUNSUPPORTED, lm_source_path(base), NULL, LM_ERR_NO_OFFSET,
                            "cannot map LoRA names: architecture %s, layout %s (%s)", lm_arch_name(m->info.arch),
                            lm_layout_name(m->info.layout), m->info.reason);
        free(m);
        return rc;
    }
    if (grow(m)) { free(m); return lm_err_set(err, LM_ENOMEM, lm_source_path(base), NULL, LM_ERR_NO_OFFSET, "out of memory"); }
    /* UNet first, then the first encoder, then the second: first registration wins */
    for (int pass = 0; pass < 3; pass++)
        for (size_t i = 0; i < lm_source_count(base); i++) {
            const char *name = lm_source_entry(base, i)->name;
            lm_part p = m->info.layout == LM_LAYOUT_LDM ? lm_ldm_part(name) : lm_diffusers_part(name, NULL);
            if (!((pass == 0 && p == LM_PART_UNET) || (pass == 1 && p == LM_PART_TE) || (pass == 2 && p == LM_PART_TE2)))
                continue;
            if (add_entry(m, i)) {
                lm_keymap_free(m);
                return lm_err_set(err, LM_ENOMEM, lm_source_path(base), name, LM_ERR_NO_OFFSET, "out of memory");
            }
        }
    *out = m;
    return 0;
}

void lm_keymap_free(lm_keymap *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->cap; i++) free(m->tab[i].key);
    free(m->tab);
    free(m);
}

const lm_model_info *lm_keymap_info(const lm_keymap *m) { return m ? &m->info : NULL; }
size_t lm_keymap_size(const lm_keymap *m) { return m ? m->n : 0; }

/* Rewrites the spellings that carry more than the module path: a
 * "base_model.model." before a component prefix (PEFT), a trailing
 * ".lora" / ".lora_linear_layer" (diffusers), and the attention-processor
 * form "<path>.processor.to_q_lora" → "<path>.to_q", to_out_lora →
 * to_out.0 (diffusers ≤ 0.20 AttnProcsLayers). Returns 1 if changed. */
static int normalise(const char *name, char *dst, size_t n)
{
    int k = snprintf(dst, n, "%s", name);
    if (k < 0 || (size_t)k >= n) return 0;
    int changed = 0;
    /* PEFT around a pipeline component: base_model.model.unet.<path> */
    static const char *const comps[] = { "unet.", "text_encoder.", "text_encoder_2." };
    for (size_t i = 0; i < 3; i++) {
        size_t bl = strlen("base_model.model.");
        if (!strncmp(dst, "base_model.model.", bl) && !strncmp(dst + bl, comps[i], strlen(comps[i]))) {
            memmove(dst, dst + bl, strlen(dst + bl) + 1);
            changed = 1;
            break;
        }
    }
    static const char *const tails[] = { ".lora_linear_layer", ".lora" };
    for (size_t i = 0; i < 2; i++)
        if (ends(dst, tails[i])) { dst[strlen(dst) - strlen(tails[i])] = '\0'; changed = 1; }
    char *proc = strstr(dst, ".processor.");
    if (proc) {
        char tail[64];
        snprintf(tail, sizeof tail, "%s", proc + strlen(".processor."));
        if (ends(tail, "_lora")) tail[strlen(tail) - 5] = '\0';
        if (strcmp(tail, "to_out") == 0) strcpy(tail, "to_out.0");
        snprintf(proc, n - (size_t)(proc - dst), ".%s", tail);
        changed = 1;
    }
    return changed;
}

int64_t lm_keymap_find(const lm_keymap *m, const char *name, lm_component comp, lm_target *t)
{
    char norm[KM_NAME_MAX], te2[KM_NAME_MAX + 16];
    const char *key = name;
    const km_slot *s = NULL;
    if (normalise(name, norm, sizeof norm)) key = norm;
    if (comp == LM_COMP_TE2) {
        /* a second-encoder module spelled without its component */
        const char *r = key;
        km_lit(&r, "base_model.model.");
        if (strncmp(r, "text_model.", 11) == 0 || strncmp(r, "text_projection", 15) == 0) {
            snprintf(te2, sizeof te2, "text_encoder_2.%s", r);
            s = lookup(m, te2);
        }
    }
    if (!s) s = lookup(m, key);
    if (!s && key != name) s = lookup(m, name);
    if (!s) return -1;
    if (t) *t = s->t;
    return s->t.tensor;
}

static void shape_str(char *dst, size_t n, int ndim, const int64_t *shape)
{
    km_buf b;
    km_buf_init(&b, dst, n);
    km_put(&b, "[");
    for (int d = 0; d < ndim; d++) km_put(&b, "%s%lld", d ? "," : "", (long long)shape[d]);
    km_put(&b, "]");
}

static const char *arch_human(lm_arch a)
{
    switch (a) {
    case LM_ARCH_SD1: return "SD1.x";
    case LM_ARCH_SD2: return "SD2.x";
    case LM_ARCH_SDXL: return "SDXL";
    case LM_ARCH_SSD1B: return "SSD-1B";
    default: return "unknown";
    }
}

/* A width that only one architecture has (cross-attention / text widths). */
static lm_arch arch_of_width(int64_t w)
{
    switch (w) {
    case 768: return LM_ARCH_SD1;
    case 1024: return LM_ARCH_SD2;
    case 2048: case 1280: return LM_ARCH_SDXL;
    default: return LM_ARCH_UNKNOWN;
    }
}

int lm_keymap_check_fit(const lm_keymap *m, const char *module_name, const lm_target *t,
                        int ndim, const int64_t *shape, lm_err *err)
{
    const lm_entry *e = lm_source_entry(m->base, (size_t)t->tensor);
    if (!e) return lm_err_set(err, LM_EINTERNAL, lm_source_path(m->base), module_name, LM_ERR_NO_OFFSET, "target index out of range");
    int64_t rest = 1, numel = 1;
    for (int d = 1; d < e->ndim; d++) rest *= e->shape[d];
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    if (ndim >= 1 && shape[0] == t->rows && numel == t->rows * rest) return 0;
    char a[96], b[96], rows[64] = "";
    shape_str(a, sizeof a, ndim, shape);
    shape_str(b, sizeof b, e->ndim, e->shape);
    if (e->ndim && t->rows != e->shape[0])
        snprintf(rows, sizeof rows, " rows [%lld,%lld) of", (long long)t->row0, (long long)(t->row0 + t->rows));
    /* likely cause: a dimension naming another architecture's width */
    lm_arch other = LM_ARCH_UNKNOWN;
    for (int d = 0; d < ndim && !other; d++) {
        int present = 0;
        for (int k = 0; k < e->ndim; k++) present |= e->shape[k] == shape[d];
        if (!present) other = arch_of_width(shape[d]);
    }
    char cause[96];
    int same = other == m->info.arch || (other == LM_ARCH_SDXL && m->info.arch == LM_ARCH_SSD1B);
    if (other && !same)   /* every name here takes "an" */
        snprintf(cause, sizeof cause, "an %s LoRA on an %s base?", arch_human(other), arch_human(m->info.arch));
    else
        snprintf(cause, sizeof cause, "a LoRA made for another model than this %s base?", arch_human(m->info.arch));
    return lm_err_set(err, LM_EMISMATCH, NULL, module_name, LM_ERR_NO_OFFSET,
                      "ΔW shape %s does not fit%s base tensor %s shape %s: %s", a, rows, e->name, b, cause);
}

size_t lm_keymap_format_unmatched(const lm_lora *lora, const lm_target *targets, size_t max,
                                  char *buf, size_t n)
{
    size_t count = 0, shown = 0, len = 0;
    if (n) buf[0] = '\0';
    for (size_t i = 0; i < lm_lora_count(lora); i++) {
        if (targets[i].tensor >= 0) continue;
        count++;
        if (shown >= max) continue;
        const char *nm = lm_lora_module_at(lora, i)->name;
        size_t k = strlen(nm);
        if (len + k + 2 > n) { shown = max; continue; }
        memcpy(buf + len, nm, k);
        buf[len + k] = '\n';
        buf[len + k + 1] = '\0';
        len += k + 1;
        shown++;
    }
    return count;
}

int lm_keymap_resolve(const lm_keymap *m, const lm_lora *lora, int allow_unmatched,
                      lm_target *targets, size_t *n_unmatched, lm_err *err)
{
    size_t n = lm_lora_count(lora), unmatched = 0, misfit = 0;
    const char *path = lm_source_path(lm_lora_source(lora));
    lm_err first_misfit;
    lm_err_clear(&first_misfit);
    for (size_t i = 0; i < n; i++) {
        const lm_lora_module *mod = lm_lora_module_at(lora, i);
        if (lm_keymap_find(m, mod->name, mod->component, &targets[i]) < 0) {
            targets[i] = (lm_target){ -1, -1, 0, 0 };
            unmatched++;
            continue;
        }
        lm_err e;
        int rc = lm_keymap_check_fit(m, mod->name, &targets[i], mod->ndim, mod->shape, &e);
        if (!rc && mod->has_bias && targets[i].bias < 0)
            rc = lm_err_set(&e, LM_EMISMATCH, NULL, mod->name, LM_ERR_NO_OFFSET, "bias update (.diff_b) but base tensor %s has no bias",
                            lm_source_entry(m->base, (size_t)targets[i].tensor)->name);
        if (rc && !misfit++) first_misfit = e;
    }
    if (n_unmatched) *n_unmatched = unmatched;
    if (misfit) {
        if (err) {
            *err = first_misfit;
            if (misfit > 1) {
                size_t len = strlen(err->msg);
                snprintf(err->msg + len, sizeof err->msg - len, " (%zu modules do not fit)", misfit);
            }
            lm_err_file(err, path);
        }
        return LM_EMISMATCH;
    }
    if (unmatched && !allow_unmatched) {
        char list[400];
        km_buf b;
        size_t shown = 0;
        km_buf_init(&b, list, sizeof list);
        for (size_t i = 0; i < n && shown < 20; i++) {
            if (targets[i].tensor >= 0) continue;
            const char *nm = lm_lora_module_at(lora, i)->name;
            if (b.len + strlen(nm) + 8 >= sizeof list) break;
            km_put(&b, "%s%s", shown ? ", " : "", nm);
            shown++;
        }
        size_t first = 0;
        while (first < n && targets[first].tensor >= 0) first++;
        return lm_err_set(err, LM_EMISMATCH, path, first < n ? lm_lora_module_at(lora, first)->name : NULL, LM_ERR_NO_OFFSET,
                          "%zu of %zu LoRA modules match no tensor of this %s base (%s layout); first %zu: %s%s",
                          unmatched, n, arch_human(m->info.arch), lm_layout_name(m->info.layout), shown, list,
                          shown < unmatched ? ", …" : "");
    }
    return 0;
}
