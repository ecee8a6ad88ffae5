/* Prefill products on AMX tiles: y[M, N] = x[M, K] . W[N, K]^T for bfloat16 weights W (a checkpoint's, or a
 * GGUF matrix's rows dequantized into a buffer) and input rows x (bfloat16, or float32 rounded to bfloat16
 * as they are packed), with float32 sums (given as they are, or rounded once to bfloat16).
 *
 * Why: PyTorch multiplies a pass's rows 2-4x faster in one product than block by block, but rounds a row
 * differently depending on how many rows it has, and prompt reuse must stay bit-identical (a cached prefix
 * plus a recomputed tail equals a fresh prefill). Here every output follows one recipe whatever M is:
 *     c = 0; for s = 0 .. K/32 - 1: c += the tile dot product of values 32 s .. 32 s + 31   (tdpbf16ps)
 * so all the blocks of a prefill pass go through one product and each row is what it would be alone.
 *
 * Layout: W is the A operand (16 weight rows x 32 values, read in place), the input rows the B operand
 * (packed once per product by cg_bf16_pack: 16 value pairs x 16 rows); each step multiplies 32 weight rows
 * by 32 input rows in four tiles.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "numerics.h"

#if defined(__AVX512F__) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>

#include "tiles.h"
#define HAVE_TILE_GEMM 1
#endif

#if defined(HAVE_TILE_GEMM) && defined(__AVX512BF16__)
/* r[i] = row i of a 16 x 16 float32 block -> r[j] = its column j */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4 i + j], 128-bit lane L: column 4 L + j of rows 4 i .. 4 i + 3 */
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    }
    for (int j = 0; j < 4; j++) {
        __m512 lo0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44), lo1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44);
        __m512 hi0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE), hi1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_f32x4(lo0, lo1, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(lo0, lo1, 0xDD);
        r[8 + j] = _mm512_shuffle_f32x4(hi0, hi1, 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(hi0, hi1, 0xDD);
    }
}
#endif

/* input rows are packed in groups of 16 (zeros past M), an even number of groups */
static int64_t row_groups(int64_t M) { return (M + 31) / 32 * 2; }

/* 1 when cg_bf16_gemm runs here (built with AMX-BF16 and the process uses AMX tiles) */
int cg_bf16_gemm_ready(void) {
#ifdef HAVE_TILE_GEMM
    return cg_amx_on;
#else
    return 0;
#endif
}

/* bfloat16 elements of the packed form of M rows of K values */
int64_t cg_bf16_packed_size(int64_t M, int K) { return row_groups(M) * 16 * (int64_t)K; }

/* x [M, K] (bfloat16, or float32 when f32: rounded to bfloat16 here; rows x_stride elements apart) -> xp:
 * for group g, step s, pair p, row m of the group, the two values x[16 g + m][32 s + 2 p + 0..1] at
 * xp[((g * K/32 + s) * 16 + p) * 32 + 2 m + 0..1] */
void cg_bf16_pack(const void *x, int f32, int64_t x_stride, int64_t M, int K, uint16_t *xp) {
    int64_t groups = row_groups(M), steps = K / 32;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; g++)
        for (int64_t s = 0; s < steps; s++) {
            uint16_t *t = xp + (g * steps + s) * 512;
#if defined(HAVE_TILE_GEMM) && defined(__AVX512BF16__)
            /* each row's 32 values as 16 pairs in a register, then pairs and rows swapped */
            __m512 r[16];
            for (int m = 0; m < 16; m++) {
                int64_t row = 16 * g + m, at = row * x_stride + 32 * s;
                if (row >= M)
                    r[m] = _mm512_setzero_ps();
                else if (f32)
                    r[m] = (__m512)_mm512_cvtne2ps_pbh(_mm512_loadu_ps((const float *)x + at + 16),
                                                       _mm512_loadu_ps((const float *)x + at));
                else
                    r[m] = _mm512_loadu_ps((const uint16_t *)x + at);
            }
            transpose16(r);
            for (int p = 0; p < 16; p++) _mm512_storeu_ps((float *)(t + 32 * p), r[p]);
#else
            for (int m = 0; m < 16; m++) {
                int64_t row = 16 * g + m, at = row * x_stride + 32 * s;
                for (int v = 0; v < 32; v++) {
                    uint16_t h = row >= M ? 0 : f32 ? f32_to_bf16(((const float *)x)[at + v]) : ((const uint16_t *)x)[at + v];
                    t[(v >> 1) * 32 + 2 * m + (v & 1)] = h;
                }
            }
#endif
        }
}

/* out [M, N / 2] = gelu_tanh(y[:, :N/2]) * y[:, N/2:] for float32 sums y [M, N], in float32 (or rounded
 * to bfloat16 after each step, as PyTorch's bfloat16 GeGLU, when bf16); each value on its own */
void cg_geglu(const float *y, int M, int64_t N, void *out, int bf16) { geglu(y, M, N, out, bf16); }

#ifdef HAVE_TILE_GEMM
/* weight rows [0, 32) of W times input groups g, g + 1 -> c[(2 a + b) * 256 + r * 16 + m]: weight row
 * 16 a + r, input row m of group g + b. Tiles: 0-1 weights, 2-3 inputs, 4-7 sums. Without `second` (group
 * g + 1 holds no input row: passes of 16 rows or fewer, a keystroke's one row) only group g's two products
 * run; each sum is the same either way, as no tile product mixes input rows. */
static void tile_block(const uint16_t *W, int K, const uint16_t *xp, int64_t g, int second, float *c) {
    int64_t steps = K / 32, bytes = 2 * (int64_t)K;
    const uint16_t *b0 = xp + g * 16 * (int64_t)K, *b1 = b0 + 16 * (int64_t)K;
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (int64_t s = 0; s < steps; s++) { /* `second` is the same every step: the compiler unswitches it */
        _tile_loadd(0, W + 32 * s, bytes);
        _tile_loadd(1, W + 16 * (int64_t)K + 32 * s, bytes);
        _tile_loadd(2, b0 + 512 * s, 64);
        _tile_dpbf16ps(4, 0, 2);
        _tile_dpbf16ps(6, 1, 2);
        if (second) {
            _tile_loadd(3, b1 + 512 * s, 64);
            _tile_dpbf16ps(5, 0, 3);
            _tile_dpbf16ps(7, 1, 3);
        }
    }
    _tile_stored(4, c, 64);
    _tile_stored(5, c + 256, 64);
    _tile_stored(6, c + 512, 64);
    _tile_stored(7, c + 768, 64);
}

/* the sums of weight rows [n, n + rows) (rows <= 32) into y: float32 (f32), or rounded to bfloat16 (nearest
 * even) */
static void write_block(const float *c, int64_t g, int64_t M, int64_t n, int rows, void *y, int f32, int64_t ldy) {
#ifdef __AVX512BF16__
    for (int a = 0; 16 * a < rows; a++) {
        int valid = rows - 16 * a < 16 ? rows - 16 * a : 16;
        __mmask16 keep = (__mmask16)((1u << valid) - 1);
        for (int b = 0; b < 2 && 16 * (g + b) < M; b++) { /* a group past M: nothing to write */
            __m512 r[16];
            const float *tile = c + (2 * a + b) * 256;
            for (int i = 0; i < 16; i++) r[i] = _mm512_load_ps(tile + 16 * i);
            transpose16(r); /* r[m]: input row m's sums over the 16 weight rows */
            for (int m = 0; m < 16; m++) {
                int64_t row = 16 * (g + b) + m;
                if (row >= M) break;
                int64_t at = row * ldy + n + 16 * a;
                if (f32)
                    _mm512_mask_storeu_ps((float *)y + at, keep, r[m]);
                else
                    _mm256_mask_storeu_epi16((uint16_t *)y + at, keep, (__m256i)_mm512_cvtneps_pbh(r[m]));
            }
        }
    }
#else
    for (int b = 0; b < 2; b++)
        for (int m = 0; m < 16; m++) {
            int64_t row = 16 * (g + b) + m;
            if (row >= M) return;
            for (int r = 0; r < rows; r++) {
                float v = c[((r >> 4) * 2 + b) * 256 + (r & 15) * 16 + m];
                if (f32)
                    ((float *)y)[row * ldy + n + r] = v;
                else
                    ((uint16_t *)y)[row * ldy + n + r] = f32_to_bf16(v);
            }
        }
#endif
}
#endif

int cg_gguf_dequantize(const void *W, int type, int64_t K, int64_t first, int64_t n, void *out, int bf16); /* gguf.c */

#ifdef HAVE_TILE_GEMM
/* y = x . W^T with W [N, K] bfloat16 rows (type < 0) or GGUF rows of that ggml type, dequantized 32 at a
 * time into a buffer each thread keeps in cache (a separate pass over the whole matrix would write and
 * read it back through memory: a fifth of a CodeGemma 2B prefill). */
static int gemm(const uint16_t *xp, int64_t M, int K, const void *W, int type, int64_t N, void *y, int f32,
                int64_t ldy) {
    int64_t groups = row_groups(M), blocks = (N + 31) / 32;
    int failed = 0;
#pragma omp parallel
    {
        int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
        float *c = (float *)aligned_alloc(64, 4 * 256 * sizeof(float));
        uint16_t *buf = (uint16_t *)calloc(32 * (size_t)K, 2); /* the block's rows, zero past N */
        tile_config cfg = {.palette = 1};
        for (int i = 0; i < 8; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
        _tile_loadconfig(&cfg);
        int bad = !c || !buf; /* 1: out of memory, 2: a type without a dequantizer */
        for (int64_t blk = blocks * t / threads; blk < blocks * (t + 1) / threads && !bad; blk++) {
            int64_t n = 32 * blk;
            int rows = N - n < 32 ? (int)(N - n) : 32;
            const uint16_t *w = buf;
            if (type >= 0)
                bad = cg_gguf_dequantize(W, type, K, n, rows, buf, 1) != 0 ? 2 : 0;
            else if (rows == 32)
                w = (const uint16_t *)W + n * K;
            else
                memcpy(buf, (const uint16_t *)W + n * K, (size_t)rows * K * 2);
            if (rows < 32) memset(buf + (size_t)rows * K, 0, (size_t)(32 - rows) * K * 2);
            for (int64_t g = 0; g < groups && !bad; g += 2) {
                tile_block(w, K, xp, g, 16 * (g + 1) < M, c);
                write_block(c, g, M, n, rows, y, f32, ldy);
            }
        }
        if (bad) {
#pragma omp atomic write
            failed = bad;
        }
        _tile_release();
        free(buf);
        free(c);
    }
    return failed == 2 ? -3 : failed ? -1 : 0;
}
#endif

/* y[m * ldy + n] = sum_k x[m][k] W[n][k] for m < M, n < N, from the packed inputs xp (cg_bf16_pack); W [N, K]
 * bfloat16, contiguous, K a multiple of 32; y float32 (f32) or bfloat16. Each thread takes a share of the
 * weight rows, 32 at a time. Returns 0, -1 when out of memory, -2 where the tiles are not available. */
int cg_bf16_gemm(const uint16_t *xp, int64_t M, int K, const uint16_t *W, int64_t N, void *y, int f32, int64_t ldy) {
#ifdef HAVE_TILE_GEMM
    if (!cg_amx_on || K % 32) return -2;
    return gemm(xp, M, K, W, -1, N, y, f32, ldy);
#else
    (void)xp, (void)M, (void)K, (void)W, (void)N, (void)y, (void)f32, (void)ldy;
    return -2;
#endif
}

/* The same for a GGUF matrix of ggml type `type` (raw rows, N of them): each thread dequantizes its 32 rows
 * at a time (as cg_gguf_dequantize, to bfloat16) just before multiplying them. -3 when the type has no
 * dequantizer. */
int cg_gguf_tile_gemm(const uint16_t *xp, int64_t M, int K, const void *W, int type, int64_t N, void *y, int f32,
                      int64_t ldy) {
#ifdef HAVE_TILE_GEMM
    if (!cg_amx_on || K % 32 || type < 0) return -2;
    return gemm(xp, M, K, W, type, N, y, f32, ldy);
#else
    (void)xp, (void)M, (void)K, (void)W, (void)type, (void)N, (void)y, (void)f32, (void)ldy;
    return -2;
#endif
}
