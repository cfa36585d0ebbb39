"""TensorIR kernels for the `ai.edgevla` ops (TVM 0.27 TVMScript).

Each kernel reads the packed arrays exactly as `edgevla.runtime.formats` lays them out; none of them
materialises a dense float weight. Shapes are static (TVM compiles static shapes), so one PrimFunc is made
per layer shape.
"""

from __future__ import annotations

from tvm.script import tirx as T

from edgevla.runtime import formats


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
        for i, kk in T.grid(m, kp):
            with T.sblock("pad"):
                vi, vk = T.axis.remap("SS", [i, kk])
                x_padded[vi, vk] = T.if_then_else(vk < k, X[vi, T.min(vk, k - 1)], T.float32(0))
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
