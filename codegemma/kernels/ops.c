/* Native operations for CPU decoding, a few token rows at a time: matrix-vector products (y = x W^T over one
 * or more weight matrices stored row-major as the checkpoint has them: float32, bfloat16, or int8 with a
 * float scale per row), Gemma's residual-and-RMSNorm step, and attention over the KV cache.
 *
 * Why this exists: a decode step reads every weight once, so its speed is the memory bandwidth it reaches.
 * Without AVX-512 BF16, PyTorch's bf16 matrix-vector product reaches ~14 GB/s here and its int8 one ~12 GB/s,
 * while the two cores stream ~25 GB/s. Here bf16 weight rows are widened to float32 in registers and int8
 * rows multiplied by 16-bit fixed-point activations (lin4_int), into float32 accumulators, rows split
 * across PyTorch's own OpenMP threads.
 *
 * The other two exist because, at one token, a decode step is otherwise made of ~30 small PyTorch operations
 * per layer whose dispatch costs more than their arithmetic.
 *
 * Built on first use by codegemma/kernels/__init__.py with -march=native; the AVX-512 paths are used when
 * the compiler targets them, plain C otherwise.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "numerics.h"

enum { T_F32 = 0, T_BF16 = 1, T_I8 = 2 };

/* a value as PyTorch holds it in type t: float32 as is, bfloat16 rounded */
static inline float rnd(float v, int t) { return t == T_F32 ? v : bf16_to_f32(f32_to_bf16(v)); }
static inline float ld(const void *p, int t, size_t i) {
    return t == T_F32 ? ((const float *)p)[i] : bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline void st(void *p, int t, size_t i, float v) {
    if (t == T_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = f32_to_bf16(v);
}


/* Dot products of weight rows (float32, bfloat16 or int8) with a float32 vector, one row or four at a time.
 * Each row keeps two accumulators (elements k mod 32 < 16 and the rest) and reduces them the same way in
 * both, so a row's result does not depend on how many rows were computed with it; four rows at a time
 * share the loads of x and keep eight multiply-add chains in flight instead of two. */
#ifdef __AVX512F__
static inline __m512 vld_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 vld_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#endif
static inline float sld_f32(const float *p) { return *p; }
static inline float sld_bf16(const uint16_t *p) { return bf16_to_f32(*p); }
static inline float sld_i8(const int8_t *p) { return (float)*p; }

#ifdef __AVX512F__
#define DOT_BODY(R, SFX)                                                                               \
    __m512 a0[R], a1[R];                                                                               \
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();                                   \
    for (; k + 32 <= K; k += 32) {                                                                     \
        __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);                         \
        for (int r = 0; r < R; r++) {                                                                  \
            a0[r] = _mm512_fmadd_ps(vld_##SFX(w[r] + k), x0, a0[r]);                                   \
            a1[r] = _mm512_fmadd_ps(vld_##SFX(w[r] + k + 16), x1, a1[r]);                              \
        }                                                                                              \
    }                                                                                                  \
    for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
#else
#define DOT_BODY(R, SFX)
#endif

#define DEFINE_DOT(SFX, TYPE)                                                                          \
    static __attribute__((unused)) void dot4_##SFX(const TYPE *const *w, const float *x, int K, float *out) {                  \
        int k = 0;                                                                                     \
        for (int r = 0; r < 4; r++) out[r] = 0.0f;                                                     \
        DOT_BODY(4, SFX)                                                                               \
        for (int r = 0; r < 4; r++)                                                                    \
            for (int j = k; j < K; j++) out[r] += sld_##SFX(w[r] + j) * x[j];                          \
    }                                                                                                  \
    static __attribute__((unused)) float dot_##SFX(const TYPE *w1, const float *x, int K) {                                    \
        const TYPE *const w[1] = {w1};                                                                 \
        float out[1] = {0.0f};                                                                         \
        int k = 0;                                                                                     \
        DOT_BODY(1, SFX)                                                                               \
        for (int j = k; j < K; j++) out[0] += sld_##SFX(w[0] + j) * x[j];                              \
        return out[0];                                                                                 \
    }

DEFINE_DOT(f32, float)
DEFINE_DOT(bf16, uint16_t)
DEFINE_DOT(i8, int8_t)

/* The products' own inner loops, four weight rows at a time against one prepared input row.
 * bfloat16: a 512-bit load holds 32 weights as 16 pairs; shifting left by 16 gives the even ones as float32
 * and masking the odd ones, so x is prepared with each 32-block split into its even and odd elements
 * (2 operations per 16 weights instead of 3).
 * int8 with AVX-512 VNNI: x is prepared as 16-bit fixed point with one float scale per 64-block (error
 * below 2^-15 of the block's largest value, finer than the bfloat16 the activations are held in), and
 * vpdpwssd multiplies 32 weights by it per instruction instead of widening each weight to float32. */
/* The same place four rows on, i.e. in the next block of rows, which is where this loop goes next: with it
 * the two cores stream ~23 GB/s here, without it ~17 (the hardware prefetcher alone falls behind). Every
 * iteration reads one 64-byte line per row, so one prefetch per row per iteration. */
#define PREFETCH_NEXT_BLOCK(p, K) _mm_prefetch((const char *)((p) + 4 * (size_t)(K)), _MM_HINT_T0)

typedef struct {
    float *xf;   /* [K] the row in float32 */
    float *xp;   /* [K] bfloat16 weights: even/odd-split blocks of 32 */
    int16_t *xq; /* [K] int8 weights: fixed point */
    float *xs;   /* [K / 64 + 1] int8 weights: scale per block of 64 */
} xrow;

#if defined(__AVX512F__)
#define HAVE_LIN_BF16 1
static void lin4_bf16(const uint16_t *const *w, const xrow *x, int K, float *out) {
    __m512 a0[4], a1[4];
    const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
    for (int r = 0; r < 4; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 xe = _mm512_loadu_ps(x->xp + k), xo = _mm512_loadu_ps(x->xp + k + 16);
        for (int r = 0; r < 4; r++) PREFETCH_NEXT_BLOCK(w[r] + k, K);
        for (int r = 0; r < 4; r++) {
            __m512i v = _mm512_loadu_si512((const void *)(w[r] + k));
            a0[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xe, a0[r]);
            a1[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, odd)), xo, a1[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
        for (int j = k; j < K; j++) out[r] += bf16_to_f32(w[r][j]) * x->xf[j];
    }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define HAVE_LIN_I8 1
/* 32 weights of row w from k as int16: int8 rows widened here, or rows already widened (lin4_many) */
static inline __m512i load32_i16(const void *w, int widened, int k) {
    if (widened) return _mm512_loadu_si512((const void *)((const int16_t *)w + k));
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)((const int8_t *)w + k)));
}

/* always inlined, so each call site (widened constant) gets its own loop */
static inline __attribute__((always_inline)) void lin4_int(const void *const *w, int widened, const xrow *x,
                                                           int K, float *out) {
    __m512 a[4];
    for (int r = 0; r < 4; r++) a[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        __m512i x0 = _mm512_loadu_si512((const void *)(x->xq + k)), x1 = _mm512_loadu_si512((const void *)(x->xq + k + 32));
        __m512 sc = _mm512_set1_ps(x->xs[k / 64]);
        if (!widened)
            for (int r = 0; r < 4; r++) PREFETCH_NEXT_BLOCK((const int8_t *)w[r] + k, K);
        for (int r = 0; r < 4; r++) {
            __m512i acc = _mm512_dpwssd_epi32(_mm512_setzero_si512(), load32_i16(w[r], widened, k), x0);
            acc = _mm512_dpwssd_epi32(acc, load32_i16(w[r], widened, k + 32), x1);
            a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), sc, a[r]);
        }
    }
    for (int r = 0; r < 4; r++) {
        out[r] = _mm512_reduce_add_ps(a[r]);
        for (int j = k; j < K; j++)
            out[r] += (widened ? (float)((const int16_t *)w[r])[j] : (float)((const int8_t *)w[r])[j]) * x->xf[j];
    }
}

static void lin4_i8(const int8_t *const *w, const xrow *x, int K, float *out) { lin4_int((const void *const *)w, 0, x, K, out); }
#endif

#ifdef HAVE_LIN_BF16
/* dot4_f32 for two input rows at once (out[0..4) for x0, out[4..8) for x1): each weight vector loaded once
 * for both, the same per-row arithmetic as dot4_f32 */
static void dot4x2_f32(const float *const *w, const float *x0, const float *x1, int K, float *out) {
    __m512 a0[8], a1[8];
    for (int r = 0; r < 8; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 x00 = _mm512_loadu_ps(x0 + k), x01 = _mm512_loadu_ps(x0 + k + 16);
        __m512 x10 = _mm512_loadu_ps(x1 + k), x11 = _mm512_loadu_ps(x1 + k + 16);
        for (int r = 0; r < 4; r++) {
            __m512 w0 = _mm512_loadu_ps(w[r] + k), w1 = _mm512_loadu_ps(w[r] + k + 16);
            a0[r] = _mm512_fmadd_ps(w0, x00, a0[r]);
            a1[r] = _mm512_fmadd_ps(w1, x01, a1[r]);
            a0[4 + r] = _mm512_fmadd_ps(w0, x10, a0[4 + r]);
            a1[4 + r] = _mm512_fmadd_ps(w1, x11, a1[4 + r]);
        }
    }
    for (int r = 0; r < 8; r++) {
        const float *x = r < 4 ? x0 : x1;
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
        for (int j = k; j < K; j++) out[r] += w[r % 4][j] * x[j];
    }
}
#endif

/* x->xp for bfloat16 weights, x->xq and x->xs for int8 ones (x->xf is always there) */
static void prepare(xrow *x, int wtype, int K) {
    int k = 0;
    if (wtype == T_BF16) {
        for (; k + 32 <= K; k += 32)
            for (int i = 0; i < 16; i++) {
                x->xp[k + i] = x->xf[k + 2 * i];
                x->xp[k + 16 + i] = x->xf[k + 2 * i + 1];
            }
        for (; k < K; k++) x->xp[k] = x->xf[k];
    }
    if (wtype != T_I8) return;
    for (k = 0; k + 64 <= K; k += 64) {
        float mx = 0.0f;
        for (int i = 0; i < 64; i++) mx = fmaxf(mx, fabsf(x->xf[k + i]));
        float s = mx / 32767.0f, inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
        x->xs[k / 64] = s;
        for (int i = 0; i < 64; i++) x->xq[k + i] = (int16_t)lrintf(x->xf[k + i] * inv);
    }
}

static void lin4(const void *const *w, int wtype, const xrow *x, int K, float *out) {
#ifdef HAVE_LIN_BF16
    if (wtype == T_BF16) return lin4_bf16((const uint16_t *const *)w, x, K, out);
#endif
#ifdef HAVE_LIN_I8
    if (wtype == T_I8) return lin4_i8((const int8_t *const *)w, x, K, out);
#endif
    if (wtype == T_BF16)
        dot4_bf16((const uint16_t *const *)w, x->xf, K, out);
    else if (wtype == T_I8)
        dot4_i8((const int8_t *const *)w, x->xf, K, out);
    else
        dot4_f32((const float *const *)w, x->xf, K, out);
}

/* Four weight rows against M input rows into out[M][4]. With several inputs the rows are widened once into
 * buf (4 K floats) and each input multiplies those with the same arithmetic as lin4 (bfloat16: float32 in
 * lin4_bf16's even/odd order, then dot4_f32 against the split x; int8: int16), so results do not depend
 * on M, and a prefill block costs one widening per weight instead of one per token. */
static void lin4_many(const void *const *w, int wtype, const xrow *xs, int M, int K, void *buf, float *out) {
    (void)buf; /* unused where neither widened path is compiled in */
#ifdef HAVE_LIN_BF16
    if (M > 1 && buf && wtype == T_BF16) {
        float *wf = (float *)buf;
        const float *rows[4];
        const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
        for (int r = 0; r < 4; r++) {
            const uint16_t *src = ((const uint16_t *const *)w)[r];
            float *o = wf + (size_t)r * K;
            int k = 0;
            for (; k + 32 <= K; k += 32) { /* the even/odd split in registers, as lin4_bf16 does it */
                PREFETCH_NEXT_BLOCK(src + k, K);
                __m512i v = _mm512_loadu_si512((const void *)(src + k));
                _mm512_storeu_ps(o + k, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
                _mm512_storeu_ps(o + k + 16, _mm512_castsi512_ps(_mm512_and_si512(v, odd)));
            }
            for (; k < K; k++) o[k] = bf16_to_f32(src[k]);
            rows[r] = o;
        }
        int m = 0;
        for (; m + 2 <= M; m += 2) dot4x2_f32(rows, xs[m].xp, xs[m + 1].xp, K, out + 4 * m);
        for (; m < M; m++) dot4_f32(rows, xs[m].xp, K, out + 4 * m);
        return;
    }
#endif
#ifdef HAVE_LIN_I8
    if (M > 1 && buf && wtype == T_I8) {
        int16_t *wi = (int16_t *)buf;
        for (int r = 0; r < 4; r++) {
            const int8_t *src = ((const int8_t *const *)w)[r];
            int16_t *o = wi + (size_t)r * K;
            int k = 0;
            for (; k + 32 <= K; k += 32) {
                if (k % 64 == 0) PREFETCH_NEXT_BLOCK(src + k, K);
                _mm512_storeu_si512((void *)(o + k), _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(src + k))));
            }
            for (; k < K; k++) o[k] = src[k];
        }
        const void *rows[4] = {wi, wi + K, wi + 2 * (size_t)K, wi + 3 * (size_t)K};
        for (int m = 0; m < M; m++) lin4_int(rows, 1, &xs[m], K, out + 4 * m);
        return;
    }
#endif
    for (int m = 0; m < M; m++) lin4(w, wtype, &xs[m], K, out + 4 * m);
}

#if defined(__AVX512F__) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define HAVE_AMX_BF16 1
#include "tiles.h"
/* bfloat16 products on AMX tiles (Sapphire Rapids and later; turned on once per process by cg_amx in
 * gguf.c). For bfloat16 weights and activations: each step multiplies 16 weight rows by up to 16 input
 * rows over 32 values, products exact and sums in float32 in the tile, K in steps of 32 in order. Every
 * output is computed the same way whatever the number of rows, so one input row goes through the tiles
 * too (it is bound by reading weights either way). The sums round differently from lin4_bf16's, hence the
 * one choice per process. Tiles: 0 the inputs, 1 and 2 weights, 3 and 4 sums (two row blocks in flight). */
static void amx_bf16_configure(int M) {
    tile_config c = {.palette = 1};
    c.rows[0] = 16, c.colsb[0] = (uint16_t)(4 * M);
    for (int t = 1; t <= 2; t++) c.rows[t] = 16, c.colsb[t] = 64;
    for (int t = 3; t <= 4; t++) c.rows[t] = 16, c.colsb[t] = (uint16_t)(4 * M);
    _tile_loadconfig(&c);
}

/* the M input rows as the tiles take them: for step s, pair p and row m, x[m][32 s + 2 p + 0..1] */
static void amx_bf16_pack(const uint16_t *x, int64_t x_stride, int M, int K, uint16_t *out) {
    for (int s = 0; s < K / 32; s++)
        for (int p = 0; p < 16; p++)
            for (int m = 0; m < M; m++)
                for (int j = 0; j < 2; j++) out[((s * 16 + p) * M + m) * 2 + j] = x[m * x_stride + 32 * s + 2 * p + j];
}

/* rows [0, 32) (or [0, 16) when !two) of W times the inputs into c[n * 16 + m] */
static void amx_bf16_rows32(const uint16_t *W, int K, const uint16_t *xp, int M, int two, float *c) {
    int64_t bytes = 2 * (int64_t)K, steps = K / 32;
    _tile_zero(3);
    _tile_zero(4);
    for (int64_t s = 0; s < steps; s++) {
        prefetch_next_tile(W + (two ? 16 * (int64_t)K : 0), bytes, s, steps);
        _tile_loadd(0, xp + s * 32 * M, 4 * M);
        _tile_loadd(1, W + 32 * s, bytes);
        _tile_dpbf16ps(3, 1, 0);
        if (two) {
            _tile_loadd(2, W + 16 * (int64_t)K + 32 * s, bytes);
            _tile_dpbf16ps(4, 2, 0);
        }
    }
    _tile_stored(3, c, 64);
    if (two) _tile_stored(4, c + 256, 64);
}

/* rows [n0, n1) of W [*, K] times the inputs into y[m * ldy + n]; a last block of fewer than 16 rows goes
 * through the same tiles from a zero-padded copy */
static int amx_bf16_rows(const uint16_t *W, int64_t n0, int64_t n1, int K, const uint16_t *xp, int M, float *y,
                         int64_t ldy) {
    float c[512];
    int64_t n = n0;
    for (; n + 16 <= n1; n += 32) {
        int two = n + 32 <= n1;
        amx_bf16_rows32(W + n * K, K, xp, M, two, c);
        for (int r = 0; r < (two ? 32 : 16); r++)
            for (int m = 0; m < M; m++) y[m * ldy + n + r] = c[r * 16 + m];
        if (!two) n -= 16;
    }
    if (n < n1) {
        uint16_t *pad = (uint16_t *)calloc(16 * (size_t)K, 2);
        if (!pad) return -1;
        memcpy(pad, W + n * K, (size_t)(n1 - n) * K * 2);
        amx_bf16_rows32(pad, K, xp, M, 0, c);
        for (int r = 0; r < n1 - n; r++)
            for (int m = 0; m < M; m++) y[m * ldy + n + r] = c[r * 16 + m];
        free(pad);
    }
    return 0;
}

/* cg_linear's products for bfloat16 weights and inputs: y[M, N] (float32), each thread an equal share of
 * each matrix's rows. Returns 0 or -1 when out of memory. */
static int amx_bf16_linear(int n_w, const void *const *Ws, const int64_t *Ns, int64_t N, const uint16_t *x,
                           int64_t x_stride, int M, int K, float *y) {
    uint16_t *xp = (uint16_t *)malloc((size_t)K * M * 2);
    if (!xp) return -1;
    amx_bf16_pack(x, x_stride, M, K, xp);
    int failed = 0;
#pragma omp parallel
    {
        int64_t offset = 0, t = omp_get_thread_num(), threads = omp_get_num_threads();
        amx_bf16_configure(M);
        for (int i = 0; i < n_w; i++) {
            if (amx_bf16_rows((const uint16_t *)Ws[i], Ns[i] * t / threads, Ns[i] * (t + 1) / threads, K, xp, M,
                              y + offset, N)) {
#pragma omp atomic write
                failed = 1;
            }
            offset += Ns[i];
        }
        _tile_release();
    }
    free(xp);
    return failed ? -1 : 0;
}
#endif

/* y[M, sum(Ns)] = x[M, K] . concat(W_0, ..., W_{n_w-1})^T, each W_i [Ns[i], K] of type wtype, int8 rows
 * multiplied by scales[i][row]. x and y are float32 or bfloat16 (xtype, ytype); x rows are `x_stride`
 * elements apart. With glu, the first half of the outputs is a gate and the second its values, and
 * y [M, N/2] = gelu_tanh(gate) * up, rounded to ytype after each step as PyTorch's GeGLU would.
 * Each output is computed the same way whatever M is. Returns 0, or -1 when out of memory. */
int cg_linear(int n_w, const void *const *Ws, const float *const *scales, const int64_t *Ns, int wtype,
              const void *x, int xtype, int64_t x_stride, void *y, int ytype, int M, int K, int glu) {
    int64_t N = 0;
    for (int i = 0; i < n_w; i++) N += Ns[i];
    size_t per_row = (size_t)3 * K + K / 64 + 1; /* floats: xf, xp, xq (as halves), xs */
    float *buf = (float *)malloc(sizeof(float) * per_row * M);
    xrow *rows_in = (xrow *)malloc(sizeof(xrow) * M);
    float *yf = ytype == T_F32 && !glu ? (float *)y : (float *)malloc(sizeof(float) * (size_t)M * N);
    int failed = !buf || !rows_in || !yf;
    if (failed) goto done;
    for (int m = 0; m < M; m++) {
        xrow *xr = &rows_in[m];
        xr->xf = buf + per_row * m;
        xr->xp = xr->xf + K;
        xr->xq = (int16_t *)(xr->xp + K);
        xr->xs = xr->xp + 2 * K;
        for (int k = 0; k < K; k++)
            xr->xf[k] = xtype == T_F32 ? ((const float *)x)[m * x_stride + k]
                                       : bf16_to_f32(((const uint16_t *)x)[m * x_stride + k]);
        prepare(xr, wtype, K);
    }
    size_t wsize = wtype == T_BF16 ? 2 : wtype == T_I8 ? 1 : 4;
#ifdef HAVE_AMX_BF16
    if (cg_amx_on && wtype == T_BF16 && xtype == T_BF16 && K % 32 == 0) {
        failed = amx_bf16_linear(n_w, Ws, Ns, N, (const uint16_t *)x, x_stride, M, K, yf);
        goto products_done;
    }
#endif
#pragma omp parallel
    {
        void *wbuf = M > 1 ? malloc(sizeof(float) * 4 * (size_t)K) : NULL;
        float *dots = (float *)malloc(sizeof(float) * 4 * (size_t)M);
        if (!dots) {
            /* every thread whose allocation failed writes here at once; atomic so that is not a data race */
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t b = 0; b < (N + 3) / 4; b++) {
            if (!dots) continue;
            const void *w[4];
            float sc[4];
            int rows = N - 4 * b < 4 ? (int)(N - 4 * b) : 4;
            for (int j = 0; j < 4; j++) { /* a short last block repeats its last row */
                int64_t r = 4 * b + (j < rows ? j : rows - 1);
                int i = 0;
                while (r >= Ns[i]) r -= Ns[i++];
                w[j] = (const char *)Ws[i] + (size_t)r * K * wsize;
                sc[j] = wtype == T_I8 ? scales[i][r] : 1.0f;
            }
            lin4_many(w, wtype, rows_in, M, K, wbuf, dots);
            for (int m = 0; m < M; m++)
                for (int j = 0; j < rows; j++) yf[(size_t)m * N + 4 * b + j] = sc[j] * dots[4 * m + j];
        }
        free(wbuf);
        free(dots);
    }
#ifdef HAVE_AMX_BF16
products_done:
#endif
    if (failed) goto done;
    if (glu) {
        geglu(yf, M, N, y, ytype == T_BF16);
    } else if (yf != y) {
        for (size_t j = 0; j < (size_t)M * N; j++) ((uint16_t *)y)[j] = f32_to_bf16(yf[j]);
    }
done:
    if (yf != y) free(yf);
    free(buf);
    free(rows_in);
    return failed ? -1 : 0;
}

/* the sum of squares of v[0..D): 16 lanes, then their sum (one order for every row, whatever the number of
 * rows; the prefill passes' norms go through here too, so a row is the same in any pass) */
static inline float sum_squares(const float *v, int D) {
    int d = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    for (; d + 16 <= D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(v + d), _mm512_loadu_ps(v + d), acc);
    s = _mm512_reduce_add_ps(acc);
#endif
    for (; d < D; d++) s += v[d] * v[d];
    return s;
}

/* one row of cg_add_norm; row and hr: D floats of scratch. The row's inputs are read before anything is
 * written, so x_out may be x and y may be h. */
static void add_norm_row(int t, int D, float eps, const void *x, const void *h, const float *post_scale,
                         const float *out_scale, void *x_out, void *y, float *row, float *hr) {
    for (int d = 0; d < D; d++) row[d] = ld(x, t, d);
    if (h) {
        for (int d = 0; d < D; d++) hr[d] = ld(h, t, d);
        float r = post_scale ? 1.0f / sqrtf(sum_squares(hr, D) / D + eps) : 1.0f;
        int d = 0;
#ifdef __AVX512F__
        if (t == T_F32 && post_scale) /* the scalar loop's operations, in its order, 16 at a time */
            for (__m512 vr = _mm512_set1_ps(r); d + 16 <= D; d += 16)
                _mm512_storeu_ps(row + d, _mm512_add_ps(_mm512_loadu_ps(row + d),
                                                        _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(hr + d), vr),
                                                                      _mm512_loadu_ps(post_scale + d))));
#endif
        for (; d < D; d++) row[d] = rnd(row[d] + (post_scale ? rnd(hr[d] * r * post_scale[d], t) : hr[d]), t);
    }
    if (x_out)
        for (int d = 0; d < D; d++) st(x_out, t, d, row[d]);
    if (out_scale) {
        float r = 1.0f / sqrtf(sum_squares(row, D) / D + eps);
        int d = 0;
#ifdef __AVX512F__
        if (t == T_F32)
            for (__m512 vr = _mm512_set1_ps(r); d + 16 <= D; d += 16)
                _mm512_storeu_ps((float *)y + d, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(row + d), vr),
                                                               _mm512_loadu_ps(out_scale + d)));
#endif
        for (; d < D; d++) st(y, t, d, row[d] * r * out_scale[d]);
    }
}

/* Gemma's residual step over M rows of width D in type t: x_out = x + post(h), where post is an RMSNorm
 * with scale post_scale (identity when NULL; h NULL: x_out = x), then y = RMSNorm(x_out) with scale
 * out_scale (skipped when NULL). Norms compute in float32 and round once, like the PyTorch path. Each row
 * on its own (both threads take rows of a prefill pass). Returns -1 when out of memory. */
int cg_add_norm(int t, int M, int D, float eps, const void *x, const void *h, const float *post_scale,
                const float *out_scale, void *x_out, void *y) {
    size_t bytes = t == T_F32 ? 4 : 2;
    int failed = 0;
#pragma omp parallel if (M >= 8)
    {
        float *row = (float *)malloc(sizeof(float) * 2 * (size_t)D);
        if (!row) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            if (!row) continue;
            size_t o = (size_t)m * D * bytes;
            add_norm_row(t, D, eps, (const char *)x + o, h ? (const char *)h + o : NULL, post_scale, out_scale,
                         x_out ? (char *)x_out + o : NULL, y ? (char *)y + o : NULL, row, row + D);
        }
        free(row);
    }
    return failed ? -1 : 0;
}

/* acc[0..D) += a * v[0..D) with v in type t */
static void axpy(float a, const void *v, int t, float *acc, int D) {
    int d = 0;
#ifdef __AVX512F__
    __m512 va = _mm512_set1_ps(a);
    if (t == T_BF16)
        for (; d + 16 <= D; d += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)v + d)));
            _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(va, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                                                      _mm512_loadu_ps(acc + d)));
        }
    else
        for (; d + 16 <= D; d += 16)
            _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(va, _mm512_loadu_ps((const float *)v + d), _mm512_loadu_ps(acc + d)));
#endif
    for (; d < D; d++) acc[d] += a * ld(v, t, d);
}

#ifdef __AVX512F__
/* The 16 dot products q . rows[j] (D floats each, D a multiple of 16) as the lanes of one vector: per key 16
 * lanes of partial sums over d, then a transposing tree in which every lane adds only its own key's partial
 * sums, in the same order for every key */
static inline __attribute__((always_inline)) __m512 dots16_f32(const float *q, const float *const *rows, const int D) {
    __m512 v[16];
    for (int j = 0; j < 16; j++) v[j] = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 16) {
        __m512 qv = _mm512_loadu_ps(q + d);
        for (int j = 0; j < 16; j++) v[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(rows[j] + d), v[j]);
    }
    __m512 w[8];
    for (int n = 0; n < 8; n++) /* keys 2n, 2n+1 interleaved: lanes (0,2) and (1,3) of each 128-bit lane added */
        w[n] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * n], v[2 * n + 1]), _mm512_unpackhi_ps(v[2 * n], v[2 * n + 1]));
    for (int n = 0; n < 4; n++) /* 4 keys a 128-bit lane */
        v[n] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(w[2 * n]), _mm512_castps_pd(w[2 * n + 1]))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(w[2 * n]), _mm512_castps_pd(w[2 * n + 1]))));
    for (int n = 0; n < 2; n++) /* across the 128-bit lanes: pairs of them */
        w[n] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * n], v[2 * n + 1], 0x88), _mm512_shuffle_f32x4(v[2 * n], v[2 * n + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD)); /* key j in lane j */
}

/* Attention of G query heads q[g] (D floats each, D a multiple of 16 up to 256) of one row at position pos
 * over keys and values K, V (float32 rows D apart) from lo to pos -> out[g]. p: G * (pos + 17) floats of
 * scratch. A head's arithmetic does not depend on G, on the other heads or on other rows: keys go in groups
 * of 16 aligned to absolute positions, so a key always sits in the same lane. Always inlined with D a
 * constant, so that the loops over D unroll into registers. */
static inline __attribute__((always_inline)) void attend_f32(const float *const *q, int G, const int D, int64_t lo,
                                                             int64_t pos, float q_scale, float softcap,
                                                             const float *K, const float *V, float *const *out,
                                                             float *p) {
    int64_t c0 = lo / 16, c1 = pos / 16 + 1, n = (c1 - c0) * 16;
    float inv[16];
    __m512 mx[16];
    for (int g = 0; g < G; g++) mx[g] = _mm512_set1_ps(-INFINITY);
    /* keys 16 at a time, every head against them while they are in L1 */
    for (int64_t c = c0; c < c1; c++) {
        int64_t first = c * 16;
        int j0 = lo > first ? (int)(lo - first) : 0, j1 = pos + 1 < first + 16 ? (int)(pos + 1 - first) : 16;
        const float *rows[16]; /* keys outside [lo, pos] read key pos (written, in the cache) and are masked */
        for (int j = 0; j < 16; j++) rows[j] = K + (size_t)(j >= j0 && j < j1 ? first + j : pos) * D;
        __mmask16 valid = (__mmask16)(((1u << j1) - 1) & ~((1u << j0) - 1));
        for (int g = 0; g < G; g++) {
            __m512 s = _mm512_mul_ps(dots16_f32(q[g], rows, D), _mm512_set1_ps(q_scale));
            s = softcap16(s, softcap);
            s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, s);
            mx[g] = _mm512_max_ps(mx[g], s);
            _mm512_storeu_ps(p + (size_t)g * n + (c - c0) * 16, s);
        }
    }
    for (int g = 0; g < G; g++) {
        float *pg = p + (size_t)g * n;
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx[g])), sum = _mm512_setzero_ps();
        for (int64_t i = 0; i < n; i += 16) {
            __m512 e = exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(pg + i), m));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(pg + i, e);
        }
        inv[g] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    /* out[g] = sum_i p_i V[i] / sum, keys from the first of lo's group (those before lo weigh 0), 32 a block
     * so that the G heads read them from L1 */
    for (int g = 0; g < G; g++) memset(out[g], 0, sizeof(float) * D);
    for (int64_t b = c0 * 16; b <= pos; b += 32) {
        int64_t e = b + 32 <= pos + 1 ? b + 32 : pos + 1;
        for (int g = 0; g < G; g++) {
            const float *pg = p + (size_t)g * n - c0 * 16;
            __m512 acc[16];
            for (int c = 0; c < D / 16; c++) acc[c] = _mm512_loadu_ps(out[g] + 16 * c);
            for (int64_t i = b; i < e; i++) {
                __m512 w = _mm512_set1_ps(pg[i]);
                const float *vr = V + (size_t)i * D;
                for (int c = 0; c < D / 16; c++) acc[c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + 16 * c), acc[c]);
            }
            for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(out[g] + 16 * c, acc[c]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < D / 16; c++)
            _mm512_storeu_ps(out[g] + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(out[g] + 16 * c), _mm512_set1_ps(inv[g])));
}
#define ATTEND_F32_FOR(DIM)                                                                                      \
    static void attend_f32_##DIM(const float *const *q, int G, int64_t lo, int64_t pos, float q_scale,          \
                                 float softcap, const float *K, const float *V, float *const *out, float *p) { \
        attend_f32(q, G, DIM, lo, pos, q_scale, softcap, K, V, out, p);                                        \
    }
ATTEND_F32_FOR(256)
ATTEND_F32_FOR(128)
#undef ATTEND_F32_FOR
static void attend_f32_any(const float *const *q, int G, int D, int64_t lo, int64_t pos, float q_scale, float softcap,
                           const float *K, const float *V, float *const *out, float *p) {
    attend_f32(q, G, D, lo, pos, q_scale, softcap, K, V, out, p);
}
#endif

#ifdef __AVX512F__
/* cg_attention's float32 path over the prepared queries q [S, H, D]: tasks of G query heads sharing a KV head,
 * as many heads as leave each thread two tasks or more; 1 when out of memory */
static int attention_tasks_f32(int S, int H, int KV, int D, int64_t start, int64_t max_len, int window,
                               float q_scale, float softcap, const float *q, const float *kcache,
                               const float *vcache, float *out) {
    int failed = 0, rep = H / KV, G = rep;
    while (G % 2 == 0 && (int64_t)S * (H / G) < 2 * omp_get_max_threads()) G /= 2;
    int tasks = S * (H / G);
#pragma omp parallel
    {
        float *p = (float *)malloc(sizeof(float) * (size_t)G * (size_t)(start + S + 16));
        if (!p) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int task = 0; task < tasks; task++) {
            if (!p) continue;
            int s = task / (H / G), h0 = task % (H / G) * G, kv = h0 / rep;
            int64_t pos = start + s, lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
            const float *qs[16];
            float *outs[16];
            for (int g = 0; g < G; g++) {
                qs[g] = q + ((size_t)s * H + h0 + g) * D;
                outs[g] = out + ((size_t)s * H + h0 + g) * D;
            }
            const float *K = kcache + (size_t)kv * max_len * D, *V = vcache + (size_t)kv * max_len * D;
            if (D == 256)
                attend_f32_256(qs, G, lo, pos, q_scale, softcap, K, V, outs, p);
            else if (D == 128)
                attend_f32_128(qs, G, lo, pos, q_scale, softcap, K, V, outs, p);
            else
                attend_f32_any(qs, G, D, lo, pos, q_scale, softcap, K, V, outs, p);
        }
        free(p);
    }
    return failed;
}
#endif

/* Attention for S query rows at positions start.. of batch 1, everything in type t:
 * qkv [S, (H + 2 KV) * D] as the fused projection gives it. q and k heads get an RMSNorm each when
 * qk_scale [(H + KV), D] is given (Gemma 3), then RoPE with the rows of cos / signed sin [S, D] for these
 * positions (split halves: x * cos + roll(x, D/2) * sin). k and v are written into the caches
 * [KV, max_len, D] and out [S, H * D] = softmax(cap(q k^T * q_scale)) v over the positions each query
 * sees: itself and before, back to pos - window + 1 when window > 0. softcap 0 = none.
 * Rounding follows the PyTorch path (bf16 scores and probabilities). float32 caches with AVX-512 take
 * attend_f32: a task per row and group of query heads sharing a KV head, keys 16 at a time (for a verified
 * row at position 560 of Gemma 3 270M this took attention from 2.5x to under 1x of the row's products).
 * tiles: take AMX tiles where there are any (cg_tile_attention; a prefill pass, whose rows round their
 * queries, keys, values and probabilities to bfloat16 there). Returns -1 when out of memory. */
int cg_tile_attention(int S, int H, int KV, int D, int64_t start, int64_t max_len, int window, float q_scale,
                      float softcap, const float *q, const void *kcache, const void *vcache, void *out,
                      int bf16); /* attention.c */

#ifdef __AVX512F__
/* One float32 head x [D] (D a multiple of 32, at most 256) -> dst: an RMSNorm scaled by qk_scale [D] when
 * given, then RoPE with this position's cos and signed sin (x * cos + roll(x, D/2) * sin) */
static inline void prepare_f32(int D, const float *x, const float *qk_scale, float eps, const float *cos,
                               const float *sin, float *dst) {
    __m512 v[16];
    int n = D / 16;
    for (int c = 0; c < n; c++) v[c] = _mm512_loadu_ps(x + 16 * c);
    if (qk_scale) { /* the residual norms' sum of squares */
        __m512 r = _mm512_set1_ps(1.0f / sqrtf(sum_squares(x, D) / D + eps));
        for (int c = 0; c < n; c++) v[c] = _mm512_mul_ps(_mm512_mul_ps(v[c], r), _mm512_loadu_ps(qk_scale + 16 * c));
    }
    for (int c = 0; c < n; c++)
        _mm512_storeu_ps(dst + 16 * c, _mm512_add_ps(_mm512_mul_ps(v[c], _mm512_loadu_ps(cos + 16 * c)),
                                                     _mm512_mul_ps(v[(c + n / 2) % n], _mm512_loadu_ps(sin + 16 * c))));
}
#endif

int cg_attention(int t, int S, int H, int KV, int D, int64_t start, int64_t max_len, int window, float q_scale,
                 float softcap, float eps, const void *qkv, const float *qk_scale, const void *cos,
                 const void *sin, void *kcache, void *vcache, void *out, int tiles) {
    int heads = H + 2 * KV;
    float *q = (float *)malloc(sizeof(float) * (size_t)S * H * D);
    float *vs = (float *)malloc(sizeof(float) * (size_t)D * omp_get_max_threads()); /* a head's row, per thread */
    if (!q || !vs) {
        free(q);
        free(vs);
        return -1;
    }
    size_t csize = t == T_F32 ? 4 : 2;
    /* rows apart on the threads when there are many (a prefill pass): each row's arithmetic is the same */
#pragma omp parallel for schedule(static) if (S > 16)
    for (int s = 0; s < S; s++) {
        int64_t pos = start + s;
        float *v = vs + (size_t)D * omp_get_thread_num();
        for (int j = 0; j < H + 2 * KV; j++) {
            size_t o = ((size_t)s * heads + j) * D;
            if (j >= H + KV) { /* v: into the cache as it is */
                memcpy((char *)vcache + (((size_t)(j - H - KV) * max_len + pos) * D) * csize,
                       (const char *)qkv + o * csize, D * csize);
                continue;
            }
#ifdef __AVX512F__
            if (t == T_F32 && D % 32 == 0 && D <= 256) { /* the steps below, 16 values a vector */
                prepare_f32(D, (const float *)qkv + o, qk_scale ? qk_scale + (size_t)j * D : NULL, eps,
                            (const float *)cos + (size_t)s * D, (const float *)sin + (size_t)s * D,
                            j < H ? q + ((size_t)s * H + j) * D : (float *)kcache + ((size_t)(j - H) * max_len + pos) * D);
                continue;
            }
#endif
            for (int d = 0; d < D; d++) v[d] = ld(qkv, t, o + d);
            if (qk_scale) {
                float ss = 0.0f;
                for (int d = 0; d < D; d++) ss += v[d] * v[d];
                float r = 1.0f / sqrtf(ss / D + eps);
                for (int d = 0; d < D; d++) v[d] = rnd(v[d] * r * qk_scale[(size_t)j * D + d], t);
            }
            float *dst = j < H ? q + ((size_t)s * H + j) * D : NULL;
            for (int d = 0; d < D; d++) {
                float c = ld(cos, t, (size_t)s * D + d), sn = ld(sin, t, (size_t)s * D + d);
                float r = rnd(rnd(v[d] * c, t) + rnd(v[(d + D / 2) % D] * sn, t), t);
                if (dst)
                    dst[d] = r;
                else
                    st(kcache, t, ((size_t)(j - H) * max_len + pos) * D + d, r);
            }
        }
    }
    int failed = 0;
    int rep = H / KV;
    if (tiles && (t == T_F32 || t == T_BF16)) { /* a prefill pass: AMX tiles where there are any (attention.c) */
        int rc = cg_tile_attention(S, H, KV, D, start, max_len, window, q_scale, softcap, q, kcache, vcache, out,
                                   t == T_BF16);
        if (rc != -2) {
            free(q);
            free(vs);
            return rc;
        }
    }
#ifdef __AVX512F__
    if (t == T_F32 && D % 16 == 0 && D <= 256 && rep <= 16) {
        failed = attention_tasks_f32(S, H, KV, D, start, max_len, window, q_scale, softcap, q, (const float *)kcache,
                                     (const float *)vcache, (float *)out);
        goto done;
    }
#endif
#pragma omp parallel
    {
        float *p = (float *)malloc(sizeof(float) * (size_t)(start + S));
        float *acc = (float *)malloc(sizeof(float) * D);
        if (!p || !acc) {
            /* as in cg_linear: several threads may fail together */
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int task = 0; task < S * H; task++) {
            if (!p || !acc) continue;
            int s = task / H, h = task % H, kv = h / rep;
            int64_t pos = start + s, lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
            const char *K = (const char *)kcache + (size_t)kv * max_len * D * csize;
            const char *V = (const char *)vcache + (size_t)kv * max_len * D * csize;
            const float *qh = q + ((size_t)s * H + h) * D;
            float mx = -INFINITY;
            for (int64_t i = lo; i <= pos; i++) {
                const void *kr = K + (size_t)i * D * csize;
                float sc = rnd(t == T_F32 ? dot_f32((const float *)kr, qh, D) : dot_bf16((const uint16_t *)kr, qh, D), t) * q_scale;
                if (softcap > 0.0f) sc = tanhf(sc / softcap) * softcap;
                p[i - lo] = sc;
                if (sc > mx) mx = sc;
            }
            float sum = 0.0f;
            for (int64_t i = 0; i <= pos - lo; i++) {
                p[i] = expf(p[i] - mx);
                sum += p[i];
            }
            for (int d = 0; d < D; d++) acc[d] = 0.0f;
            for (int64_t i = 0; i <= pos - lo; i++) axpy(rnd(p[i] / sum, t), V + (size_t)(lo + i) * D * csize, t, acc, D);
            for (int d = 0; d < D; d++) st(out, t, ((size_t)s * H + h) * D + d, acc[d]);
        }
        free(p);
        free(acc);
    }
#ifdef __AVX512F__
done:
#endif
    free(q);
    free(vs);
    return failed ? -1 : 0;
}

/* a . x over K values, a in bfloat16, in 16 float32 lanes reduced in a fixed order: the same result for a
 * row whatever else is computed */
static float dot16_bf16(const uint16_t *a, const float *x, int K) {
    int k = 0;
    float s = 0.0f;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) acc = _mm512_fmadd_ps(vld_bf16(a + k), _mm512_loadu_ps(x + k), acc);
    s = _mm512_reduce_add_ps(acc);
#else
    float acc[16] = {0};
    for (; k + 16 <= K; k += 16)
        for (int l = 0; l < 16; l++) acc[l] += bf16_to_f32(a[k + l]) * x[k + l];
    for (int l = 0; l < 16; l++) s += acc[l];
#endif
    for (; k < K; k++) s += bf16_to_f32(a[k]) * x[k];
    return s;
}

/* A LoRA update added to a product's float32 result y [M, N], then optionally Gemma's GeGLU. The N outputs
 * are n_seg projections side by side (Ns[i] each), projection i with its own rank-R pair: A [n_seg * R, K]
 * holds the a matrices stacked and BT [R, N] the b matrices transposed side by side (both bfloat16). Per
 * row m: t = scale * A x_m, then y[m, n] += sum_r BT[r, n] t[seg(n) * R + r], summed over r in order, 16
 * outputs per vector. With glu, out [M, N / 2] (type otype) = gelu_tanh(first half) * second half; else y
 * is the result. Every row runs the same code whatever M is, so its result does not depend on the others.
 * Returns -1 when out of memory. */
int cg_lora(int M, int K, int64_t N, int n_seg, const int64_t *Ns, int R, const uint16_t *A, const uint16_t *BT,
            float scale, const void *x, int xtype, int64_t x_stride, float *y, int glu, void *out, int otype) {
    int SR = n_seg * R;
    float *t = (float *)malloc(sizeof(float) * (size_t)M * SR);
    float *xf = (float *)malloc(sizeof(float) * (size_t)M * K);
    int *seg = (int *)malloc(sizeof(int) * (size_t)N);
    if (!t || !xf || !seg) {
        free(t); free(xf); free(seg);
        return -1;
    }
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) xf[(size_t)m * K + k] = ld(x, xtype, (size_t)m * x_stride + k);
    for (int64_t n = 0, i = 0, end = Ns[0]; n < N; n++) {
        while (n >= end) end += Ns[++i];
        seg[n] = (int)i * R;
    }
    for (int j = 0; j < M * SR; j++)
        t[j] = scale * dot16_bf16(A + (size_t)(j % SR) * K, xf + (size_t)(j / SR) * K, K);
    int64_t n16 = 0;
#ifdef __AVX512F__
    /* blocks of 16 outputs within one projection: one multiply-add per rank, no horizontal sums */
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < N / 16; b++) {
        int64_t n0 = 16 * b;
        if (seg[n0] != seg[n0 + 15]) continue; /* straddles two projections: done one by one below */
        for (int m = 0; m < M; m++) {
            const float *tm = t + (size_t)m * SR + seg[n0];
            __m512 acc = _mm512_loadu_ps(y + (size_t)m * N + n0);
            for (int r = 0; r < R; r++) acc = _mm512_fmadd_ps(_mm512_set1_ps(tm[r]), vld_bf16(BT + (size_t)r * N + n0), acc);
            _mm512_storeu_ps(y + (size_t)m * N + n0, acc);
        }
    }
    n16 = N / 16 * 16;
#endif
    for (int64_t n = 0; n < N; n++) {
        if (n < n16 && seg[n / 16 * 16] == seg[n / 16 * 16 + 15]) continue;
        for (int m = 0; m < M; m++) {
            const float *tm = t + (size_t)m * SR + seg[n];
            float acc = y[(size_t)m * N + n];
            for (int r = 0; r < R; r++) acc = fmaf(tm[r], bf16_to_f32(BT[(size_t)r * N + n]), acc);
            y[(size_t)m * N + n] = acc;
        }
    }
    if (glu) geglu(y, M, N, out, otype == T_BF16);
    free(t); free(xf); free(seg);
    return 0;
}
