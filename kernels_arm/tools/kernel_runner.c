/* File-driven kernel runner for the backend-ops harness (runs natively, under qemu, or in a wasm runtime).
 *
 *   kernel_runner KERNEL ROWS K N P1 P2 REF X_FILE Y_FILE ARRAY_FILE...
 *
 * KERNEL and its parameters / packed arrays (each file holds one array exactly as edgevla.runtime.formats
 * lays it out):
 *   b1f32, b1i8, bxb  P1 = group size               arrays: bits, scales
 *   nm                P1 = n, P2 = m                 arrays: values, indices
 *   gs                P1 = group, P2 = kept groups   arrays: values, group_idx
 *   haar, haari8      P1 = salient, P2 = group size  arrays: salient_idx, salient_bits, salient_residual_bits,
 *                                                    salient_scales, bits, scale_codes, scale_base
 * REF: 0 best variant, 1 portable reference, 2 at most AVX2. For bxb, X_FILE holds ROWS float32 activation
 * scales, then the activation bits. Prints "variant status" and writes Y (float32) on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgevla/kernels.h"

#define MAX_ARRAYS 7

static void *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc(n > 0 ? (size_t)n : 1);
    if (n > 0 && fread(data, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    fclose(f);
    *size = (size_t)n;
    return data;
}

int main(int argc, char **argv) {
    if (argc < 11 || argc > 10 + MAX_ARRAYS) {
        fprintf(stderr, "usage: %s KERNEL ROWS K N P1 P2 REF X Y ARRAY...\n", argv[0]);
        return 2;
    }
    const char *kernel = argv[1];
    int32_t rows = atoi(argv[2]), k = atoi(argv[3]), n = atoi(argv[4]), p1 = atoi(argv[5]), p2 = atoi(argv[6]);
    evla_force_reference(atoi(argv[7]));
    size_t xs, size[MAX_ARRAYS] = {0};
    void *a[MAX_ARRAYS] = {0};
    const int arrays = argc - 10;
    float *x = read_file(argv[8], &xs);
    for (int i = 0; i < arrays; i++) a[i] = read_file(argv[10 + i], &size[i]);
    size_t ys = (size_t)rows * (size_t)n;
    float *y = calloc(ys ? ys : 1, sizeof(float));
    int status;
    if (!strcmp(kernel, "nm")) {
        evla_nm_matrix w = {a[0], a[1], n, k, p1, p2};
        evla_lengths len = {xs / 4, size[0] / 2, size[1], ys};
        status = evla_nm_gemm_f32(x, rows, &w, y, &len);
    } else if (!strcmp(kernel, "gs")) {
        evla_gs_matrix w = {a[0], a[1], n, k, p1, p2};
        evla_lengths len = {xs / 4, size[0] / 2, size[1] / 2, ys};
        status = evla_gs_gemm_f32(x, rows, &w, y, &len);
    } else if (!strcmp(kernel, "haar") || !strcmp(kernel, "haari8")) {
        float base = 0.0f;
        if (size[6] == sizeof base) memcpy(&base, a[6], sizeof base);
        evla_haar_matrix w = {a[0], a[1], a[2], a[3], a[4], a[5], base, n, k, p1, p2};
        evla_haar_lengths len = {xs / 4, ys, size[0] / 2, size[1], size[2], size[3] / 2, size[4], size[5]};
        status = kernel[4] ? evla_haar_gemm_i8(x, rows, &w, y, &len) : evla_haar_gemm_f32(x, rows, &w, y, &len);
    } else if (!strcmp(kernel, "bxb")) {
        evla_b1_matrix w = {a[0], a[1], n, k, p1};
        const uint8_t *xbits = (const uint8_t *)x + (size_t)rows * sizeof(float);
        evla_lengths len = {xs - (size_t)rows * sizeof(float), size[0], size[1] / 2, ys};
        status = evla_bxb_gemm(xbits, x, rows, &w, y, &len);
    } else {
        evla_b1_matrix w = {a[0], a[1], n, k, p1};
        evla_lengths len = {xs / 4, size[0], size[1] / 2, ys};
        status = !strcmp(kernel, "b1i8") ? evla_b1_gemm_i8(x, rows, &w, y, &len) : evla_b1_gemm_f32(x, rows, &w, y, &len);
    }
    printf("%s %d\n", evla_kernel_variant(), status);
    if (status == EVLA_OK) {
        FILE *f = fopen(argv[9], "wb");
        fwrite(y, sizeof(float), ys, f);
        fclose(f);
    }
    free(x);
    for (int i = 0; i < arrays; i++) free(a[i]);
    free(y);
    return status == EVLA_OK ? 0 : 1;
}
