/* x86 AVX-512 fp32 x 1-bit for token batches (several activation rows): lanes over 16 output rows.
 *
 * The GEMV kernels of kernels_avx512.c put input columns in the lanes, so every output needs a horizontal sum
 * per row; with many rows (a VLA forward over image + text tokens) and short rows (K of a few hundred) those
 * sums cost as much as the work. Here, for each tile of 16 output rows:
 *   1. the tile's sign bits are transposed once into one 16-bit lane mask per input column
 *      (masks[c] bit j = sign bit of output row j0 + j at column c), 32 columns at a time: one gather of 4
 *      bytes from each of the 16 rows, a byte shuffle + dword permute that groups the bytes by column byte,
 *      then one shift + movepi8_mask per bit position;
 *   2. the tile's group scales become float32 vectors over the 16 outputs ([groups][16]);
 *   3. every activation row adds x[r, c] into the lanes whose mask bit is set (one masked add of a broadcast
 *      per column and row, up to 8 rows sharing each mask), and each group's sum becomes
 *      2 s[j, g] * sum - s[j, g] * sum_g(x[r]), the same algebra as every other fp32 x 1-bit variant.
 * The transposition is paid once per tile and shared by all rows, so this variant is chosen from
 * EVLA_B1_TILE_MIN_ROWS rows on; no dense weight is formed (a tile's masks are 2 bytes per input column).
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "edgevla/kernels.h"

#define TILE 16
#define MAX_R 8

/* CALL(r) with r a compile-time constant 1..MAX_R equal to R, so each case keeps its accumulators in registers */
#define WITH_CONSTANT_ROWS(R, CALL)                                                                     \
    switch (R) {                                                                                        \
        case 8: CALL(8); break;                                                                         \
        case 7: CALL(7); break;                                                                         \
        case 6: CALL(6); break;                                                                         \
        case 5: CALL(5); break;                                                                         \
        case 4: CALL(4); break;                                                                         \
        case 3: CALL(3); break;                                                                         \
        case 2: CALL(2); break;                                                                         \
        default: CALL(1); break;                                                                        \
    }

/* masks[c] for c < 8 * kbytes of output rows j0.. (rows past n repeat the last one; never stored). */
static void transpose_tile(const evla_b1_plane *w, int32_t j0, int32_t nj, int32_t kbytes, uint16_t *masks) {
    const int32_t row_bytes = evla_b1_row_bytes(w->in_features, w->group_size);
    const uint8_t *base = w->bits + (size_t)j0 * row_bytes;
    int32_t offsets[TILE];
    for (int j = 0; j < TILE; j++) offsets[j] = (j < nj ? j : nj - 1) * row_bytes;
    const __m512i offset_v = _mm512_loadu_si512(offsets);
    /* within each 128-bit lane (rows 4L..4L+3, 4 bytes each): byte 4c + r <- byte 4r + c (group by byte c) */
    const __m512i by_byte = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    /* dword 4c + L <- dword 4L + c: bytes 16c..16c+15 then hold byte c of rows 0..15 */
    const __m512i by_row = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    int32_t byte = 0;
    for (; byte + 4 <= kbytes; byte += 4) {
        __m512i v = _mm512_i32gather_epi32(offset_v, (const void *)(base + byte), 1);
        v = _mm512_permutexvar_epi32(by_row, _mm512_shuffle_epi8(v, by_byte));
        for (int t = 0; t < 8; t++) {
            /* a 16-bit shift left by 7 - t puts bit t of every byte at that byte's top bit */
            const uint64_t m = _cvtmask64_u64(_mm512_movepi8_mask(_mm512_slli_epi16(v, 7 - t)));
            for (int c = 0; c < 4; c++) masks[(byte + c) * 8 + t] = (uint16_t)(m >> (16 * c));
        }
    }
    for (; byte < kbytes; byte++)
        for (int t = 0; t < 8; t++) {
            uint32_t m = 0;
            for (int j = 0; j < TILE; j++) m |= (uint32_t)((base[offsets[j] + byte] >> t) & 1u) << j;
            masks[byte * 8 + t] = (uint16_t)m;
        }
}

/* The tile's group scales s and 2 s as [groups][16] float32 vectors. */
static void tile_scales(const evla_b1_plane *w, int32_t j0, int32_t nj, int32_t groups, float *s1, float *s2) {
    for (int32_t gi = 0; gi < groups; gi++)
        for (int j = 0; j < TILE; j++) {
            const float s = evla_plane_scale(w, j0 + (j < nj ? j : nj - 1), groups, gi);
            s1[gi * TILE + j] = s;
            s2[gi * TILE + j] = 2.0f * s;
        }
}

/* R activation rows (constant after inlining) against one tile: out[r] = the tile's 16 outputs of row r. */
static inline __attribute__((always_inline)) void tile_rows(const float *x, int32_t k, int32_t g, int32_t groups,
                                                            const uint16_t *masks, const float *s1, const float *s2,
                                                            const float *gsum, const int R, __m512 out[MAX_R]) {
    for (int r = 0; r < R; r++) out[r] = _mm512_setzero_ps();
    for (int32_t gi = 0; gi < groups; gi++) {
        __m512 a[MAX_R];
        for (int r = 0; r < R; r++) a[r] = _mm512_setzero_ps();
        const int32_t end = (gi + 1) * g < k ? (gi + 1) * g : k;
        for (int32_t c = gi * g; c < end; c++) {
            const __mmask16 m = _cvtu32_mask16(masks[c]);
            for (int r = 0; r < R; r++) a[r] = _mm512_mask_add_ps(a[r], m, a[r], _mm512_set1_ps(x[(size_t)r * k + c]));
        }
        const __m512 one = _mm512_load_ps(s1 + gi * TILE), two = _mm512_load_ps(s2 + gi * TILE);
        for (int r = 0; r < R; r++) {
            out[r] = _mm512_fmadd_ps(a[r], two, out[r]);
            out[r] = _mm512_fnmadd_ps(_mm512_set1_ps(gsum[(size_t)r * groups + gi]), one, out[r]);
        }
    }
}

void evla_b1_gemm_f32_avx512(const float *x, int32_t rows, const evla_b1_plane *w, float *y);

void evla_b1_gemm_f32_avx512_tiles(const float *x, int32_t rows, const evla_b1_plane *w, float *y) {
    const int32_t k = w->in_features, g = w->group_size, n = w->out_features;
    const int32_t groups = evla_b1_row_groups(k, g), columns = (k + 7) / 8 * 8;
    /* one aligned block: scales [groups][16] twice, group sums [rows][groups], masks [columns] */
    const size_t scale_bytes = sizeof(float) * (size_t)groups * TILE;
    const size_t gsum_bytes = (sizeof(float) * (size_t)rows * groups + 63) / 64 * 64;
    const size_t bytes = 2 * scale_bytes + gsum_bytes + (sizeof(uint16_t) * (size_t)columns + 63) / 64 * 64;
    char *block = aligned_alloc(64, bytes);
    if (!block) { evla_b1_gemm_f32_avx512(x, rows, w, y); return; }  /* it falls back to the reference in turn */
    float *s1 = (float *)block, *s2 = (float *)(block + scale_bytes), *gsum = (float *)(block + 2 * scale_bytes);
    uint16_t *masks = (uint16_t *)(block + 2 * scale_bytes + gsum_bytes);
    evla_group_sums_f32(x, rows, k, g, gsum);
    for (int32_t j0 = 0; j0 < n; j0 += TILE) {
        const int32_t nj = n - j0 < TILE ? n - j0 : TILE;
        transpose_tile(w, j0, nj, (k + 7) / 8, masks);
        tile_scales(w, j0, nj, groups, s1, s2);
        const __mmask16 store = _cvtu32_mask16((1u << nj) - 1u);
        for (int32_t r0 = 0; r0 < rows; r0 += MAX_R) {
            const int R = rows - r0 < MAX_R ? rows - r0 : MAX_R;
            const float *xr = x + (size_t)r0 * k, *gr = gsum + (size_t)r0 * groups;
            __m512 out[MAX_R];
#define F32_ROWS(r) tile_rows(xr, k, g, groups, masks, s1, s2, gr, r, out)
            WITH_CONSTANT_ROWS(R, F32_ROWS);
#undef F32_ROWS
            for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + (size_t)(r0 + r) * n + j0, store, out[r]);
        }
    }
    free(block);
}

/* ---- int8 activations: 64 weights x one row per instruction ----
 * The tile's sign bits become one 64-bit byte mask per column quad (bit 4j + t = sign bit of output j at
 * column 4q + t), so one masked byte move gives vpdpbusd its unsigned operand (1 where the sign is +) and
 * each row's four int8 activations of the quad are one 32-bit broadcast: per group
 * 2 s * sum(bit * q) - s * sum(q), then the row's quantization scale. */

/* quads[q] for every column quad of output rows j0.. (all row_bytes, padding included), straight from the bits:
   one gather of 4 bytes from each of the 16 rows gives, per 128-bit lane, 4 rows' bytes; a byte shuffle
   repeats byte c of each row over its dword, and a test against the dword pattern (1, 2, 4, 8) << 4h sets bit
   4j + t exactly when row j has bit 4h + t of byte c, i.e. column 8 (byte + c) + 4h + t. */
static void quad_masks_tile(const evla_b1_plane *w, int32_t j0, int32_t nj, uint64_t *quads) {
    const int32_t row_bytes = evla_b1_row_bytes(w->in_features, w->group_size);
    const uint8_t *base = w->bits + (size_t)j0 * row_bytes;
    int32_t offsets[TILE];
    for (int j = 0; j < TILE; j++) offsets[j] = (j < nj ? j : nj - 1) * row_bytes;
    const __m512i offset_v = _mm512_loadu_si512(offsets);
    __m512i repeat[4];
    for (int c = 0; c < 4; c++)
        repeat[c] = _mm512_broadcast_i32x4(_mm_setr_epi8(c, c, c, c, 4 + c, 4 + c, 4 + c, 4 + c, 8 + c, 8 + c, 8 + c,
                                                         8 + c, 12 + c, 12 + c, 12 + c, 12 + c));
    const __m512i low = _mm512_set1_epi32(0x08040201), high = _mm512_set1_epi32((int)0x80402010u);
    int32_t byte = 0;
    for (; byte + 4 <= row_bytes; byte += 4) {
        const __m512i v = _mm512_i32gather_epi32(offset_v, (const void *)(base + byte), 1);
        for (int c = 0; c < 4; c++) {
            const __m512i r = _mm512_shuffle_epi8(v, repeat[c]);
            quads[2 * (byte + c)] = _cvtmask64_u64(_mm512_test_epi8_mask(r, low));
            quads[2 * (byte + c) + 1] = _cvtmask64_u64(_mm512_test_epi8_mask(r, high));
        }
    }
    for (; byte < row_bytes; byte++)
        for (int h = 0; h < 2; h++) {
            uint64_t m = 0;
            for (int j = 0; j < TILE; j++)
                for (int t = 0; t < 4; t++) m |= (uint64_t)((base[offsets[j] + byte] >> (4 * h + t)) & 1u) << (4 * j + t);
            quads[2 * byte + h] = m;
        }
}

static inline __attribute__((always_inline)) void tile_rows_i8(const int8_t *q, int32_t kp, int32_t g,
                                                               int32_t groups, const uint64_t *quads,
                                                               const float *s1, const float *s2, const float *gsum,
                                                               const int R, __m512 out[MAX_R]) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int r = 0; r < R; r++) out[r] = _mm512_setzero_ps();
    for (int32_t gi = 0; gi < groups; gi++) {
        __m512i a[MAX_R];
        for (int r = 0; r < R; r++) a[r] = _mm512_setzero_si512();
        for (int32_t qd = gi * g / 4; qd < (gi + 1) * g / 4; qd++) {
            const __m512i bits = _mm512_maskz_mov_epi8(_cvtu64_mask64(quads[qd]), ones);
            for (int r = 0; r < R; r++) {
                int32_t four;
                memcpy(&four, q + (size_t)r * kp + 4 * qd, 4);
                a[r] = _mm512_dpbusd_epi32(a[r], bits, _mm512_set1_epi32(four));
            }
        }
        const __m512 one = _mm512_load_ps(s1 + gi * TILE), two = _mm512_load_ps(s2 + gi * TILE);
        for (int r = 0; r < R; r++) {
            out[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[r]), two, out[r]);
            out[r] = _mm512_fnmadd_ps(_mm512_set1_ps(gsum[(size_t)r * groups + gi]), one, out[r]);
        }
    }
}

void evla_b1_gemm_i8_ref(const evla_i8_rows *qx, int32_t rows, const evla_b1_plane *w, float *y);

void evla_b1_gemm_i8_avx512_tiles(const evla_i8_rows *qx, int32_t rows, const evla_b1_plane *w, float *y) {
    const int32_t n = w->out_features, g = w->group_size, kp = qx->kp, groups = qx->groups;
    const size_t scale_bytes = sizeof(float) * (size_t)groups * TILE;
    const size_t quad_bytes = (sizeof(uint64_t) * (size_t)(kp / 4) + 63) / 64 * 64;
    char *block = aligned_alloc(64, 2 * scale_bytes + quad_bytes);
    if (!block) { evla_b1_gemm_i8_ref(qx, rows, w, y); return; }  /* the reference needs no scratch */
    float *s1 = (float *)block, *s2 = (float *)(block + scale_bytes);
    uint64_t *quads = (uint64_t *)(block + 2 * scale_bytes);
    for (int32_t j0 = 0; j0 < n; j0 += TILE) {
        const int32_t nj = n - j0 < TILE ? n - j0 : TILE;
        quad_masks_tile(w, j0, nj, quads);  /* the padded columns too: their bits are 0, and q is 0 there */
        tile_scales(w, j0, nj, groups, s1, s2);
        const __mmask16 store = _cvtu32_mask16((1u << nj) - 1u);
        for (int32_t r0 = 0; r0 < rows; r0 += MAX_R) {
            const int R = rows - r0 < MAX_R ? rows - r0 : MAX_R;
            const int8_t *qr = qx->q + (size_t)r0 * kp;
            const float *gr = qx->group_sums + (size_t)r0 * groups;
            __m512 out[MAX_R];
#define I8_ROWS(r) tile_rows_i8(qr, kp, g, groups, quads, s1, s2, gr, r, out)
            WITH_CONSTANT_ROWS(R, I8_ROWS);
#undef I8_ROWS
            for (int r = 0; r < R; r++)
                _mm512_mask_storeu_ps(y + (size_t)(r0 + r) * n + j0, store,
                                      _mm512_mul_ps(out[r], _mm512_set1_ps(qx->row_scales[r0 + r])));
        }
    }
    free(block);
}
