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

    The sum runs group by group: signed activations are accumulated per group, then multiplied once by the
    group's scale, so the float16 scale is read Kp/G times per output, not K times.
    """
    m, n, k, g = rows, out_features, in_features, group_size
    kp = formats.padded_length(k, g)
    groups = kp // g
    row_bytes = kp // 8

    @T.prim_func(private=True, s_tir=True)
    def binary_matmul(X: T.Buffer((m, k), "float32"), B: T.Buffer((n, row_bytes), "uint8"),
                      S: T.Buffer((n, groups), "float16"), Y: T.Buffer((m, n), "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        partial = T.alloc_buffer((m, n, groups), "float32")
        for i, j, gg, t in T.grid(m, n, groups, g):
            with T.sblock("group_sum"):
                vi, vj, vg, vt = T.axis.remap("SSSR", [i, j, gg, t])
                with T.init():
                    partial[vi, vj, vg] = T.float32(0)
                # Weight kk = vg*g + vt; padded positions (kk >= k) contribute nothing.
                partial[vi, vj, vg] = partial[vi, vj, vg] + T.if_then_else(
                    vg * g + vt < k,
                    T.if_then_else(
                        T.bitwise_and(T.shift_right(B[vj, (vg * g + vt) // 8], T.Cast("uint8", vt % 8)),
                                      T.uint8(1)) == T.uint8(1),
                        X[vi, T.min(vg * g + vt, k - 1)], -X[vi, T.min(vg * g + vt, k - 1)]),
                    T.float32(0))
        for i, j, gg in T.grid(m, n, groups):
            with T.sblock("scale_sum"):
                vi, vj, vg = T.axis.remap("SSR", [i, j, gg])
                with T.init():
                    Y[vi, vj] = T.float32(0)
                Y[vi, vj] = Y[vi, vj] + partial[vi, vj, vg] * T.Cast("float32", S[vj, vg])

    return binary_matmul
