/*
 * edgevla CPU kernels over the packed formats of formats.h: small-batch GEMM (rows 1..16 per call; the flat
 * forms for generated code take any row count), y = x W^T.
 *
 * Every public entry point checks its arguments before touching memory: NULL pointers, row counts outside
 * 1..EVLA_MAX_ROWS, and every buffer length against what the format's padding rule requires for the
 * given shape (lengths in elements of the pointed-to type). A bad call returns a negative EVLA_ERR_* code
 * and writes nothing. The portable reference (src/ref) defines the results; architecture files override
 * it where the CPU allows (chosen at run time on x86 by CPU features, at build time elsewhere) and are
 * tested against it.
 *
 *   evla_b1_gemm_f32   fp32 activations x 1-bit weights (sign x float16 group scale)
 *   evla_b1_gemm_i8    int8 activations (each row quantized on the fly: absmax / 127) x 1-bit weights
 *   evla_nm_gemm_f32   fp32 activations x N:M sparse weights (float16 values + packed indices)
 *   evla_bxb_gemm      binary activations (sign bits + one scale per row) x 1-bit weights: xor/popcount
 *   evla_haar_gemm_f32 fp32 activations x haar_binary weights: the activations are Haar-transformed once,
 *                      then one 1-bit product in the Haar domain plus the salient columns' rank-S update
 *   evla_gs_gemm_f32   fp32 activations x group_sparse weights (float16 values of the kept groups)
 */
#ifndef EDGEVLA_KERNELS_H
#define EDGEVLA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "edgevla/formats.h"

#define EVLA_OK 0
#define EVLA_ERR_NULL (-1)     /* a required pointer is NULL */
#define EVLA_ERR_ROWS (-2)     /* rows outside 1..EVLA_MAX_ROWS */
#define EVLA_ERR_SHAPE (-3)    /* in/out features or group/n/m not a valid format shape */
#define EVLA_ERR_LENGTH (-4)   /* a buffer length does not match the shape and the padding rule */
#define EVLA_ERR_INDEX (-5)    /* a stored index points outside the matrix (corrupt or foreign weights) */
#define EVLA_ERR_NOMEM (-6)    /* scratch memory could not be allocated */

#define EVLA_MAX_ROWS 16

/* Buffer lengths (in elements) the caller vouches for; every one is checked. */
typedef struct {
    size_t x;        /* float activations: rows * K */
    size_t packed_a; /* binary: bits bytes (N * Kp/8);   nm: float16 values (N * Kp/m*n) */
    size_t packed_b; /* binary: float16 scales (N * Kp/G); nm: index bytes (N * ceil(Kp/m*n*b/8)) */
    size_t y;        /* float outputs: rows * N */
} evla_lengths;

int evla_b1_gemm_f32(const float *x, int32_t rows, const evla_b1_matrix *w, float *y, const evla_lengths *len);
int evla_b1_gemm_i8(const float *x, int32_t rows, const evla_b1_matrix *w, float *y, const evla_lengths *len);
int evla_nm_gemm_f32(const float *x, int32_t rows, const evla_nm_matrix *w, float *y, const evla_lengths *len);

/* Binary activations x binary weights. xbits [rows, Kp/8] are activation signs in the weights' bit layout
   (bit 1 = +1, LSB first, padding bits 0); x_scales [rows] multiply each output row (e.g. mean |x|).
   y[r, j] = x_scales[r] * sum_g scale[j, g] * (valid_g - 2 * popcount(x_g XOR w_g)), valid_g = real weights
   in group g. Lengths: x = rows * Kp/8 (bytes of xbits), packed_a/packed_b as for binary, y = rows * N. */
int evla_bxb_gemm(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w, float *y,
                  const evla_lengths *len);
void evla_bxb_gemm_ref(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w, float *y);

/* Lengths (in elements) of the haar_binary arrays, each checked against the shape. */
typedef struct {
    size_t x, y;                                     /* rows * K, rows * N */
    size_t salient_idx, salient_bits, salient_residual_bits, salient_scales, bits, scale_codes;
} evla_haar_lengths;

/* Also checks that salient_idx is strictly ascending and inside K (EVLA_ERR_INDEX otherwise). */
int evla_haar_gemm_f32(const float *x, int32_t rows, const evla_haar_matrix *w, float *y, const evla_haar_lengths *len);
/* The same with the Haar-domain activations quantized to int8 per row (absmax / 127) for the 1-bit plane; the
   salient columns' update stays fp32. */
int evla_haar_gemm_i8(const float *x, int32_t rows, const evla_haar_matrix *w, float *y, const evla_haar_lengths *len);

/* packed_a = float16 values (N * r * g), packed_b = group indices (N * r). Also checks every group index
   (ascending, < ceil(K / g)) before computing (EVLA_ERR_INDEX otherwise). */
int evla_gs_gemm_f32(const float *x, int32_t rows, const evla_gs_matrix *w, float *y, const evla_lengths *len);

/* Flat forms for generated code (TVM call_extern): any number of rows (done 16 at a time), lengths derived
   from the shape, so they cannot disagree with it. Return EVLA_OK or the first error. */
int evla_b1_gemm_f32_flat(const float *x, int32_t rows, const uint8_t *bits, const uint16_t *scales, int32_t n,
                          int32_t k, int32_t group, float *y);
int evla_nm_gemm_f32_flat(const float *x, int32_t rows, const uint16_t *values, const uint8_t *indices, int32_t n,
                          int32_t k, int32_t keep, int32_t m, float *y);

int evla_haar_gemm_f32_flat(const float *x, int32_t rows, const uint16_t *salient_idx, const uint8_t *salient_bits,
                            const uint8_t *salient_residual_bits, const uint16_t *salient_scales,
                            const uint8_t *bits, const uint8_t *scale_codes, const float *scale_base, int32_t n,
                            int32_t k, int32_t salient, int32_t group, float *y);
/* The int8-activation forms (each activation row quantized on the fly: absmax / 127, as evla_b1_gemm_i8): an
   approximation of the fp32 op that a bundle compiled with int8 activations opts into. For haar_binary the
   Haar-domain activations are quantized; the salient columns' update stays fp32. */
int evla_b1_gemm_i8_flat(const float *x, int32_t rows, const uint8_t *bits, const uint16_t *scales, int32_t n,
                         int32_t k, int32_t group, float *y);
int evla_haar_gemm_i8_flat(const float *x, int32_t rows, const uint16_t *salient_idx, const uint8_t *salient_bits,
                           const uint8_t *salient_residual_bits, const uint16_t *salient_scales,
                           const uint8_t *bits, const uint8_t *scale_codes, const float *scale_base, int32_t n,
                           int32_t k, int32_t salient, int32_t group, float *y);
int evla_gs_gemm_f32_flat(const float *x, int32_t rows, const uint16_t *values, const uint16_t *group_idx, int32_t n,
                          int32_t k, int32_t group, int32_t kept, float *y);

/* Which implementation the entry points above use on this CPU ("ref", "avx2", "avx512", "neon", "simd128"). */
const char *evla_kernel_variant(void);
/* 0: the best variant this CPU has; 1: the portable reference; 2: at most AVX2 (x86). For tests, benchmarks. */
void evla_force_reference(int level);

/* A 1-bit plane as the fp32 x 1-bit kernels read it: sign bits in the binary layout and one float32 scale
   per group, decoded either from float16 (`binary`) or from 8-bit log codes through a 256-entry table (the
   Haar-domain plane of `haar_binary`). Exactly one of scales / scale_codes is set. */
typedef struct {
    const uint8_t *bits;
    const uint16_t *scales;       /* [out_features, groups] float16, or NULL */
    const uint8_t *scale_codes;   /* [out_features, groups] log codes, or NULL */
    const float *code_scales;     /* [256] code -> scale when scale_codes is set */
    int32_t out_features, in_features, group_size;
} evla_b1_plane;

static inline evla_b1_plane evla_plane_of(const evla_b1_matrix *w) {
    evla_b1_plane p = {w->bits, w->scales, NULL, NULL, w->out_features, w->in_features, w->group_size};
    return p;
}

/* Scale of group gi of row j. */
static inline float evla_plane_scale(const evla_b1_plane *p, int32_t j, int32_t groups, int32_t gi) {
    size_t at = (size_t)j * groups + gi;
    return p->scale_codes ? p->code_scales[p->scale_codes[at]] : evla_f16_to_f32(p->scales[at]);
}

/* The portable reference implementations (no argument checks: call through the entry points). */
void evla_b1_gemm_f32_ref(const float *x, int32_t rows, const evla_b1_plane *w, float *y);
void evla_gs_gemm_f32_ref(const float *x, int32_t rows, const evla_gs_matrix *w, float *y);
void evla_nm_gemm_f32_ref(const float *x, int32_t rows, const evla_nm_matrix *w, float *y);

/* Helpers shared by every variant (defined in src/ref/kernels_ref.c). */
/* Row quantization of every int8 variant: q = round(x / s), s = max|x| / 127 (s = 1 for a zero row). */
float evla_quantize_row_i8(const float *x, int32_t k, int32_t kp, int8_t *q);
/* All rows at once: q [rows, Kp] (padding 0), row_scales [rows], group_sums [rows, Kp/g] of the quantized
   values (small integers, exact as float). */
void evla_quantize_rows_i8(const float *x, int32_t rows, int32_t k, int32_t g, int8_t *q, float *row_scales,
                           float *group_sums);

/* A batch of activation rows in int8 form, as every int8 x 1-bit variant reads it (made by the entry point,
   so a failed allocation is reported there and no variant allocates). q is 64-byte aligned. */
typedef struct {
    int8_t *q;            /* [rows, kp] */
    float *row_scales;    /* [rows] */
    float *group_sums;    /* [rows, groups] */
    int32_t kp, groups;
    void *block;          /* the one allocation behind the three arrays */
} evla_i8_rows;
/* Returns EVLA_OK, or EVLA_ERR_NOMEM with nothing allocated. */
int evla_i8_rows_make(evla_i8_rows *out, const float *x, int32_t rows, int32_t k, int32_t g);
void evla_i8_rows_free(evla_i8_rows *rows);
/* The portable int8 x 1-bit reference on already quantized rows (any plane: float16 or log-coded scales). */
void evla_b1_gemm_i8_ref(const evla_i8_rows *qx, int32_t rows, const evla_b1_plane *w, float *y);
/* Sum of every group of g real activations (index < k) of every row: out [rows, ceil(k/g)]. */
void evla_group_sums_f32(const float *x, int32_t rows, int32_t k, int32_t g, float *out);
/* Sum over fields [f_begin, f_end) of one N:M row of value * x[column]; padding columns (>= k) are skipped. */
/* 256-entry table of the haar_binary log-scale codes for one layer: out[code] = base * 2^((code-255)/16),
   out[0] = 0 (computed in double, rounded once to float32). */
void evla_haar_code_scales(float base, float out[256]);
/* Haar transform of one activation row: gathers the non-salient inputs of x (salient_idx ascending) into
   a zero-padded vector of haar_length and writes [low band, high band] to h. */
void evla_haar_transform_row(const float *x, int32_t k, const uint16_t *salient_idx, int32_t salient,
                             int32_t haar_length, float *h);
/* The salient columns' part y[r, :] += sum_s x[r, idx_s] * (sc0_s * sign1(j, s) + sc1_s * sign2(j, s)). */
void evla_haar_salient_update(const float *x, int32_t rows, const evla_haar_matrix *w, float *y);
float evla_nm_dot_fields(const uint16_t *values, const uint8_t *indices, int32_t n, int32_t m, int32_t k,
                         const float *xr, int32_t f_begin, int32_t f_end);

#endif
