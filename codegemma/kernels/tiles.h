/* AMX tile configuration, shared by the GGUF (amx.h) and bfloat16 (ops.c) products. */
#ifndef CODEGEMMA_TILES_H
#define CODEGEMMA_TILES_H

#include <stdint.h>

/* what ldtilecfg reads: palette 1, then each tile's bytes per row and rows */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) tile_config;

/* 1 when this process runs its GGUF and bfloat16 products on AMX tiles (set once by cg_amx, in gguf.c) */
extern int cg_amx_on;

/* Fetch a share of the lines of the next 16 weight rows (`bytes` each, contiguous after W's 16) at step
 * `step` of `steps`: a tile reads 16 short rows across, no stream a hardware prefetcher would follow. */
static inline __attribute__((always_inline)) void prefetch_next_tile(const void *W, int64_t bytes, int64_t step,
                                                                     int64_t steps) {
    int64_t lines = (16 * bytes + 63) / 64, per = (lines + steps - 1) / steps;
    for (int64_t l = step * per; l < (step + 1) * per && l < lines; l++)
        _mm_prefetch((const char *)W + 16 * bytes + l * 64, _MM_HINT_T0);
}

#endif
