/* WebAssembly SIMD128 variant (compiled with -msimd128; chosen at build time).
 *
 * fp32 x 1-bit: a 256-entry table turns each weight byte into eight +-1.0 lanes (two f32x4), so each byte
 * costs two multiply-adds; the float16 group scale is applied once per group. int8 x 1-bit: see below. N:M, binary x binary and
 * group-sparse use the reference.
 */
#include <stdlib.h>
#include <wasm_simd128.h>

#include "edgevla/kernels.h"

static float b1_signs[256][8];

static void init_tables(void) {
    static int done = 0;
    if (done) return;
    for (int byte = 0; byte < 256; byte++)
        for (int lane = 0; lane < 8; lane++) b1_signs[byte][lane] = (byte >> lane) & 1 ? 1.0f : -1.0f;
    done = 1;
}

void evla_b1_gemm_f32_simd128(const float *x, int32_t rows, const evla_b1_plane *w, float *y) {
    init_tables();
    const int32_t k = w->in_features, g = w->group_size, n = w->out_features;
    const int32_t row_bytes = evla_b1_row_bytes(k, g), groups = evla_b1_row_groups(k, g);
    const int32_t full_bytes = k / 8, bytes_per_group = g / 8;
    for (int32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * k;
        for (int32_t j = 0; j < n; j++) {
            const uint8_t *bits = w->bits + (size_t)j * row_bytes;
            v128_t total = wasm_f32x4_splat(0.0f);
            float tail = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                const float scale = evla_plane_scale(w, j, groups, gi);
                v128_t a = wasm_f32x4_splat(0.0f);
                const int32_t b_start = gi * bytes_per_group;
                const int32_t b_end = b_start + bytes_per_group < full_bytes ? b_start + bytes_per_group : full_bytes;
                for (int32_t b = b_start; b < b_end; b++) {
                    const float *s = b1_signs[bits[b]];
                    a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_v128_load(xr + 8 * b), wasm_v128_load(s)));
                    a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_v128_load(xr + 8 * b + 4), wasm_v128_load(s + 4)));
                }
                for (int32_t i = (b_end > b_start ? b_end : b_start) * 8; i < (gi + 1) * g && i < k; i++)
                    tail += (evla_b1_sign_bit(bits, i) ? scale : -scale) * xr[i];
                total = wasm_f32x4_add(total, wasm_f32x4_mul(a, wasm_f32x4_splat(scale)));
            }
            y[(size_t)r * n + j] = wasm_f32x4_extract_lane(total, 0) + wasm_f32x4_extract_lane(total, 1) +
                                   wasm_f32x4_extract_lane(total, 2) + wasm_f32x4_extract_lane(total, 3) + tail;
        }
    }
}

/* int8 x 1-bit (group size a multiple of 16): 16 sign bits become a 16-byte lane mask (splat the two bytes,
   swizzle each to eight lanes, test one bit per lane); the masked int8 activations are widened by pairwise
   adds into four int32 lanes; per group 2*S1 - sum(q), times the float16 scale. */
void evla_b1_gemm_i8_simd128(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y) {
    const int32_t g = w->group_size, n = w->out_features, kp = qx->kp, groups = qx->groups;
    const int32_t row_bytes = kp / 8;
    const int8_t *q = qx->q;
    const float *rs = qx->row_scales, *gsum = qx->group_sums;
    const v128_t select = wasm_u8x16_make(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
    const v128_t zero = wasm_i32x4_splat(0);
    for (int32_t j = 0; j < n; j++) {
        const uint8_t *bits = w->bits + (size_t)j * row_bytes;
        const uint16_t *scales = w->scales + (size_t)j * groups;
        for (int32_t r = 0; r < rows; r++) {
            const int8_t *qr = q + (size_t)r * kp;
            float acc = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                v128_t a = zero;
                for (int32_t i = gi * g; i < (gi + 1) * g; i += 16) {
                    const v128_t both = wasm_i16x8_splat((int16_t)(bits[i / 8] | (bits[i / 8 + 1] << 8)));
                    const v128_t spread = wasm_i8x16_swizzle(both, wasm_u8x16_make(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,
                                                                                   1, 1, 1, 1));
                    const v128_t mask = wasm_i8x16_ne(wasm_v128_and(spread, select), zero);
                    const v128_t masked = wasm_v128_and(wasm_v128_load(qr + i), mask);
                    a = wasm_i32x4_add(a, wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_extadd_pairwise_i8x16(masked)));
                }
                const int32_t s1 = wasm_i32x4_extract_lane(a, 0) + wasm_i32x4_extract_lane(a, 1) +
                                   wasm_i32x4_extract_lane(a, 2) + wasm_i32x4_extract_lane(a, 3);
                acc += evla_f16_to_f32(scales[gi]) * ((float)(2 * s1) - gsum[(size_t)r * groups + gi]);
            }
            y[(size_t)r * n + j] = rs[r] * acc;
        }
    }
}
