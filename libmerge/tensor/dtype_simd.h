/* Internal: bulk fp16/bf16 <-> fp32 kernels. Each has a portable version
 * and, on x86-64, an F16C/AVX2 version chosen at run time; the two give
 * bit-identical results (tests/test_dtype.c checks all 65,536 fp16 values
 * and millions of fp32 ones). src/dst may have any alignment. The
 * f32 -> 16-bit kernels return the number of finite inputs that became ±Inf. */
#ifndef LIBMERGE_TENSOR_DTYPE_SIMD_H
#define LIBMERGE_TENSOR_DTYPE_SIMD_H

#include <stddef.h>
#include <stdint.h>

void lm_f16_to_f32_n_portable(float *dst, const void *src, size_t n);
void lm_bf16_to_f32_n_portable(float *dst, const void *src, size_t n);
int64_t lm_f32_to_f16_n_portable(void *dst, const float *src, size_t n);
int64_t lm_f32_to_bf16_n_portable(void *dst, const float *src, size_t n);

/* Non-zero when the CPU has F16C and AVX2 (and LIBMERGE_NO_SIMD is unset). */
int lm_dtype_simd_available(void);

/* The vector versions; only call them when lm_dtype_simd_available(). */
void lm_f16_to_f32_n_avx2(float *dst, const void *src, size_t n);
void lm_bf16_to_f32_n_avx2(float *dst, const void *src, size_t n);
int64_t lm_f32_to_f16_n_avx2(void *dst, const float *src, size_t n);
int64_t lm_f32_to_bf16_n_avx2(void *dst, const float *src, size_t n);

#endif
