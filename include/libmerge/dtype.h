/* libmerge/dtype.h — element types of stored tensors and conversions between them.
 *
 * Names follow the safetensors format description (huggingface/safetensors,
 * "dtype" field). All arithmetic in libmerge is fp32; conversions happen at the
 * edges (load, store) and round once, to nearest even.
 */
#ifndef LIBMERGE_DTYPE_H
#define LIBMERGE_DTYPE_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lm_dtype {
    LM_DT_INVALID = 0,
    LM_DT_BOOL, LM_DT_U8, LM_DT_I8, LM_DT_U16, LM_DT_I16, LM_DT_U32, LM_DT_I32,
    LM_DT_U64, LM_DT_I64, LM_DT_F16, LM_DT_BF16, LM_DT_F32, LM_DT_F64,
    LM_DT_F8_E4M3, LM_DT_F8_E5M2,
    LM_DT_COUNT
} lm_dtype;

/* Bytes per element (1 for BOOL and the F8 types); 0 for LM_DT_INVALID. */
size_t lm_dtype_size(lm_dtype t);

/* safetensors name ("F16", "BF16", …); "INVALID" for LM_DT_INVALID or out of range. */
const char *lm_dtype_name(lm_dtype t);

/* Parses a safetensors dtype name; LM_DT_INVALID if unknown. */
lm_dtype lm_dtype_from_name(const char *s);

/* Non-zero for F16, BF16, F32, F64, F8_E4M3, F8_E5M2. */
int lm_dtype_is_float(lm_dtype t);

/* Scalar conversions between fp32 and IEEE 754 binary16 (F16) or bfloat16
 * (BF16: the upper 16 bits of a binary32), round to nearest even, NaN and Inf
 * preserved (a NaN stays a quiet NaN). f32 → f16 of |x| ≥ 65520 gives ±Inf
 * (IEEE overflow); f16 subnormals are produced and read exactly. */
float lm_f16_to_f32(uint16_t h);
uint16_t lm_f32_to_f16(float f);
float lm_bf16_to_f32(uint16_t b);
uint16_t lm_f32_to_bf16(float f);

/* Converts n elements of type `from` at src (any alignment, little-endian)
 * into n fp32 values at dst. Floats widen exactly (F64 rounds to nearest
 * even); F8_E4M3 is torch.float8_e4m3fn (no Inf, max 448) and F8_E5M2
 * torch.float8_e5m2; BOOL gives 0/1; integer types convert by value (I64/U64
 * lose precision past 2^24). Returns 0, or LM_EUNSUPPORTED for LM_DT_INVALID. */
int lm_convert_to_f32(float *dst, const void *src, lm_dtype from, size_t n);

/* Converts n fp32 values into type `to` at dst (any alignment, little-endian),
 * rounding to nearest even. Returns the number of finite inputs that became
 * ±Inf or saturated (overflow count), or a negative LM_E* code for a
 * non-float `to`. */
int64_t lm_convert_from_f32(void *dst, lm_dtype to, const float *src, size_t n);

/* Converts between two float dtypes directly (through fp32), returns the
 * overflow count as lm_convert_from_f32 does, or a negative LM_E* code. */
int64_t lm_convert(void *dst, lm_dtype to, const void *src, lm_dtype from, size_t n);

#ifdef __cplusplus
}
#endif
#endif
