/* Matrix-vector products for CPU decoding: y = x W^T over one or more weight matrices stored row-major as the
 * checkpoint has them (bfloat16, or int8 with one float scale per row), for a few input rows at a time.
 *
 * Why this exists: a decode step reads every weight once, so its speed is the memory bandwidth it reaches.
 * Without AVX-512 BF16, PyTorch's bf16 matrix-vector product reaches ~14 GB/s here and its int8 one ~12 GB/s,
 * while the two cores stream ~25 GB/s. Here each weight row is widened to float32 in registers and
 * multiplied into float32 accumulators (weight-only: activations are never quantized), rows split across
 * PyTorch's own OpenMP threads.
 *
 * Built on first use by codegemma/kernels/__init__.py with -march=native; the AVX-512 paths are used when
 * the compiler targets them, plain C otherwise.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

enum { T_F32 = 0, T_BF16 = 1, T_I8 = 2 };

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

static float dot_bf16(const uint16_t *w, const float *x, int K) {
    int k = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m512i w0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + k)));
        __m512i w1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + k + 16)));
        a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w0, 16)), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w1, 16)), _mm512_loadu_ps(x + k + 16), a1);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
    for (; k < K; k++) s += bf16_to_f32(w[k]) * x[k];
    return s;
}

static float dot_i8(const int8_t *w, const float *x, int K) {
    int k = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + k))));
        __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + k + 16))));
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + k + 16), a1);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
    for (; k < K; k++) s += (float)w[k] * x[k];
    return s;
}

static float dot_f32(const float *w, const float *x, int K) {
    int k = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
    for (; k < K; k++) s += w[k] * x[k];
    return s;
}

/* Widen one weight row to float32 (for several input rows: widen once, multiply M times). */
static void widen(const void *w, int wtype, int K, float *out) {
    if (wtype == T_BF16)
        for (int k = 0; k < K; k++) out[k] = bf16_to_f32(((const uint16_t *)w)[k]);
    else
        for (int k = 0; k < K; k++) out[k] = (float)((const int8_t *)w)[k];
}

/* y[M, sum(Ns)] = x[M, K] . concat(W_0, ..., W_{n_w-1})^T, each W_i [Ns[i], K] of type wtype, int8 rows
 * multiplied by scales[i][row]. x and y are float32 or bfloat16 (xtype, ytype); x rows are `x_stride`
 * elements apart. Returns 0, or -1 when out of memory. */
int cg_linear(int n_w, const void *const *Ws, const float *const *scales, const int64_t *Ns, int wtype,
              const void *x, int xtype, int64_t x_stride, void *y, int ytype, int M, int K) {
    int64_t N = 0;
    for (int i = 0; i < n_w; i++) N += Ns[i];
    float *xf = (float *)malloc(sizeof(float) * (size_t)M * K);
    float *yf = ytype == T_F32 ? (float *)y : (float *)malloc(sizeof(float) * (size_t)M * N);
    if (!xf || !yf) {
        free(xf);
        if (yf != y) free(yf);
        return -1;
    }
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++)
            xf[(size_t)m * K + k] = xtype == T_F32 ? ((const float *)x)[m * x_stride + k]
                                                   : bf16_to_f32(((const uint16_t *)x)[m * x_stride + k]);
    size_t wsize = wtype == T_BF16 ? 2 : wtype == T_I8 ? 1 : 4;
    int failed = 0;
#pragma omp parallel
    {
        float *row = M > 1 ? (float *)malloc(sizeof(float) * K) : NULL;
        if (M > 1 && !row) failed = 1;
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            int i = 0;
            int64_t r = n;
            while (r >= Ns[i]) r -= Ns[i++];
            const char *w = (const char *)Ws[i] + (size_t)r * K * wsize;
            float scale = wtype == T_I8 ? scales[i][r] : 1.0f;
            if (M == 1) {
                yf[n] = scale * (wtype == T_BF16 ? dot_bf16((const uint16_t *)w, xf, K)
                                 : wtype == T_I8 ? dot_i8((const int8_t *)w, xf, K)
                                                 : dot_f32((const float *)w, xf, K));
            } else if (row) {
                const float *wf = (const float *)w;
                if (wtype != T_F32) {
                    widen(w, wtype, K, row);
                    wf = row;
                }
                for (int m = 0; m < M; m++) yf[(size_t)m * N + n] = scale * dot_f32(wf, xf + (size_t)m * K, K);
            }
        }
        free(row);
    }
    if (yf != y) {
        for (size_t j = 0; j < (size_t)M * N; j++) ((uint16_t *)y)[j] = f32_to_bf16(yf[j]);
        free(yf);
    }
    free(xf);
    return failed ? -1 : 0;
}
