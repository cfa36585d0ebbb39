/* aarch64 NEON with the dot-product extension (SDOT, Armv8.2-A+dotprod; Cortex-A76/A78 and later), compiled
 * with -march=armv8.2-a+dotprod and chosen at run time from the kernel's HWCAP_ASIMDDP bit.
 *
 * int8 x 1-bit: 16 sign bits become a 16-byte mask (vtst); the masked int8 activations are summed four
 * bytes per lane with one SDOT against ones (plain NEON needs two widening pairwise adds). Four output rows
 * share every activation load. The signed dot product is 2*S1 - sum(q), as in every 1-bit variant.
 */
#include <arm_neon.h>
#include <stdlib.h>

#include "edgevla/kernels.h"

void evla_b1_gemm_i8_neon_dotprod(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y) {
    const int32_t g = w->group_size, n = w->out_features, kp = qx->kp, groups = qx->groups;
    const int32_t row_bytes = kp / 8;
    const int8_t *q = qx->q;
    const float *rs = qx->row_scales, *gsum = qx->group_sums;
    static const uint8_t select_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t select = vld1q_u8(select_bytes);
    const int8x16_t ones = vdupq_n_s8(1);
    for (int32_t j0 = 0; j0 < n; j0 += 4) {
        const int32_t nj = n - j0 < 4 ? n - j0 : 4;
        const uint8_t *b[4];
        const uint16_t *sc[4];
        for (int32_t t = 0; t < 4; t++) {
            const int32_t jt = j0 + (t < nj ? t : 0);  /* a short last block repeats row j0 */
            b[t] = w->bits + (size_t)jt * row_bytes;
            sc[t] = w->scales + (size_t)jt * groups;
        }
        for (int32_t r = 0; r < rows; r++) {
            const int8_t *qr = q + (size_t)r * kp;
            const float *gs = gsum + (size_t)r * groups;
            float acc[4] = {0, 0, 0, 0};
            for (int32_t gi = 0; gi < groups; gi++) {
                int32x4_t a[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
                for (int32_t i = gi * g; i < (gi + 1) * g; i += 16) {
                    const int8x16_t xv = vld1q_s8(qr + i);
                    for (int32_t t = 0; t < 4; t++) {
                        const uint8x16_t mask = vtstq_u8(vcombine_u8(vdup_n_u8(b[t][i / 8]), vdup_n_u8(b[t][i / 8 + 1])),
                                                         select);
                        a[t] = vdotq_s32(a[t], vandq_s8(xv, vreinterpretq_s8_u8(mask)), ones);
                    }
                }
                for (int32_t t = 0; t < 4; t++)
                    acc[t] += evla_f16_to_f32(sc[t][gi]) * ((float)(2 * vaddvq_s32(a[t])) - gs[gi]);
            }
            for (int32_t t = 0; t < nj; t++) y[(size_t)r * n + j0 + t] = rs[r] * acc[t];
        }
    }
}
