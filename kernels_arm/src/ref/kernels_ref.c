/* Portable reference kernels: the definition every architecture variant is tested against. */
#include <math.h>
#include <stdlib.h>

#include "edgevla/kernels.h"

float evla_quantize_row_i8(const float *x, int32_t k, int32_t kp, int8_t *q) {
    float absmax = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        float a = fabsf(x[i]);
        if (a > absmax) absmax = a;
    }
    float s = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    float inv = 1.0f / s;
    for (int32_t i = 0; i < k; i++) {
        float v = nearbyintf(x[i] * inv);
        q[i] = (int8_t)(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
    }
    for (int32_t i = k; i < kp; i++) q[i] = 0;
    return s;
}

void evla_quantize_rows_i8(const float *x, int32_t rows, int32_t k, int32_t g, int8_t *q, float *row_scales,
                           float *group_sums) {
    const int32_t kp = evla_padded_length(k, g), groups = kp / g;
    for (int32_t r = 0; r < rows; r++) {
        int8_t *qr = q + (size_t)r * kp;
        row_scales[r] = evla_quantize_row_i8(x + (size_t)r * k, k, kp, qr);
        for (int32_t gi = 0; gi < groups; gi++) {
            int32_t s = 0;
            for (int32_t i = gi * g; i < (gi + 1) * g; i++) s += qr[i];
            group_sums[(size_t)r * groups + gi] = (float)s;
        }
    }
}

int evla_i8_rows_make(evla_i8_rows *out, const float *x, int32_t rows, int32_t k, int32_t g) {
    const int32_t kp = evla_padded_length(k, g), groups = kp / g;
    const size_t q_bytes = ((size_t)rows * kp + 63) / 64 * 64;
    const size_t float_bytes = sizeof(float) * ((size_t)rows + (size_t)rows * groups);
    void *block = aligned_alloc(64, q_bytes + (float_bytes + 63) / 64 * 64);  /* size: a multiple of 64 (C11) */
    if (!block) return EVLA_ERR_NOMEM;
    out->block = block;
    out->q = block;
    out->row_scales = (float *)((char *)block + q_bytes);
    out->group_sums = out->row_scales + rows;
    out->kp = kp;
    out->groups = groups;
    evla_quantize_rows_i8(x, rows, k, g, out->q, out->row_scales, out->group_sums);
    return EVLA_OK;
}

void evla_i8_rows_free(evla_i8_rows *rows) {
    free(rows->block);
    rows->block = NULL;
}

void evla_group_sums_f32(const float *x, int32_t rows, int32_t k, int32_t g, float *out) {
    const int32_t groups = evla_b1_row_groups(k, g);
    for (int32_t r = 0; r < rows; r++)
        for (int32_t gi = 0; gi < groups; gi++) {
            float s = 0.0f;
            for (int32_t i = gi * g; i < (gi + 1) * g && i < k; i++) s += x[(size_t)r * k + i];
            out[(size_t)r * groups + gi] = s;
        }
}

float evla_nm_dot_fields(const uint16_t *values, const uint8_t *indices, int32_t n, int32_t m, int32_t k,
                         const float *xr, int32_t f_begin, int32_t f_end) {
    const int32_t b = evla_nm_index_bits(m);
    float acc = 0.0f;
    for (int32_t f = f_begin; f < f_end; f++) {
        int32_t col = (f / n) * m + evla_nm_index(indices, f, b);
        if (col < k) acc += evla_f16_to_f32(values[f]) * xr[col];
    }
    return acc;
}

void evla_b1_gemm_f32_ref(const float *x, int32_t rows, const evla_b1_plane *w, float *y) {
    const int32_t k = w->in_features, g = w->group_size;
    const int32_t row_bytes = evla_b1_row_bytes(k, g), groups = evla_b1_row_groups(k, g);
    for (int32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * k;
        for (int32_t j = 0; j < w->out_features; j++) {
            const uint8_t *bits = w->bits + (size_t)j * row_bytes;
            float acc = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                float dot = 0.0f;
                int32_t end = (gi + 1) * g < k ? (gi + 1) * g : k;
                for (int32_t i = gi * g; i < end; i++) dot += evla_b1_sign_bit(bits, i) ? xr[i] : -xr[i];
                acc += evla_plane_scale(w, j, groups, gi) * dot;
            }
            y[(size_t)r * w->out_features + j] = acc;
        }
    }
}

void evla_b1_gemm_i8_ref(const evla_i8_rows *qx, int32_t rows, const evla_b1_plane *w, float *y) {
    const int32_t kp = qx->kp, groups = qx->groups, g = w->group_size;
    const int32_t row_bytes = kp / 8;
    for (int32_t r = 0; r < rows; r++) {
        const int8_t *q = qx->q + (size_t)r * kp;
        for (int32_t j = 0; j < w->out_features; j++) {
            const uint8_t *bits = w->bits + (size_t)j * row_bytes;
            float acc = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                int32_t dot = 0;
                for (int32_t i = gi * g; i < (gi + 1) * g; i++) dot += evla_b1_sign_bit(bits, i) ? q[i] : -q[i];
                acc += evla_plane_scale(w, j, groups, gi) * (float)dot;
            }
            y[(size_t)r * w->out_features + j] = qx->row_scales[r] * acc;
        }
    }
}

void evla_nm_gemm_f32_ref(const float *x, int32_t rows, const evla_nm_matrix *w, float *y) {
    const int32_t k = w->in_features, n = w->n, m = w->m;
    const int32_t fields = evla_nm_row_values(k, n, m), index_bytes = evla_nm_row_index_bytes(k, n, m);
    for (int32_t r = 0; r < rows; r++)
        for (int32_t j = 0; j < w->out_features; j++)
            y[(size_t)r * w->out_features + j] = evla_nm_dot_fields(
                w->values + (size_t)j * fields, w->indices + (size_t)j * index_bytes, n, m, k,
                x + (size_t)r * k, 0, fields);
}

static inline int32_t popcount8(uint8_t v) {
    int32_t c = 0;
    while (v) { c += v & 1; v >>= 1; }
    return c;
}

void evla_bxb_gemm_ref(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w, float *y) {
    const int32_t k = w->in_features, g = w->group_size;
    const int32_t row_bytes = evla_b1_row_bytes(k, g), groups = evla_b1_row_groups(k, g);
    for (int32_t r = 0; r < rows; r++) {
        const uint8_t *xr = xbits + (size_t)r * row_bytes;
        for (int32_t j = 0; j < w->out_features; j++) {
            const uint8_t *bits = w->bits + (size_t)j * row_bytes;
            float acc = 0.0f;
            for (int32_t gi = 0; gi < groups; gi++) {
                int32_t differ = 0;
                for (int32_t b = gi * g / 8; b < (gi + 1) * g / 8; b++) differ += popcount8((uint8_t)(xr[b] ^ bits[b]));
                int32_t valid = (gi + 1) * g <= k ? g : k - gi * g;
                acc += evla_f16_to_f32(w->scales[(size_t)j * groups + gi]) * (float)(valid - 2 * differ);
            }
            y[(size_t)r * w->out_features + j] = x_scales[r] * acc;
        }
    }
}

/* ------------------------------------------------------------------------------------ haar_binary */
void evla_haar_code_scales(float base, float out[256]) {
    out[0] = 0.0f;
    for (int code = 1; code < 256; code++)
        out[code] = (float)((double)base * exp2((double)(code - 255) / EVLA_HAAR_CODE_STEPS));
}

void evla_haar_transform_row(const float *x, int32_t k, const uint16_t *salient_idx, int32_t salient,
                             int32_t haar_length, float *h) {
    const int32_t half = haar_length / 2;
    const float inv_sqrt2 = 0.70710678118654752f;
    int32_t next = 0, s = 0;  /* gather position, salient cursor */
    float pair[2];
    for (int32_t i = 0; i < k; i++) {
        if (s < salient && salient_idx[s] == i) { s++; continue; }
        pair[next & 1] = x[i];
        if (next & 1) {
            h[next / 2] = (pair[0] + pair[1]) * inv_sqrt2;
            h[half + next / 2] = (pair[0] - pair[1]) * inv_sqrt2;
        }
        next++;
    }
    if (next & 1) {  /* odd count: the last pair is completed by a zero */
        h[next / 2] = pair[0] * inv_sqrt2;
        h[half + next / 2] = pair[0] * inv_sqrt2;
        next++;
    }
    for (int32_t p = next / 2; p < half; p++) h[p] = h[half + p] = 0.0f;
}

void evla_haar_salient_update(const float *x, int32_t rows, const evla_haar_matrix *w, float *y) {
    const int32_t n = w->out_features, k = w->in_features, col_bytes = (n + 7) / 8;
    for (int32_t s = 0; s < w->salient; s++) {
        const float a = evla_f16_to_f32(w->salient_scales[s]), b = evla_f16_to_f32(w->salient_scales[w->salient + s]);
        const uint8_t *first = w->salient_bits + (size_t)s * col_bytes;
        const uint8_t *second = w->salient_residual_bits + (size_t)s * col_bytes;
        /* the four possible weights of this column: (sign1, sign2) -> +-a +-b */
        const float value[4] = {-a - b, a - b, -a + b, a + b};
        for (int32_t r = 0; r < rows; r++) {
            const float xs = x[(size_t)r * k + w->salient_idx[s]];
            float *yr = y + (size_t)r * n;
            for (int32_t j = 0; j < n; j++)
                yr[j] += xs * value[evla_b1_sign_bit(first, j) | (evla_b1_sign_bit(second, j) << 1)];
        }
    }
}

/* ----------------------------------------------------------------------------------- group_sparse */
void evla_gs_gemm_f32_ref(const float *x, int32_t rows, const evla_gs_matrix *w, float *y) {
    const int32_t k = w->in_features, g = w->group, kept = w->kept, n = w->out_features;
    for (int32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * k;
        for (int32_t j = 0; j < n; j++) {
            const uint16_t *values = w->values + (size_t)j * kept * g;
            const uint16_t *idx = w->group_idx + (size_t)j * kept;
            float acc = 0.0f;
            for (int32_t i = 0; i < kept; i++)
                for (int32_t t = 0; t < g; t++) {
                    const int32_t col = idx[i] * g + t;
                    if (col < k) acc += evla_f16_to_f32(values[i * g + t]) * xr[col];
                }
            y[(size_t)r * n + j] = acc;
        }
    }
}
