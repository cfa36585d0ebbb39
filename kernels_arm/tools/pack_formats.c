/*
 * File-driven packer used by tests/test_formats_c.py to check that formats.h packs exactly like
 * edgevla.runtime.formats.
 *
 * usage: pack_formats binary ROWS K GROUP  IN.f32 OUT.bin   -> bits then scales (float16 bits)
 *        pack_formats nm     ROWS K N M    IN.f32 OUT.bin   -> values (float16 bits) then indices
 * IN.f32 holds ROWS*K little-endian float32 weights, row-major.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgevla/formats.h"

static void *must_alloc(size_t bytes) {
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) { fprintf(stderr, "out of memory (%zu bytes)\n", bytes); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s binary ROWS K GROUP IN OUT | nm ROWS K N M IN OUT\n", argv[0]);
        return 2;
    }
    int32_t rows = atoi(argv[2]), k = atoi(argv[3]), p1 = atoi(argv[4]), p2 = atoi(argv[5]);
    int is_binary = strcmp(argv[1], "binary") == 0;
    if (rows <= 0 || k <= 0 || (!is_binary && strcmp(argv[1], "nm") != 0)) {
        fprintf(stderr, "bad arguments: format %s rows %d k %d\n", argv[1], rows, k);
        return 2;
    }
    float *w = must_alloc(sizeof(float) * (size_t)rows * (size_t)k);
    FILE *in = fopen(argv[6], "rb");
    if (!in || fread(w, sizeof(float), (size_t)rows * (size_t)k, in) != (size_t)rows * (size_t)k) {
        fprintf(stderr, "cannot read %d x %d float32 from %s\n", rows, k, argv[6]);
        return 2;
    }
    fclose(in);
    FILE *out = fopen(argv[7], "wb");
    if (!out) { fprintf(stderr, "cannot write %s\n", argv[7]); return 2; }
    if (is_binary) {
        int32_t group = p1, nbytes = evla_b1_row_bytes(k, group), ngroups = evla_b1_row_groups(k, group);
        uint8_t *bits = must_alloc((size_t)rows * (size_t)nbytes);
        uint16_t *scales = must_alloc(sizeof(uint16_t) * (size_t)rows * (size_t)ngroups);
        for (int32_t r = 0; r < rows; r++)
            evla_b1_pack_row(w + (size_t)r * k, k, group, bits + (size_t)r * nbytes, scales + (size_t)r * ngroups);
        fwrite(bits, 1, (size_t)rows * (size_t)nbytes, out);
        fwrite(scales, sizeof(uint16_t), (size_t)rows * (size_t)ngroups, out);
    } else {
        int32_t n = p1, m = p2;
        if (n <= 0 || n > m || m > 256) { fprintf(stderr, "bad n:m %d:%d\n", n, m); return 2; }
        int32_t nvalues = evla_nm_row_values(k, n, m), nidx = evla_nm_row_index_bytes(k, n, m);
        uint16_t *values = must_alloc(sizeof(uint16_t) * (size_t)rows * (size_t)nvalues);
        uint8_t *indices = must_alloc((size_t)rows * (size_t)nidx);
        for (int32_t r = 0; r < rows; r++)
            evla_nm_pack_row(w + (size_t)r * k, k, n, m, values + (size_t)r * nvalues, indices + (size_t)r * nidx);
        fwrite(values, sizeof(uint16_t), (size_t)rows * (size_t)nvalues, out);
        fwrite(indices, 1, (size_t)rows * (size_t)nidx, out);
    }
    fclose(out);
    return 0;
}
