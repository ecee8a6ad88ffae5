/* Numerics shared by the native kernels (ops.c, gguf.c): bfloat16 as PyTorch converts it, and GeGLU's GELU. */
#ifndef CODEGEMMA_NUMERICS_H
#define CODEGEMMA_NUMERICS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* tanh(u) = 1 - 2 / (exp(2u) + 1): glibc's tanhf costs ~30 ns, a decode step calls this 37k times; the
 * error (~1e-7 absolute) vanishes in the rounding to bfloat16 */
static inline float gelu_tanh(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (2.0f - 2.0f / (expf(2.0f * u) + 1.0f));
}

/* Gemma's GeGLU of M rows of N float32 values (gate, then up): out [M, N / 2], float32 or (bf16) bfloat16,
 * = gelu_tanh(gate) * up, rounded to out's type after each step as PyTorch's would be. Across the threads:
 * at one token it is 2048 exponentials a layer, as long as the layer's smaller products. */
static inline void geglu(const float *src, int M, int64_t N, void *out, int bf16) {
    int64_t half = N / 2;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < (int64_t)M * half; j++) {
        int64_t m = j / half, n = j % half;
        float g = src[m * N + n], u = src[m * N + half + n];
        if (bf16) g = bf16_to_f32(f32_to_bf16(g)), u = bf16_to_f32(f32_to_bf16(u));
        float v = gelu_tanh(g);
        if (bf16) v = bf16_to_f32(f32_to_bf16(v));
        v *= u;
        if (bf16)
            ((uint16_t *)out)[j] = f32_to_bf16(v);
        else
            ((float *)out)[j] = v;
    }
}

#endif
