/*
 * edgevla packed weight formats: the C mirror of edgevla/runtime/formats.py.
 *
 * That Python module is the definition; this header restates it for C kernels and must stay bit-exact
 * with it (tests/test_formats_c.py packs the same matrices both ways and compares every byte).
 * FORMAT_VERSION below must equal formats.FORMAT_VERSION.
 *
 * A weight matrix is W[N, K]: N output rows, K input features; y = x W^T. Arrays are row-major.
 *
 * binary: bits   uint8   [N, Kp/8]   bit (k % 8) of byte k/8 is the sign of weight k (1 = +1, 0 = -1;
 *                                     w >= 0 packs as 1). Kp = ceil(K/G)*G; padded bits are 0, never read.
 *         scales float16 [N, Kp/G]   mean |w| of the group's real weights (float64 sequential sum,
 *                                     divided, rounded to float32, then to float16 round-to-nearest-even).
 * nm:     values  float16 [N, Kp/m*n] kept weights in ascending index order, group by group.
 *         indices uint8   [N, ceil(Kp/m*n*b/8)], b = ceil(log2 m): index fields LSB first, field j at
 *                                     bit j*b of the row's bit stream. Kp = ceil(K/m)*m, padding is 0.
 *                                     The n largest |w| of a group are kept, ties to the lower index.
 * haar_binary: salient_idx uint16 [S] ascending; salient_bits / salient_residual_bits uint8 [S, ceil(N/8)]
 *         (column-major signs over the N rows, LSB first); salient_scales float16 [2, S]; bits uint8
 *         [N, Kh/8] signs of the Haar-domain weights; scale_codes uint8 [N, Kh/G] with scale =
 *         scale_base * 2^((code - 255) / 16), code 0 = 0; scale_base float32. The K - S other columns,
 *         zero-padded to Kh = ceil((K - S) / 16) * 16, are transformed once per activation row:
 *         h = [(u0 + u1) / sqrt2 ..., (u0 - u1) / sqrt2 ...] (low band, then high band).
 * group_sparse: values float16 [N, r*g] (the r kept groups of g weights of each row, in index order);
 *         group_idx uint16 [N, r] ascending group numbers (group q covers inputs q*g .. q*g+g-1);
 *         Kp = ceil(K/g)*g, padding weights are 0.
 */
#ifndef EDGEVLA_FORMATS_H
#define EDGEVLA_FORMATS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EVLA_FORMAT_VERSION 1

/* ---------------------------------------------------------------------------------------- binary */
#define EVLA_B1_WEIGHTS_PER_BYTE 8
#define EVLA_B1_DEFAULT_GROUP 64

/* One group of the default size: 64 sign bits. The scale lives in the separate scales plane. */
typedef struct {
    uint8_t sign_bits[EVLA_B1_DEFAULT_GROUP / EVLA_B1_WEIGHTS_PER_BYTE];
} evla_b1_group64;
_Static_assert(sizeof(evla_b1_group64) == 8, "evla_b1_group64 must be 8 bytes (64 sign bits)");

/* A packed binary matrix as the kernels receive it. */
typedef struct {
    const uint8_t *bits;      /* [out_features, padded_k / 8] */
    const uint16_t *scales;   /* [out_features, padded_k / group_size], IEEE float16 bit patterns */
    int32_t out_features;     /* N */
    int32_t in_features;      /* K */
    int32_t group_size;       /* G, a positive multiple of 8 */
} evla_b1_matrix;

/* ------------------------------------------------------------------------------------------- nm */
/* One 2:4 group: two float16 values; their two 2-bit indices live in the indices plane. */
typedef struct {
    uint16_t values[2];
} evla_nm24_group;
_Static_assert(sizeof(evla_nm24_group) == 4, "evla_nm24_group must be 4 bytes");

typedef struct {
    const uint16_t *values;   /* [out_features, padded_k / m * n], float16 bit patterns */
    const uint8_t *indices;   /* [out_features, ceil(padded_k / m * n * index_bits / 8)] */
    int32_t out_features, in_features, n, m;
} evla_nm_matrix;

/* ------------------------------------------------------------------------------------ haar_binary */
#define EVLA_HAAR_BLOCK 16             /* the Haar-domain width is a multiple of this */
#define EVLA_HAAR_CODE_STEPS 16        /* log-scale code steps per octave */

typedef struct {
    const uint16_t *salient_idx;            /* [salient], ascending, each < in_features */
    const uint8_t *salient_bits;            /* [salient, ceil(out_features / 8)] */
    const uint8_t *salient_residual_bits;   /* [salient, ceil(out_features / 8)] */
    const uint16_t *salient_scales;         /* [2, salient] float16: first-pass, residual */
    const uint8_t *bits;                    /* [out_features, haar_length / 8] */
    const uint8_t *scale_codes;             /* [out_features, haar_length / group_size] */
    float scale_base;                       /* the largest group scale of the layer */
    int32_t out_features, in_features, salient, group_size;
} evla_haar_matrix;

/* Width of the Haar-domain plane for k - s non-salient inputs (at least one block). */
static inline int32_t evla_haar_length(int32_t k, int32_t s) {
    int32_t others = k - s > 1 ? k - s : 1;
    return (others + EVLA_HAAR_BLOCK - 1) / EVLA_HAAR_BLOCK * EVLA_HAAR_BLOCK;
}

/* ----------------------------------------------------------------------------------- group_sparse */
typedef struct {
    const uint16_t *values;      /* [out_features, kept * group] float16 */
    const uint16_t *group_idx;   /* [out_features, kept], ascending, each < ceil(in_features / group) */
    int32_t out_features, in_features, group, kept;
} evla_gs_matrix;

/* ------------------------------------------------------------------------------------ helpers */
static inline int32_t evla_padded_length(int32_t k, int32_t block) { return (k + block - 1) / block * block; }

static inline int32_t evla_nm_index_bits(int32_t m) {
    int32_t b = 0;
    while ((1 << b) < m) b++;
    return b < 1 ? 1 : b;
}

static inline int32_t evla_b1_row_bytes(int32_t k, int32_t group) { return evla_padded_length(k, group) / 8; }
static inline int32_t evla_b1_row_groups(int32_t k, int32_t group) { return evla_padded_length(k, group) / group; }
static inline int32_t evla_nm_row_values(int32_t k, int32_t n, int32_t m) { return evla_padded_length(k, m) / m * n; }
static inline int32_t evla_nm_row_index_bytes(int32_t k, int32_t n, int32_t m) {
    return (evla_nm_row_values(k, n, m) * evla_nm_index_bits(m) + 7) / 8;
}

/* Sign bit of weight k in one packed row: 1 means +1, 0 means -1. */
static inline int evla_b1_sign_bit(const uint8_t *row_bits, int32_t k) { return (row_bits[k >> 3] >> (k & 7)) & 1; }

/* Index field j of one packed nm row. */
static inline int32_t evla_nm_index(const uint8_t *row_indices, int32_t j, int32_t bits) {
    int32_t value = 0;
    for (int32_t b = 0; b < bits; b++) {
        int32_t pos = j * bits + b;
        value |= ((row_indices[pos >> 3] >> (pos & 7)) & 1) << b;
    }
    return value;
}

/* float32 -> float16, round to nearest even, with subnormals, inf and NaN (what numpy's astype does). */
static inline uint16_t evla_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* rounds past 65504: inf */
    if (a >= 0x38800000u) {                                           /* normal half */
        uint32_t h = (a - (112u << 23)) >> 13;
        uint32_t rest = a & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t e = a >> 23;                                              /* subnormal half or zero */
    if (e == 0) return (uint16_t)sign;
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;
    if (shift > 31u) return (uint16_t)sign;
    uint32_t h = mant >> shift;
    uint32_t rest = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

static inline float evla_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0x1fu) bits = sign | 0x7f800000u | (m << 13);
    else if (e != 0) bits = sign | ((e + 112u) << 23) | (m << 13);
    else if (m == 0) bits = sign;
    else {                                                             /* subnormal: normalise */
        e = 113u;
        while (!(m & 0x400u)) { m <<= 1; e--; }
        bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Reference packers (not for the hot path): one row of W at a time, exactly as formats.py packs. */
static inline void evla_b1_pack_row(const float *w, int32_t k, int32_t group, uint8_t *bits, uint16_t *scales) {
    int32_t kp = evla_padded_length(k, group);
    memset(bits, 0, (size_t)(kp / 8));
    for (int32_t i = 0; i < k; i++)
        if (w[i] >= 0.0f) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    for (int32_t g = 0; g < kp / group; g++) {
        double sum = 0.0;
        int32_t count = 0;
        for (int32_t i = g * group; i < (g + 1) * group; i++) {
            double magnitude = i < k ? (double)(w[i] < 0.0f ? -w[i] : w[i]) : 0.0;
            sum += magnitude;
            count += i < k;
        }
        scales[g] = evla_f32_to_f16((float)(sum / (double)(count > 0 ? count : 1)));
    }
}

static inline void evla_nm_pack_row(const float *w, int32_t k, int32_t n, int32_t m, uint16_t *values,
                                    uint8_t *indices) {
    int32_t kp = evla_padded_length(k, m), bits = evla_nm_index_bits(m), field = 0;
    memset(indices, 0, (size_t)evla_nm_row_index_bytes(k, n, m));
    for (int32_t g = 0; g < kp / m; g++) {
        unsigned char keep[256] = {0};
        for (int32_t chosen = 0; chosen < n; chosen++) {              /* n largest |w|, ties to lower index */
            int32_t best = -1;
            float best_mag = -1.0f;
            for (int32_t j = 0; j < m; j++) {
                int32_t i = g * m + j;
                float mag = i < k ? (w[i] < 0.0f ? -w[i] : w[i]) : 0.0f;
                if (!keep[j] && mag > best_mag) { best = j; best_mag = mag; }
            }
            keep[best] = 1;
        }
        for (int32_t j = 0; j < m; j++) {
            if (!keep[j]) continue;
            int32_t i = g * m + j;
            values[field] = evla_f32_to_f16(i < k ? w[i] : 0.0f);
            for (int32_t b = 0; b < bits; b++) {
                int32_t pos = field * bits + b;
                if ((j >> b) & 1) indices[pos >> 3] |= (uint8_t)(1u << (pos & 7));
            }
            field++;
        }
    }
}

#endif /* EDGEVLA_FORMATS_H */
