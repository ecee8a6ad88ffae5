/* Prefill attention on AMX tiles over float32 or bfloat16 caches: queries, keys, values and probabilities
 * in bfloat16, sums in float32.
 *
 * Why: a prefill pass computes each row alone (prompt reuse may resume anywhere), so attention ran a row at
 * a time on the float32 vector units: ~40% of a 1000-token prefill of the embedded model. Tiles multiply 16
 * query rows by 16 keys over 32 dimensions in one instruction.
 *
 * A row's result does not depend on the rows computed with it, so it is the same in any pass:
 * - a score is its 32-dimension tile products added in order of the dimensions (one recipe for every key);
 * - the probabilities are e^(s - max) over the row's own keys (pos - window < key <= pos), rounded to
 *   bfloat16, every other key's exactly 0; their sum adds 16-key chunks aligned to absolute positions in order
 *   (a lane always holds the same key), and zero chunks before or after add nothing;
 * - out = (sum over 32-key steps aligned to absolute positions, in order, of the tile products p . v) / sum,
 *   where the steps of keys a row does not see contribute exact zeros.
 * Keys and values are read as bfloat16 copies packed once per call; positions past the pass's last row are
 * packed as zeros (never read from the cache, whose unwritten positions may hold anything).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "numerics.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>

#include "tiles.h"
#define HAVE_TILE_ATTENTION 1

void cg_bf16_pack(const void *x, int f32, int64_t x_stride, int64_t M, int K, uint16_t *xp); /* gemm.c */
int64_t cg_bf16_packed_size(int64_t M, int K);

/* 16 values of a row of V (float32, or bfloat16 when bf16) from dimension d as bfloat16 in the low half */
static inline __m256i value16(const void *V, int bf16, int64_t row, int D, int d) {
    if (bf16) return _mm256_loadu_si256((const __m256i *)((const uint16_t *)V + row * D + d));
    return (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps((const float *)V + row * D + d));
}

/* values V [T, D] (float32, or bfloat16 when bf16; n of them real, zeros after) -> the B operand of p . v: for
 * dimension block b (16 dimensions) and step s (32 keys), pair p, dimension j: V[32 s + 2 p + 0..1][16 b + j]
 * at vp[((b * steps + s) * 16 + p) * 32 + 2 j + 0..1] */
static void pack_values(const void *V, int bf16, int64_t n, int64_t steps, int D, uint16_t *vp) {
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < steps; s++)
        for (int b = 0; b < D / 16; b++) {
            uint16_t *t = vp + ((int64_t)b * steps + s) * 512;
            for (int p = 0; p < 16; p++) {
                int64_t k0 = 32 * s + 2 * p, k1 = k0 + 1;
                __m256i v0 = k0 < n ? value16(V, bf16, k0, D, 16 * b) : _mm256_setzero_si256();
                __m256i v1 = k1 < n ? value16(V, bf16, k1, D, 16 * b) : _mm256_setzero_si256();
                __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(v0), v1, 1); /* v0's 16, then v1's 16 */
                _mm512_storeu_si512((void *)(t + 32 * p), _mm512_permutexvar_epi16(pairs, both));
            }
        }
}

typedef struct {
    int64_t first;      /* the first packed key position (a multiple of 32) */
    int64_t steps;      /* 32-key steps packed */
    const uint16_t *kp; /* cg_bf16_pack of the keys: 16-key groups x D/32 steps of 16 pairs x 16 keys */
    const uint16_t *vp; /* pack_values of the values */
} packed_kv;

/* Rows r0 .. r0 + n - 1 (n <= 16) of query head h: out[r][h D ..] for each */
static void attend_block(int H, int D, int64_t start, int window, float q_scale, float softcap, const float *q,
                         int h, int r0, int n, const packed_kv *kv, uint16_t *qb, float *sc, uint16_t *pb, float *acc,
                         void *out, int bf16) {
    int64_t last = start + r0 + n - 1, lo0 = window > 0 && start + r0 - window + 1 > 0 ? start + r0 - window + 1 : 0;
    int64_t klo = lo0 / 32 * 32, steps = (last + 1 - klo + 31) / 32, width = 32 * steps; /* keys klo .. */
    int64_t s0 = (klo - kv->first) / 32;
    int dsteps = D / 32;
    /* queries as bfloat16 rows (zeros past n): the A operand, 32 dimensions a step */
    for (int r = 0; r < 16; r++)
        for (int d = 0; d < D; d += 32) {
            __m512i v = _mm512_setzero_si512();
            if (r < n) {
                const float *x = q + ((size_t)(r0 + r) * H + h) * D + d;
                v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
            }
            _mm512_storeu_si512((void *)(qb + (size_t)r * D + d), v);
        }
    /* scores [16][width]: 16 keys a tile */
    for (int64_t g = 0; g < 2 * steps; g++) {
        _tile_zero(2);
        for (int st = 0; st < dsteps; st++) {
            _tile_loadd(0, qb + 32 * st, 2 * D);
            _tile_loadd(1, kv->kp + ((2 * s0 + g) * dsteps + st) * 512, 64);
            _tile_dpbf16ps(2, 0, 1);
        }
        _tile_stored(2, sc + 16 * g, 4 * width);
    }
    /* probabilities per row, over its own keys */
    float inv[16];
    for (int r = 0; r < 16; r++) {
        uint16_t *p = pb + (size_t)r * width;
        if (r >= n) {
            memset(p, 0, sizeof(uint16_t) * width);
            continue;
        }
        int64_t pos = start + r0 + r, lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
        float *s = sc + (size_t)r * width;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t c = 0; c < width; c += 16) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + c), _mm512_set1_ps(q_scale));
            v = softcap16(v, softcap);
            int64_t k = klo + c; /* keys k .. k + 15 */
            int j0 = lo > k ? (int)(lo - k < 16 ? lo - k : 16) : 0, j1 = pos + 1 - k < 16 ? (int)(pos + 1 - k) : 16;
            if (j1 < 0) j1 = 0;
            __mmask16 valid = j1 > j0 ? (__mmask16)(((1u << j1) - 1) & ~((1u << j0) - 1)) : 0;
            v = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, v);
            mx = _mm512_max_ps(mx, v);
            _mm512_storeu_ps(s + c, v);
        }
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
        for (int64_t c = 0; c < width; c += 32) {
            __m512bh e = _mm512_cvtne2ps_pbh(exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(s + c + 16), m)),
                                             exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(s + c), m)));
            _mm512_storeu_si512((void *)(p + c), (__m512i)e);
            /* the sum of the rounded values, 16 keys at a time in order */
            sum = _mm512_add_ps(_mm512_add_ps(sum, vld_bf16(p + c)), vld_bf16(p + c + 16));
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    /* out = p . v / sum, 16 dimensions a tile */
    for (int b = 0; b < D / 16; b++) {
        _tile_zero(2);
        for (int64_t st = 0; st < steps; st++) {
            _tile_loadd(0, pb + 32 * st, 2 * width);
            _tile_loadd(1, kv->vp + ((int64_t)b * kv->steps + s0 + st) * 512, 64);
            _tile_dpbf16ps(2, 0, 1);
        }
        _tile_stored(2, acc, 64);
        for (int r = 0; r < n; r++) {
            __m512 o = _mm512_mul_ps(_mm512_loadu_ps(acc + 16 * r), _mm512_set1_ps(inv[r]));
            size_t at = ((size_t)(r0 + r) * H + h) * D + 16 * b;
            if (bf16)
                _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), (__m256i)_mm512_cvtneps_pbh(o));
            else
                _mm512_storeu_ps((float *)out + at, o);
        }
    }
}
#endif

/* Attention of S prepared query rows q [S, H, D] (normalised and rotated, float32) at positions start.. over
 * caches [KV, max_len, D] (float32, or bfloat16 when bf16) that hold their keys and values and everything
 * before -> out [S, H * D] in the caches' type, on AMX tiles (see the top of this file). Returns 0, -1 when out
 * of memory, -2 where the tiles are not available, D is not a multiple of 32 or KV is over 64. */
int cg_tile_attention(int S, int H, int KV, int D, int64_t start, int64_t max_len, int window, float q_scale,
                      float softcap, const float *q, const void *kcache, const void *vcache, void *out, int bf16) {
#ifdef HAVE_TILE_ATTENTION
    if (!cg_amx_on || D % 32 || S < 1 || KV > 64) return -2;
    int64_t end = start + S, lo = window > 0 && start - window + 1 > 0 ? start - window + 1 : 0;
    int64_t first = lo / 32 * 32, n = end - first, steps = (n + 31) / 32;
    size_t kbytes = (size_t)cg_bf16_packed_size(n, D), vbytes = (size_t)steps * 32 * D;
    uint16_t *kp = (uint16_t *)malloc(sizeof(uint16_t) * kbytes * KV), *vp = (uint16_t *)malloc(sizeof(uint16_t) * vbytes * KV);
    if (!kp || !vp) {
        free(kp);
        free(vp);
        return -1;
    }
    packed_kv kvs[64];
    for (int k = 0; k < KV; k++) {
        size_t at = ((size_t)k * max_len + first) * D * (bf16 ? 2 : 4);
        cg_bf16_pack((const char *)kcache + at, !bf16, D, n, D, kp + kbytes * k);
        pack_values((const char *)vcache + at, bf16, n, steps, D, vp + vbytes * k);
        kvs[k] = (packed_kv){first, steps, kp + kbytes * k, vp + vbytes * k};
    }
    int blocks = (S + 15) / 16, tasks = blocks * H, failed = 0;
    int64_t width = 32 * steps + 32;
#pragma omp parallel
    {
        uint16_t *qb = (uint16_t *)aligned_alloc(64, sizeof(uint16_t) * 16 * (size_t)D);
        float *sc = (float *)aligned_alloc(64, sizeof(float) * 16 * (size_t)width);
        uint16_t *pb = (uint16_t *)aligned_alloc(64, sizeof(uint16_t) * 16 * (size_t)width);
        float *acc = (float *)aligned_alloc(64, sizeof(float) * 256);
        int bad = !qb || !sc || !pb || !acc;
        if (bad) {
#pragma omp atomic write
            failed = 1;
        }
        tile_config cfg = {.palette = 1};
        for (int i = 0; i < 3; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
        if (!bad) _tile_loadconfig(&cfg);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < tasks; task++) {
            if (bad) continue;
            int b = task / H, h = task % H, r0 = 16 * b, rows = S - r0 < 16 ? S - r0 : 16;
            attend_block(H, D, start, window, q_scale, softcap, q, h, r0, rows, &kvs[h / (H / KV)], qb, sc, pb, acc,
                         out, bf16);
        }
        if (!bad) _tile_release();
        free(qb);
        free(sc);
        free(pb);
        free(acc);
    }
    free(kp);
    free(vp);
    return failed ? -1 : 0;
#else
    (void)S, (void)H, (void)KV, (void)D, (void)start, (void)max_len, (void)window, (void)q_scale, (void)softcap;
    (void)q, (void)kcache, (void)vcache, (void)out, (void)bf16;
    return -2;
#endif
}
