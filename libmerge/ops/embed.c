/* Sinusoidal timestep embedding, float32 step by step as diffusers'
 * get_timestep_embedding computes it (embeddings.py). */
#include <math.h>

#include "libmerge/ops.h"

void lm_timestep_embedding(const float *t, int N, int dim, int flip_sin_to_cos, float shift,
                           float max_period, float *out)
{
    int half = dim / 2;
    float neg_log = (float)(-log((double)max_period));
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * dim;
        for (int k = 0; k < half; k++) {
            float e = neg_log * (float)k;
            e = e / ((float)half - shift);
            float f = expf(e);
            float a = t[n] * f;
            float s = sinf(a), c = cosf(a);
            o[k] = flip_sin_to_cos ? c : s;
            o[half + k] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2) o[dim - 1] = 0.0f;
    }
}
