/* Q8_0, Q5_0, Q4_0, Q4_K and Q6_K products on AMX tiles (Intel Sapphire Rapids and later), included by
 * gguf.c.
 *
 * Why: with 9 input rows (a token and 8 drafts to verify) the AVX-512 products are bound by arithmetic, not
 * by reading weights: each weight is multiplied by each row in its own vector instruction. One AMX
 * instruction multiplies 16 weight rows by up to 16 input rows over 32 weights.
 *
 * Exactness: the input is the same int16 fixed point as the AVX-512 path, split into a signed high byte
 * and an unsigned low byte (x = 256 * hi + lo); two tile products give a unit's exact int32 dot product
 * for every (weight row, input row) pair. Each output then follows one scalar recipe, whatever the number
 * of rows and however the lanes are laid out:
 *     acc = 0; for each unit u: acc = fma((float)dot_u, d_u * sk_g(u), acc)
 * (Q4_K adds its offsets: moff = fma(m_u, xsum_u, moff) beside acc, and the result is acc + moff)
 * so a row's result does not depend on its companions (speculative and batched greedy equal plain greedy).
 * The recipe differs from the AVX-512 path's rounding, so a process uses one path for all its products in
 * these formats (decided once, in cg_amx); one input row runs the recipe on AVX-512 (avx512_row).
 */
#ifndef CODEGEMMA_AMX_H
#define CODEGEMMA_AMX_H

#if defined(GGUF_SIMD) && defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define GGUF_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

int cg_amx_on = 0; /* read by ops.c's bfloat16 products too */

/* Ask Linux for the tile state (each process must) and use AMX for the formats above and bfloat16 products
 * when `want` and granted. Returns 1 when the products use AMX. Call before any product: the choice then holds for
 * the process. */
int cg_amx(int want) {
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
    cg_amx_on = want && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return cg_amx_on;
}

#include "tiles.h"

/* tile registers (the intrinsics take literal numbers) */
#define T_W 0
#define T_HI 1
#define T_LO 2
#define T_CHI 3
#define T_CLO 4

/* Tiles for M input rows: weights 16 rows x 32 bytes (one unit), inputs 8 x M groups of 4 bytes, products
 * 16 weight rows x M int32. Per thread: tile state belongs to the thread. */
static void amx_configure(int M) {
    tile_config c = {.palette = 1};
    c.rows[T_W] = 16, c.colsb[T_W] = 32;
    c.rows[T_HI] = c.rows[T_LO] = 8, c.colsb[T_HI] = c.colsb[T_LO] = (uint16_t)(4 * M);
    for (int t = T_CHI; t <= T_CLO; t++) c.rows[t] = 16, c.colsb[t] = (uint16_t)(4 * M);
    _tile_loadconfig(&c);
}

/* The M prepared input rows as tiles take them: for unit u, 4-value group j and row m, the 4 high bytes at
 * hi[((u * 8 + j) * M + m) * 4] (signed) and the low ones likewise in lo (unsigned). */
typedef struct {
    int8_t *hi;
    uint8_t *lo;
    float *sk; /* [groups][16 M]: group i's input scale of row j % M at [i][j], as the lanes take them */
    float *xs; /* [units][16 M]: unit u's input sum of row j % M at [u][j] (Q4_K's offsets) */
    int64_t per_group; /* units per input scale */
} amx_input;

/* out[0 .. 16 M) = v[j % M]: the M values repeated as the lanes take them */
static inline void amx_lanes(float *out, const float *v, int M) {
    memcpy(out, v, sizeof(float) * M);
    for (int have = M; have < 16 * M; have *= 2) memcpy(out + have, out, sizeof(float) * (size_t)(have < 16 * M - have ? have : 16 * M - have));
}

/* Serial work before each product's threads start (the other thread waits): vectorized, a unit of a row at
 * a time. */
static void amx_pack(const xprep *x, int M, int64_t K, amx_input *a) {
    int64_t units = K / UNIT, g = group_of(K);
    a->per_group = g / UNIT;
    for (int m = 0; m < M; m++)
        for (int64_t u = 0; u < units; u++) {
            __m512i v = _mm512_loadu_si512((const void *)(x[m].xk + u * UNIT));
            /* arithmetic shift: v = 256 * hi + lo, lo in 0..255 */
            __m256i hi = _mm512_cvtepi16_epi8(_mm512_srai_epi16(v, 8)), lo = _mm512_cvtepi16_epi8(v);
            uint32_t h[8], l[8];
            _mm256_storeu_si256((__m256i *)h, hi);
            _mm256_storeu_si256((__m256i *)l, lo);
            for (int j = 0; j < 8; j++) { /* 4 values (bytes) of group j at ((u * 8 + j) * M + m) * 4 */
                memcpy(a->hi + ((u * 8 + j) * M + m) * 4, &h[j], 4);
                memcpy(a->lo + ((u * 8 + j) * M + m) * 4, &l[j], 4);
            }
        }
    float v[MAX_M];
    for (int64_t i = 0; i < K / g; i++) {
        for (int m = 0; m < M; m++) v[m] = x[m].sk[i];
        amx_lanes(a->sk + i * 16 * M, v, M);
    }
    for (int64_t u = 0; u < units; u++) {
        for (int m = 0; m < M; m++) v[m] = x[m].xs[u];
        amx_lanes(a->xs + u * 16 * M, v, M);
    }
}

/* The AMX formats: a float scale d per 32-weight unit and weights small integers (Q8_0: q; Q5_0: q - 16;
 * Q4_0: q - 8; Q4_K: q in 0..15, d = superblock d x the unit's 6-bit scale, plus an offset m per unit).
 * Q6_K (q - 32) has a scale per 16 weights: its units go through the tiles as two parts, each with the
 * other half's weights zero, and each part is a unit of the recipe. */
static inline int amx_type(int type) {
    return type == G_Q8_0 || type == G_Q5_0 || type == G_Q4_0 || type == G_Q4_K || type == G_Q6_K;
}
static inline int amx_parts(int type) { return type == G_Q6_K ? 2 : 1; }
/* the index of part p of unit u among the scales amx_scales gives for u's superblock */
static inline int amx_scale_index(int type, int64_t u, int p) {
    return type == G_Q6_K ? (int)(u % 8) * 2 + p : type == G_Q4_K ? (int)(u % 8) : 0;
}

/* Unit u of 16 weight rows (`bytes` apart from W) as int8, 32 per row, `*stride` bytes apart: Q8_0's own
 * bytes, the packed formats decoded into buf [16][32]. Part p of a Q6_K unit: the other half zero (p 0 or
 * 1), or whole (p 2). */
static inline __attribute__((always_inline)) const uint8_t *amx_stage(int type, const uint8_t *W, int64_t bytes,
                                                                      int64_t u, int p, uint8_t *buf,
                                                                      int64_t *stride) {
    if (type == G_Q8_0) {
        *stride = bytes;
        return W + u * 34 + 2;
    }
    *stride = 32;
    for (int n = 0; n < 16; n++) {
        if (type == G_Q6_K) { /* kquant_q's decoding, on bytes; part p keeps its 16 weights */
            const uint8_t *b = W + n * bytes + (u / 8) * 210;
            int j = (int)(u % 8), h = j / 4, t = j % 4;
            __m256i l = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (t & 1)));
            l = _mm256_and_si256(t >= 2 ? _mm256_srli_epi16(l, 4) : l, _mm256_set1_epi8(0xF));
            __m256i hi = _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)), 2 * t);
            hi = _mm256_slli_epi16(_mm256_and_si256(hi, _mm256_set1_epi8(3)), 4);
            __m256i q = _mm256_sub_epi8(_mm256_or_si256(l, hi), _mm256_set1_epi8(32));
            _mm256_storeu_si256((__m256i *)(buf + 32 * n), _mm256_maskz_mov_epi8(p == 2 ? 0xFFFFFFFFu : p ? 0xFFFF0000u : 0x0000FFFFu, q));
            continue;
        }
        if (type == G_Q4_K) {
            const uint8_t *b = W + n * bytes + (u / 8) * 144;
            int j = (int)(u % 8);
            __m256i v = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * (j / 2)));
            _mm256_storeu_si256((__m256i *)(buf + 32 * n),
                                _mm256_and_si256(j & 1 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0xF)));
            continue;
        }
        const uint8_t *b = W + n * bytes + u * block_bytes(type);
        __m256i q = type == G_Q5_0
            ? _mm256_sub_epi8(_mm256_or_si256(nibbles16(b + 6), _mm256_maskz_mov_epi8(rd32(b + 2), _mm256_set1_epi8(0x10))),
                              _mm256_set1_epi8(16))
            : _mm256_sub_epi8(nibbles16(b + 2), _mm256_set1_epi8(8));
        _mm256_storeu_si256((__m256i *)(buf + 32 * n), q);
    }
    return buf;
}

/* The d and offset m of the units of 16 rows, for unit u on: one unit (d[0]) or, for Q4_K at a superblock's
 * first unit, its 8 (d[0..8), m[0..8)), for Q6_K its 16 (d[0..16)), with the arithmetic of unit_scalar. 32-bit gathers at each row's
 * block (`at`: the rows' offsets); the 6-bit scales and mins unpack as superblock_scales does it. */
static inline __attribute__((always_inline)) void amx_scales(int type, const uint8_t *W, int64_t u, __m512i at,
                                                             __m512 *d, __m512 *m) {
    if (type == G_Q6_K) { /* d[k] = superblock d x scale k (of 16, signed bytes) */
        const uint8_t *b = W + u / 8 * 210;
        __m512 dd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(at, b + 208, 1)));
        for (int w = 0; w < 4; w++) {
            __m512i sc = _mm512_i32gather_epi32(at, b + 192 + 4 * w, 1);
            for (int i = 0; i < 4; i++)
                d[4 * w + i] = _mm512_mul_ps(dd, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(sc, 24 - 8 * i), 24)));
        }
        return;
    }
    if (type != G_Q4_K) {
        d[0] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(at, W + u * block_bytes(type), 1)));
        return;
    }
    const uint8_t *b = W + u / 8 * 144;
    __m512i head = _mm512_i32gather_epi32(at, b, 1), w0 = _mm512_i32gather_epi32(at, b + 4, 1);
    __m512i w1 = _mm512_i32gather_epi32(at, b + 8, 1), w2 = _mm512_i32gather_epi32(at, b + 12, 1);
    __m512 dd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
    __m512 dmin = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16))));
    const __m512i low6 = _mm512_set1_epi32(0x3F3F3F3F), low4 = _mm512_set1_epi32(0x0F0F0F0F),
                  top2 = _mm512_set1_epi32(0x30303030), byte = _mm512_set1_epi32(0xFF);
    __m512i sc[2] = {_mm512_and_si512(w0, low6),
                     _mm512_or_si512(_mm512_and_si512(w2, low4), _mm512_and_si512(_mm512_srli_epi32(w0, 2), top2))};
    __m512i mn[2] = {_mm512_and_si512(w1, low6),
                     _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, 4), low4),
                                     _mm512_and_si512(_mm512_srli_epi32(w1, 2), top2))};
    for (int j = 0; j < 8; j++) {
        __m512i s = _mm512_and_si512(_mm512_srli_epi32(sc[j / 4], 8 * (j % 4)), byte);
        __m512i o = _mm512_and_si512(_mm512_srli_epi32(mn[j / 4], 8 * (j % 4)), byte);
        d[j] = _mm512_mul_ps(dd, _mm512_cvtepi32_ps(s));
        m[j] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(o));
    }
}

/* Start the exact int32 dot products of the 16 staged weight rows q (`stride` apart) of unit u with the M
 * input rows, into c[n * M + m] (hi) and c[256 + n * M + m] (lo); the caller reads the previous unit's back
 * meanwhile (from its own c). One pair of product tiles for all units: alternating two pairs between even
 * and odd units (a branch per unit) measured 10-29% slower with 2-16 input rows of Q8_0 weights. */
static inline __attribute__((always_inline)) void amx_unit(const uint8_t *q, int64_t stride, int64_t u,
                                                           const amx_input *a, int M, int32_t *c) {
    _tile_loadd(T_W, q, stride);
    _tile_loadd(T_HI, a->hi + u * 32 * M, 4 * M);
    _tile_loadd(T_LO, a->lo + u * 32 * M, 4 * M);
    _tile_zero(T_CHI);
    _tile_zero(T_CLO);
    _tile_dpbssd(T_CHI, T_W, T_HI);
    _tile_dpbsud(T_CLO, T_W, T_LO);
    _tile_stored(T_CHI, c, 4 * M);
    _tile_stored(T_CLO, c + 256, 4 * M);
}

/* The exact dot products of 32 int8 weights at q, q + stride, ... (16 rows) with 32 int16 inputs xk, as 16
 * lanes: each row's 16 pairwise sums, then a transposing tree of additions (integers: any order is exact).
 * With hi, *lo gets the sums over the first 16 weights and *hi those over the last 16 (the tree's last step
 * would add them). */
static inline __attribute__((always_inline)) __m512i avx512_dots16(const uint8_t *q, int64_t stride, __m512i xk,
                                                                   __m512i *hi) {
    __m512i v[16];
    for (int n = 0; n < 16; n++)
        v[n] = _mm512_madd_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + n * stride))), xk);
    /* per 128-bit lane: 16 rows of 4 -> 8 vectors of (row pairs) -> 4 vectors of 4 rows' lane sums */
    for (int n = 0; n < 8; n++)
        v[n] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * n], v[2 * n + 1]), _mm512_unpackhi_epi32(v[2 * n], v[2 * n + 1]));
    for (int n = 0; n < 4; n++)
        v[n] = _mm512_add_epi32(_mm512_unpacklo_epi64(v[2 * n], v[2 * n + 1]), _mm512_unpackhi_epi64(v[2 * n], v[2 * n + 1]));
    /* across the four 128-bit lanes: first the pairs within each half of the weights (lanes 0-7, 8-15) */
    for (int n = 0; n < 2; n++)
        v[n] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * n], v[2 * n + 1], 0x88), _mm512_shuffle_i32x4(v[2 * n], v[2 * n + 1], 0xDD));
    __m512i first = _mm512_shuffle_i32x4(v[0], v[1], 0x88), second = _mm512_shuffle_i32x4(v[0], v[1], 0xDD);
    if (hi) {
        *hi = second;
        return first;
    }
    return _mm512_add_epi32(first, second);
}

/* amx_tile for M from 2 up, always inlined with M a constant so that the accumulators stay in registers */
static inline __attribute__((always_inline)) void amx_many(int type, const uint8_t *W, int64_t bytes, int64_t units,
                                                           const amx_input *a, const int M, float *y, int64_t ldy,
                                                           __m512i at) {
    /* Lanes are (weight row, input row) pairs, the products stored M apart: 16 weight rows x M input rows
     * fill M vectors, lane l of vector v holding weight row (16 v + l) / M and input row (16 v + l) % M. */
    __m512 acc[16], moff[16], d[16], m[8];
    __m512i rows_of[16];
    int32_t c[2][2][512];
    uint8_t buf[2][2][16 * 32];
    const uint8_t *q[2][2];
    int64_t stride[2];
    for (int v = 0; v < M; v++) {
        acc[v] = moff[v] = _mm512_setzero_ps();
        int32_t idx[16];
        for (int l = 0; l < 16; l++) idx[l] = (16 * v + l) / M;
        rows_of[v] = _mm512_loadu_si512(idx);
    }
    /* Three units in flight: unit u is decoded to bytes, unit u - 1's tile products run and unit u - 2's
     * are read back. A tile load right after the vector stores that wrote its bytes waits for them. */
    for (int64_t u = 0; u < units + 2; u++) {
        if (u < units) {
            prefetch_next_tile(W, bytes, u, units);
            for (int p = 0; p < amx_parts(type); p++) q[u % 2][p] = amx_stage(type, W, bytes, u, p, buf[u % 2][p], &stride[u % 2]);
        }
        if (u >= 1 && u <= units)
            for (int p = 0; p < amx_parts(type); p++) amx_unit(q[(u - 1) % 2][p], stride[(u - 1) % 2], u - 1, a, M, c[(u - 1) % 2][p]);
        if (u < 2) continue;
        int64_t r = u - 2;
        const float *sk = a->sk + r / a->per_group * 16 * M, *xs = a->xs + r * 16 * M;
        if (amx_scale_index(type, r, 0) == 0) amx_scales(type, W, r, at, d, m);
        for (int p = 0; p < amx_parts(type); p++) {
            const int32_t *chi = c[r % 2][p], *clo = chi + 256;
            int k = amx_scale_index(type, r, p);
            for (int v = 0; v < M; v++) {
                __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(_mm512_loadu_si512(chi + 16 * v), 8),
                                               _mm512_loadu_si512(clo + 16 * v));
                __m512 coef = _mm512_mul_ps(_mm512_permutexvar_ps(rows_of[v], d[k]), _mm512_loadu_ps(sk + 16 * v));
                acc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), coef, acc[v]);
                if (type == G_Q4_K)
                    moff[v] = _mm512_fmadd_ps(_mm512_permutexvar_ps(rows_of[v], m[k]), _mm512_loadu_ps(xs + 16 * v),
                                              moff[v]);
            }
        }
    }
    for (int v = 0; v < M; v++) {
        float out[16];
        _mm512_storeu_ps(out, type == G_Q4_K ? _mm512_add_ps(acc[v], moff[v]) : acc[v]);
        for (int l = 0; l < 16; l++) y[(16 * v + l) % M * ldy + (16 * v + l) / M] = out[l];
    }
}

/* amx_tile for one input row, lanes the 16 weight rows: AVX-512 (one row is bound by reading weights, not
 * by arithmetic; 2 or 3 rows this way, the tile's weights in cache, measured slower than the tiles) */
static inline __attribute__((always_inline)) void avx512_row(int type, const uint8_t *W, int64_t bytes, int64_t units,
                                                             const xprep *x, const amx_input *a, float *y,
                                                             __m512i at) {
    __m512 acc = _mm512_setzero_ps(), moff = _mm512_setzero_ps(), d[16], m[8];
    uint8_t buf[16 * 32];
    int64_t stride;
    for (int64_t u = 0; u < units; u++) {
        prefetch_next_tile(W, bytes, u, units);
        if (amx_scale_index(type, u, 0) == 0) amx_scales(type, W, u, at, d, m);
        __m512i xk = _mm512_loadu_si512((const void *)(x->xk + u * UNIT));
        __m512 sk = _mm512_set1_ps(a->sk[u / a->per_group * 16]);
        /* all 32 weights at once (part 2): Q6_K's two parts come out of one tree */
        const uint8_t *q = amx_stage(type, W, bytes, u, 2, buf, &stride); /* before stride is read */
        __m512i dot[2];
        dot[0] = avx512_dots16(q, stride, xk, amx_parts(type) == 2 ? &dot[1] : NULL);
        for (int p = 0; p < amx_parts(type); p++) {
            int k = amx_scale_index(type, u, p);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[p]), _mm512_mul_ps(d[k], sk), acc);
            if (type == G_Q4_K) moff = _mm512_fmadd_ps(m[k], _mm512_set1_ps(x->xs[u]), moff);
        }
    }
    _mm512_storeu_ps(y, type == G_Q4_K ? _mm512_add_ps(acc, moff) : acc);
}

/* 16 weight rows from W times the M input rows into y[m * ldy + n] */
static inline __attribute__((always_inline)) void amx_tile(int type, const uint8_t *W, int64_t bytes, int64_t units,
                                                           const xprep *x, const amx_input *a, int M, float *y,
                                                           int64_t ldy) {
    const __m512i at = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32((int)bytes));
    if (M == 1) {
        avx512_row(type, W, bytes, units, x, a, y, at);
        return;
    }
    switch (M) {
#define AMX_MANY(m) \
    case m: amx_many(type, W, bytes, units, a, m, y, ldy, at); break;
        AMX_MANY(2) AMX_MANY(3) AMX_MANY(4) AMX_MANY(5) AMX_MANY(6) AMX_MANY(7) AMX_MANY(8) AMX_MANY(9)
        AMX_MANY(10) AMX_MANY(11) AMX_MANY(12) AMX_MANY(13) AMX_MANY(14) AMX_MANY(15) AMX_MANY(16)
#undef AMX_MANY
    }
}

/* one weight row by the recipe above, in scalar code: rows past the last whole tile */
static void amx_row(int type, const uint8_t *row, int64_t units, const xprep *x, const amx_input *a, int M, float *y,
                    int64_t ldy) {
    for (int m = 0; m < M; m++) {
        float acc = 0.0f, moff = 0.0f;
        for (int64_t u = 0; u < units; u++) {
            int16_t q[UNIT];
            float d, offset, sk = a->sk[u / a->per_group * 16 * M + m];
            unit_scalar(type, row, u, q, &d, &offset);
            if (type == G_Q6_K) { /* the parts' raw values v - 32, as amx_stage decodes them, and scales */
                const uint8_t *b = row + (u / 8) * 210;
                int j = (int)(u % 8), h = j / 4, t = j % 4;
                const uint8_t *ql = b + 64 * h + 32 * (t & 1), *qh = b + 128 + 32 * h;
                const int8_t *sc = (const int8_t *)(b + 192) + 2 * j;
                for (int p = 0; p < 2; p++) {
                    int32_t dot = 0;
                    for (int i = 16 * p; i < 16 * p + 16; i++) {
                        int v = (t >= 2 ? ql[i] >> 4 : ql[i] & 0xF) | (((qh[i] >> (2 * t)) & 3) << 4);
                        dot += (v - 32) * x[m].xk[u * UNIT + i];
                    }
                    acc = fmaf((float)dot, d * (float)sc[p] * sk, acc);
                }
                continue;
            }
            int32_t dot = 0;
            for (int i = 0; i < UNIT; i++) dot += (int32_t)q[i] * x[m].xk[u * UNIT + i];
            acc = fmaf((float)dot, d * sk, acc);
            moff = fmaf(offset, x[m].xs[u], moff);
        }
        y[m * ldy] = type == G_Q4_K ? acc + moff : acc;
    }
}

/* weight rows [n0, n1) of a matrix in an AMX format times the M input rows into y[m * ldy + n]; the type a
 * constant in each copy (amx_rows_for), as in the AVX-512 products */
static inline __attribute__((always_inline)) void amx_rows(int type, const uint8_t *W, int64_t bytes, int64_t n0,
                                                           int64_t n1, int64_t K, const xprep *x, const amx_input *a,
                                                           int M, float *y, int64_t ldy) {
    int64_t units = K / UNIT, n = n0;
    for (; n + 16 <= n1; n += 16) amx_tile(type, W + n * bytes, bytes, units, x, a, M, y + n, ldy);
    for (; n < n1; n++) amx_row(type, W + n * bytes, units, x, a, M, y + n, ldy);
}

typedef void (*amx_rows_fn)(const uint8_t *W, int64_t bytes, int64_t n0, int64_t n1, int64_t K, const xprep *x,
                            const amx_input *a, int M, float *y, int64_t ldy);
#define AMX_ROWS_FOR(T)                                                                                         \
    static void amx_rows_##T(const uint8_t *W, int64_t bytes, int64_t n0, int64_t n1, int64_t K, const xprep *x, \
                             const amx_input *a, int M, float *y, int64_t ldy) {                                \
        amx_rows(T, W, bytes, n0, n1, K, x, a, M, y, ldy);                                                      \
    }
AMX_ROWS_FOR(G_Q8_0)
AMX_ROWS_FOR(G_Q5_0)
AMX_ROWS_FOR(G_Q4_0)
AMX_ROWS_FOR(G_Q4_K)
AMX_ROWS_FOR(G_Q6_K)
#undef AMX_ROWS_FOR

static amx_rows_fn amx_rows_for(int type) {
    switch (type) {
    case G_Q8_0: return amx_rows_G_Q8_0;
    case G_Q5_0: return amx_rows_G_Q5_0;
    case G_Q4_0: return amx_rows_G_Q4_0;
    case G_Q4_K: return amx_rows_G_Q4_K;
    default: return amx_rows_G_Q6_K;
    }
}
#else
int cg_amx_on = 0;
int cg_amx(int want) {
    (void)want;
    return 0;
}
#endif

#endif
