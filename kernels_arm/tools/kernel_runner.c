/* File-driven kernel runner for the backend-ops harness (runs natively or under qemu).
 *
 *   kernel_runner KERNEL ROWS K N P1 P2 REF X_FILE A_FILE B_FILE Y_FILE
 *
 * KERNEL: b1f32 | b1i8 | bxb (P1 = group size) | nm (P1 = n, P2 = m). REF: 0 best variant, 1 portable
 * reference, 2 at most AVX2. For bxb, X_FILE holds ROWS float32 activation scales, then the activation bits.
 * A_FILE/B_FILE hold the packed arrays (binary: bits, scales; nm: values, indices) exactly as
 * edgevla.runtime.formats lays them out. Prints "variant status" and writes Y (float32) on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgevla/kernels.h"

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
    if (argc != 12) {
        fprintf(stderr, "usage: %s KERNEL ROWS K N P1 P2 REF X A B Y\n", argv[0]);
        return 2;
    }
    const char *kernel = argv[1];
    int32_t rows = atoi(argv[2]), k = atoi(argv[3]), n = atoi(argv[4]), p1 = atoi(argv[5]), p2 = atoi(argv[6]);
    evla_force_reference(atoi(argv[7]));
    size_t xs, as, bs;
    float *x = read_file(argv[8], &xs);
    void *a = read_file(argv[9], &as), *b = read_file(argv[10], &bs);
    size_t ys = (size_t)rows * (size_t)n;
    float *y = calloc(ys ? ys : 1, sizeof(float));
    int status;
    if (!strcmp(kernel, "nm")) {
        evla_nm_matrix w = {a, b, n, k, p1, p2};
        evla_lengths len = {xs / 4, as / 2, bs, ys};
        status = evla_nm_gemm_f32(x, rows, &w, y, &len);
    } else if (!strcmp(kernel, "bxb")) {
        evla_b1_matrix w = {a, b, n, k, p1};
        const uint8_t *xbits = (const uint8_t *)x + (size_t)rows * sizeof(float);
        evla_lengths len = {xs - (size_t)rows * sizeof(float), as, bs / 2, ys};
        status = evla_bxb_gemm(xbits, x, rows, &w, y, &len);
    } else {
        evla_b1_matrix w = {b == NULL ? NULL : a, b, n, k, p1};
        evla_lengths len = {xs / 4, as, bs / 2, ys};
        status = !strcmp(kernel, "b1i8") ? evla_b1_gemm_i8(x, rows, &w, y, &len) : evla_b1_gemm_f32(x, rows, &w, y, &len);
    }
    printf("%s %d\n", evla_kernel_variant(), status);
    if (status == EVLA_OK) {
        FILE *f = fopen(argv[11], "wb");
        fwrite(y, sizeof(float), ys, f);
        fclose(f);
    }
    free(x); free(a); free(b); free(y);
    return status == EVLA_OK ? 0 : 1;
}
