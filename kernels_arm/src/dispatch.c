/* Public entry points: argument checks (nothing is read or written on a bad call), then the best variant. */
#include <stdlib.h>

#include "edgevla/kernels.h"

#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
void evla_b1_gemm_f32_avx512(const float *x, int32_t rows, const evla_b1_plane *w, float *y);
void evla_b1_gemm_f32_avx512_tiles(const float *x, int32_t rows, const evla_b1_plane *w, float *y);
void evla_b1_gemm_i8_avx512_tiles(const evla_i8_rows *qx, int32_t rows, const evla_b1_plane *w, float *y);
void evla_b1_gemm_i8_avx512(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y);
void evla_nm_m4_gemm_f32_avx512(const float *x, int32_t rows, const evla_nm_matrix *w, float *y);
void evla_bxb_gemm_avx512(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w,
                          float *y);
void evla_b1_gemm_f32_avx2(const float *x, int32_t rows, const evla_b1_plane *w, float *y);
void evla_b1_gemm_i8_avx2(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y);
void evla_nm24_gemm_f32_avx2(const float *x, int32_t rows, const evla_nm_matrix *w, float *y);
void evla_nm14_gemm_f32_avx2(const float *x, int32_t rows, const evla_nm_matrix *w, float *y);
void evla_gs_gemm_f32_avx2(const float *x, int32_t rows, const evla_gs_matrix *w, float *y);
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
void evla_b1_gemm_f32_neon(const float *x, int32_t rows, const evla_b1_plane *w, float *y);
void evla_b1_gemm_i8_neon(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y);
void evla_bxb_gemm_neon(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w, float *y);
#endif
#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
void evla_b1_gemm_i8_neon_dotprod(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y);
void evla_nm_m4_gemm_f32_neon(const float *x, int32_t rows, const evla_nm_matrix *w, float *y);
void evla_gs_gemm_f32_neon(const float *x, int32_t rows, const evla_gs_matrix *w, float *y);
#endif

#if defined(__wasm_simd128__)
void evla_b1_gemm_f32_simd128(const float *x, int32_t rows, const evla_b1_plane *w, float *y);
void evla_b1_gemm_i8_simd128(const evla_i8_rows *qx, int32_t rows, const evla_b1_matrix *w, float *y);
#endif

static int force_reference = 0;  /* 0: best variant, 1: portable reference, 2: at most AVX2 */

void evla_force_reference(int on) { force_reference = on; }

static int use_avx512(void) {
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vnni");
    }
    return cached && force_reference == 0;
#else
    return 0;
#endif
}

static int use_avx2(void) {
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached && force_reference != 1;
#else
    return 0;
#endif
}

#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
static int use_avx512_popcount(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq") &&
                 __builtin_cpu_supports("avx512vl");
    }
    return cached && use_avx512();
}
#endif

static int use_neon(void) {
#if defined(__aarch64__) || defined(__ARM_NEON)
    return !force_reference;
#else
    return 0;
#endif
}

static int use_neon_dotprod(void) {
#if defined(__aarch64__)
    static int cached = -1;
    if (cached < 0) cached = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    return cached && use_neon();
#else
    return 0;
#endif
}

static int use_simd128(void) {
#if defined(__wasm_simd128__)
    return !force_reference;
#else
    return 0;
#endif
}

const char *evla_kernel_variant(void) {
    if (use_avx512()) return "avx512";
    if (use_avx2()) return "avx2";
    if (use_neon_dotprod()) return "neon+dotprod";
    if (use_neon()) return "neon";
    if (use_simd128()) return "simd128";
    return "ref";
}

static int check_b1(const float *x, int32_t rows, const evla_b1_matrix *w, const float *y, const evla_lengths *len) {
    if (!x || !w || !y || !len || !w->bits || !w->scales) return EVLA_ERR_NULL;
    if (rows < 1 || rows > EVLA_MAX_ROWS) return EVLA_ERR_ROWS;
    if (w->in_features < 1 || w->out_features < 1 || w->group_size < 8 || w->group_size % 8) return EVLA_ERR_SHAPE;
    const size_t n = (size_t)w->out_features, k = (size_t)w->in_features;
    if (len->x != (size_t)rows * k || len->y != (size_t)rows * n ||
        len->packed_a != n * (size_t)evla_b1_row_bytes(w->in_features, w->group_size) ||
        len->packed_b != n * (size_t)evla_b1_row_groups(w->in_features, w->group_size))
        return EVLA_ERR_LENGTH;
    return EVLA_OK;
}

/* From this many activation rows on, the AVX-512 token-batch variant (lanes over outputs, masks transposed once
   per tile) beats the GEMV variant (`edgevla bench kernels`, rows 1..16). */
#define B1_TILE_MIN_ROWS 4

/* fp32 x 1-bit over a plane (float16 or log-coded scales): the best variant for this CPU. */
static void b1_plane_gemm_f32(const float *x, int32_t rows, const evla_b1_plane *p, float *y) {
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    if (use_avx512() && rows >= B1_TILE_MIN_ROWS) { evla_b1_gemm_f32_avx512_tiles(x, rows, p, y); return; }
    if (use_avx512() && p->group_size % 16 == 0) { evla_b1_gemm_f32_avx512(x, rows, p, y); return; }
    if (use_avx2()) { evla_b1_gemm_f32_avx2(x, rows, p, y); return; }
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
    if (use_neon()) { evla_b1_gemm_f32_neon(x, rows, p, y); return; }
#endif
#if defined(__wasm_simd128__)
    if (use_simd128()) { evla_b1_gemm_f32_simd128(x, rows, p, y); return; }
#endif
    evla_b1_gemm_f32_ref(x, rows, p, y);
}

int evla_b1_gemm_f32(const float *x, int32_t rows, const evla_b1_matrix *w, float *y, const evla_lengths *len) {
    int status = check_b1(x, rows, w, y, len);
    if (status) return status;
    const evla_b1_plane plane = evla_plane_of(w);
    b1_plane_gemm_f32(x, rows, &plane, y);
    return EVLA_OK;
}

/* int8 x 1-bit over a plane: the token-batch tiles on AVX-512 (also for log-coded planes at any row count),
   the GEMV variants for float16 planes elsewhere, the reference otherwise. */
static void b1_plane_gemm_i8(const evla_i8_rows *qx, int32_t rows, const evla_b1_plane *p, float *y) {
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    if (use_avx512() && (rows >= B1_TILE_MIN_ROWS || !p->scales)) {
        evla_b1_gemm_i8_avx512_tiles(qx, rows, p, y);
        return;
    }
#endif
    if (p->scales) {
        const evla_b1_matrix m = {p->bits, p->scales, p->out_features, p->in_features, p->group_size};
        const evla_b1_matrix *w = &m;
        (void)w;
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
        if (use_avx512() && w->group_size % 64 == 0) { evla_b1_gemm_i8_avx512(qx, rows, w, y); return; }
        if (use_avx2() && w->group_size % 32 == 0) { evla_b1_gemm_i8_avx2(qx, rows, w, y); return; }
#endif
#if defined(__aarch64__)
        if (use_neon_dotprod() && w->group_size % 16 == 0) { evla_b1_gemm_i8_neon_dotprod(qx, rows, w, y); return; }
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
        if (use_neon() && w->group_size % 16 == 0) { evla_b1_gemm_i8_neon(qx, rows, w, y); return; }
#endif
#if defined(__wasm_simd128__)
        if (use_simd128() && w->group_size % 16 == 0) { evla_b1_gemm_i8_simd128(qx, rows, w, y); return; }
#endif
    }
    evla_b1_gemm_i8_ref(qx, rows, p, y);
}

int evla_b1_gemm_i8(const float *x, int32_t rows, const evla_b1_matrix *w, float *y, const evla_lengths *len) {
    int status = check_b1(x, rows, w, y, len);
    if (status) return status;
    evla_i8_rows a;
    if (evla_i8_rows_make(&a, x, rows, w->in_features, w->group_size)) return EVLA_ERR_NOMEM;
    const evla_b1_plane plane = evla_plane_of(w);
    b1_plane_gemm_i8(&a, rows, &plane, y);
    evla_i8_rows_free(&a);
    return EVLA_OK;
}

int evla_nm_gemm_f32(const float *x, int32_t rows, const evla_nm_matrix *w, float *y, const evla_lengths *len) {
    if (!x || !w || !y || !len || !w->values || !w->indices) return EVLA_ERR_NULL;
    if (rows < 1 || rows > EVLA_MAX_ROWS) return EVLA_ERR_ROWS;
    if (w->in_features < 1 || w->out_features < 1 || w->n < 1 || w->m < w->n || w->m > 256) return EVLA_ERR_SHAPE;
    const size_t n = (size_t)w->out_features, k = (size_t)w->in_features;
    if (len->x != (size_t)rows * k || len->y != (size_t)rows * n ||
        len->packed_a != n * (size_t)evla_nm_row_values(w->in_features, w->n, w->m) ||
        len->packed_b != n * (size_t)evla_nm_row_index_bytes(w->in_features, w->n, w->m))
        return EVLA_ERR_LENGTH;
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    if (use_avx512() && w->m == 4 && w->n <= 2) { evla_nm_m4_gemm_f32_avx512(x, rows, w, y); return EVLA_OK; }
    if (use_avx2() && w->n == 2 && w->m == 4) { evla_nm24_gemm_f32_avx2(x, rows, w, y); return EVLA_OK; }
    if (use_avx2() && w->n == 1 && w->m == 4) { evla_nm14_gemm_f32_avx2(x, rows, w, y); return EVLA_OK; }
#endif
#if defined(__aarch64__)
    if (use_neon() && w->m == 4 && w->n <= 2) { evla_nm_m4_gemm_f32_neon(x, rows, w, y); return EVLA_OK; }
#endif
    evla_nm_gemm_f32_ref(x, rows, w, y);
    return EVLA_OK;
}

/* Flat binary GEMM for generated code. Where the AVX-512 token-batch tiles run, all rows go in one call (each
   16-row chunk would otherwise quantize again and gather every tile's masks again); elsewhere 16 rows at a time
   through the checked entry point. */
static int b1_flat(int int8, const float *x, int32_t rows, const uint8_t *bits, const uint16_t *scales, int32_t n,
                   int32_t k, int32_t group, float *y) {
    if (group < 8 || group % 8 || k < 1 || n < 1 || rows < 1) return EVLA_ERR_SHAPE;
    const evla_b1_matrix w = {bits, scales, n, k, group};
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    if (use_avx512() && rows > EVLA_MAX_ROWS) {
        if (!x || !bits || !scales || !y) return EVLA_ERR_NULL;
        const evla_b1_plane plane = evla_plane_of(&w);
        if (!int8) { evla_b1_gemm_f32_avx512_tiles(x, rows, &plane, y); return EVLA_OK; }
        evla_i8_rows a;
        if (evla_i8_rows_make(&a, x, rows, k, group)) return EVLA_ERR_NOMEM;
        evla_b1_gemm_i8_avx512_tiles(&a, rows, &plane, y);
        evla_i8_rows_free(&a);
        return EVLA_OK;
    }
#endif
    for (int32_t r0 = 0; r0 < rows; r0 += EVLA_MAX_ROWS) {
        const int32_t chunk = rows - r0 < EVLA_MAX_ROWS ? rows - r0 : EVLA_MAX_ROWS;
        const evla_lengths len = {(size_t)chunk * k, (size_t)n * evla_b1_row_bytes(k, group),
                                  (size_t)n * evla_b1_row_groups(k, group), (size_t)chunk * n};
        int status = (int8 ? evla_b1_gemm_i8 : evla_b1_gemm_f32)(x + (size_t)r0 * k, chunk, &w, y + (size_t)r0 * n,
                                                                 &len);
        if (status) return status;
    }
    return EVLA_OK;
}

int evla_b1_gemm_f32_flat(const float *x, int32_t rows, const uint8_t *bits, const uint16_t *scales, int32_t n,
                          int32_t k, int32_t group, float *y) {
    return b1_flat(0, x, rows, bits, scales, n, k, group, y);
}

int evla_b1_gemm_i8_flat(const float *x, int32_t rows, const uint8_t *bits, const uint16_t *scales, int32_t n,
                         int32_t k, int32_t group, float *y) {
    return b1_flat(1, x, rows, bits, scales, n, k, group, y);
}

int evla_nm_gemm_f32_flat(const float *x, int32_t rows, const uint16_t *values, const uint8_t *indices, int32_t n,
                          int32_t k, int32_t keep, int32_t m, float *y) {
    if (keep < 1 || m < keep || m > 256 || k < 1 || n < 1 || rows < 1) return EVLA_ERR_SHAPE;
    const evla_nm_matrix w = {values, indices, n, k, keep, m};
    for (int32_t r0 = 0; r0 < rows; r0 += EVLA_MAX_ROWS) {
        const int32_t chunk = rows - r0 < EVLA_MAX_ROWS ? rows - r0 : EVLA_MAX_ROWS;
        const evla_lengths len = {(size_t)chunk * k, (size_t)n * evla_nm_row_values(k, keep, m),
                                  (size_t)n * evla_nm_row_index_bytes(k, keep, m), (size_t)chunk * n};
        int status = evla_nm_gemm_f32(x + (size_t)r0 * k, chunk, &w, y + (size_t)r0 * n, &len);
        if (status) return status;
    }
    return EVLA_OK;
}

int evla_bxb_gemm(const uint8_t *xbits, const float *x_scales, int32_t rows, const evla_b1_matrix *w, float *y,
                  const evla_lengths *len) {
    if (!xbits || !x_scales || !w || !y || !len || !w->bits || !w->scales) return EVLA_ERR_NULL;
    if (rows < 1 || rows > EVLA_MAX_ROWS) return EVLA_ERR_ROWS;
    if (w->in_features < 1 || w->out_features < 1 || w->group_size < 8 || w->group_size % 8) return EVLA_ERR_SHAPE;
    const size_t n = (size_t)w->out_features, row_bytes = (size_t)evla_b1_row_bytes(w->in_features, w->group_size);
    if (len->x != (size_t)rows * row_bytes || len->y != (size_t)rows * n || len->packed_a != n * row_bytes ||
        len->packed_b != n * (size_t)evla_b1_row_groups(w->in_features, w->group_size))
        return EVLA_ERR_LENGTH;
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    if (use_avx512_popcount() && w->group_size == 64) {
        evla_bxb_gemm_avx512(xbits, x_scales, rows, w, y);
        return EVLA_OK;
    }
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
    if (use_neon()) { evla_bxb_gemm_neon(xbits, x_scales, rows, w, y); return EVLA_OK; }
#endif
    evla_bxb_gemm_ref(xbits, x_scales, rows, w, y);
    return EVLA_OK;
}

static int haar_gemm(const float *x, int32_t rows, const evla_haar_matrix *w, float *y, const evla_haar_lengths *len,
                     int int8) {
    if (!x || !w || !y || !len || !w->bits || !w->scale_codes || (w->salient > 0 && (!w->salient_idx ||
        !w->salient_bits || !w->salient_residual_bits || !w->salient_scales)))
        return EVLA_ERR_NULL;
    if (rows < 1 || rows > EVLA_MAX_ROWS) return EVLA_ERR_ROWS;
    const int32_t k = w->in_features, s = w->salient, n = w->out_features, g = w->group_size;
    if (k < 1 || n < 1 || s < 0 || s > k) return EVLA_ERR_SHAPE;
    const int32_t kh = evla_haar_length(k, s);
    if (g < 8 || g % 8 || kh % g) return EVLA_ERR_SHAPE;
    const size_t col_bytes = (size_t)(n + 7) / 8;
    if (len->x != (size_t)rows * k || len->y != (size_t)rows * n || len->salient_idx != (size_t)s ||
        len->salient_bits != (size_t)s * col_bytes || len->salient_residual_bits != (size_t)s * col_bytes ||
        len->salient_scales != 2 * (size_t)s || len->bits != (size_t)n * (kh / 8) ||
        len->scale_codes != (size_t)n * (kh / g))
        return EVLA_ERR_LENGTH;
    for (int32_t i = 0; i < s; i++)
        if (w->salient_idx[i] >= k || (i > 0 && w->salient_idx[i] <= w->salient_idx[i - 1])) return EVLA_ERR_INDEX;
    float *h = malloc(sizeof(float) * (size_t)rows * kh);
    if (!h) return EVLA_ERR_NOMEM;
    float code_scales[256];
    evla_haar_code_scales(w->scale_base, code_scales);
    for (int32_t r = 0; r < rows; r++)
        evla_haar_transform_row(x + (size_t)r * k, k, w->salient_idx, s, kh, h + (size_t)r * kh);
    const evla_b1_plane plane = {w->bits, NULL, w->scale_codes, code_scales, n, kh, g};
    if (int8) {
        evla_i8_rows a;
        if (evla_i8_rows_make(&a, h, rows, kh, g)) { free(h); return EVLA_ERR_NOMEM; }
        b1_plane_gemm_i8(&a, rows, &plane, y);
        evla_i8_rows_free(&a);
    } else {
        b1_plane_gemm_f32(h, rows, &plane, y);
    }
    evla_haar_salient_update(x, rows, w, y);
    free(h);
    return EVLA_OK;
}

int evla_haar_gemm_f32(const float *x, int32_t rows, const evla_haar_matrix *w, float *y, const evla_haar_lengths *len) {
    return haar_gemm(x, rows, w, y, len, 0);
}

int evla_haar_gemm_i8(const float *x, int32_t rows, const evla_haar_matrix *w, float *y, const evla_haar_lengths *len) {
    return haar_gemm(x, rows, w, y, len, 1);
}

int evla_gs_gemm_f32(const float *x, int32_t rows, const evla_gs_matrix *w, float *y, const evla_lengths *len) {
    if (!x || !w || !y || !len || !w->values || !w->group_idx) return EVLA_ERR_NULL;
    if (rows < 1 || rows > EVLA_MAX_ROWS) return EVLA_ERR_ROWS;
    const int32_t k = w->in_features, g = w->group, kept = w->kept, n = w->out_features;
    if (k < 1 || n < 1 || g < 1 || kept < 0) return EVLA_ERR_SHAPE;
    const int32_t groups = evla_padded_length(k, g) / g;
    if (kept > groups) return EVLA_ERR_SHAPE;
    if (len->x != (size_t)rows * k || len->y != (size_t)rows * n || len->packed_a != (size_t)n * kept * g ||
        len->packed_b != (size_t)n * kept)
        return EVLA_ERR_LENGTH;
    for (size_t j = 0; j < (size_t)n; j++) {
        const uint16_t *idx = w->group_idx + j * kept;
        for (int32_t i = 0; i < kept; i++)
            if (idx[i] >= groups || (i > 0 && idx[i] <= idx[i - 1])) return EVLA_ERR_INDEX;
    }
#if defined(__x86_64__) && defined(EVLA_WITH_AVX2)
    if (use_avx2() && g % 4 == 0) { evla_gs_gemm_f32_avx2(x, rows, w, y); return EVLA_OK; }
#endif
#if defined(__aarch64__)
    if (use_neon() && g % 4 == 0) { evla_gs_gemm_f32_neon(x, rows, w, y); return EVLA_OK; }
#endif
    evla_gs_gemm_f32_ref(x, rows, w, y);
    return EVLA_OK;
}

typedef int (*haar_entry)(const float *, int32_t, const evla_haar_matrix *, float *, const evla_haar_lengths *);

static int haar_flat(haar_entry entry, const float *x, int32_t rows, const uint16_t *salient_idx,
                     const uint8_t *salient_bits, const uint8_t *salient_residual_bits, const uint16_t *salient_scales,
                     const uint8_t *bits, const uint8_t *scale_codes, const float *scale_base, int32_t n, int32_t k,
                     int32_t salient, int32_t group, float *y) {
    if (!scale_base) return EVLA_ERR_NULL;
    if (k < 1 || n < 1 || rows < 1 || salient < 0 || salient > k || group < 8 || group % 8) return EVLA_ERR_SHAPE;
    const evla_haar_matrix w = {salient_idx, salient_bits, salient_residual_bits, salient_scales, bits, scale_codes,
                                *scale_base, n, k, salient, group};
    const int32_t kh = evla_haar_length(k, salient);
    const size_t col_bytes = (size_t)(n + 7) / 8;
    for (int32_t r0 = 0; r0 < rows; r0 += EVLA_MAX_ROWS) {
        const int32_t chunk = rows - r0 < EVLA_MAX_ROWS ? rows - r0 : EVLA_MAX_ROWS;
        const evla_haar_lengths len = {(size_t)chunk * k, (size_t)chunk * n, (size_t)salient,
                                       (size_t)salient * col_bytes, (size_t)salient * col_bytes, 2 * (size_t)salient,
                                       (size_t)n * (kh / 8), (size_t)n * (kh / group)};
        int status = entry(x + (size_t)r0 * k, chunk, &w, y + (size_t)r0 * n, &len);
        if (status) return status;
    }
    return EVLA_OK;
}

int evla_haar_gemm_f32_flat(const float *x, int32_t rows, const uint16_t *salient_idx, const uint8_t *salient_bits,
                            const uint8_t *salient_residual_bits, const uint16_t *salient_scales,
                            const uint8_t *bits, const uint8_t *scale_codes, const float *scale_base, int32_t n,
                            int32_t k, int32_t salient, int32_t group, float *y) {
    return haar_flat(evla_haar_gemm_f32, x, rows, salient_idx, salient_bits, salient_residual_bits, salient_scales,
                     bits, scale_codes, scale_base, n, k, salient, group, y);
}

int evla_haar_gemm_i8_flat(const float *x, int32_t rows, const uint16_t *salient_idx, const uint8_t *salient_bits,
                           const uint8_t *salient_residual_bits, const uint16_t *salient_scales,
                           const uint8_t *bits, const uint8_t *scale_codes, const float *scale_base, int32_t n,
                           int32_t k, int32_t salient, int32_t group, float *y) {
    return haar_flat(evla_haar_gemm_i8, x, rows, salient_idx, salient_bits, salient_residual_bits, salient_scales,
                     bits, scale_codes, scale_base, n, k, salient, group, y);
}

int evla_gs_gemm_f32_flat(const float *x, int32_t rows, const uint16_t *values, const uint16_t *group_idx, int32_t n,
                          int32_t k, int32_t group, int32_t kept, float *y) {
    if (k < 1 || n < 1 || rows < 1 || group < 1 || kept < 0) return EVLA_ERR_SHAPE;
    const evla_gs_matrix w = {values, group_idx, n, k, group, kept};
    for (int32_t r0 = 0; r0 < rows; r0 += EVLA_MAX_ROWS) {
        const int32_t chunk = rows - r0 < EVLA_MAX_ROWS ? rows - r0 : EVLA_MAX_ROWS;
        const evla_lengths len = {(size_t)chunk * k, (size_t)n * kept * group, (size_t)n * kept, (size_t)chunk * n};
        int status = evla_gs_gemm_f32(x + (size_t)r0 * k, chunk, &w, y + (size_t)r0 * n, &len);
        if (status) return status;
    }
    return EVLA_OK;
}
