/* Q8_0 products on AMX tiles (Intel Sapphire Rapids and later), included by gguf.c.
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
 * so a row's result does not depend on its companions (speculative and batched greedy equal plain greedy).
 * The recipe differs from the AVX-512 path's rounding, so a process uses one path for all its Q8_0 products
 * (decided once, in cg_gguf_amx).
 */
#ifndef CODEGEMMA_AMX_H
#define CODEGEMMA_AMX_H

#if defined(GGUF_SIMD) && defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define GGUF_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

static int amx_on = 0;

/* Ask Linux for the tile state (each process must) and use AMX for Q8_0 products when `want` and granted.
 * Returns 1 when the products use AMX. Call before any product: the choice then holds for the process. */
int cg_gguf_amx(int want) {
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
    amx_on = want && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return amx_on;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) tile_config;

/* tile registers (the intrinsics take literal numbers) */
#define T_W 0
#define T_HI 1
#define T_LO 2
#define T_CHI 3
#define T_CLO 4
#define T_CHI2 5
#define T_CLO2 6

/* Tiles for M input rows: weights 16 rows x 32 bytes (one unit), inputs 8 x M groups of 4 bytes, products
 * 16 weight rows x M int32. Per thread: tile state belongs to the thread. */
static void amx_configure(int M) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.rows[T_W] = 16, c.colsb[T_W] = 32;
    c.rows[T_HI] = c.rows[T_LO] = 8, c.colsb[T_HI] = c.colsb[T_LO] = (uint16_t)(4 * M);
    for (int t = T_CHI; t <= T_CLO2; t++) c.rows[t] = 16, c.colsb[t] = (uint16_t)(4 * M);
    _tile_loadconfig(&c);
}

/* The M prepared input rows as tiles take them: for unit u, 4-value group j and row m, the 4 high bytes at
 * hi[((u * 8 + j) * M + m) * 4] (signed) and the low ones likewise in lo (unsigned); sk by group and row,
 * 16 lanes per group. */
typedef struct {
    int8_t *hi;
    uint8_t *lo;
    float *sk; /* [groups][16] */
    int64_t per_group; /* units per input scale */
} amx_input;

static void amx_pack(const xprep *x, int M, int64_t K, amx_input *a) {
    int64_t units = K / UNIT, g = group_of(K);
    a->per_group = g / UNIT;
    for (int64_t u = 0; u < units; u++)
        for (int j = 0; j < 8; j++)
            for (int m = 0; m < M; m++)
                for (int i = 0; i < 4; i++) {
                    int v = x[m].xk[u * UNIT + 4 * j + i];
                    int64_t at = ((u * 8 + j) * M + m) * 4 + i;
                    a->hi[at] = (int8_t)(v >> 8); /* arithmetic shift: v = 256 * hi + lo, lo in 0..255 */
                    a->lo[at] = (uint8_t)(v & 0xFF);
                }
    for (int64_t i = 0; i < K / g; i++)
        for (int m = 0; m < 16; m++) a->sk[i * 16 + m] = m < M ? x[m].sk[i] : 0.0f;
}

/* A tile reads 16 short rows across: no stream a hardware prefetcher would follow. Fetch the next tile's
 * bytes (contiguous) a share per unit instead. */
static inline __attribute__((always_inline)) void prefetch_next_tile(const uint8_t *W, int64_t bytes, int64_t u,
                                                                     int64_t units) {
    int64_t lines = (16 * bytes + 63) / 64, per = (lines + units - 1) / units;
    for (int64_t l = u * per; l < (u + 1) * per && l < lines; l++)
        _mm_prefetch((const char *)W + 16 * bytes + l * 64, _MM_HINT_T0);
}

/* Start the exact int32 dot products of unit u for 16 weight rows (`bytes` apart from W) and the M input
 * rows, into c[n * stride / 4 + m] (hi) and c[256 + n * stride / 4 + m] (lo). Even and odd units use their own product
 * tiles, so that one unit's products run while the previous unit's are read back. */
static inline __attribute__((always_inline)) void amx_unit(const uint8_t *W, int64_t bytes, int64_t u,
                                                           int64_t units, const amx_input *a, int M, int32_t *c,
                                                           int stride) {
    prefetch_next_tile(W, bytes, u, units);
    _tile_loadd(T_W, W + u * 34 + 2, bytes);
    _tile_loadd(T_HI, a->hi + u * 32 * M, 4 * M);
    _tile_loadd(T_LO, a->lo + u * 32 * M, 4 * M);
    if (u & 1) {
        _tile_zero(T_CHI2);
        _tile_zero(T_CLO2);
        _tile_dpbssd(T_CHI2, T_W, T_HI);
        _tile_dpbsud(T_CLO2, T_W, T_LO);
        _tile_stored(T_CHI2, c, stride);
        _tile_stored(T_CLO2, c + 256, stride);
    } else {
        _tile_zero(T_CHI);
        _tile_zero(T_CLO);
        _tile_dpbssd(T_CHI, T_W, T_HI);
        _tile_dpbsud(T_CLO, T_W, T_LO);
        _tile_stored(T_CHI, c, stride);
        _tile_stored(T_CLO, c + 256, stride);
    }
}

/* the exact dot products of 32 int8 weights at q, q + bytes, ... (16 rows) with 32 int16 inputs xk, as 16
 * lanes: each row's 16 pairwise sums, then a transposing tree of additions (integers: any order is exact) */
static inline __attribute__((always_inline)) __m512i avx512_dots16(const uint8_t *q, int64_t bytes, __m512i xk) {
    __m512i v[16];
    for (int n = 0; n < 16; n++)
        v[n] = _mm512_madd_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + n * bytes))), xk);
    /* per 128-bit lane: 16 rows of 4 -> 8 vectors of (row pairs) -> 4 vectors of 4 rows' lane sums */
    for (int n = 0; n < 8; n++)
        v[n] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * n], v[2 * n + 1]), _mm512_unpackhi_epi32(v[2 * n], v[2 * n + 1]));
    for (int n = 0; n < 4; n++)
        v[n] = _mm512_add_epi32(_mm512_unpacklo_epi64(v[2 * n], v[2 * n + 1]), _mm512_unpackhi_epi64(v[2 * n], v[2 * n + 1]));
    /* across the four 128-bit lanes */
    for (int n = 0; n < 2; n++)
        v[n] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * n], v[2 * n + 1], 0x88), _mm512_shuffle_i32x4(v[2 * n], v[2 * n + 1], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(v[0], v[1], 0x88), _mm512_shuffle_i32x4(v[0], v[1], 0xDD));
}

/* 16 weight rows from W times the M input rows into y[m * ldy + n] */
static void amx_q8_tile(const uint8_t *W, int64_t bytes, int64_t units, const xprep *x, const amx_input *a, int M,
                        float *y, int64_t ldy) {
    /* the d of unit u of the 16 rows: a 32-bit gather at each block's start, its low half */
    const __m512i at = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32((int)bytes));
    if (M == 1) { /* lanes are weight rows; one input row is bound by reading weights: AVX-512 does */
        __m512 acc = _mm512_setzero_ps();
        for (int64_t u = 0; u < units; u++) {
            prefetch_next_tile(W, bytes, u, units);
            __m512i dot = avx512_dots16(W + u * 34 + 2, bytes, _mm512_loadu_si512((const void *)(x->xk + u * UNIT)));
            __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(at, W + u * 34, 1)));
            __m512 coef = _mm512_mul_ps(d, _mm512_set1_ps(a->sk[u / a->per_group * 16]));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), coef, acc);
        }
        _mm512_storeu_ps(y, acc);
        return;
    }
    /* Lanes are (weight row, input row) pairs: P lanes per weight row, P the power of two from M up, 16 / P
     * weight rows per vector, the products stored P apart. */
    int P = 2;
    while (P < M) P *= 2;
    const int V = P; /* vectors: 16 weight rows x P lanes */
    __m512 acc[16], sk = _mm512_setzero_ps();
    __m512i rows_of[16];
    int32_t c[2][512];
    for (int v = 0; v < V; v++) {
        acc[v] = _mm512_setzero_ps();
        int32_t idx[16];
        for (int l = 0; l < 16; l++) idx[l] = v * (16 / P) + l / P;
        rows_of[v] = _mm512_loadu_si512(idx);
    }
    int64_t group = -1;
    amx_unit(W, bytes, 0, units, a, M, c[0], 4 * P);
    for (int64_t u = 0; u < units; u++) {
        if (u + 1 < units) amx_unit(W, bytes, u + 1, units, a, M, c[(u + 1) & 1], 4 * P);
        if (u / a->per_group != group) { /* each lane's input scale, input row = lane % P */
            group = u / a->per_group;
            float s[16];
            for (int l = 0; l < 16; l++) s[l] = a->sk[group * 16 + l % P];
            sk = _mm512_loadu_ps(s);
        }
        const int32_t *chi = c[u & 1], *clo = chi + 256;
        __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(at, W + u * 34, 1)));
        for (int v = 0; v < V; v++) {
            __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(_mm512_loadu_si512(chi + 16 * v), 8),
                                           _mm512_loadu_si512(clo + 16 * v));
            __m512 coef = _mm512_mul_ps(_mm512_permutexvar_ps(rows_of[v], d), sk);
            acc[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), coef, acc[v]);
        }
    }
    for (int v = 0; v < V; v++) {
        float out[16];
        _mm512_storeu_ps(out, acc[v]);
        for (int l = 0; l < 16; l++)
            if (l % P < M) y[(l % P) * ldy + v * (16 / P) + l / P] = out[l];
    }
}

/* one weight row by the recipe above, in scalar code: rows past the last whole tile */
static void amx_q8_row(const uint8_t *row, int64_t units, const xprep *x, const amx_input *a, int M, float *y,
                       int64_t ldy) {
    for (int m = 0; m < M; m++) {
        float acc = 0.0f;
        for (int64_t u = 0; u < units; u++) {
            const uint8_t *b = row + u * 34;
            int32_t dot = 0;
            for (int i = 0; i < UNIT; i++) dot += (int32_t)(int8_t)b[2 + i] * x[m].xk[u * UNIT + i];
            float coef = half_to_f32(rd16(b)) * a->sk[u / a->per_group * 16 + m];
            acc = fmaf((float)dot, coef, acc);
        }
        y[m * ldy] = acc;
    }
}

/* weight rows [n0, n1) of a Q8_0 matrix times the M input rows into y[m * ldy + n] */
static void amx_q8_rows(const uint8_t *W, int64_t bytes, int64_t n0, int64_t n1, int64_t K, const xprep *x,
                        const amx_input *a, int M, float *y, int64_t ldy) {
    int64_t units = K / UNIT, n = n0;
    for (; n + 16 <= n1; n += 16) amx_q8_tile(W + n * bytes, bytes, units, x, a, M, y + n, ldy);
    for (; n < n1; n++) amx_q8_row(W + n * bytes, units, x, a, M, y + n, ldy);
}
#else
int cg_gguf_amx(int want) {
    (void)want;
    return 0;
}
#endif

#endif
