/* Numerics shared by the native kernels (ops.c, gguf.c, gemm.c, attention.c): bfloat16 as PyTorch converts it, and GeGLU's GELU. */
#ifndef CODEGEMMA_NUMERICS_H
#define CODEGEMMA_NUMERICS_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

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

#ifdef __AVX512F__
/* 16 bfloat16 values at p widened to float32 (exact) */
static inline __m512 vld_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* Gemma 2's capped attention scores, 16 lanes: tanh(s / cap) * cap with libm's tanhf, as the scalar
 * path computes it (unchanged when cap <= 0: no cap) */
static inline __m512 softcap16(__m512 s, float cap) {
    if (cap <= 0.0f) return s;
    float t[16];
    _mm512_storeu_ps(t, s);
    for (int j = 0; j < 16; j++) t[j] = tanhf(t[j] / cap) * cap;
    return _mm512_loadu_ps(t);
}

/* e^x for x <= 0 (softmax's shifted scores), 16 lanes: x = n ln2 + r, Cephes' polynomial for e^r, then
 * 2^n; under -87 (and -inf, a masked key) it gives 0 */
static inline __m512 exp_neg16(__m512 x) {
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(p, n));
}
#endif

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
#ifdef __AVX512F__
    if (!bf16 && half % 16 == 0) {
        /* float32 rows 16 at a time: gelu_tanh(x) = x / (1 + e^(-2u)), from e = e^(-2|u|) <= 1 (exp_neg16):
         * x / (1 + e) for u >= 0, x e / (1 + e) below */
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < (int64_t)M * half; j += 16) {
            int64_t m = j / half, c = j % half;
            __m512 x = _mm512_loadu_ps(src + m * N + c), up = _mm512_loadu_ps(src + m * N + half + c);
            __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x), _mm512_mul_ps(x, x), x));
            __m512 e = exp_neg16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), _mm512_abs_ps(u)));
            __m512 num = _mm512_mask_mul_ps(x, _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ), x, e);
            __m512 v = _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_storeu_ps((float *)out + j, _mm512_mul_ps(v, up));
        }
        return;
    }
#endif
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
