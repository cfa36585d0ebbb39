/* ARM NEON variants: aarch64 (always available) and armv7-a with -mfpu=neon (chosen at build time).
 *
 * fp32 x 1-bit: a 16-entry table turns each nibble of weight bits into a 4-lane mask; masked sums per group
 * give the signed dot product as 2*S1 - sum(x). int8 x 1-bit: 16 sign bits become a 16-byte mask with
 * vtst; masked int8 activations are widened and accumulated (vpadal). N:M sparse uses the reference.
 */
#include <arm_neon.h>
#include <stdlib.h>

#include "edgevla/kernels.h"

#if defined(__aarch64__)
#define EVLA_HADD_F32(v) vaddvq_f32(v)
#define EVLA_HADD_S32(v) vaddvq_s32(v)
#define EVLA_FMA_N(acc, v, s) vfmaq_n_f32(acc, v, s)
#else /* armv7: no across-vector adds, no fused multiply-add by scalar */
static inline float evla_hadd_f32(float32x4_t v) {
    float32x2_t p = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(p, p), 0);
}
static inline int32_t evla_hadd_s32(int32x4_t v) {
    int32x2_t p = vadd_s32(vget_low_s32(v), vget_high_s32(v));
    return vget_lane_s32(vpadd_s32(p, p), 0);
}
#define EVLA_HADD_F32(v) evla_hadd_f32(v)
#define EVLA_HADD_S32(v) evla_hadd_s32(v)
#define EVLA_FMA_N(acc, v, s) vmlaq_n_f32(acc, v, s)
#endif

static uint32_t nibble_masks[16][4];

static void init_tables(void) {
    static int done = 0;
    if (done) return;
    for (int v = 0; v < 16; v++)
        for (int lane = 0; lane < 4; lane++) nibble_masks[v][lane] = (v >> lane) & 1 ? 0xffffffffu : 0u;
    done = 1;
}

void evla_b1_gemm_f32_neon(const float *x, int32_t rows, const evla_b1_plane *w, float *y) {
    init_tables();
    const int32_t k = w->in_features, g = w->group_size, n = w->out_features;
    const int32_t row_bytes = evla_b1_row_bytes(k, g), groups = evla_b1_row_groups(k, g);
    const int32_t full_bytes = k / 8, bytes_per_group = g / 8;
    float *gsum = malloc(sizeof(float) * (size_t)rows * groups);
    if (!gsum) { evla_b1_gemm_f32_ref(x, rows, w, y); return; }  /* no scratch: the reference needs none */
    evla_group_sums_f32(x, rows, k, g, gsum);
    for (int32_t j = 0; j < n; j++) {
        const uint8_t *bits = w->bits + (size_t)j * row_bytes;
        for (int32_t r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * k;
            float32x4_t total = vdupq_n_f32(0.0f);
            float tail = 0.0f, corr = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                const float scale = evla_plane_scale(w, j, groups, gi);
                float32x4_t a = vdupq_n_f32(0.0f), b2 = vdupq_n_f32(0.0f);
                const int32_t b_end = (gi + 1) * bytes_per_group < full_bytes ? (gi + 1) * bytes_per_group : full_bytes;
                for (int32_t b = gi * bytes_per_group; b < b_end; b++) {
                    const uint8_t byte = bits[b];
                    uint32x4_t lo = vld1q_u32(nibble_masks[byte & 15]), hi = vld1q_u32(nibble_masks[byte >> 4]);
                    a = vaddq_f32(a, vreinterpretq_f32_u32(vandq_u32(lo, vreinterpretq_u32_f32(vld1q_f32(xr + 8 * b)))));
                    b2 = vaddq_f32(b2, vreinterpretq_f32_u32(vandq_u32(hi, vreinterpretq_u32_f32(vld1q_f32(xr + 8 * b + 4)))));
                }
                for (int32_t i = (b_end > gi * bytes_per_group ? b_end : gi * bytes_per_group) * 8;
                     i < (gi + 1) * g && i < k; i++)
                    if (evla_b1_sign_bit(bits, i)) tail += 2.0f * scale * xr[i];
                total = EVLA_FMA_N(total, vaddq_f32(a, b2), 2.0f * scale);
                corr += scale * gsum[(size_t)r * groups + gi];
            }
            y[(size_t)r * n + j] = EVLA_HADD_F32(total) + tail - corr;
        }
    }
    free(gsum);
}

void evla_b1_gemm_i8_neon(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y) {
    const int32_t g = w->group_size, n = w->out_features, kp = qx->kp, groups = qx->groups;
    const int32_t row_bytes = kp / 8;
    const int8_t *q = qx->q;
    const float *rs = qx->row_scales, *gsum = qx->group_sums;
    static const uint8_t select_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t select = vld1q_u8(select_bytes);
    for (int32_t j = 0; j < n; j++) {
        const uint8_t *bits = w->bits + (size_t)j * row_bytes;
        const uint16_t *scales = w->scales + (size_t)j * groups;
        for (int32_t r = 0; r < rows; r++) {
            const int8_t *qr = q + (size_t)r * kp;
            float acc = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                int32x4_t a = vdupq_n_s32(0);
                for (int32_t i = gi * g; i < (gi + 1) * g; i += 16) {
                    uint8x16_t replicated = vcombine_u8(vdup_n_u8(bits[i / 8]), vdup_n_u8(bits[i / 8 + 1]));
                    uint8x16_t mask = vtstq_u8(replicated, select);
                    int8x16_t masked = vandq_s8(vld1q_s8(qr + i), vreinterpretq_s8_u8(mask));
                    a = vpadalq_s16(a, vpaddlq_s8(masked));
                }
                const float scale = evla_f16_to_f32(scales[gi]);
                acc += scale * ((float)(2 * EVLA_HADD_S32(a)) - gsum[(size_t)r * groups + gi]);
            }
            y[(size_t)r * n + j] = rs[r] * acc;
        }
    }
}

#if defined(__aarch64__)
/* N:M with m = 4 on aarch64: each index byte (four 2-bit fields) selects the kept activations with one
   table lookup over the loaded activation bytes (vqtbl2q for 2:4: 2 groups = 8 floats; vqtbl4q for 1:4:
   4 groups = 16 floats); float16 values are widened with vcvt_f32_f16. Batch rows reuse the selection. */
static uint8_t nm24_bytes[256][16], nm14_bytes[256][16];

static void init_nm_tables(void) {
    static int done = 0;
    if (done) return;
    for (int byte = 0; byte < 256; byte++)
        for (int lane = 0; lane < 4; lane++) {
            int idx = (byte >> (2 * lane)) & 3;
            int src24 = (lane / 2) * 4 + idx, src14 = lane * 4 + idx;
            for (int b = 0; b < 4; b++) {
                nm24_bytes[byte][4 * lane + b] = (uint8_t)(4 * src24 + b);
                nm14_bytes[byte][4 * lane + b] = (uint8_t)(4 * src14 + b);
            }
        }
    done = 1;
}

void evla_nm_m4_gemm_f32_neon(const float *x, int32_t rows, const evla_nm_matrix *w, float *y) {
    init_nm_tables();
    const int32_t k = w->in_features, n = w->out_features, keep = w->n;
    const int32_t fields = evla_nm_row_values(k, keep, 4), index_bytes = evla_nm_row_index_bytes(k, keep, 4);
    const int32_t groups_per_byte = 4 / keep;                   /* 2 (2:4) or 4 (1:4) groups per index byte */
    const int32_t main_fields = (k / 4) / groups_per_byte * 4;  /* whole index bytes inside K */
    for (int32_t j = 0; j < n; j++) {
        const uint16_t *values = w->values + (size_t)j * fields;
        const uint8_t *indices = w->indices + (size_t)j * index_bytes;
        float32x4_t acc[EVLA_MAX_ROWS];
        for (int32_t r = 0; r < rows; r++) acc[r] = vdupq_n_f32(0.0f);
        for (int32_t f = 0; f < main_fields; f += 4) {
            const uint8_t byte = indices[f / 4];
            const float32x4_t v = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(values + f)));
            const int32_t column = (f / keep) * 4;
            if (keep == 2) {
                const uint8x16_t select = vld1q_u8(nm24_bytes[byte]);
                for (int32_t r = 0; r < rows; r++) {
                    const uint8_t *xr = (const uint8_t *)(x + (size_t)r * k + column);
                    uint8x16x2_t table = {{vld1q_u8(xr), vld1q_u8(xr + 16)}};
                    acc[r] = vfmaq_f32(acc[r], v, vreinterpretq_f32_u8(vqtbl2q_u8(table, select)));
                }
            } else {
                const uint8x16_t select = vld1q_u8(nm14_bytes[byte]);
                for (int32_t r = 0; r < rows; r++) {
                    const uint8_t *xr = (const uint8_t *)(x + (size_t)r * k + column);
                    uint8x16x4_t table = {{vld1q_u8(xr), vld1q_u8(xr + 16), vld1q_u8(xr + 32), vld1q_u8(xr + 48)}};
                    acc[r] = vfmaq_f32(acc[r], v, vreinterpretq_f32_u8(vqtbl4q_u8(table, select)));
                }
            }
        }
        for (int32_t r = 0; r < rows; r++) {
            float s = vaddvq_f32(acc[r]);
            s += evla_nm_dot_fields(values, indices, keep, 4, k, x + (size_t)r * k, main_fields, fields);
            y[(size_t)r * n + j] = s;
        }
    }
}
#endif

#if defined(__aarch64__)
/* group_sparse (g a multiple of 4): four float16 values at a time widened with vcvt_f32_f16 and multiplied
   into the matching activations; groups that run past K (the padded last group) are done in scalar code. */
void evla_gs_gemm_f32_neon(const float *x, int32_t rows, const evla_gs_matrix *w, float *y) {
    const int32_t k = w->in_features, g = w->group, kept = w->kept, n = w->out_features;
    const int32_t whole_groups = k / g;
    for (int32_t j = 0; j < n; j++) {
        const uint16_t *values = w->values + (size_t)j * kept * g;
        const uint16_t *idx = w->group_idx + (size_t)j * kept;
        for (int32_t r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * k;
            float32x4_t acc = vdupq_n_f32(0.0f);
            float tail = 0.0f;
            for (int32_t i = 0; i < kept; i++) {
                const int32_t q = idx[i];
                const uint16_t *v = values + (size_t)i * g;
                if (q < whole_groups) {
                    for (int32_t t = 0; t < g; t += 4)
                        acc = vfmaq_f32(acc, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(v + t))),
                                        vld1q_f32(xr + (size_t)q * g + t));
                } else {
                    for (int32_t t = 0; t < g && q * g + t < k; t++) tail += evla_f16_to_f32(v[t]) * xr[q * g + t];
                }
            }
            y[(size_t)r * n + j] = vaddvq_f32(acc) + tail;
        }
    }
}
#endif

/* Binary x binary (aarch64 and armv7): XOR of activation and weight sign bytes, vcnt per byte, pairwise
   widening adds; per group valid - 2 * popcount, times the float16 scale; times the row's activation scale. */
void evla_bxb_gemm_neon(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w,
                        float *y) {
    const int32_t k = w->in_features, g = w->group_size, n = w->out_features;
    const int32_t row_bytes = evla_b1_row_bytes(k, g), groups = evla_b1_row_groups(k, g), group_bytes = g / 8;
    for (int32_t j = 0; j < n; j++) {
        const uint8_t *bits = w->bits + (size_t)j * row_bytes;
        const uint16_t *scales = w->scales + (size_t)j * groups;
        for (int32_t r = 0; r < rows; r++) {
            const uint8_t *xr = xbits + (size_t)r * row_bytes;
            float acc = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                const int32_t start = gi * group_bytes, end = start + group_bytes;
                uint16x8_t counts = vdupq_n_u16(0);
                int32_t b = start;
                for (; b + 16 <= end; b += 16)
                    counts = vpadalq_u8(counts, vcntq_u8(veorq_u8(vld1q_u8(xr + b), vld1q_u8(bits + b))));
                uint64x2_t total = vpaddlq_u32(vpaddlq_u16(counts));
                int32_t differ = (int32_t)(vgetq_lane_u64(total, 0) + vgetq_lane_u64(total, 1));
                for (; b + 8 <= end; b += 8) {
                    const uint64x1_t c = vpaddl_u32(vpaddl_u16(vpaddl_u8(vcnt_u8(veor_u8(vld1_u8(xr + b), vld1_u8(bits + b))))));
                    differ += (int32_t)vget_lane_u64(c, 0);
                }
                for (; b < end; b++) differ += __builtin_popcount((unsigned)(xr[b] ^ bits[b]));
                const int32_t valid = (gi + 1) * g <= k ? g : k - gi * g;
                acc += evla_f16_to_f32(scales[gi]) * (float)(valid - 2 * differ);
            }
            y[(size_t)r * n + j] = x_scales[r] * acc;
        }
    }
}
