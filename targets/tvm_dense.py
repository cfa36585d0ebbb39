"""Dense fp32 ops of an imported Relax module -> calls into a linked library (oneDNN on x86_64).

TVM 0.27's default CPU pipeline leaves MatMul and Conv2d unscheduled (10x slower than onnxruntime on the
reach policy: `edgevla bench compile`), and tuning results cannot be saved in this wheel. So on targets
with a dense library, every float32 MatMul whose second operand is a constant weight (a Linear layer) and
every float32 Conv2d with a constant weight (moved to NHWC x OHWI first by TVM's ConvertLayout; NCHW x OIHW
is accepted too) becomes one `call_tir` of an opaque PrimFunc that calls `kernels_arm/src/lib/dense_*.c`
(kernels_arm/include/edgevla/dense.h), which prepacks the weight on its first call and runs the library's
kernel. The status each call returns is checked: a refused call
fails the bundle call with the op's name and shape instead of leaving the output unwritten.
Everything else (attention's activation x activation products, elementwise ops, norms) stays with TVM.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

_MATMUL = tvm.ir.Op.get("relax.matmul")
_CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
_PERMUTE = tvm.ir.Op.get("relax.permute_dims")


def matmul_kernel(x_shape: tuple[int, ...], n: int, k: int):
    """Y[..., n] = X[..., k] @ W[k, n] by evla_dense_matmul_f32, on the activations' own shape (the leading
    axes are rows; the C call takes data pointers, so no reshape is needed around it)."""
    rows = int(np.prod(x_shape[:-1]))
    y_shape = (*x_shape[:-1], n)
    message = f"edgevla: dense MatMul {rows}x{k} @ {k}x{n} was refused by the dense library (see dense.h codes)"

    @T.prim_func(private=True)
    def dense_matmul(X: T.Buffer(x_shape, "float32"), W: T.Buffer((k, n), "float32"),
                     Y: T.Buffer(y_shape, "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        status = T.call_extern("int32", "evla_dense_matmul_f32", X.data, rows, W.data, n, k, Y.data)
        assert status == 0, message

    return dense_matmul


def conv2d_kernel(x_shape, w_shape, y_shape, strides, padding, dilation, groups: int, *, channels_last: bool):
    """conv2d by evla_dense_conv2d_f32_flat: NCHW x OIHW, or NHWC x OHWI with `channels_last`; padding is
    (top, left, bottom, right) as Relax has it."""
    if channels_last:
        (b, h, w, c), (o, kh, kw, i), (oh, ow) = x_shape, w_shape, y_shape[1:3]
    else:
        (b, c, h, w), (o, i, kh, kw), (oh, ow) = x_shape, w_shape, y_shape[2:4]
    sh, sw = strides
    pt, pl, pb, pr = padding
    dh, dw = dilation
    layout_flag = int(channels_last)
    x_dims, w_dims, y_dims = (tuple(int(d) for d in shape) for shape in (x_shape, w_shape, y_shape))
    message = (f"edgevla: dense Conv2d {list(x_shape)} * {list(w_shape)} (groups {groups}) was refused by the "
               "dense library (see dense.h codes)")

    @T.prim_func(private=True)
    def dense_conv2d(X: T.Buffer(x_dims, "float32"), W: T.Buffer(w_dims, "float32"), Y: T.Buffer(y_dims, "float32")):
        T.func_attr({"op_pattern": 8, "tir.noalias": True})
        status = T.call_extern("int32", "evla_dense_conv2d_f32_flat", X.data, W.data, Y.data, b, c, h, w, o, oh, ow,
                               kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups, layout_flag)
        assert status == 0, message

    return dense_conv2d


def _static_shape(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except TypeError:  # a symbolic dimension
        return None


@relax.expr_functor.mutator
class _DenseToLibrary(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod_ = mod
        self.lowered = Counter()
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def _constant(self, expr) -> np.ndarray | None:
        """The value of `expr` when it is a constant tensor or a transpose of one (how ONNX weights arrive)."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                return None
            expr = bound
        if isinstance(expr, tvm.ir.expr.Constant):
            value = getattr(expr, "data", None) or getattr(expr, "value", None)
            return value.numpy() if hasattr(value, "numpy") else None
        if isinstance(expr, relax.Call) and expr.op == _PERMUTE:
            inner = self._constant(expr.args[0])
            if inner is None:
                return None
            axes = expr.attrs.axes
            return np.ascontiguousarray(np.transpose(inner, None if axes is None else [int(a) for a in axes]))
        return None

    def _kernel(self, key: tuple, make):
        if key not in self.kernels:
            self.kernels[key] = self.builder_.add_func(make(), "edgevla_dense_" + "_".join(map(str, key)))
        return self.kernels[key]

    def visit_call_(self, original):
        call = self.visit_expr_post_order(original)
        if call.op == _MATMUL:
            return self._matmul(call, _static_shape(original))
        if call.op == _CONV2D:
            return self._conv2d(call, _static_shape(original))
        return call

    def _matmul(self, call, y_shape):
        x_shape = _static_shape(call.args[0])
        weight = self._constant(call.args[1])
        if x_shape is None or y_shape is None or weight is None or weight.ndim != 2 or weight.dtype != np.float32:
            return call
        k, n = weight.shape
        if len(x_shape) < 2 or x_shape[-1] != k or int(np.prod(x_shape[:-1])) < 1:
            return call
        gv = self._kernel(("matmul", *x_shape, n), lambda: matmul_kernel(x_shape, n, k))
        self.lowered["MatMul"] += 1
        return relax.call_tir(gv, [call.args[0], relax.const(weight)], out_ty=relax.TensorType(y_shape, "float32"))

    def _conv2d(self, call, y_shape):
        attrs = call.attrs
        x_shape = _static_shape(call.args[0])
        weight = self._constant(call.args[1])
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
        if (x_shape is None or y_shape is None or weight is None or weight.dtype != np.float32 or
                layouts not in (("NCHW", "OIHW", "NCHW"), ("NHWC", "OHWI", "NHWC")) or
                (attrs.out_dtype and str(attrs.out_dtype) not in ("", "float32", "void"))):
            return call
        channels_last = layouts[0] == "NHWC"
        strides = tuple(int(v) for v in attrs.strides)
        padding = tuple(int(v) for v in attrs.padding)
        dilation = tuple(int(v) for v in attrs.dilation)
        groups = int(attrs.groups)
        key = ("conv2d", layouts[0], *x_shape, *weight.shape, *strides, *padding, *dilation, groups)
        gv = self._kernel(key, lambda: conv2d_kernel(x_shape, weight.shape, y_shape, strides, padding, dilation,
                                                     groups, channels_last=channels_last))
        self.lowered["Conv2d"] += 1
        return relax.call_tir(gv, [call.args[0], relax.const(weight)], out_ty=relax.TensorType(y_shape, "float32"))


def lower_dense_ops(mod: tvm.IRModule) -> tuple[tvm.IRModule, Counter]:
    """(module with library calls for the dense ops, how many of each op were lowered). Convolutions are first
    moved to NHWC (TVM's ConvertLayout: activations stay channels-last between convolutions and their
    elementwise neighbours, transposes only where an NCHW op needs them), the layout oneDNN's fastest CPU
    convolutions read: the reason the dense library outruns onnxruntime's NCHW path less there."""
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    rewriter = _DenseToLibrary(mod)
    lowered = rewriter.transform()
    return relax.transform.DeadCodeElimination()(lowered), rewriter.lowered
