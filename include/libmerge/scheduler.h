/* libmerge/scheduler.h — the LCM multistep scheduler (Luo et al. 2023,
 * "Latent Consistency Models", arXiv:2310.04378, Algorithm 3 "multistep
 * latent consistency sampling"), computing what diffusers' LCMScheduler
 * (0.27) computes, float32 operation by operation.
 *
 * Noise schedule (DDPM "scaled_linear", as SD was trained):
 *   β_i = (√β_start + i·(√β_end − √β_start)/(T−1))², i = 0..T−1, T = 1000,
 *   β_start = 0.00085, β_end = 0.012; ᾱ_t = Π_{i≤t} (1 − β_i).
 * Timesteps for K steps (the "skipping-step" schedule): k = T / original_steps
 * (original_steps = 50 → k = 20), the training grid [k·i − 1 for i =
 * 1..⌊original_steps·strength⌋] in descending order, and of it the indices
 * ⌊linspace(0, len, K, endpoint=False)⌋ (SD1.5, 4 steps: 999, 759, 499, 259).
 * One step at timestep t (c_skip, c_out: the consistency model's boundary
 * condition, σ_data = 0.5, timestep_scaling 10):
 *   c_skip = σ_data² / ((10t)² + σ_data²),  c_out = 10t / √((10t)² + σ_data²)
 *   x0 = (x − √(1−ᾱ_t)·ε) / √ᾱ_t                      (prediction_type epsilon)
 *   denoised = c_out·x0 + c_skip·x
 *   x_next = √ᾱ_s·denoised + √(1−ᾱ_s)·noise          (s: next timestep; not on the last step)
 *   x_next = denoised                                  (last step)
 */
#ifndef LIBMERGE_SCHEDULER_H
#define LIBMERGE_SCHEDULER_H

#include <stdint.h>
#include <stddef.h>
#include "libmerge/err.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_LCM_TRAIN_STEPS 1000

typedef struct lm_lcm {
    /* configuration (lm_lcm_init sets SD's values) */
    int num_train_timesteps;       /* T = 1000 */
    double beta_start, beta_end;   /* 0.00085, 0.012 (scaled_linear) */
    int original_steps;            /* 50: the LCM distillation grid */
    float timestep_scaling;        /* 10 */
    float sigma_data;              /* 0.5 */
    /* schedule tables, float32 as diffusers computes them (index = timestep) */
    float betas[LM_LCM_TRAIN_STEPS];
    float alphas_cumprod[LM_LCM_TRAIN_STEPS];
    /* the inference schedule set by lm_lcm_set_timesteps */
    int n_steps;
    int timesteps[LM_LCM_TRAIN_STEPS];
} lm_lcm;

/* Initialises s with SD's configuration (the LCM-LoRA SD1.5/SDXL recipe:
 * LCMScheduler.from_config of SD's scheduler config) and computes betas and
 * ᾱ: torch.linspace(√β_start, √β_end, T, float32)², then the cumulative
 * product of 1 − β. No steps are set (n_steps = 0). */
void lm_lcm_init(lm_lcm *s);

/* Sets the inference schedule: `steps` timesteps (1..original_steps), from
 * the grid of original_steps (0 = s->original_steps) steps and strength in
 * (0, 1] (1 for text-to-image; image-to-image uses less). Matches
 * LCMScheduler.set_timesteps exactly. Errors: LM_EUSAGE when steps < 1,
 * original_steps > T, ⌊original_steps·strength⌋ < steps (diffusers refuses
 * the same), or steps > original_steps. */
int lm_lcm_set_timesteps(lm_lcm *s, int steps, int original_steps, double strength, lm_err *err);

/* Boundary-condition scalings at integer timestep t, float32:
 * c_skip = σ_data² / ((t·scaling)² + σ_data²), c_out = t·scaling / √((t·scaling)² + σ_data²). */
void lm_lcm_scalings(const lm_lcm *s, int t, float *c_skip, float *c_out);

/* One LCM step i (0..n_steps−1) of the schedule, n elements:
 *   x [n] the sample at timesteps[i], eps [n] the UNet's ε prediction,
 *   noise [n] fresh N(0, I) noise (used only when i < n_steps − 1; may be
 *   NULL on the last step) →
 *   denoised [n] (the step's clean estimate; may be NULL), x_next [n] (the
 *   sample for step i+1; on the last step = denoised). Outputs may alias x.
 * Each element is computed with the float32 operations of LCMScheduler.step
 * in the same order (no fused multiply-add), so equal inputs give equal bits.
 * Errors: LM_EUSAGE (i out of range, noise missing when needed). */
int lm_lcm_step(const lm_lcm *s, int i, const float *x, const float *eps, const float *noise,
                size_t n, float *denoised, float *x_next, lm_err *err);

/* Classifier-free guidance (Ho & Salimans 2022), as diffusers' pipelines
 * combine it: eps = eps_uncond + g·(eps_cond − eps_uncond), written into
 * eps_uncond [n]. Only used with g > 1 (g ≤ 1 runs the conditional branch alone). */
void lm_cfg_combine(float *eps_uncond, const float *eps_cond, float g, size_t n);

#ifdef __cplusplus
}
#endif
#endif
