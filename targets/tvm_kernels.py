"""TensorIR kernels for the `ai.edgevla` ops (TVM 0.27 TVMScript).

Each kernel reads the packed arrays exactly as `edgevla.runtime.formats` lays them out; none of them
materialises a dense float weight. Shapes are static (TVM compiles static shapes), so one PrimFunc is made
per layer shape.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from edgevla.runtime import formats


@T.macro
def _pad_rows(X, x_padded, rows, k, kp):
    """x_padded[rows, kp] = X[rows, k] followed by zeros (padded weights then meet zero activations)."""
    for i, kk in T.grid(rows, kp):
        with T.sblock("pad"):
            vi, vk = T.axis.remap("SS", [i, kk])
            x_padded[vi, vk] = T.if_then_else(vk < k, X[vi, T.min(vk, k - 1)], T.float32(0))


def binary_matmul_kernel(rows: int, out_features: int, in_features: int, group_size: int):
    """Y[rows, N] = X[rows, K] @ W.T for W in the binary format (bits [N, Kp/8] uint8, scales [N, Kp/G] f16).

    With sign s = 2*bit - 1, a group's dot product is  sum x*s = 2 * sum(x * bit) - sum(x): the activation
    sums are computed once per row and group, the per-weight work is a multiply-add by a 0/1 bit, and the
    float16 scale is applied once per group. X is copied into a zero-padded row first, so the padded tail
    of the last group (whose bits are 0) never reads past K. Unscheduled, this form ran ~8x faster here
    than a select(bit, x, -x) per weight (1.1 vs 9 ms for 14x640x160).
    """
    m, n, k, g = rows, out_features, in_features, group_size
    kp = formats.padded_length(k, g)
    groups = kp // g
    row_bytes = kp // 8

    @T.prim_func(private=True, s_tir=True)
    def binary_matmul(X: T.Buffer((m, k), "float32"), B: T.Buffer((n, row_bytes), "uint8"),
                      S: T.Buffer((n, groups), "float16"), Y: T.Buffer((m, n), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        x_padded = T.alloc_buffer((m, kp), "float32")
        x_group_sum = T.alloc_buffer((m, groups), "float32")
        bit_dot = T.alloc_buffer((m, n, groups), "float32")
        _pad_rows(X, x_padded, m, k, kp)
        for i, gg, t in T.grid(m, groups, g):
            with T.sblock("group_sum"):
                vi, vg, vt = T.axis.remap("SSR", [i, gg, t])
                with T.init():
                    x_group_sum[vi, vg] = T.float32(0)
                x_group_sum[vi, vg] = x_group_sum[vi, vg] + x_padded[vi, vg * g + vt]
        for i, j, gg, t in T.grid(m, n, groups, g):
            with T.sblock("bit_dot"):
                vi, vj, vg, vt = T.axis.remap("SSSR", [i, j, gg, t])
                with T.init():
                    bit_dot[vi, vj, vg] = T.float32(0)
                # weight vg*g+vt is bit (vt % 8) of byte (vg*g+vt) // 8 (g is a multiple of 8): LSB first
                bit_dot[vi, vj, vg] = bit_dot[vi, vj, vg] + x_padded[vi, vg * g + vt] * T.Cast(
                    "float32", T.bitwise_and(T.shift_right(B[vj, (vg * g + vt) // 8], T.Cast("uint8", vt % 8)),
                                             T.uint8(1)))
        for i, j, gg in T.grid(m, n, groups):
            with T.sblock("scale"):
                vi, vj, vg = T.axis.remap("SSR", [i, j, gg])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + T.Cast("float32", S[vj, vg]) * (
                    T.float32(2) * bit_dot[vi, vj, vg] - x_group_sum[vi, vg])

    return binary_matmul


def _bit(buffer, row, position):
    """Bit `position` of a row of LSB-first packed bits, as float32 0/1 (a TVMScript expression)."""
    return T.Cast("float32", T.bitwise_and(T.shift_right(buffer[row, position // 8], T.Cast("uint8", position % 8)),
                                           T.uint8(1)))


def nm_matmul_kernel(rows: int, out_features: int, in_features: int, n: int, m: int, index_bytes: int):
    """Y = X @ W.T for W in the nm format: each kept value multiplies the activation its index points at.

    Index field f (b bits, LSB-first bit stream per row) may straddle two bytes, so two bytes are read as
    one 16-bit word; the second read is clamped to the row (a field never needs bits past the row's end).
    """
    mm, nn, k = rows, out_features, in_features
    kp = formats.padded_length(k, m)
    fields = kp // m * n
    b = formats.index_bits(m)
    mask = (1 << b) - 1

    @T.prim_func(private=True, s_tir=True)
    def nm_matmul(X: T.Buffer((mm, k), "float32"), V: T.Buffer((nn, fields), "float16"),
                  I: T.Buffer((nn, index_bytes), "uint8"), Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        x_padded = T.alloc_buffer((mm, kp), "float32")
        position = T.alloc_buffer((nn, fields), "int32")
        _pad_rows(X, x_padded, mm, k, kp)
        for j, f in T.grid(nn, fields):
            with T.sblock("decode_index"):
                vj, vf = T.axis.remap("SS", [j, f])
                position[vj, vf] = (vf // n) * m + T.bitwise_and(T.shift_right(
                    T.Cast("int32", I[vj, (vf * b) // 8]) + T.Cast("int32", I[vj, T.min((vf * b) // 8 + 1,
                                                                                        index_bytes - 1)]) * 256,
                    (vf * b) % 8), mask)
        for i, j, f in T.grid(mm, nn, fields):
            with T.sblock("sparse_dot"):
                vi, vj, vf = T.axis.remap("SSR", [i, j, f])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + T.Cast("float32", V[vj, vf]) * x_padded[vi, position[vj, vf]]

    return nm_matmul


def group_sparse_matmul_kernel(rows: int, out_features: int, in_features: int, group: int, kept: int):
    """Y = X @ W.T for W in the group_sparse format: each kept group of g values meets g consecutive inputs."""
    mm, nn, k, g, r = rows, out_features, in_features, group, kept
    kp = formats.padded_length(k, g)

    @T.prim_func(private=True, s_tir=True)
    def group_sparse_matmul(X: T.Buffer((mm, k), "float32"), V: T.Buffer((nn, r * g), "float16"),
                            G: T.Buffer((nn, r), "uint16"), Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        x_padded = T.alloc_buffer((mm, kp), "float32")
        _pad_rows(X, x_padded, mm, k, kp)
        for i, j, q, t in T.grid(mm, nn, r, g):
            with T.sblock("group_dot"):
                vi, vj, vq, vt = T.axis.remap("SSRR", [i, j, q, t])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + T.Cast("float32", V[vj, vq * g + vt]) * x_padded[
                    vi, T.Cast("int32", G[vj, vq]) * g + vt]

    return group_sparse_matmul


def dense_sparse_matmul_kernel(rows: int, out_features: int, in_features: int, atoms: int, nonzeros: int,
                               index_dtype: str):
    """Y = X @ (D S).T without forming D S: codes z = X S^T (s multiply-adds per input), then Y = z D^T."""
    mm, nn, k, a, s = rows, out_features, in_features, atoms, nonzeros

    @T.prim_func(private=True, s_tir=True)
    def dense_sparse_matmul(X: T.Buffer((mm, k), "float32"), D: T.Buffer((nn, a), "float16"),
                            V: T.Buffer((k, s), "float16"), A: T.Buffer((k, s), index_dtype),
                            Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        codes = T.alloc_buffer((mm, a), "float32")
        for i, c, kk, t in T.grid(mm, a, k, s):
            with T.sblock("codes"):
                vi, vc, vk, vt = T.axis.remap("SSRR", [i, c, kk, t])
                with T.init():
                    codes[vi, vc] = T.float32(0)
                codes[vi, vc] = codes[vi, vc] + T.if_then_else(
                    T.Cast("int32", A[vk, vt]) == vc, X[vi, vk] * T.Cast("float32", V[vk, vt]), T.float32(0))
        for i, j, c in T.grid(mm, nn, a):
            with T.sblock("atoms"):
                vi, vj, vc = T.axis.remap("SSR", [i, j, c])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + codes[vi, vc] * T.Cast("float32", D[vj, vc])

    return dense_sparse_matmul


def binary_split_matmul_kernel(rows: int, out_features: int, in_features: int, block_size: int, salient: int):
    """Y = X @ W.T for the BiLLM-style binary_split format.

    Every weight contributes sign * (outer ? a_outer : a_concentrated) of its block; salient columns (whose
    split bit is 0) are then corrected once per salient column by x * ((a1 - a_c) * s1 + a2 * s2).
    """
    mm, nn, k, bs, sal = rows, out_features, in_features, block_size, salient
    kp = formats.padded_length(k, bs)
    blocks = kp // bs
    row_bytes = kp // 8
    residual_bytes = max(1, (sal + 7) // 8)
    sal1 = max(sal, 1)  # arrays of a layer without salient columns arrive as one dummy element

    @T.prim_func(private=True, s_tir=True)
    def binary_split_matmul(X: T.Buffer((mm, k), "float32"), SI: T.Buffer((sal1,), "uint16"),
                            B: T.Buffer((nn, row_bytes), "uint8"), R: T.Buffer((nn, residual_bytes), "uint8"),
                            SB: T.Buffer((nn, row_bytes), "uint8"), SC: T.Buffer((nn, blocks, 4), "float16"),
                            Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        x_padded = T.alloc_buffer((mm, kp), "float32")
        main = T.alloc_buffer((mm, nn), "float32")
        _pad_rows(X, x_padded, mm, k, kp)
        for i, j, kk in T.grid(mm, nn, kp):
            with T.sblock("split_dot"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                with T.init():
                    main[vi, vj] = T.float32(0)
                main[vi, vj] = main[vi, vj] + x_padded[vi, vk] * (T.float32(2) * _bit(B, vj, vk) - T.float32(1)) * \
                    T.Cast("float32", T.if_then_else(_bit(SB, vj, vk) > T.float32(0.5), SC[vj, vk // bs, 3],
                                                     SC[vj, vk // bs, 2]))
        for i, j, q in T.grid(mm, nn, sal1):  # one dummy step when there are no salient columns
            with T.sblock("salient"):
                vi, vj, vq = T.axis.remap("SSR", [i, j, q])
                with T.init():
                    Y[vi, vj] = main[vi, vj]
                Y[vi, vj] = Y[vi, vj] + T.Cast("float32", vq < sal) * X[vi, T.Cast("int32", SI[vq])] * (
                    (T.Cast("float32", SC[vj, T.Cast("int32", SI[vq]) // bs, 0]) -
                     T.Cast("float32", SC[vj, T.Cast("int32", SI[vq]) // bs, 2])) *
                    (T.float32(2) * _bit(B, vj, T.Cast("int32", SI[vq])) - T.float32(1)) +
                    T.Cast("float32", SC[vj, T.Cast("int32", SI[vq]) // bs, 1]) *
                    (T.float32(2) * _bit(R, vj, vq) - T.float32(1)))

    return binary_split_matmul


def haar_binary_matmul_kernel(rows: int, out_features: int, in_features: int, salient: int, group_size: int,
                              haar_length: int):
    """Y = haar(x[others]) @ Wh.T + x[salient] @ Ws.T for the HBVLA-style haar_binary format.

    The activations are transformed once per row (gather the non-salient columns through `others`, zero-pad
    to Kh, one Haar level); the Haar-domain product is the 1-bit group form of `binary_matmul_kernel` with
    8-bit log-coded scales; salient columns add their two-pass binary weights (column-major bits).
    """
    mm, nn, k, sal, g, kh = rows, out_features, in_features, salient, group_size, haar_length
    kn = k - sal
    half = kh // 2
    groups = kh // g
    column_bytes = (nn + 7) // 8
    inv_sqrt2 = float(1.0 / np.sqrt(2.0))
    sal1, kn1 = max(sal, 1), max(kn, 1)  # zero-sized arrays arrive as one dummy element

    @T.prim_func(private=True, s_tir=True)
    def haar_binary_matmul(X: T.Buffer((mm, k), "float32"), SI: T.Buffer((sal1,), "uint16"),
                           S1: T.Buffer((sal1, column_bytes), "uint8"),
                           S2: T.Buffer((sal1, column_bytes), "uint8"),
                           SS: T.Buffer((2, sal1), "float16"), B: T.Buffer((nn, kh // 8), "uint8"),
                           C: T.Buffer((nn, groups), "uint8"), BASE: T.Buffer((1,), "float32"),
                           OTHERS: T.Buffer((kn1,), "int32"), Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        u = T.alloc_buffer((mm, kh), "float32")
        h = T.alloc_buffer((mm, kh), "float32")
        h_group_sum = T.alloc_buffer((mm, groups), "float32")
        bit_dot = T.alloc_buffer((mm, nn, groups), "float32")
        haar = T.alloc_buffer((mm, nn), "float32")
        for i, p in T.grid(mm, kh):
            with T.sblock("gather_others"):
                vi, vp = T.axis.remap("SS", [i, p])
                u[vi, vp] = T.if_then_else(vp < kn, X[vi, OTHERS[T.min(vp, kn1 - 1)]], T.float32(0))
        for i, q in T.grid(mm, kh):
            with T.sblock("haar"):
                vi, vq = T.axis.remap("SS", [i, q])
                h[vi, vq] = T.if_then_else(
                    vq < half, (u[vi, 2 * T.min(vq, half - 1)] + u[vi, 2 * T.min(vq, half - 1) + 1]) * inv_sqrt2,
                    (u[vi, 2 * T.max(vq - half, 0)] - u[vi, 2 * T.max(vq - half, 0) + 1]) * inv_sqrt2)
        for i, gg, t in T.grid(mm, groups, g):
            with T.sblock("group_sum"):
                vi, vg, vt = T.axis.remap("SSR", [i, gg, t])
                with T.init():
                    h_group_sum[vi, vg] = T.float32(0)
                h_group_sum[vi, vg] = h_group_sum[vi, vg] + h[vi, vg * g + vt]
        for i, j, gg, t in T.grid(mm, nn, groups, g):
            with T.sblock("bit_dot"):
                vi, vj, vg, vt = T.axis.remap("SSSR", [i, j, gg, t])
                with T.init():
                    bit_dot[vi, vj, vg] = T.float32(0)
                bit_dot[vi, vj, vg] = bit_dot[vi, vj, vg] + h[vi, vg * g + vt] * _bit(B, vj, vg * g + vt)
        for i, j, gg in T.grid(mm, nn, groups):
            with T.sblock("scale"):
                vi, vj, vg = T.axis.remap("SSR", [i, j, gg])
                with T.init():
                    haar[vi, vj] = T.float32(0)
                haar[vi, vj] = haar[vi, vj] + T.if_then_else(
                    C[vj, vg] == T.uint8(0), T.float32(0),
                    BASE[0] * T.exp2((T.Cast("float32", C[vj, vg]) - T.float32(255)) / T.float32(16))) * (
                    T.float32(2) * bit_dot[vi, vj, vg] - h_group_sum[vi, vg])
        for i, j, q in T.grid(mm, nn, sal1):  # one dummy step when there are no salient columns
            with T.sblock("salient"):
                vi, vj, vq = T.axis.remap("SSR", [i, j, q])
                with T.init():
                    Y[vi, vj] = haar[vi, vj]
                Y[vi, vj] = Y[vi, vj] + T.Cast("float32", vq < sal) * X[vi, T.Cast("int32", SI[vq])] * (
                    T.Cast("float32", SS[0, vq]) * (T.float32(2) * _bit(S1, vq, vj) - T.float32(1)) +
                    T.Cast("float32", SS[1, vq]) * (T.float32(2) * _bit(S2, vq, vj) - T.float32(1)))

    return haar_binary_matmul


def im2col_kernel(batch: int, channels: int, height: int, width: int, kh: int, kw: int, sh: int, sw: int,
                  pad_top: int, pad_left: int, dh: int, dw: int, out_h: int, out_w: int):
    """cols[(b, oh, ow), c*kh*kw + i*kw + j] = X[b, c, oh*sh - pad_top + i*dh, ow*sw - pad_left + j*dw] (0 outside),
    the column order of a Conv weight [O, C, kh, kw] flattened to the packed formats' [O, C*kh*kw]."""
    rows = batch * out_h * out_w
    k = channels * kh * kw

    @T.prim_func(private=True, s_tir=True)
    def im2col(X: T.Buffer((batch, channels, height, width), "float32"), cols: T.Buffer((rows, k), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        for r, kk in T.grid(rows, k):
            with T.sblock("im2col"):
                vr, vk = T.axis.remap("SS", [r, kk])
                cols[vr, vk] = T.if_then_else(
                    0 <= (vr // out_w) % out_h * sh - pad_top + (vk // kw) % kh * dh
                    and (vr // out_w) % out_h * sh - pad_top + (vk // kw) % kh * dh < height
                    and 0 <= vr % out_w * sw - pad_left + vk % kw * dw
                    and vr % out_w * sw - pad_left + vk % kw * dw < width,
                    X[vr // (out_h * out_w), vk // (kh * kw),
                      T.min(T.max((vr // out_w) % out_h * sh - pad_top + (vk // kw) % kh * dh, 0), height - 1),
                      T.min(T.max(vr % out_w * sw - pad_left + vk % kw * dw, 0), width - 1)],
                    T.float32(0))

    return im2col


def _refused(kernel: str) -> str:
    """The error a bundle call raises when a linked C kernel returns a status other than EVLA_OK."""
    return (f"edgevla: C kernel {kernel} refused its arguments (a negative EVLA_ERR_* status, see "
            "kernels_arm/include/edgevla/kernels.h: corrupt packed arrays or a shape the format does not allow); "
            "the output was not written")


def extern_binary_matmul(rows: int, out_features: int, in_features: int, group_size: int, *, int8: bool = False):
    """Y = X @ W.T for the binary format by a call into the linked kernels_arm C kernel (best SIMD variant
    of the CPU, picked at run time); same signature as `binary_matmul_kernel`. With `int8`, each activation
    row is quantized to int8 inside the kernel (evla_b1_gemm_i8_flat)."""
    m, n, k, g = rows, out_features, in_features, group_size
    kp = formats.padded_length(k, g)
    kernel = "evla_b1_gemm_i8_flat" if int8 else "evla_b1_gemm_f32_flat"
    refused = _refused(kernel)

    @T.prim_func(private=True)
    def binary_matmul_c(X: T.Buffer((m, k), "float32"), B: T.Buffer((n, kp // 8), "uint8"),
                        S: T.Buffer((n, kp // g), "float16"), Y: T.Buffer((m, n), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        status = T.call_extern("int32", kernel, X.data, m, B.data, S.data, n, k, g, Y.data)
        assert status == 0, refused

    return binary_matmul_c


def extern_nm_matmul(rows: int, out_features: int, in_features: int, n: int, m: int, index_bytes: int):
    """Y = X @ W.T for the nm format through the linked C kernel; same signature as `nm_matmul_kernel`."""
    mm, nn, k = rows, out_features, in_features
    fields = formats.padded_length(k, m) // m * n

    refused = _refused("evla_nm_gemm_f32_flat")

    @T.prim_func(private=True)
    def nm_matmul_c(X: T.Buffer((mm, k), "float32"), V: T.Buffer((nn, fields), "float16"),
                    I: T.Buffer((nn, index_bytes), "uint8"), Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        status = T.call_extern("int32", "evla_nm_gemm_f32_flat", X.data, mm, V.data, I.data, nn, k, n, m, Y.data)
        assert status == 0, refused

    return nm_matmul_c


def extern_haar_binary_matmul(rows: int, out_features: int, in_features: int, salient: int, group_size: int,
                              haar_length: int, *, int8: bool = False):
    """Y = X @ W.T for haar_binary through the linked C kernel (activations Haar-transformed once per row
    inside it); the signature of `haar_binary_matmul_kernel` without its `others` input. With `int8`, the
    Haar-domain activations are quantized to int8 per row inside the kernel (evla_haar_gemm_i8_flat)."""
    mm, nn, k, sal, g, kh = rows, out_features, in_features, salient, group_size, haar_length
    column_bytes = (nn + 7) // 8
    sal1 = max(sal, 1)  # zero-sized arrays arrive as one dummy element (the kernel reads none of it)

    kernel = "evla_haar_gemm_i8_flat" if int8 else "evla_haar_gemm_f32_flat"
    refused = _refused(kernel)

    @T.prim_func(private=True)
    def haar_binary_matmul_c(X: T.Buffer((mm, k), "float32"), SI: T.Buffer((sal1,), "uint16"),
                             S1: T.Buffer((sal1, column_bytes), "uint8"),
                             S2: T.Buffer((sal1, column_bytes), "uint8"),
                             SS: T.Buffer((2, sal1), "float16"), B: T.Buffer((nn, kh // 8), "uint8"),
                             C: T.Buffer((nn, kh // g), "uint8"), BASE: T.Buffer((1,), "float32"),
                             Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        status = T.call_extern("int32", kernel, X.data, mm, SI.data, S1.data, S2.data, SS.data,
                               B.data, C.data, BASE.data, nn, k, sal, g, Y.data)
        assert status == 0, refused

    return haar_binary_matmul_c


def extern_group_sparse_matmul(rows: int, out_features: int, in_features: int, group: int, kept: int):
    """Y = X @ W.T for group_sparse through the linked C kernel; same signature as the TIR kernel."""
    mm, nn, k, g, r = rows, out_features, in_features, group, kept

    refused = _refused("evla_gs_gemm_f32_flat")

    @T.prim_func(private=True)
    def group_sparse_matmul_c(X: T.Buffer((mm, k), "float32"), V: T.Buffer((nn, r * g), "float16"),
                              GI: T.Buffer((nn, r), "uint16"), Y: T.Buffer((mm, nn), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        status = T.call_extern("int32", "evla_gs_gemm_f32_flat", X.data, mm, V.data, GI.data, nn, k, g, r, Y.data)
        assert status == 0, refused

    return group_sparse_matmul_c
