"""Model-local ONNX function bodies (standard ops only) for every `ai.edgevla` op.

Each body decodes the packed arrays exactly as `edgevla.runtime.formats` defines them and multiplies, so
stock onnxruntime and `onnx.reference` run the same file a compiler lowers to real kernels. onnxruntime
constant-folds these bodies over the initializers at load time: the file stays small, the session runs
dense (fine as a correctness oracle, not as a speed path).
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper

DOMAIN = "ai.edgevla"


class Body:
    """A tiny builder for function bodies: every call adds one node and returns its output name."""

    def __init__(self, conv: bool = False):
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self.conv = conv  # the Conv2d form: the decoded [O, C*kh*kw] matrix becomes a Conv weight

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def const(self, values, dtype=TensorProto.INT64, dims=None) -> str:
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        dims = [len(values)] if dims is None else dims
        return self.op("Constant", [], "c", value=helper.make_tensor("v", dtype, dims, values))

    def attr_int(self, attribute: str) -> str:
        """A [1]-shaped int64 tensor holding the calling node's integer attribute."""
        out = self._name(attribute)
        self.nodes.append(onnx.NodeProto(op_type="Constant", output=[out], attribute=[
            onnx.AttributeProto(name="value_int", ref_attr_name=attribute, type=onnx.AttributeProto.INT)]))
        return self.op("Unsqueeze", [out, self.const([0])])

    def dim(self, tensor: str, axis: int) -> str:
        """Size of `axis` of `tensor`, as a [1] int64 tensor."""
        return self.op("Shape", [tensor], start=axis, end=axis + 1)

    def bits(self, packed: str) -> str:
        """uint8 [R, B] -> float 0/1 [R, B*8], bit b of byte i at column 8*i + b (LSB first)."""
        shifted = self.op("BitShift", [self.op("Unsqueeze", [packed, self.const([-1])]),
                                       self.const(list(range(8)), TensorProto.UINT8)], direction="RIGHT")
        bit = self.op("BitwiseAnd", [shifted, self.const([1], TensorProto.UINT8, [])])
        # explicit [R, B*8]: a [0, -1] target is invalid when R is 0 (a layer with no salient columns)
        shape = self.op("Concat", [self.dim(packed, 0), self.op("Mul", [self.dim(packed, 1), self.const([8])])], axis=0)
        return self.op("Reshape", [self.op("Cast", [bit], to=TensorProto.FLOAT), shape])

    def signs(self, packed: str) -> str:
        """uint8 [R, B] -> +-1 float [R, B*8]."""
        two = self.op("Mul", [self.bits(packed), self.const([2.0], TensorProto.FLOAT, [])])
        return self.op("Sub", [two, self.const([1.0], TensorProto.FLOAT, [])])

    def first_columns(self, matrix: str, count: str) -> str:
        return self.op("Slice", [matrix, self.const([0]), count, self.const([1])])

    def matmul_transposed(self, x: str, weight: str, out: str = "Y") -> str:
        self.nodes.append(helper.make_node("MatMul", [x, self.op("Transpose", [weight], perm=[1, 0])], [out]))
        return out

    def finish(self, weight: str) -> str:
        """Y from the decoded weight [N, K]: X @ W.T, or for the conv form Conv(X, W as [O, C, kh, kw])."""
        if not self.conv:
            return self.matmul_transposed("X", weight)
        kernel = self._name("kernel_shape")
        self.nodes.append(onnx.NodeProto(op_type="Constant", output=[kernel], attribute=[
            onnx.AttributeProto(name="value_ints", ref_attr_name="kernel_shape", type=onnx.AttributeProto.INTS)]))
        shape = self.op("Concat", [self.dim(weight, 0), self.const([-1]), kernel], axis=0)
        conv_attrs = [onnx.AttributeProto(name=a, ref_attr_name=a, type=onnx.AttributeProto.INTS)
                      for a in ("strides", "pads", "dilations")]
        self.nodes.append(onnx.NodeProto(op_type="Conv", input=["X", self.op("Reshape", [weight, shape])], output=["Y"],
                                         attribute=conv_attrs))
        return "Y"

    def function(self, name: str, inputs: list[str], attributes: list[str], opset: int) -> onnx.FunctionProto:
        if self.conv:
            name = conv_op_name(name)
            attributes = attributes + list(CONV_ATTRIBUTES)
        return helper.make_function(DOMAIN, name, inputs, ["Y"], self.nodes, [helper.make_opsetid("", opset)],
                                    attributes=attributes)


CONV_ATTRIBUTES = ("kernel_shape", "strides", "pads", "dilations")


def conv_op_name(matmul_name: str) -> str:
    return matmul_name.replace("MatMul", "Conv2d")


def binary_body(opset: int, conv: bool = False) -> onnx.FunctionProto:
    b = Body(conv)
    k, g = b.attr_int("in_features"), b.attr_int("group_size")
    signs = b.op("Reshape", [b.signs("bits"), b.op("Concat", [b.const([0, -1]), g], axis=0)])  # [N, Kp/G, G]
    scales = b.op("Unsqueeze", [b.op("Cast", ["scales"], to=TensorProto.FLOAT), b.const([-1])])
    weight = b.op("Reshape", [b.op("Mul", [signs, scales]), b.const([0, -1])])
    b.finish(b.first_columns(weight, k))
    return b.function("BinaryMatMul", ["X", "bits", "scales"], ["in_features", "group_size"], opset)


def binary_int4_body(opset: int) -> onnx.FunctionProto:
    """BinaryMatMul for onnxruntime's fast path: signs as INT4 (+-1) and blocked DequantizeLinear
    (opset >= 21), which onnxruntime folds into MatMulNBits with 4-bit weights in memory. Needs K to be a
    multiple of the group (the DequantizeLinear output must feed the MatMul directly)."""
    if opset < 21:
        raise ValueError(f"the INT4 body needs opset >= 21 (blocked DequantizeLinear), got {opset}")
    b = Body()
    signs_t = b.op("Transpose", [b.signs("bits")], perm=[1, 0])  # [Kp, N] float +-1
    q = b.op("Cast", [signs_t], to=TensorProto.INT4)
    scales_t = b.op("Transpose", [b.op("Cast", ["scales"], to=TensorProto.FLOAT)], perm=[1, 0])  # [Kp/G, N]
    out = b._name("dq")
    b.nodes.append(onnx.NodeProto(op_type="DequantizeLinear", input=[q, scales_t], output=[out], attribute=[
        helper.make_attribute("axis", 0),
        onnx.AttributeProto(name="block_size", ref_attr_name="group_size", type=onnx.AttributeProto.INT)]))
    b.nodes.append(helper.make_node("MatMul", ["X", out], ["Y"]))
    return b.function("BinaryMatMul", ["X", "bits", "scales"], ["in_features", "group_size"], opset)


def nm_body(opset: int, conv: bool = False) -> onnx.FunctionProto:
    b = Body(conv)
    k, n, m = b.attr_int("in_features"), b.attr_int("n"), b.attr_int("m")
    # index width b = ceil(log2 m), computed in-graph from the attribute
    m_float = b.op("Cast", [m], to=TensorProto.FLOAT)
    width = b.op("Cast", [b.op("Ceil", [b.op("Div", [b.op("Log", [m_float]),
                                                     b.const([math.log(2.0)], TensorProto.FLOAT)])])],
                 to=TensorProto.INT64)
    width = b.op("Max", [width, b.const([1])])
    fields = b.dim("values", 1)
    bitstream = b.first_columns(b.bits("indices"), b.op("Mul", [fields, width]))  # [N, F*b]
    per_field = b.op("Reshape", [bitstream, b.op("Concat", [b.const([0]), fields, width], axis=0)])  # [N, F, b]
    powers = b.op("Pow", [b.const([2.0], TensorProto.FLOAT, []),
                          b.op("Cast", [b.op("Range", [b.const(0, dims=[]), b.op("Squeeze", [width]),
                                                       b.const(1, dims=[])])], to=TensorProto.FLOAT)])
    index = b.op("ReduceSum", [b.op("Mul", [per_field, powers]), b.const([-1])], keepdims=0)  # [N, F]
    field_no = b.op("Range", [b.const(0, dims=[]), b.op("Squeeze", [fields]), b.const(1, dims=[])])
    group_start = b.op("Mul", [b.op("Div", [field_no, b.op("Squeeze", [n])]), b.op("Squeeze", [m])])
    position = b.op("Add", [b.op("Cast", [index], to=TensorProto.INT64), group_start])
    rows = b.dim("values", 0)
    padded_k = b.op("Mul", [b.op("Div", [fields, n]), m])
    zeros = b.op("ConstantOfShape", [b.op("Concat", [rows, padded_k], axis=0)],
                 value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    dense = b.op("ScatterElements", [zeros, position, b.op("Cast", ["values"], to=TensorProto.FLOAT)], axis=1)
    b.finish(b.first_columns(dense, k))
    return b.function("NMSparseMatMul", ["X", "values", "indices"], ["in_features", "n", "m"], opset)


def _haar_inverse_rows(b: Body, wh: str) -> str:
    """Rows of wh [N, Kh] = [low, high] -> inverse one-level Haar [N, Kh] (interleaved even/odd)."""
    half = b.op("Div", [b.dim(wh, 1), b.const([2])])
    low = b.op("Slice", [wh, b.const([0]), half, b.const([1])])
    high = b.op("Slice", [wh, half, b.dim(wh, 1), b.const([1])])
    root_half = b.const([1.0 / math.sqrt(2.0)], TensorProto.FLOAT, [])
    even = b.op("Mul", [b.op("Add", [low, high]), root_half])
    odd = b.op("Mul", [b.op("Sub", [low, high]), root_half])
    pairs = b.op("Concat", [b.op("Unsqueeze", [even, b.const([-1])]), b.op("Unsqueeze", [odd, b.const([-1])])], axis=-1)
    return b.op("Reshape", [pairs, b.const([0, -1])])


def haar_binary_body(opset: int, conv: bool = False) -> onnx.FunctionProto:
    """Dense decoding (the oracle): Wh from signs and log scales, inverse Haar, scatter with salient columns."""
    b = Body(conv)
    k, g = b.attr_int("in_features"), b.attr_int("group_size")
    signs = b.op("Reshape", [b.signs("bits"), b.op("Concat", [b.const([0, -1]), g], axis=0)])  # [N, Kh/G, G]
    codes = b.op("Cast", ["scale_codes"], to=TensorProto.FLOAT)
    exponent = b.op("Div", [b.op("Sub", [codes, b.const([255.0], TensorProto.FLOAT, [])]),
                            b.const([16.0], TensorProto.FLOAT, [])])
    scale = b.op("Mul", [b.op("Pow", [b.const([2.0], TensorProto.FLOAT, []), exponent]), "scale_base"])
    is_zero = b.op("Equal", ["scale_codes", b.const([0], TensorProto.UINT8, [])])
    scale = b.op("Where", [is_zero, b.const([0.0], TensorProto.FLOAT, []), scale])
    wh = b.op("Reshape", [b.op("Mul", [signs, b.op("Unsqueeze", [scale, b.const([-1])])]), b.const([0, -1])])
    w_rest = _haar_inverse_rows(b, wh)  # [N, Kh]; the first Kn columns are the non-salient inputs in order
    # non-salient column numbers: positions where a K-long mask (0 at salient columns) is 1
    salient = b.op("Cast", ["salient_idx"], to=TensorProto.INT64)
    ones = b.op("ConstantOfShape", [k], value=helper.make_tensor("o", TensorProto.INT64, [1], [1]))
    mask = b.op("ScatterElements", [ones, salient, b.op("Mul", [salient, b.const([0])])], axis=0)
    others = b.op("Reshape", [b.op("NonZero", [mask]), b.const([-1])])
    kn = b.dim(others, 0)
    rows = b.dim("bits", 0)
    # salient columns: [S, N] bit planes (column-major), scales per column
    first = b.op("Transpose", [b.first_columns(b.signs("salient_bits"), rows)], perm=[1, 0])  # [N, S]
    second = b.op("Transpose", [b.first_columns(b.signs("salient_residual_bits"), rows)], perm=[1, 0])
    sc = b.op("Cast", ["salient_scales"], to=TensorProto.FLOAT)
    a1 = b.op("Gather", [sc, b.const(0, dims=[])], axis=0)
    a2 = b.op("Gather", [sc, b.const(1, dims=[])], axis=0)
    ws = b.op("Add", [b.op("Mul", [first, a1]), b.op("Mul", [second, a2])])  # [N, S]
    zeros = b.op("ConstantOfShape", [b.op("Concat", [rows, k], axis=0)],
                 value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    grid_rest = b.op("Expand", [b.op("Unsqueeze", [others, b.const([0])]), b.op("Concat", [rows, kn], axis=0)])
    dense = b.op("ScatterElements", [zeros, grid_rest, b.first_columns(w_rest, kn)], axis=1)
    grid_sal = b.op("Expand", [b.op("Unsqueeze", [salient, b.const([0])]),
                               b.op("Concat", [rows, b.dim(salient, 0)], axis=0)])
    dense = b.op("ScatterElements", [dense, grid_sal, ws], axis=1)
    b.finish(dense)
    return b.function("HaarBinaryMatMul", ["X", "salient_idx", "salient_bits", "salient_residual_bits",
                                           "salient_scales", "bits", "scale_codes", "scale_base"],
                      ["in_features", "salient", "group_size"], opset)


def dense_sparse_body(opset: int, conv: bool = False) -> onnx.FunctionProto:
    b = Body(conv)
    k, atoms = b.attr_int("in_features"), b.attr_int("atoms")
    zeros = b.op("ConstantOfShape", [b.op("Concat", [atoms, k], axis=0)],
                 value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    index = b.op("Transpose", [b.op("Cast", ["atom_idx"], to=TensorProto.INT64)], perm=[1, 0])  # [s, K]
    values = b.op("Transpose", [b.op("Cast", ["values"], to=TensorProto.FLOAT)], perm=[1, 0])
    sparse = b.op("ScatterElements", [zeros, index, values], axis=0, reduction="add")  # [A, K]
    dictionary = b.op("Cast", ["dictionary"], to=TensorProto.FLOAT)
    if conv:
        b.finish(b.op("MatMul", [dictionary, sparse]))
    else:  # x S^T first (s multiply-adds per input), then the dense atoms: never form W
        codes = b.op("MatMul", ["X", b.op("Transpose", [sparse], perm=[1, 0])])  # [..., A]
        b.matmul_transposed(codes, dictionary)
    return b.function("DenseSparseMatMul", ["X", "dictionary", "values", "atom_idx"],
                      ["in_features", "atoms", "nonzeros"], opset)


def group_sparse_body(opset: int, conv: bool = False) -> onnx.FunctionProto:
    b = Body(conv)
    k, g = b.attr_int("in_features"), b.attr_int("group")
    rows, kept = b.dim("group_idx", 0), b.dim("group_idx", 1)
    start = b.op("Mul", [b.op("Cast", ["group_idx"], to=TensorProto.INT64), g])  # [N, r]
    offsets = b.op("Range", [b.const(0, dims=[]), b.op("Squeeze", [g]), b.const(1, dims=[])])  # [g]
    position = b.op("Reshape", [b.op("Add", [b.op("Unsqueeze", [start, b.const([-1])]), offsets]),
                                b.const([0, -1])])  # [N, r*g]
    padded_k = b.op("Mul", [b.op("Div", [b.op("Add", [k, b.op("Sub", [g, b.const([1])])]), g]), g])
    zeros = b.op("ConstantOfShape", [b.op("Concat", [rows, padded_k], axis=0)],
                 value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    dense = b.op("ScatterElements", [zeros, position, b.op("Cast", ["values"], to=TensorProto.FLOAT)], axis=1)
    del kept
    b.finish(b.first_columns(dense, k))
    return b.function("GroupSparseMatMul", ["X", "values", "group_idx"], ["in_features", "group", "kept"], opset)


def binary_split_body(opset: int, conv: bool = False) -> onnx.FunctionProto:
    b = Body(conv)
    k, block = b.attr_int("in_features"), b.attr_int("block_size")
    rows = b.dim("bits", 0)
    s1 = b.signs("bits")  # [N, Kp]
    outer = b.bits("split_bits")  # 0/1 [N, Kp]
    scales = b.op("Cast", ["scales"], to=TensorProto.FLOAT)  # [N, Kp/B, 4]

    def expanded(slot: int) -> str:  # [N, Kp]: scale `slot` repeated over its block
        one = b.op("Gather", [scales, b.const(slot, dims=[])], axis=2)  # [N, Kp/B]
        tiled = b.op("Expand", [b.op("Unsqueeze", [one, b.const([-1])]),
                                b.op("Concat", [rows, b.dim(one, 1), block], axis=0)])
        return b.op("Reshape", [tiled, b.const([0, -1])])

    a1, a2, conc, out = (expanded(i) for i in range(4))
    inner = b.op("Sub", [b.const([1.0], TensorProto.FLOAT, []), outer])
    dense = b.op("Mul", [s1, b.op("Add", [b.op("Mul", [outer, out]), b.op("Mul", [inner, conc])])])
    # salient columns: a1 * s1 + a2 * s2 replaces the value there
    salient = b.op("Cast", ["salient_idx"], to=TensorProto.INT64)
    count = b.dim(salient, 0)
    s2 = b.first_columns(b.signs("residual_bits"), count)  # [N, S]
    take = lambda t: b.op("Gather", [t, salient], axis=1)  # noqa: E731
    ws = b.op("Add", [b.op("Mul", [take(a1), take(s1)]), b.op("Mul", [take(a2), s2])])
    grid = b.op("Expand", [b.op("Unsqueeze", [salient, b.const([0])]), b.op("Concat", [rows, count], axis=0)])
    dense = b.op("ScatterElements", [dense, grid, ws], axis=1)
    b.finish(b.first_columns(dense, k))
    return b.function("SplitBinaryMatMul", ["X", "salient_idx", "bits", "residual_bits", "split_bits", "scales"],
                      ["in_features", "block_size", "salient"], opset)


# format name -> (ONNX op name, body builder)
OPS = {
    "binary": ("BinaryMatMul", binary_body),
    "nm": ("NMSparseMatMul", nm_body),
    "haar_binary": ("HaarBinaryMatMul", haar_binary_body),
    "binary_split": ("SplitBinaryMatMul", binary_split_body),
    "dense_sparse": ("DenseSparseMatMul", dense_sparse_body),
    "group_sparse": ("GroupSparseMatMul", group_sparse_body),
}
