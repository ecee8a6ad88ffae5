/* Products with weights in GGUF's own block formats, computed where the weights lie (memory-mapped from the
 * .gguf file): Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, and the float types F32, F16, BF16.
 *
 * Why: a decode step reads every weight once, so bytes read per token set its speed. The embedded Gemma 3
 * 270M file reads ~247 MB per step in its own blocks against 536 MB as bfloat16, and a float copy of a
 * CodeGemma 7B Q4_K_M file would not fit most laptops at all.
 *
 * How: a weight row is a run of 32-weight units. Each unit decodes to 32 small integers (int16), a float
 * multiplier d and a float offset m, so that weight[i] = d * q[i] + m (K-quant sub-block scales are folded
 * into d and m, Q6_K's 16-weight scales into q). Each input row is prepared once per call as int16 fixed
 * point with one float scale sk per group of 32-256 values, plus each unit's float sum for the offsets. A
 * unit then contributes d * sk * dot(q, xk) + m * sum(x), the integer dot 32 products at a time (vpmaddwd),
 * the float ones as products in float32. Float weights (F32, F16, BF16) multiply the float input directly.
 *
 * Every output is computed the same way whatever the number of input rows (1 to 16): the rows share the
 * decoding of each unit, not any arithmetic, so speculative verification and batching give bit-identical
 * results to decoding one token at a time.
 */
#define _DEFAULT_SOURCE /* syscall(): AMX's permission request (amx.h) */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "numerics.h"

/* ggml's type ids, as GGUF files store them */
enum { G_F32 = 0, G_F16 = 1, G_Q4_0 = 2, G_Q4_1 = 3, G_Q5_0 = 6, G_Q5_1 = 7, G_Q8_0 = 8, G_Q4_K = 12, G_Q5_K = 13,
       G_Q6_K = 14, G_BF16 = 30 };
enum { UNIT = 32, SUPER = 256, MAX_M = 16 };
/* every type the kernels take, for the per-type copies of the products and the dequantization below */
#define FOR_EACH_TYPE(X) X(G_F32) X(G_F16) X(G_BF16) X(G_Q8_0) X(G_Q4_0) X(G_Q4_1) X(G_Q5_0) X(G_Q5_1) X(G_Q4_K) \
    X(G_Q5_K) X(G_Q6_K)

static inline float half_to_f32(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        float f = ldexpf((float)man, -24); /* zero or subnormal */
        return sign ? -f : f;
    }
    u = exp == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* bytes per block and weights per block of each type; 0 for a type this file does not know */
static int block_bytes(int type) {
    switch (type) {
    case G_F32: return 4; case G_F16: return 2; case G_BF16: return 2;
    case G_Q8_0: return 34; case G_Q4_0: return 18; case G_Q4_1: return 20; case G_Q5_0: return 22;
    case G_Q5_1: return 24; case G_Q4_K: return 144; case G_Q5_K: return 176; case G_Q6_K: return 210;
    default: return 0;
    }
}
static int block_weights(int type) {
    switch (type) {
    case G_F32: case G_F16: case G_BF16: return 1;
    case G_Q4_K: case G_Q5_K: case G_Q6_K: return SUPER;
    default: return UNIT;
    }
}
static inline int is_float(int type) { return type == G_F32 || type == G_F16 || type == G_BF16; }
static inline int has_offsets(int type) { return type == G_Q4_1 || type == G_Q5_1 || type == G_Q4_K || type == G_Q5_K; }

/* bytes of one row of K weights; -1 when K does not fit the type's blocks */
int64_t cg_row_bytes(int type, int64_t K) {
    int bw = block_weights(type), bb = block_bytes(type);
    if (!bb || K % bw || K % UNIT) return -1;
    return K / bw * bb;
}

/* K-quant 6-bit scale and min j of 8, packed in 12 bytes as ggml's get_scale_min_k4 reads them */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* d and m of unit j (of 8) of a K-quant superblock b: Q4_K and Q5_K from their 6-bit scales and mins, Q6_K
 * its one d (its 16-weight scales are folded into q) */
static inline __attribute__((always_inline)) void kquant_scale(int type, const uint8_t *b, int j, float *d,
                                                               float *m) {
    if (type == G_Q6_K) {
        *d = half_to_f32(rd16(b + 208));
        *m = 0.0f;
        return;
    }
    int sc, mn;
    scale_min_k4(j, b + 4, &sc, &mn);
    *d = half_to_f32(rd16(b)) * sc;
    *m = -half_to_f32(rd16(b + 2)) * mn;
}

/* Unit u (32 weights) of a quantized row as q[32], d and m: weight = d * q + m. */
static __attribute__((unused)) void unit_scalar(int type, const uint8_t *row, int64_t u, int16_t *q, float *d, float *m) {
    *m = 0.0f;
    switch (type) {
    case G_Q8_0: {
        const uint8_t *b = row + u * 34;
        *d = half_to_f32(rd16(b));
        for (int i = 0; i < 32; i++) q[i] = (int8_t)b[2 + i];
        return;
    }
    case G_Q4_0: case G_Q4_1: {
        int has_m = type == G_Q4_1;
        const uint8_t *b = row + u * (has_m ? 20 : 18), *qs = b + (has_m ? 4 : 2);
        *d = half_to_f32(rd16(b));
        if (has_m) *m = half_to_f32(rd16(b + 2));
        for (int i = 0; i < 16; i++) {
            q[i] = (int16_t)((qs[i] & 0xF) - (has_m ? 0 : 8));
            q[i + 16] = (int16_t)((qs[i] >> 4) - (has_m ? 0 : 8));
        }
        return;
    }
    case G_Q5_0: case G_Q5_1: {
        int has_m = type == G_Q5_1;
        const uint8_t *b = row + u * (has_m ? 24 : 22), *hb = b + (has_m ? 4 : 2), *qs = hb + 4;
        *d = half_to_f32(rd16(b));
        if (has_m) *m = half_to_f32(rd16(b + 2));
        uint32_t qh = rd32(hb);
        for (int i = 0; i < 16; i++) {
            int lo = (qs[i] & 0xF) | (((qh >> i) & 1) << 4), hi = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            q[i] = (int16_t)(lo - (has_m ? 0 : 16));
            q[i + 16] = (int16_t)(hi - (has_m ? 0 : 16));
        }
        return;
    }
    case G_Q4_K: case G_Q5_K: {
        int five = type == G_Q5_K;
        const uint8_t *b = row + (u / 8) * (five ? 176 : 144);
        int j = (int)(u % 8);
        kquant_scale(type, b, j, d, m);
        const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16) + 32 * (j / 2);
        for (int i = 0; i < 32; i++) {
            int v = j & 1 ? qs[i] >> 4 : qs[i] & 0xF;
            if (five) v |= ((qh[i] >> j) & 1) << 4;
            q[i] = (int16_t)v;
        }
        return;
    }
    case G_Q6_K: {
        const uint8_t *b = row + (u / 8) * 210;
        int j = (int)(u % 8), n = j / 4, t = j % 4;
        const uint8_t *ql = b + 64 * n + 32 * (t & 1), *qh = b + 128 + 32 * n;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * n + 2 * t;
        kquant_scale(type, b, j, d, m);
        for (int i = 0; i < 32; i++) {
            int v = (t >= 2 ? ql[i] >> 4 : ql[i] & 0xF) | (((qh[i] >> (2 * t)) & 3) << 4);
            q[i] = (int16_t)((v - 32) * sc[i / 16]);
        }
        return;
    }
    }
}

/* Unit u of a float row as 32 floats */
static __attribute__((unused)) void unit_float_scalar(int type, const uint8_t *row, int64_t u, float *w) {
    for (int i = 0; i < 32; i++) {
        int64_t k = u * 32 + i;
        w[i] = type == G_F32 ? ((const float *)row)[k]
             : type == G_F16 ? half_to_f32(((const uint16_t *)row)[k]) : bf16_to_f32(((const uint16_t *)row)[k]);
    }
}

/* An input row prepared for the products: float, unit sums, and int16 fixed point per group of 32-256
 * values (group_of): K-quant superblocks sum their 8 units in integers, and the other formats apply the
 * input's scale once per group rather than once per unit and input row. */
typedef struct {
    const float *xf; /* [K] */
    float *xs;       /* [K / 32] sum of xf over the unit */
    int16_t *xk;     /* [K] */
    float *sk;       /* [K / group_of(K)] xf ~= xk * sk */
} xprep;

/* values per input scale of xk: 256 (a K-quant superblock) where K allows, else the largest power of two
 * from 128 down to 32 that divides K (Gemma 3 270M: 640 = 5 * 128) */
static inline int64_t group_of(int64_t K) {
    int64_t g = SUPER;
    while (g > UNIT && K % g) g /= 2;
    return g;
}

/* v[0..n) as int16 fixed point q with the returned scale: v ~= q * scale (n a multiple of 32). Vectorized
 * where the CPU allows, with the scalar loop's results: the maximum is exact in any order, and the vector
 * conversion rounds to nearest even as lrintf does. */
static float fixed16(const float *v, int n, int16_t *q) {
    float mx = 0.0f;
#ifdef __AVX512F__
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(v + i)), m); /* a NaN skipped, as fmaxf skips it */
    mx = _mm512_reduce_max_ps(m);
    float inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
    for (int i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i *)(q + i),
                            _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_set1_ps(inv)))));
#else
    for (int i = 0; i < n; i++) mx = fmaxf(mx, fabsf(v[i]));
    float inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (int16_t)lrintf(v[i] * inv);
#endif
    return mx / 32767.0f;
}

static void prepare_row(xprep *x, int64_t K) {
    for (int64_t u = 0; u < K / UNIT; u++) {
        const float *v = x->xf + u * UNIT;
        float sum = 0.0f;
        for (int i = 0; i < UNIT; i++) sum += v[i];
        x->xs[u] = sum;
    }
    int64_t g = group_of(K);
    for (int64_t i = 0; i < K / g; i++) x->sk[i] = fixed16(x->xf + i * g, (int)g, x->xk + i * g);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GGUF_SIMD 1
/* 32 unsigned bytes -> 32 int16 lanes */
static inline __m512i widen_u8(__m256i v) { return _mm512_cvtepu8_epi16(v); }
static inline __m256i nibbles16(const uint8_t *qs) { /* 16 bytes of nibbles: low ones first, then high ones */
    __m128i v = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0xF);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(v, m)),
                                   _mm_and_si128(_mm_srli_epi16(v, 4), m), 1);
}

/* The scales of a K-quant superblock b: its d, the 8 units' integer scales (Q4_K, Q5_K: 6 bits; Q6_K: 1,
 * its 16-weight scales being folded into q) and their offsets m as floats. The 12 bytes of 6-bit scales
 * and mins unpack with 32-bit word operations, 4 at a time, as scale_min_k4 reads them one by one: the
 * scalar loop cost more than a superblock's products with one input row. */
static inline __attribute__((always_inline)) float superblock_scales(int type, const uint8_t *b, uint64_t *sc,
                                                                     __m256 *m) {
    if (type == G_Q6_K) {
        *sc = 0x0101010101010101ull;
        *m = _mm256_setzero_ps();
        return half_to_f32(rd16(b + 208));
    }
    uint32_t w0 = rd32(b + 4), w1 = rd32(b + 8), w2 = rd32(b + 12);
    *sc = (uint64_t)(w0 & 0x3F3F3F3Fu) | (uint64_t)((w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u)) << 32;
    uint64_t mn = (uint64_t)(w1 & 0x3F3F3F3Fu) | (uint64_t)(((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u)) << 32;
    __m256 mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn)));
    *m = _mm256_mul_ps(_mm256_set1_ps(-half_to_f32(rd16(b + 2))), mnf);
    return half_to_f32(rd16(b));
}

/* acc + the pairwise products of a and b summed into 16 int32 lanes */
static inline __attribute__((always_inline)) __m512i dot_add(__m512i acc, __m512i a, __m512i b) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

/* q of unit j (of 8) of a K-quant superblock b, as 32 int16 lanes (Q4_K, Q5_K: before their scales) */
static inline __attribute__((always_inline)) __m512i kquant_q(int type, const uint8_t *b, int j) {
    if (type == G_Q6_K) {
        int n = j / 4, t = j % 4;
        __m256i l = _mm256_loadu_si256((const __m256i *)(b + 64 * n + 32 * (t & 1)));
        l = _mm256_and_si256(t >= 2 ? _mm256_srli_epi16(l, 4) : l, _mm256_set1_epi8(0xF));
        __m256i h = _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * n)), 2 * t);
        h = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4);
        /* q - 32 fits a signed byte: subtract before widening, on half the width */
        __m512i q = _mm512_cvtepi8_epi16(_mm256_sub_epi8(_mm256_or_si256(l, h), _mm256_set1_epi8(32)));
        /* the unit's two scales from the superblock's 16, widened once (the loads fold into broadcasts) */
        __m512i s = _mm512_permutexvar_epi16(
            _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)(2 * j)), _mm512_set1_epi16((short)(2 * j + 1))),
            _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)))));
        return _mm512_mullo_epi16(q, s);
    }
    int five = type == G_Q5_K;
    __m256i v = _mm256_loadu_si256((const __m256i *)(b + (five ? 48 : 16) + 32 * (j / 2)));
    v = _mm256_and_si256(j & 1 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0xF));
    if (five) {
        __m256i h = _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(b + 16)), j);
        v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(1)), 4));
    }
    return widen_u8(v);
}

/* the SIMD twin of unit_scalar: q as 32 int16 lanes */
static inline __attribute__((always_inline)) __m512i unit_simd(int type, const uint8_t *row, int64_t u, float *d,
                                                               float *m) {
    *m = 0.0f;
    switch (type) {
    case G_Q8_0: {
        const uint8_t *b = row + u * 34;
        *d = half_to_f32(rd16(b));
        return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + 2)));
    }
    case G_Q4_0: {
        const uint8_t *b = row + u * 18;
        *d = half_to_f32(rd16(b));
        return _mm512_sub_epi16(widen_u8(nibbles16(b + 2)), _mm512_set1_epi16(8));
    }
    case G_Q4_1: {
        const uint8_t *b = row + u * 20;
        *d = half_to_f32(rd16(b));
        *m = half_to_f32(rd16(b + 2));
        return widen_u8(nibbles16(b + 4));
    }
    case G_Q5_0: case G_Q5_1: {
        int has_m = type == G_Q5_1;
        const uint8_t *b = row + u * (has_m ? 24 : 22), *hb = b + (has_m ? 4 : 2);
        *d = half_to_f32(rd16(b));
        if (has_m) *m = half_to_f32(rd16(b + 2));
        __m256i v = _mm256_or_si256(nibbles16(hb + 4), _mm256_maskz_mov_epi8(rd32(hb), _mm256_set1_epi8(0x10)));
        __m512i q = widen_u8(v);
        return has_m ? q : _mm512_sub_epi16(q, _mm512_set1_epi16(16));
    }
    case G_Q4_K: case G_Q5_K: case G_Q6_K: {
        const uint8_t *b = row + (u / 8) * block_bytes(type);
        kquant_scale(type, b, (int)(u % 8), d, m);
        return kquant_q(type, b, (int)(u % 8));
    }
    }
    return _mm512_setzero_si512();
}

static inline __attribute__((always_inline)) void unit_float_simd(int type, const uint8_t *row, int64_t u,
                                                                  __m512 *w0, __m512 *w1) {
    if (type == G_F32) {
        const float *p = (const float *)row + u * 32;
        *w0 = _mm512_loadu_ps(p);
        *w1 = _mm512_loadu_ps(p + 16);
    } else if (type == G_F16) {
        const uint16_t *p = (const uint16_t *)row + u * 32;
        *w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        *w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
    } else {
        const uint16_t *p = (const uint16_t *)row + u * 32;
        *w0 = vld_bf16(p);
        *w1 = vld_bf16(p + 16);
    }
}

/* out[m] = row . x[m] for M prepared rows; always inlined with M a constant (rows_for below), so that the
 * accumulators stay in registers. One accumulator per input row, the same for every M so that a row's
 * result does not depend on its companions: the chain of multiply-adds (4 cycles a unit) is shorter than
 * a unit's decoding, so two (even and odd units) measured no faster with one row and spilled with many. */
static inline __attribute__((always_inline)) void row_products(int type, const uint8_t *row, int64_t K,
                                                               const xprep *x, int M, float *out) {
    __m512 acc[MAX_M];
    float msum[MAX_M];
    for (int r = 0; r < M; r++) {
        acc[r] = _mm512_setzero_ps();
        msum[r] = 0.0f;
    }
    int64_t units = K / UNIT;
    if (is_float(type)) {
        for (int64_t u = 0; u < units; u++) {
            __m512 w0, w1;
            unit_float_simd(type, row, u, &w0, &w1);
            for (int r = 0; r < M; r++) {
                acc[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[r].xf + u * UNIT), acc[r]);
                acc[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[r].xf + u * UNIT + 16), acc[r]);
            }
        }
    } else {
        int64_t bytes = cg_row_bytes(type, K);
/* one line of the next row per unit: the rows of a thread follow each other in memory */
#define PREFETCH_NEXT_ROW(u) \
    if ((u) * 64 < bytes) _mm_prefetch((const char *)row + bytes + (u) * 64, _MM_HINT_T0)
        if (type == G_Q4_K || type == G_Q5_K || type == G_Q6_K) {
            /* A superblock's 8 units share d and their scales are small integers, so with the input in fixed
             * point per 256 values the superblock sums in int32 (q * scale <= 4096 in magnitude, times
             * 32767, 16 products a lane: < 2^31) and converts to float once. Its offsets multiply the 8
             * unit sums of each input row in one product. */
            __m256 moff[MAX_M];
            for (int r = 0; r < M; r++) moff[r] = _mm256_setzero_ps();
            for (int64_t sb = 0; sb < units / 8; sb++) {
                const uint8_t *b = row + sb * block_bytes(type);
                uint64_t sc;
                __m256 mv;
                float d = superblock_scales(type, b, &sc, &mv);
                __m512i isum[MAX_M];
                for (int r = 0; r < M; r++) isum[r] = _mm512_setzero_si512();
                for (int j = 0; j < 8; j++) {
                    int64_t u = sb * 8 + j;
                    PREFETCH_NEXT_ROW(u);
                    __m512i q = kquant_q(type, b, j);
                    if (type != G_Q6_K) q = _mm512_mullo_epi16(q, _mm512_set1_epi16((short)((sc >> (8 * j)) & 0xFF)));
                    for (int r = 0; r < M; r++)
                        isum[r] = dot_add(isum[r], q, _mm512_loadu_si512((const void *)(x[r].xk + u * UNIT)));
                }
                for (int r = 0; r < M; r++) {
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * x[r].sk[sb]), acc[r]);
                    if (has_offsets(type)) moff[r] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(x[r].xs + sb * 8), moff[r]);
                }
            }
            for (int r = 0; r < M; r++) acc[r] = _mm512_add_ps(acc[r], _mm512_zextps256_ps512(moff[r]));
        } else {
            /* per unit: its own d, shared by the input rows; per group of units: each row's input scale */
            const int64_t per_group = group_of(K) / UNIT;
            for (int64_t g0 = 0; g0 < units; g0 += per_group) {
                __m512 gacc[MAX_M];
                for (int r = 0; r < M; r++) gacc[r] = _mm512_setzero_ps();
                for (int64_t u = g0; u < g0 + per_group; u++) {
                    float d, m;
                    PREFETCH_NEXT_ROW(u);
                    __m512i q = unit_simd(type, row, u, &d, &m);
                    __m512 dv = _mm512_set1_ps(d);
                    for (int r = 0; r < M; r++) {
                        __m512i p = _mm512_madd_epi16(q, _mm512_loadu_si512((const void *)(x[r].xk + u * UNIT)));
                        gacc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), dv, gacc[r]);
                        if (has_offsets(type)) msum[r] += m * x[r].xs[u];
                    }
                }
                for (int r = 0; r < M; r++) acc[r] = _mm512_fmadd_ps(gacc[r], _mm512_set1_ps(x[r].sk[g0 / per_group]), acc[r]);
            }
        }
#undef PREFETCH_NEXT_ROW
    }
    for (int r = 0; r < M; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + msum[r];
}
#else
static inline __attribute__((always_inline)) void row_products(int type, const uint8_t *row, int64_t K,
                                                               const xprep *x, int M, float *out) {
    float acc[MAX_M], msum[MAX_M];
    for (int r = 0; r < M; r++) acc[r] = msum[r] = 0.0f;
    int16_t q[UNIT];
    float w[UNIT];
    for (int64_t u = 0; u < K / UNIT; u++) {
        if (is_float(type)) {
            unit_float_scalar(type, row, u, w);
            for (int r = 0; r < M; r++)
                for (int i = 0; i < UNIT; i++) acc[r] += w[i] * x[r].xf[u * UNIT + i];
            continue;
        }
        float d, m;
        unit_scalar(type, row, u, q, &d, &m);
        for (int r = 0; r < M; r++) {
            int32_t dot = 0;
            for (int i = 0; i < UNIT; i++) dot += (int32_t)q[i] * x[r].xk[u * UNIT + i];
            acc[r] += (float)dot * (d * x[r].sk[u * UNIT / group_of(K)]);
            if (has_offsets(type)) msum[r] += m * x[r].xs[u];
        }
    }
    for (int r = 0; r < M; r++) out[r] = acc[r] + msum[r];
}
#endif

#include "amx.h"

/* row_products compiled once per type (the type a constant, so each gets its own decoding loop, and the
 * offset sums only where the format has offsets) and per number of input rows up to ROW_GROUP (a constant
 * too, so that the accumulators stay in registers). More rows go in groups of about equal size, each
 * decoding the weight row again: 16 rows at once would spill their accumulators, costing more. */
enum { ROW_GROUP = 8 };
/* weight rows [n0, n1) of W (`bytes` apart) times the M input rows into y[r * ldy + n] */
typedef void (*rows_fn)(const uint8_t *W, int64_t bytes, int64_t n0, int64_t n1, int64_t K, const xprep *x, int M,
                        float *y, int64_t ldy);
#define ROWS_M(T, m) \
    case m: row_products(T, W + n * bytes, K, x + r0, m, out + r0); break;
#define ROWS_FOR(T)                                                                                     \
    static void rows_##T(const uint8_t *W, int64_t bytes, int64_t n0, int64_t n1, int64_t K, const xprep *x, \
                         int M, float *y, int64_t ldy) {                                                \
        int groups = (M + ROW_GROUP - 1) / ROW_GROUP, size = (M + groups - 1) / groups;               \
        for (int64_t n = n0; n < n1; n++) {                                                             \
            float out[MAX_M];                                                                           \
            for (int r0 = 0; r0 < M; r0 += size) {                                                      \
                switch (M - r0 < size ? M - r0 : size) {                                                \
                    ROWS_M(T, 1) ROWS_M(T, 2) ROWS_M(T, 3) ROWS_M(T, 4)                                 \
                    ROWS_M(T, 5) ROWS_M(T, 6) ROWS_M(T, 7) ROWS_M(T, 8)                                 \
                }                                                                                       \
            }                                                                                           \
            for (int r = 0; r < M; r++) y[r * ldy + n] = out[r];                                        \
        }                                                                                               \
    }
FOR_EACH_TYPE(ROWS_FOR)
#undef ROWS_M

static rows_fn rows_for(int type) {
#define ROWS_CASE(T) \
    case T: return rows_##T;
    switch (type) { FOR_EACH_TYPE(ROWS_CASE) }
#undef ROWS_CASE
    return NULL;
}

/* y[M, sum(Ns)] = x[M, K] . concat(W_0, ..., W_{n_w-1})^T with W_i [Ns[i], K] in GGUF type types[i] (rows
 * row-major as the file stores them). x is float32 (x_bf16 = 0) or bfloat16, rows x_stride elements apart;
 * y is float32 or bfloat16 (y_bf16). With glu the first half of the outputs is a gate and the second its
 * values: y [M, N / 2] = gelu_tanh(gate) * up, rounded to y's type after each step as PyTorch would.
 * Returns 0, -1 out of memory, -2 a type or K the kernels do not take, -3 more than 16 rows. */
int cg_gguf_linear(int n_w, const void *const *Ws, const int *types, const int64_t *Ns, const void *x, int x_bf16,
                   int64_t x_stride, void *y, int y_bf16, int M, int64_t K, int glu) {
    if (M < 1 || M > MAX_M) return -3;
    int64_t N = 0;
    for (int i = 0; i < n_w; i++) {
        if (cg_row_bytes(types[i], K) < 0) return -2;
        N += Ns[i];
    }
    int units = (int)(K / UNIT);
    /* floats: xf, xs, xk (halves), sk (at most one per unit) */
    size_t per_row = (size_t)K + (size_t)units + (size_t)K / 2 + (size_t)units;
    float *buf = (float *)malloc(sizeof(float) * per_row * M);
    float *yf = !y_bf16 && !glu ? (float *)y : (float *)malloc(sizeof(float) * (size_t)M * N);
    xprep xs[MAX_M];
    int failed = !buf || !yf;
#ifdef GGUF_AMX
    int amx = 0;
    for (int i = 0; i < n_w; i++) amx |= cg_amx_on && amx_type(types[i]);
    amx_input packed = {0};
    /* hi and lo bytes, then sk (at most one group per unit) and xs, 16 M floats per group or unit */
    void *packs = amx ? malloc((size_t)K * M * 2 + sizeof(float) * 32 * (size_t)M * units) : NULL;
    failed |= amx && !packs;
#endif
    if (failed) goto done;
    for (int r = 0; r < M; r++) {
        float *xf = buf + per_row * r;
        for (int64_t k = 0; k < K; k++)
            xf[k] = x_bf16 ? bf16_to_f32(((const uint16_t *)x)[r * x_stride + k]) : ((const float *)x)[r * x_stride + k];
        xs[r].xf = xf;
        xs[r].xs = xf + K;
        xs[r].xk = (int16_t *)(xs[r].xs + units);
        xs[r].sk = (float *)(xs[r].xk + K);
        prepare_row(&xs[r], K);
    }
#ifdef GGUF_AMX
    if (amx) {
        packed.hi = (int8_t *)packs;
        packed.lo = (uint8_t *)packs + K * M;
        packed.sk = (float *)((uint8_t *)packs + 2 * K * M);
        packed.xs = packed.sk + 16 * (size_t)M * units;
        amx_pack(xs, M, K, &packed);
    }
#endif
#pragma omp parallel
    {
        /* each thread an equal share of each matrix's rows, as a static schedule would give */
        int64_t offset = 0, t = omp_get_thread_num(), threads = omp_get_num_threads();
#ifdef GGUF_AMX
        if (amx) amx_configure(M);
#endif
        for (int i = 0; i < n_w; i++) {
            int64_t n0 = Ns[i] * t / threads, n1 = Ns[i] * (t + 1) / threads;
#ifdef GGUF_AMX
            if (amx && amx_type(types[i])) {
                amx_rows_for(types[i])((const uint8_t *)Ws[i], cg_row_bytes(types[i], K), n0, n1, K, xs, &packed, M,
                                       yf + offset, N);
                offset += Ns[i];
                continue;
            }
#endif
            rows_for(types[i])((const uint8_t *)Ws[i], cg_row_bytes(types[i], K), n0, n1, K, xs, M, yf + offset, N);
            offset += Ns[i];
        }
#ifdef GGUF_AMX
        if (amx) _tile_release();
#endif
    }
    if (glu) {
        geglu(yf, M, N, y, y_bf16);
    } else if (yf != y) {
        for (size_t j = 0; j < (size_t)M * N; j++) ((uint16_t *)y)[j] = f32_to_bf16(yf[j]);
    }
done:
#ifdef GGUF_AMX
    free(packs);
#endif
    if (yf != y) free(yf);
    free(buf);
    return failed ? -1 : 0;
}

/* Unit u of a row as 32 floats: the decoding the products use, vectorized where the CPU allows (a prefill
 * block dequantizes every weight of the model once, so this is on its critical path) */
static inline __attribute__((always_inline)) void unit_floats(int type, const uint8_t *row, int64_t u, void *out,
                                                              int bf16) {
#ifdef GGUF_SIMD
    __m512 w[2];
    if (is_float(type)) {
        unit_float_simd(type, row, u, &w[0], &w[1]);
    } else {
        float d, m;
        __m512i q = unit_simd(type, row, u, &d, &m);
        __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
        w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(q))), vd, vm);
        w[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(q, 1))), vd, vm);
#ifdef __AVX512BF16__
        if (bf16) { /* one rounding instruction for all 32: the same nearest-even result as below, as these
                     * weights are never float32 subnormals (which it would flush): d q + m is 0 or at least
                     * 2^-24, the smallest half-precision step */
            _mm512_storeu_si512(out, (__m512i)_mm512_cvtne2ps_pbh(w[1], w[0]));
            return;
        }
#endif
    }
    for (int h = 0; h < 2; h++) {
        if (!bf16) {
            _mm512_storeu_ps((float *)out + h * 16, w[h]);
            continue;
        }
        /* round to nearest even, as f32_to_bf16 does (weights are finite: no NaN case) */
        __m512i v = _mm512_castps_si512(w[h]);
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
        v = _mm512_srli_epi32(_mm512_add_epi32(v, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + h * 16), _mm512_cvtepi32_epi16(v));
    }
#else
    float o[UNIT];
    if (is_float(type)) {
        unit_float_scalar(type, row, u, o);
    } else {
        int16_t q[UNIT];
        float d, m;
        unit_scalar(type, row, u, q, &d, &m);
        for (int i = 0; i < UNIT; i++) o[i] = d * q[i] + m;
    }
    for (int i = 0; i < UNIT; i++) {
        if (bf16)
            ((uint16_t *)out)[i] = f32_to_bf16(o[i]);
        else
            ((float *)out)[i] = o[i];
    }
#endif
}

/* dequantize rows of one type: the type a constant in each copy, as in the products */
#define DEQUANT_FOR(T)                                                                                  \
    static void dequant_##T(const uint8_t *row, int64_t K, void *o, int bf16) {                        \
        for (int64_t u = 0; u < K / UNIT; u++)                                                          \
            unit_floats(T, row, u, (char *)o + u * UNIT * (bf16 ? 2 : 4), bf16);                        \
    }
FOR_EACH_TYPE(DEQUANT_FOR)

typedef void (*dequant_fn)(const uint8_t *row, int64_t K, void *o, int bf16);
static dequant_fn dequant_for(int type) {
#define DEQUANT_CASE(T) \
    case T: return dequant_##T;
    switch (type) { FOR_EACH_TYPE(DEQUANT_CASE) }
#undef DEQUANT_CASE
    return NULL;
}

/* Rows [first, first + n) of a matrix [*, K] in GGUF type `type`, dequantized into out [n, K], float32 or
 * (bf16) bfloat16, for prefill products and embedding lookups. Returns 0, or -2 for a type or K the kernels
 * do not take. */
int cg_gguf_dequantize(const void *W, int type, int64_t K, int64_t first, int64_t n, void *out, int bf16) {
    int64_t bytes = cg_row_bytes(type, K);
    if (bytes < 0) return -2;
    dequant_fn rows = dequant_for(type);
#pragma omp parallel for schedule(static) if (n * K > 65536)
    for (int64_t r = 0; r < n; r++)
        rows((const uint8_t *)W + (first + r) * bytes, K, (char *)out + r * K * (bf16 ? 2 : 4), bf16);
    return 0;
}
