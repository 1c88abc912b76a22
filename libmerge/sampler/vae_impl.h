/* Internal to the VAE decoder: the Winograd F(2×2, 3×3) convolution
 * (vae_winograd.c). */
#ifndef LIBMERGE_SAMPLER_VAE_IMPL_H
#define LIBMERGE_SAMPLER_VAE_IMPL_H

#include "libmerge/ops.h"

/* Transformed filters U = G g Gᵀ of w [OC, C, 3, 3]: a new malloc'd
 * [16, OC, C] array (16 matrices OC×C), or NULL when out of memory. */
float *lm_wino_filter(const float *w, int OC, int C);

/* y [OC, H, W] = conv3x3(x [C, H, W]) with stride 1 and zero padding 1
 * (torch conv2d's result up to float rounding), U from lm_wino_filter,
 * b [OC] or NULL. Scratch from work (about 64 MiB at most).
 * Returns 0 or LM_ENOMEM. */
int lm_wino_conv3x3(const float *x, int C, int H, int W, const float *U, const float *b, int OC, float *y,
                    lm_work *work);

#endif
