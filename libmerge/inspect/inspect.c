/* model-inspect's summary of a tensor source. See include/libmerge/inspect.h. */
#include "libmerge/inspect.h"

#include <stdio.h>
#include <string.h>

const char *lm_kind_name(lm_kind k)
{
    switch (k) {
    case LM_KIND_LORA: return "lora";
    case LM_KIND_CHECKPOINT: return "checkpoint";
    default: return "unknown";
    }
}

static void lora_summary(const lm_source *s, lm_inspect *o)
{
    lm_lora *l = NULL;
    lm_err e;
    lm_err_clear(&e);
    if (lm_lora_from_source(&l, s, &e)) {
        /* the names say LoRA, but the tensors do not form modules */
        snprintf(o->reason, sizeof o->reason, "%s names, but modules could not be built: %.180s",
                 lm_lora_convention_name(o->convention), e.msg);
        return;
    }
    snprintf(o->algo, sizeof o->algo, "%s", lm_lora_algo_name(l));
    o->modules = lm_lora_count(l);
    o->ignored = lm_lora_ignored_count(l);
    for (size_t i = 0; i < o->modules; i++) {
        const lm_lora_module *m = lm_lora_module_at(l, i);
        if ((unsigned)m->component < 3) o->modules_by_component[m->component]++;
        if (m->rank > 0) {
            if (!o->rank_min || m->rank < o->rank_min) o->rank_min = m->rank;
            if (m->rank > o->rank_max) o->rank_max = m->rank;
        }
    }
    snprintf(o->reason, sizeof o->reason, "tensor names follow the %s LoRA convention",
             lm_lora_convention_name(o->convention));
    lm_lora_close(l);
}

int lm_inspect_source(const lm_source *s, lm_inspect *o, lm_err *err)
{
    (void)err;
    memset(o, 0, sizeof *o);
    o->format = lm_source_format(s);
    o->tensors = lm_source_count(s);
    o->file_bytes = lm_source_file_size(s);
    if (o->format == LM_FMT_SAFETENSORS && lm_source_data_start(s) >= 8)
        o->header_bytes = lm_source_data_start(s) - 8;
    for (size_t i = 0; i < o->tensors; i++) {
        const lm_entry *e = lm_source_entry(s, i);
        o->params += e->numel;
        o->data_bytes += e->nbytes;
        if (e->dtype > LM_DT_INVALID && e->dtype < LM_DT_COUNT) {
            o->by_dtype[e->dtype].tensors++;
            o->by_dtype[e->dtype].params += e->numel;
            o->by_dtype[e->dtype].bytes += e->nbytes;
        }
    }
    o->convention = lm_lora_detect(s);
    if (o->convention != LM_LORA_UNKNOWN) {
        o->kind = LM_KIND_LORA;
        lora_summary(s, o);
        return 0;
    }
    lm_model_detect(s, &o->model);
    if (o->model.arch != LM_ARCH_UNKNOWN) {
        o->kind = LM_KIND_CHECKPOINT;
        snprintf(o->reason, sizeof o->reason, "%s", o->model.reason);
    } else {
        snprintf(o->reason, sizeof o->reason, "%s",
                 o->model.reason[0] ? o->model.reason : "neither LoRA names nor a known architecture");
    }
    return 0;
}
