/* LCM scheduler: diffusers LCMScheduler (0.27) in float32, step by step. */
#include <math.h>
#include <string.h>

#include "libmerge/scheduler.h"

/* torch.linspace(start, end, steps, float32) on CPU, bit for bit (checked
 * against diffusers' tables): the step is computed in float; the kernel
 * fills vectors of 8 (AVX2), each from a base start + step·i0 (first half)
 * or end − step·(steps−1−i0) (second half) computed with a fused
 * multiply-add, then base + j·step within the vector. */
static void linspace_f32(float start, float end, int steps, float *out)
{
    float step = (end - start) / (float)(steps - 1);
    int halfway = steps / 2;
    for (int i0 = 0; i0 < steps; i0 += 8) {
        float base = i0 < halfway ? fmaf(step, (float)i0, start)
                                  : fmaf(-step, (float)(steps - 1 - i0), end);
        for (int j = 0; j < 8 && i0 + j < steps; j++) out[i0 + j] = base + (float)j * step;
    }
}

void lm_lcm_init(lm_lcm *s)
{
    memset(s, 0, sizeof *s);
    s->num_train_timesteps = LM_LCM_TRAIN_STEPS;
    s->beta_start = 0.00085;
    s->beta_end = 0.012;
    s->original_steps = 50;
    s->timestep_scaling = 10.0f;
    s->sigma_data = 0.5f;
    int T = s->num_train_timesteps;
    linspace_f32((float)sqrt(s->beta_start), (float)sqrt(s->beta_end), T, s->betas);
    for (int i = 0; i < T; i++) s->betas[i] = s->betas[i] * s->betas[i];
    /* torch.cumprod on CPU accumulates float in double (acc_type) */
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        float alpha = 1.0f - s->betas[i];
        acc *= (double)alpha;
        s->alphas_cumprod[i] = (float)acc;
    }
}

int lm_lcm_set_timesteps(lm_lcm *s, int steps, int original_steps, double strength, lm_err *err)
{
    int T = s->num_train_timesteps;
    int orig = original_steps > 0 ? original_steps : s->original_steps;
    if (orig > T)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET,
                          "original steps %d exceed the %d training timesteps", orig, T);
    if (!(strength > 0.0 && strength <= 1.0))
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "strength %g not in (0, 1]", strength);
    int k = T / orig;
    int len = (int)((double)orig * strength);
    if (steps < 1 || steps > T)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "steps %d not in 1..%d", steps, T);
    if (len / steps < 1)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET,
                          "original steps × strength = %d is smaller than the %d steps asked for",
                          len, steps);
    if (steps > orig)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET,
                          "steps %d exceed original steps %d", steps, orig);
    /* descending grid: g[j] = k·(len − j) − 1; indices floor(linspace(0, len, steps, endpoint=False)),
     * computed as numpy does: i · (len / steps) in double */
    double step = (double)len / (double)steps;
    for (int i = 0; i < steps; i++) {
        int j = (int)floor((double)i * step);
        s->timesteps[i] = k * (len - j) - 1;
    }
    s->n_steps = steps;
    return 0;
}

void lm_lcm_scalings(const lm_lcm *s, int t, float *c_skip, float *c_out)
{
    float sd2 = s->sigma_data * s->sigma_data;
    float st = (float)t * s->timestep_scaling;
    float d = st * st + sd2;
    *c_skip = sd2 / d;
    *c_out = st / sqrtf(d);
}

int lm_lcm_step(const lm_lcm *s, int i, const float *x, const float *eps, const float *noise,
                size_t n, float *denoised, float *x_next, lm_err *err)
{
    if (i < 0 || i >= s->n_steps)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET,
                          "step %d outside the %d-step schedule", i, s->n_steps);
    int last = i == s->n_steps - 1;
    if (!last && !noise)
        return lm_err_set(err, LM_EUSAGE, NULL, NULL, LM_ERR_NO_OFFSET, "step %d needs noise", i);
    int t = s->timesteps[i];
    int tp = last ? t : s->timesteps[i + 1];
    float a_t = s->alphas_cumprod[t], a_p = s->alphas_cumprod[tp];
    float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t);
    float sap = sqrtf(a_p), sbp = sqrtf(1.0f - a_p);
    float c_skip, c_out;
    lm_lcm_scalings(s, t, &c_skip, &c_out);
    for (size_t e = 0; e < n; e++) {
        float xv = x[e];
        float p = sb * eps[e];
        float x0 = (xv - p) / sa;
        float a = c_out * x0;
        float b = c_skip * xv;
        float d = a + b;
        if (denoised) denoised[e] = d;
        if (last) {
            x_next[e] = d;
        } else {
            float u = sap * d;
            float w = sbp * noise[e];
            x_next[e] = u + w;
        }
    }
    return 0;
}

void lm_cfg_combine(float *eps_uncond, const float *eps_cond, float g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float d = eps_cond[i] - eps_uncond[i];
        float gd = g * d;
        eps_uncond[i] = eps_uncond[i] + gd;
    }
}
