/*
 * Dense fp32 operators backed by a well-kept library, for generated code (TVM call_extern).
 *
 * x86_64 builds use oneDNN (Debian's libdnnl, AVX-512/AVX2 JIT kernels picked by oneDNN for the CPU it runs
 * on). Each call site's constant weights are reordered once, on its first call, into the layout oneDNN
 * prefers (the way onnxruntime prepacks at session creation); later calls reuse the prepacked copy. A
 * prepacked entry is keyed by the weights' address and the op's shape, and also remembers a sample of the
 * weight values, so a different weight array that happens to reuse a freed address is repacked instead of
 * silently answered with stale weights.
 *
 * Every function returns EVLA_OK (0) or a negative EVLA_ERR_* code (kernels.h); on error nothing is written.
 */
#ifndef EDGEVLA_DENSE_H
#define EDGEVLA_DENSE_H

#include <stdint.h>

/* y[rows, n] = x[rows, k] @ w[k, n]   (w row-major [k, n], as ONNX MatMul stores a Linear layer's W^T) */
int evla_dense_matmul_f32(const float *x, int32_t rows, const float *w, int32_t n, int32_t k, float *y);

/* Shape of a 2-D convolution, no bias: NCHW activations with OIHW weights (I = in_c / groups), or with
   `channels_last` NHWC activations with OHWI weights (the layout oneDNN's fastest CPU convolutions read). The
   output size is given by the caller and checked against the rest. */
typedef struct {
    int32_t batch, in_c, in_h, in_w, out_c, out_h, out_w, k_h, k_w;
    int32_t stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w, groups;
    int32_t channels_last;
} evla_conv2d_shape;

int evla_dense_conv2d_f32(const float *x, const float *w, const evla_conv2d_shape *shape, float *y);
/* The same with the shape as scalars, in the struct's order (for generated code). */
int evla_dense_conv2d_f32_flat(const float *x, const float *w, float *y, int32_t batch, int32_t in_c, int32_t in_h,
                               int32_t in_w, int32_t out_c, int32_t out_h, int32_t out_w, int32_t k_h, int32_t k_w,
                               int32_t stride_h, int32_t stride_w, int32_t pad_top, int32_t pad_left,
                               int32_t pad_bottom, int32_t pad_right, int32_t dilation_h, int32_t dilation_w,
                               int32_t groups, int32_t channels_last);

/* The library behind these functions and its version ("onednn 2.6.3"), or "none". */
const char *evla_dense_library(void);

#endif
