/* x86 AVX-512 (F, BW, VNNI) variants, chosen at run time by CPU features.
 *
 * Sign bits are used directly as AVX-512 lane masks: fp32 x 1-bit adds the activations whose bit is set
 * (16 lanes per 2 weight bytes, one masked add); int8 x 1-bit zeroes the int8 activations whose bit is
 * clear (one masked move per 8 weight bytes) and sums them with VNNI (vpdpbusd against ones). Group sums
 * S1 are scaled into vector totals (no horizontal add per group); the -sum(x) half of 2*S1 - sum(x) is one
 * dot product of the row's scales (converted with vcvtph2ps) with the activation group sums. Four output
 * rows share each activation load.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "edgevla/kernels.h"

/* float16 scales of one row -> float32, 16 at a time with vcvtph2ps */
static void scales_to_f32(const uint16_t *h, int32_t count, float *out) {
    int32_t i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < count; i++) out[i] = evla_f16_to_f32(h[i]);
}

static float dot_f32(const float *a, const float *b, int32_t count) {
    __m512 acc = _mm512_setzero_ps();
    int32_t i = 0;
    for (; i + 16 <= count; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    float s = _mm512_reduce_add_ps(acc);
    for (; i < count; i++) s += a[i] * b[i];
    return s;
}

/* Four output rows j0.. (the last block repeats row j0 where n runs out): their bit rows, and their group
   scales as float32 (float16 converted 16 at a time, or log codes through the plane's table). */
static void load_block(const evla_b1_plane *w, int32_t j0, int32_t nj, int32_t groups, const uint8_t *b[4],
                       float sc[4][groups]) {
    const int32_t row_bytes = evla_b1_row_bytes(w->in_features, w->group_size);
    for (int32_t q = 0; q < 4; q++) {
        const int32_t jq = j0 + (q < nj ? q : 0);
        b[q] = w->bits + (size_t)jq * row_bytes;
        if (w->scales) {
            scales_to_f32(w->scales + (size_t)jq * groups, groups, sc[q]);
        } else {
            for (int32_t gi = 0; gi < groups; gi++) sc[q][gi] = evla_plane_scale(w, jq, groups, gi);
        }
    }
}

/* One block of four output rows against R (1 or 2) activation rows: every 16 weights of a weight row are
   one mask (loaded straight from memory into a mask register, no general-register round trip) applied to
   R activation vectors, so the masks are shared by the batch rows. Written for constant R and inlined. */
static inline __attribute__((always_inline)) void b1_f32_block(const float *x, int32_t k, int32_t g,
                                                               int32_t groups, const uint8_t *b[4],
                                                               float sc[4][groups], const float *gsum, const int R,
                                                               float out[2][4]) {
    const int32_t full_pairs = k / 16, pairs_per_group = g / 16;  /* a pair of bytes = 16 weights = one zmm */
    __m512 t[2][4];
    float tail[2][4] = {{0}};
    for (int rr = 0; rr < R; rr++)
        for (int q = 0; q < 4; q++) t[rr][q] = _mm512_setzero_ps();
    for (int32_t gi = 0; gi < groups; gi++) {
        __m512 a[2][4];
        for (int rr = 0; rr < R; rr++)
            for (int q = 0; q < 4; q++) a[rr][q] = _mm512_setzero_ps();
        const int32_t p_start = gi * pairs_per_group;
        const int32_t p_end = p_start + pairs_per_group < full_pairs ? p_start + pairs_per_group : full_pairs;
        for (int32_t p = p_start; p < p_end; p++) {
            __mmask16 m[4];
            for (int q = 0; q < 4; q++) m[q] = _load_mask16((__mmask16 *)(b[q] + 2 * p));
            for (int rr = 0; rr < R; rr++) {
                const __m512 xv = _mm512_loadu_ps(x + (size_t)rr * k + 16 * p);
                for (int q = 0; q < 4; q++) a[rr][q] = _mm512_mask_add_ps(a[rr][q], m[q], a[rr][q], xv);
            }
        }
        for (int32_t i = (p_end > p_start ? p_end : p_start) * 16; i < (gi + 1) * g && i < k; i++)
            for (int rr = 0; rr < R; rr++)
                for (int q = 0; q < 4; q++)
                    if (evla_b1_sign_bit(b[q], i)) tail[rr][q] += 2.0f * sc[q][gi] * x[(size_t)rr * k + i];
        for (int q = 0; q < 4; q++) {
            const __m512 s2 = _mm512_set1_ps(2.0f * sc[q][gi]);
            for (int rr = 0; rr < R; rr++) t[rr][q] = _mm512_fmadd_ps(a[rr][q], s2, t[rr][q]);
        }
    }
    for (int rr = 0; rr < R; rr++)
        for (int q = 0; q < 4; q++)
            out[rr][q] = _mm512_reduce_add_ps(t[rr][q]) + tail[rr][q] - dot_f32(sc[q], gsum + (size_t)rr * groups, groups);
}

void evla_b1_gemm_f32_avx512(const float *x, int32_t rows, const evla_b1_plane *w, float *y) {
    const int32_t k = w->in_features, g = w->group_size, n = w->out_features;
    const int32_t groups = evla_b1_row_groups(k, g);
    float *gsum_all = malloc(sizeof(float) * (size_t)rows * groups);
    if (!gsum_all) { evla_b1_gemm_f32_ref(x, rows, w, y); return; }  /* no scratch: the reference needs none */
    evla_group_sums_f32(x, rows, k, g, gsum_all);
    for (int32_t j0 = 0; j0 < n; j0 += 4) {  /* weights outer: each block's scales converted once for all rows */
        const int32_t nj = n - j0 < 4 ? n - j0 : 4;
        const uint8_t *b[4];
        float sc[4][groups];
        load_block(w, j0, nj, groups, b, sc);
        for (int32_t r = 0; r < rows; r += 2) {
            float out[2][4];
            const int pair = r + 1 < rows;
            if (pair) b1_f32_block(x + (size_t)r * k, k, g, groups, b, sc, gsum_all + (size_t)r * groups, 2, out);
            else b1_f32_block(x + (size_t)r * k, k, g, groups, b, sc, gsum_all + (size_t)r * groups, 1, out);
            for (int rr = 0; rr <= pair; rr++)
                for (int32_t q = 0; q < nj; q++) y[(size_t)(r + rr) * n + j0 + q] = out[rr][q];
        }
    }
    free(gsum_all);
}

void evla_b1_gemm_i8_avx512(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y) {
    const int32_t g = w->group_size, n = w->out_features, kp = qx->kp, groups = qx->groups;
    const int8_t *q_all = qx->q;
    const float *scale_all = qx->row_scales, *gsum_all = qx->group_sums;
    const __m512i ones = _mm512_set1_epi8(1);
    const evla_b1_plane plane = evla_plane_of(w);
    for (int32_t j0 = 0; j0 < n; j0 += 4) {  /* weights outer: each block's scales converted once for all rows */
        const int32_t nj = n - j0 < 4 ? n - j0 : 4;
        const uint8_t *b[4];
        float sc[4][groups];
        load_block(&plane, j0, nj, groups, b, sc);
        for (int32_t r = 0; r < rows; r++) {
            const int8_t *q = q_all + (size_t)r * kp;
            const float scale_x = scale_all[r];
            const float *gsum_f = gsum_all + (size_t)r * groups;
            __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
            for (int32_t gi = 0; gi < groups; gi++) {
                __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
                for (int32_t i = gi * g; i < (gi + 1) * g; i += 64) {
                    const __m512i xv = _mm512_loadu_si512((const void *)(q + i));
                    uint64_t m0, m1, m2, m3;
                    memcpy(&m0, b[0] + i / 8, 8); memcpy(&m1, b[1] + i / 8, 8);
                    memcpy(&m2, b[2] + i / 8, 8); memcpy(&m3, b[3] + i / 8, 8);
                    a0 = _mm512_dpbusd_epi32(a0, ones, _mm512_maskz_mov_epi8(m0, xv));
                    a1 = _mm512_dpbusd_epi32(a1, ones, _mm512_maskz_mov_epi8(m1, xv));
                    a2 = _mm512_dpbusd_epi32(a2, ones, _mm512_maskz_mov_epi8(m2, xv));
                    a3 = _mm512_dpbusd_epi32(a3, ones, _mm512_maskz_mov_epi8(m3, xv));
                }
                t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(2.0f * sc[0][gi]), t0);
                t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(2.0f * sc[1][gi]), t1);
                t2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a2), _mm512_set1_ps(2.0f * sc[2][gi]), t2);
                t3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a3), _mm512_set1_ps(2.0f * sc[3][gi]), t3);
            }
            const float out[4] = {_mm512_reduce_add_ps(t0) - dot_f32(sc[0], gsum_f, groups),
                                  _mm512_reduce_add_ps(t1) - dot_f32(sc[1], gsum_f, groups),
                                  _mm512_reduce_add_ps(t2) - dot_f32(sc[2], gsum_f, groups),
                                  _mm512_reduce_add_ps(t3) - dot_f32(sc[3], gsum_f, groups)};
            for (int32_t qq = 0; qq < nj; qq++) y[(size_t)r * n + j0 + qq] = scale_x * out[qq];
        }
    }
}

/* N:M with m = 4 (n = 2 or 1). For 16 kept values at a time the lane indices are computed in registers:
   broadcast the 32 index bits, shift lane i right by 2*i, mask to 2 bits, add the group's base column; the
   kept activations are then picked from the 32 (2:4) or 64 (1:4) loaded ones with vpermt2ps. The index
   vector is built once per 16 values and reused for every batch row. */
void evla_nm_m4_gemm_f32_avx512(const float *x, int32_t rows, const evla_nm_matrix *w, float *y) {
    const int32_t k = w->in_features, n = w->out_features, keep = w->n;
    const int32_t fields = evla_nm_row_values(k, keep, 4), index_bytes = evla_nm_row_index_bytes(k, keep, 4);
    const int32_t groups_per_step = 16 / keep;  /* 8 groups (2:4) or 16 groups (1:4) per 16 values */
    const int32_t main_fields = (k / 4) / groups_per_step * 16;
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = keep == 2 ? _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28)
                                   : _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
    const __m512i three = _mm512_set1_epi32(3), low5 = _mm512_set1_epi32(31);
    for (int32_t j = 0; j < n; j++) {
        const uint16_t *values = w->values + (size_t)j * fields;
        const uint8_t *indices = w->indices + (size_t)j * index_bytes;
        __m512 acc[EVLA_MAX_ROWS];
        for (int32_t r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
        for (int32_t f = 0; f < main_fields; f += 16) {
            uint32_t word;
            memcpy(&word, indices + f / 4, 4);
            const __m512i lane = _mm512_add_epi32(
                _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)word), shifts), three), base);
            const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(values + f)));
            const int32_t column = f / keep * 4;
            for (int32_t r = 0; r < rows; r++) {
                const float *xr = x + (size_t)r * k + column;
                __m512 kept = _mm512_permutex2var_ps(_mm512_loadu_ps(xr), lane, _mm512_loadu_ps(xr + 16));
                if (keep == 1) {  /* lanes whose column is >= 32 come from the second pair of vectors */
                    const __m512 upper = _mm512_permutex2var_ps(_mm512_loadu_ps(xr + 32), _mm512_and_si512(lane, low5),
                                                                _mm512_loadu_ps(xr + 48));
                    kept = _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32(32)), kept, upper);
                }
                acc[r] = _mm512_fmadd_ps(v, kept, acc[r]);
            }
        }
        for (int32_t r = 0; r < rows; r++) {
            float s = _mm512_reduce_add_ps(acc[r]);
            s += evla_nm_dot_fields(values, indices, keep, 4, k, x + (size_t)r * k, main_fields, fields);
            y[(size_t)r * n + j] = s;
        }
    }
}

/* Binary x binary with group size 64: one XOR + VPOPCNTQ per 8 groups (512 weights); the counts are turned
   into floats and multiplied by the eight group scales; sum_g scale_g * valid_g is one dot per row. */
void evla_bxb_gemm_avx512(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w,
                          float *y) {
    const int32_t k = w->in_features, n = w->out_features;
    const int32_t row_bytes = evla_b1_row_bytes(k, 64), groups = evla_b1_row_groups(k, 64);
    float *valid = malloc(sizeof(float) * (size_t)groups);
    float *sc = malloc(sizeof(float) * (size_t)groups + 64);
    for (int32_t gi = 0; gi < groups; gi++) valid[gi] = (float)((gi + 1) * 64 <= k ? 64 : k - gi * 64);
    const int32_t main_groups = groups / 8 * 8;
    for (int32_t j = 0; j < n; j++) {
        const uint8_t *bits = w->bits + (size_t)j * row_bytes;
        scales_to_f32(w->scales + (size_t)j * groups, groups, sc);
        const float base = dot_f32(sc, valid, groups);
        for (int32_t r = 0; r < rows; r++) {
            const uint8_t *xr = xbits + (size_t)r * row_bytes;
            __m256 acc = _mm256_setzero_ps();
            int32_t gi = 0;
            for (; gi < main_groups; gi += 8) {
                const __m512i differ = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(xr + 8 * gi),
                                                                            _mm512_loadu_si512(bits + 8 * gi)));
                acc = _mm256_fmadd_ps(_mm512_cvtepi64_ps(differ), _mm256_loadu_ps(sc + gi), acc);
            }
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            float counted = _mm_cvtss_f32(h);
            for (; gi < groups; gi++) {
                uint64_t a, b;
                memcpy(&a, xr + 8 * gi, 8);
                memcpy(&b, bits + 8 * gi, 8);
                counted += sc[gi] * (float)__builtin_popcountll(a ^ b);
            }
            y[(size_t)r * n + j] = x_scales[r] * (base - 2.0f * counted);
        }
    }
    free(sc);
    free(valid);
}
