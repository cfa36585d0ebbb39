/* x86 AVX2 + FMA + F16C variants (compiled with -mavx2 -mfma -mf16c; chosen at run time by CPU features).
 *
 * fp32 x 1-bit: a 256-entry table turns each weight byte into eight +-1.0 lanes, so each byte costs one
 * fused load + FMA; four output rows share each activation load; the float16 group scale is applied once per
 * group. int8 x 1-bit: 32 sign bits become a 32-byte mask by a byte shuffle + compare; maddubs/madd sum the
 * masked int8 activations; batch rows (up to four at a time) reuse each mask. 2:4: a table turns each index
 * byte (two groups) into four lane offsets; the kept activations are permuted into place (no gathers) and
 * multiplied by the float16 values (F16C).
 */
#include <immintrin.h>
#include <stdlib.h>

#include "edgevla/kernels.h"

static float b1_signs[256][8] __attribute__((aligned(32)));  /* byte -> +1/-1 per weight, LSB first */
static int32_t nm24_offsets[256][8] __attribute__((aligned(32)));  /* index byte -> 4 lane offsets, twice */

static void init_tables(void) {
    static int done = 0;
    if (done) return;
    for (int byte = 0; byte < 256; byte++) {
        for (int lane = 0; lane < 8; lane++) b1_signs[byte][lane] = (byte >> lane) & 1 ? 1.0f : -1.0f;
        for (int f = 0; f < 8; f++) nm24_offsets[byte][f] = ((f % 4) / 2) * 4 + ((byte >> (2 * (f % 4))) & 3);
    }
    done = 1;
}

/* float16 scales of one row -> float32, 8 at a time with vcvtph2ps */
static void scales_to_f32(const uint16_t *h, int32_t count, float *out) {
    int32_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < count; i++) out[i] = evla_f16_to_f32(h[i]);
}

/* group scales of row j of a plane as float32 */
static void row_scales(const evla_b1_plane *w, int32_t j, int32_t groups, float *out) {
    if (w->scales) {
        scales_to_f32(w->scales + (size_t)j * groups, groups, out);
    } else {
        for (int32_t gi = 0; gi < groups; gi++) out[gi] = evla_plane_scale(w, j, groups, gi);
    }
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

void evla_b1_gemm_f32_avx2(const float *x, int32_t rows, const evla_b1_plane *w, float *y) {
    init_tables();
    const int32_t k = w->in_features, g = w->group_size, n = w->out_features;
    const int32_t row_bytes = evla_b1_row_bytes(k, g), groups = evla_b1_row_groups(k, g);
    const int32_t full_bytes = k / 8, bytes_per_group = g / 8;
    /* Four output rows at a time share each activation load; every weight byte is one fused
       load + FMA against a +-1 vector from the table. Activations past the last whole byte: scalar. */
    for (int32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * k;
        for (int32_t j0 = 0; j0 < n; j0 += 4) {
            const int32_t nj = n - j0 < 4 ? n - j0 : 4;
            const uint8_t *b0 = w->bits + (size_t)j0 * row_bytes;
            const uint8_t *b1 = b0 + (nj > 1 ? row_bytes : 0), *b2 = b0 + (nj > 2 ? 2 * row_bytes : 0),
                          *b3 = b0 + (nj > 3 ? 3 * row_bytes : 0);
            float sc[4][groups];
            for (int32_t q = 0; q < 4; q++) row_scales(w, j0 + (q < nj ? q : 0), groups, sc[q]);
            __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
            float tail[4] = {0, 0, 0, 0};
            for (int32_t gi = 0; gi < groups; gi++) {
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, e0 = a0, e1 = a0, e2 = a0, e3 = a0;
                const int32_t b_start = gi * bytes_per_group;
                const int32_t b_end = b_start + bytes_per_group < full_bytes ? b_start + bytes_per_group : full_bytes;
                int32_t b = b_start;
                for (; b + 2 <= b_end; b += 2) {  /* two bytes per step: eight independent FMA chains */
                    const __m256 xv = _mm256_loadu_ps(xr + 8 * b), xw = _mm256_loadu_ps(xr + 8 * b + 8);
                    a0 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b0[b]]), a0);
                    a1 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b1[b]]), a1);
                    a2 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b2[b]]), a2);
                    a3 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b3[b]]), a3);
                    e0 = _mm256_fmadd_ps(xw, _mm256_load_ps(b1_signs[b0[b + 1]]), e0);
                    e1 = _mm256_fmadd_ps(xw, _mm256_load_ps(b1_signs[b1[b + 1]]), e1);
                    e2 = _mm256_fmadd_ps(xw, _mm256_load_ps(b1_signs[b2[b + 1]]), e2);
                    e3 = _mm256_fmadd_ps(xw, _mm256_load_ps(b1_signs[b3[b + 1]]), e3);
                }
                for (; b < b_end; b++) {
                    const __m256 xv = _mm256_loadu_ps(xr + 8 * b);
                    a0 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b0[b]]), a0);
                    a1 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b1[b]]), a1);
                    a2 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b2[b]]), a2);
                    a3 = _mm256_fmadd_ps(xv, _mm256_load_ps(b1_signs[b3[b]]), a3);
                }
                a0 = _mm256_add_ps(a0, e0); a1 = _mm256_add_ps(a1, e1);
                a2 = _mm256_add_ps(a2, e2); a3 = _mm256_add_ps(a3, e3);
                const float c0 = sc[0][gi], c1 = sc[1][gi], c2 = sc[2][gi], c3 = sc[3][gi];
                for (int32_t i = (b_end > b_start ? b_end : b_start) * 8; i < (gi + 1) * g && i < k; i++) {
                    tail[0] += (evla_b1_sign_bit(b0, i) ? c0 : -c0) * xr[i];
                    tail[1] += (evla_b1_sign_bit(b1, i) ? c1 : -c1) * xr[i];
                    tail[2] += (evla_b1_sign_bit(b2, i) ? c2 : -c2) * xr[i];
                    tail[3] += (evla_b1_sign_bit(b3, i) ? c3 : -c3) * xr[i];
                }
                t0 = _mm256_fmadd_ps(_mm256_set1_ps(c0), a0, t0); t1 = _mm256_fmadd_ps(_mm256_set1_ps(c1), a1, t1);
                t2 = _mm256_fmadd_ps(_mm256_set1_ps(c2), a2, t2); t3 = _mm256_fmadd_ps(_mm256_set1_ps(c3), a3, t3);
            }
            const float out[4] = {hsum256(t0), hsum256(t1), hsum256(t2), hsum256(t3)};
            for (int32_t q = 0; q < nj; q++) y[(size_t)r * n + j0 + q] = out[q] + tail[q];
        }
    }
}

/* 32 sign bits -> 32 bytes, 0xFF where the bit is set: replicate each byte 8 times, test one bit per lane. */
static inline __m256i sign_mask32(const uint8_t *bits) {
    const __m256i replicate = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i select = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    uint32_t word;
    memcpy(&word, bits, 4);
    const __m256i m = _mm256_shuffle_epi8(_mm256_set1_epi32((int)word), replicate);
    return _mm256_cmpeq_epi8(_mm256_and_si256(m, select), select);
}

void evla_b1_gemm_i8_avx2(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y) {
    const int32_t g = w->group_size, n = w->out_features, kp = qx->kp, groups = qx->groups;
    const int32_t row_bytes = kp / 8;
    const int8_t *q = qx->q;
    const float *rs = qx->row_scales, *gsum = qx->group_sums;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    float *sc = malloc(sizeof(float) * (size_t)groups);
    for (int32_t j = 0; j < n; j++) {
        const uint8_t *bits = w->bits + (size_t)j * row_bytes;
        scales_to_f32(w->scales + (size_t)j * groups, groups, sc);
        int32_t r0 = 0;
        for (; r0 + 4 <= rows; r0 += 4) {  /* four batch rows share each mask */
            const int8_t *q0 = q + (size_t)r0 * kp, *q1 = q0 + kp, *q2 = q0 + 2 * kp, *q3 = q0 + 3 * kp;
            __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
            float corr[4] = {0, 0, 0, 0};
            for (int32_t gi = 0; gi < groups; gi++) {
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (int32_t i = gi * g; i < (gi + 1) * g; i += 32) {
                    const __m256i m = sign_mask32(bits + i / 8);
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_and_si256(m, _mm256_loadu_si256((const __m256i *)(q0 + i)))), ones16));
                    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_and_si256(m, _mm256_loadu_si256((const __m256i *)(q1 + i)))), ones16));
                    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_and_si256(m, _mm256_loadu_si256((const __m256i *)(q2 + i)))), ones16));
                    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_and_si256(m, _mm256_loadu_si256((const __m256i *)(q3 + i)))), ones16));
                }
                const float scale = sc[gi];
                const __m256 s2 = _mm256_set1_ps(2.0f * scale);
                t0 = _mm256_fmadd_ps(s2, _mm256_cvtepi32_ps(a0), t0); t1 = _mm256_fmadd_ps(s2, _mm256_cvtepi32_ps(a1), t1);
                t2 = _mm256_fmadd_ps(s2, _mm256_cvtepi32_ps(a2), t2); t3 = _mm256_fmadd_ps(s2, _mm256_cvtepi32_ps(a3), t3);
                for (int32_t qq = 0; qq < 4; qq++) corr[qq] += scale * gsum[(size_t)(r0 + qq) * groups + gi];
            }
            const float out[4] = {hsum256(t0), hsum256(t1), hsum256(t2), hsum256(t3)};
            for (int32_t qq = 0; qq < 4; qq++) y[(size_t)(r0 + qq) * n + j] = rs[r0 + qq] * (out[qq] - corr[qq]);
        }
        for (; r0 < rows; r0++) {  /* the remaining rows one by one */
            const int8_t *q0 = q + (size_t)r0 * kp;
            __m256 t0 = _mm256_setzero_ps();
            float corr = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                __m256i a0 = _mm256_setzero_si256();
                for (int32_t i = gi * g; i < (gi + 1) * g; i += 32) {
                    const __m256i m = sign_mask32(bits + i / 8);
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_and_si256(m, _mm256_loadu_si256((const __m256i *)(q0 + i)))), ones16));
                }
                const float scale = sc[gi];
                t0 = _mm256_fmadd_ps(_mm256_set1_ps(2.0f * scale), _mm256_cvtepi32_ps(a0), t0);
                corr += scale * gsum[(size_t)r0 * groups + gi];
            }
            y[(size_t)r0 * n + j] = rs[r0] * (hsum256(t0) - corr);
        }
    }
    free(sc);
}

void evla_nm24_gemm_f32_avx2(const float *x, int32_t rows, const evla_nm_matrix *w, float *y) {
    init_tables();
    const int32_t k = w->in_features, n = w->out_features;
    const int32_t fields = evla_nm_row_values(k, 2, 4), index_bytes = evla_nm_row_index_bytes(k, 2, 4);
    const int32_t whole_groups = k / 4, main_fields = (whole_groups / 4) * 8;  /* 8 fields = 4 groups at a time */
    for (int32_t j = 0; j < n; j++) {
        const uint16_t *values = w->values + (size_t)j * fields;
        const uint8_t *indices = w->indices + (size_t)j * index_bytes;
        __m256 acc[EVLA_MAX_ROWS];
        for (int32_t r = 0; r < rows; r++) acc[r] = _mm256_setzero_ps();
        for (int32_t f = 0; f < main_fields; f += 8) {
            /* fields f..f+7 hold 4 groups = 16 activations: permute the kept ones of groups 0-1 into lanes
               0-3 and those of groups 2-3 into lanes 4-7 (no gathers) */
            const __m256i idx_a = _mm256_load_si256((const __m256i *)nm24_offsets[indices[f / 4]]);
            const __m256i idx_b = _mm256_load_si256((const __m256i *)nm24_offsets[indices[f / 4 + 1]]);
            const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(values + f)));
            const int32_t column = (f / 2) * 4;
            for (int32_t r = 0; r < rows; r++) {
                const float *xr = x + (size_t)r * k + column;
                const __m256 kept = _mm256_blend_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xr), idx_a),
                                                    _mm256_permutevar8x32_ps(_mm256_loadu_ps(xr + 8), idx_b), 0xF0);
                acc[r] = _mm256_fmadd_ps(v, kept, acc[r]);
            }
        }
        for (int32_t r = 0; r < rows; r++) {
            float s = hsum256(acc[r]);
            s += evla_nm_dot_fields(values, indices, 2, 4, k, x + (size_t)r * k, main_fields, fields);
            y[(size_t)r * n + j] = s;
        }
    }
}

static int32_t nm14_offsets[256][4];  /* index byte (four 1:4 groups) -> four column offsets */

void evla_nm14_gemm_f32_avx2(const float *x, int32_t rows, const evla_nm_matrix *w, float *y) {
    static int ready = 0;
    if (!ready) {
        for (int byte = 0; byte < 256; byte++)
            for (int f = 0; f < 4; f++) nm14_offsets[byte][f] = f * 4 + ((byte >> (2 * f)) & 3);
        ready = 1;
    }
    const int32_t k = w->in_features, n = w->out_features;
    const int32_t fields = evla_nm_row_values(k, 1, 4), index_bytes = evla_nm_row_index_bytes(k, 1, 4);
    const int32_t main_fields = (k / 4) / 8 * 8;  /* 8 whole groups (32 activations) per step */
    for (int32_t j = 0; j < n; j++) {
        const uint16_t *values = w->values + (size_t)j * fields;
        const uint8_t *indices = w->indices + (size_t)j * index_bytes;
        __m256 acc[EVLA_MAX_ROWS];
        for (int32_t r = 0; r < rows; r++) acc[r] = _mm256_setzero_ps();
        for (int32_t f = 0; f < main_fields; f += 8) {
            const __m128i lo = _mm_loadu_si128((const __m128i *)nm14_offsets[indices[f / 4]]);
            const __m128i hi = _mm_add_epi32(_mm_loadu_si128((const __m128i *)nm14_offsets[indices[f / 4 + 1]]),
                                             _mm_set1_epi32(16));
            const __m256i offsets = _mm256_add_epi32(_mm256_set_m128i(hi, lo), _mm256_set1_epi32(f * 4));
            const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(values + f)));
            for (int32_t r = 0; r < rows; r++)
                acc[r] = _mm256_fmadd_ps(v, _mm256_i32gather_ps(x + (size_t)r * k, offsets, 4), acc[r]);
        }
        for (int32_t r = 0; r < rows; r++) {
            float s = hsum256(acc[r]);
            s += evla_nm_dot_fields(values, indices, 1, 4, k, x + (size_t)r * k, main_fields, fields);
            y[(size_t)r * n + j] = s;
        }
    }
}

/* group_sparse (g a multiple of 4): each kept group is g consecutive activations times g float16 values
   (F16C); groups that run past K (the padded last group) are done in scalar code. */
void evla_gs_gemm_f32_avx2(const float *x, int32_t rows, const evla_gs_matrix *w, float *y) {
    const int32_t k = w->in_features, g = w->group, kept = w->kept, n = w->out_features;
    const int32_t whole_groups = k / g;  /* groups q < whole_groups lie entirely inside K */
    for (int32_t j = 0; j < n; j++) {
        const uint16_t *values = w->values + (size_t)j * kept * g;
        const uint16_t *idx = w->group_idx + (size_t)j * kept;
        for (int32_t r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * k;
            __m256 wide = _mm256_setzero_ps();
            __m128 narrow = _mm_setzero_ps();
            float tail = 0.0f;
            for (int32_t i = 0; i < kept; i++) {
                const int32_t q = idx[i];
                const uint16_t *v = values + (size_t)i * g;
                if (q < whole_groups) {
                    const float *xq = xr + (size_t)q * g;
                    int32_t t = 0;
                    for (; t + 8 <= g; t += 8)
                        wide = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + t))),
                                               _mm256_loadu_ps(xq + t), wide);
                    for (; t < g; t += 4)
                        narrow = _mm_fmadd_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(v + t))),
                                              _mm_loadu_ps(xq + t), narrow);
                } else {
                    for (int32_t t = 0; t < g && q * g + t < k; t++) tail += evla_f16_to_f32(v[t]) * xr[q * g + t];
                }
            }
            y[(size_t)r * n + j] = hsum256(_mm256_add_ps(wide, _mm256_set_m128(_mm_setzero_ps(), narrow))) + tail;
        }
    }
}
