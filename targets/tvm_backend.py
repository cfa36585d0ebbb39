"""Everything that touches TVM 0.27's compiler API lives here (importing, lowering, compiling, exporting).

TVM's ONNX frontend ignores node domains and has no hook for custom converters; the one place we plug in
is `onnx_frontend._get_convert_map`, wrapped for the duration of one import. Before importing, every node is
checked against what TVM and edgevla support, so an unsupported op is reported with its node name, op type
and domain instead of failing deep inside the frontend.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from edgevla.exporters.onnx_bodies import OPS, conv_op_name
from edgevla.exporters.onnx_export import DOMAIN
from edgevla.runtime import formats
from . import tvm_kernels


class UnsupportedOperatorError(ValueError):
    """An ONNX node that neither TVM's frontend nor edgevla can lower."""


def _constant_array(expr, what: str) -> np.ndarray:
    """The numpy value of a Relax constant (packed weights are ONNX initializers, hence constants here)."""
    data = getattr(expr, "data", None)
    if data is None:
        data = getattr(expr, "value", None)
    if data is None or not hasattr(data, "numpy"):
        raise ValueError(f"{what}: packed weight arrays must be initializers (constants) to be compiled")
    return data.numpy()


# Formats that can call a linked kernels_arm C kernel instead of their TIR kernel (set per import).
C_KERNEL_FORMATS = ("binary", "nm", "haar_binary", "group_sparse")
# Formats whose C kernel has an int8-activation form (compile_bundle(..., activations="int8")).
INT8_ACTIVATION_FORMATS = ("binary", "haar_binary")
_use_c_kernels = False
_int8_activations = False


def _kernel_for(format_name: str, rows: int, attrs: dict, arrays: list[np.ndarray]):
    """(TIR kernel, extra constant inputs) computing Y[rows, N] = X @ W.T straight from the packed arrays."""
    n = formats.out_features_of(format_name, arrays)
    k = attrs["in_features"]
    if _use_c_kernels and format_name == "binary":
        return tvm_kernels.extern_binary_matmul(rows, n, k, attrs["group_size"], int8=_int8_activations), []
    if _use_c_kernels and format_name == "nm":
        return tvm_kernels.extern_nm_matmul(rows, n, k, attrs["n"], attrs["m"], arrays[1].shape[1]), []
    if _use_c_kernels and format_name == "haar_binary":
        return tvm_kernels.extern_haar_binary_matmul(rows, n, k, attrs["salient"], attrs["group_size"],
                                                     arrays[4].shape[1] * 8, int8=_int8_activations), []
    if _use_c_kernels and format_name == "group_sparse":
        return tvm_kernels.extern_group_sparse_matmul(rows, n, k, attrs["group"], attrs["kept"]), []
    if format_name == "binary":
        return tvm_kernels.binary_matmul_kernel(rows, n, k, attrs["group_size"]), []
    if format_name == "nm":
        return tvm_kernels.nm_matmul_kernel(rows, n, k, attrs["n"], attrs["m"], arrays[1].shape[1]), []
    if format_name == "group_sparse":
        return tvm_kernels.group_sparse_matmul_kernel(rows, n, k, attrs["group"], attrs["kept"]), []
    if format_name == "dense_sparse":
        return tvm_kernels.dense_sparse_matmul_kernel(rows, n, k, attrs["atoms"], attrs["nonzeros"],
                                                      str(arrays[2].dtype)), []
    if format_name == "binary_split":
        return tvm_kernels.binary_split_matmul_kernel(rows, n, k, attrs["block_size"], attrs["salient"]), []
    if format_name == "haar_binary":
        others = formats.haar_other_columns(k, arrays[0]).astype(np.int32)
        kernel = tvm_kernels.haar_binary_matmul_kernel(rows, n, k, attrs["salient"], attrs["group_size"],
                                                       arrays[4].shape[1] * 8)
        return kernel, [others if others.size else np.zeros(1, np.int32)]
    raise UnsupportedOperatorError(f"no TVM kernel for packed format {format_name!r}")


def _at_least_one(array: np.ndarray) -> np.ndarray:
    """Zero-sized arrays (a layer with no salient columns) become one dummy element the kernel never reads."""
    if all(array.shape):
        return array
    return np.zeros(tuple(max(d, 1) for d in array.shape), array.dtype)


def _packed_call(bb, format_name: str, x2, rows: int, attrs: dict, packed_inputs, name: str):
    arrays = [_constant_array(e, name) for e in packed_inputs]
    kernel, extra = _kernel_for(format_name, rows, attrs, arrays)
    n = formats.out_features_of(format_name, arrays)
    shape_key = "x".join(str(d) for d in (rows, n, attrs["in_features"]))
    gv = bb.add_func(kernel, f"edgevla_{format_name}_matmul_{shape_key}")
    args = [x2] + [relax.const(_at_least_one(a)) if not all(a.shape) else e for a, e in zip(arrays, packed_inputs)]
    args += [relax.const(a) for a in extra]
    return bb.emit(relax.call_tir(gv, args, out_ty=relax.TensorType((rows, n), "float32"))), n


def _lower_matmul(bb, format_name: str, x, attr, attrs: dict, packed_inputs, name: str):
    """<Format>MatMul: flatten the leading axes to rows, one packed kernel call, restore the shape."""
    k = attrs["in_features"]
    x_shape = [int(d) for d in x.ty.shape]
    if x_shape[-1] != k:
        raise ValueError(f"{name}: input has {x_shape[-1]} features, in_features is {k}")
    rows = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
    x2 = bb.emit(relax.op.reshape(x, (rows, k))) if len(x_shape) != 2 else x
    y, n = _packed_call(bb, format_name, x2, rows, attrs, packed_inputs, name)
    return relax.op.reshape(y, (*x_shape[:-1], n)) if len(x_shape) != 2 else y


def _lower_conv(bb, format_name: str, x, attr, attrs: dict, packed_inputs, name: str):
    """<Format>Conv2d: im2col (TIR), the format's packed kernel on the columns, back to NCHW."""
    kh, kw = (int(v) for v in attr["kernel_shape"])
    sh, sw = (int(v) for v in attr.get("strides", (1, 1)))
    pt, pl, pb, pr = (int(v) for v in attr.get("pads", (0, 0, 0, 0)))
    dh, dw = (int(v) for v in attr.get("dilations", (1, 1)))
    batch, channels, height, width = (int(d) for d in x.ty.shape)
    if channels * kh * kw != attrs["in_features"]:
        raise ValueError(f"{name}: {channels} channels x {kh}x{kw} kernel != in_features {attrs['in_features']}")
    out_h = (height + pt + pb - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rows = batch * out_h * out_w
    im2col = tvm_kernels.im2col_kernel(batch, channels, height, width, kh, kw, sh, sw, pt, pl, dh, dw, out_h, out_w)
    gv = bb.add_func(im2col, f"edgevla_im2col_{batch}x{channels}x{height}x{width}_k{kh}x{kw}_s{sh}x{sw}")
    cols = bb.emit(relax.call_tir(gv, [x], out_ty=relax.TensorType((rows, attrs["in_features"]), "float32")))
    y, n = _packed_call(bb, format_name, cols, rows, attrs, packed_inputs, name)
    y = bb.emit(relax.op.reshape(y, (batch, out_h, out_w, n)))
    return relax.op.permute_dims(y, [0, 3, 1, 2])


def _converter(format_name: str, op_name: str, lower):
    """A frontend converter for ai.edgevla::<op_name>: read the format's attributes, then `lower`."""
    spec = formats.get_format(format_name)

    class Converter(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            name = f"{op_name} {attr.get('tvm_custom', {}).get('name', '')}".strip()
            attrs = {a: int(attr[a]) for a in spec.attr_names}
            return lower(bb, format_name, inputs[0], attr, attrs, inputs[1:], name)

    Converter.__name__ = f"{op_name}Converter"
    Converter.__doc__ = f"ai.edgevla::{op_name} -> {lower.__doc__}"
    return Converter


CUSTOM_CONVERTERS = {}
for _format_name, (_op_name, _) in OPS.items():
    CUSTOM_CONVERTERS[_op_name] = _converter(_format_name, _op_name, _lower_matmul)
    CUSTOM_CONVERTERS[conv_op_name(_op_name)] = _converter(_format_name, conv_op_name(_op_name), _lower_conv)


def check_supported(model: onnx.ModelProto) -> None:
    """Raise UnsupportedOperatorError naming every node TVM and edgevla cannot lower."""
    stock = onnx_frontend._get_convert_map()
    problems = []
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if domain in ("ai.onnx", ""):
            ok = node.op_type in stock or node.op_type in ("Constant", "If")
        elif domain == DOMAIN:
            ok = node.op_type in CUSTOM_CONVERTERS
        else:
            ok = False
        if not ok:
            problems.append(f"node {node.name or '<unnamed>'!r}: op {node.op_type!r} in domain {domain!r}")
    if problems:
        raise UnsupportedOperatorError(
            "these ONNX nodes cannot be compiled (neither TVM's ONNX frontend nor edgevla's custom ops "
            f"support them): {'; '.join(problems)}. Replace those layers, or run the file in onnxruntime")


@contextlib.contextmanager
def _custom_converters(c_kernels: bool = False, int8_activations: bool = False):
    global _use_c_kernels, _int8_activations
    original = onnx_frontend._get_convert_map

    def patched():
        table = original()
        table.update(CUSTOM_CONVERTERS)
        return table

    onnx_frontend._get_convert_map = patched
    _use_c_kernels, _int8_activations = c_kernels, int8_activations
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
        _use_c_kernels, _int8_activations = False, False


def import_onnx(model: onnx.ModelProto, *, c_kernels: bool = False, int8_activations: bool = False) -> tvm.IRModule:
    """ONNX (static shapes) -> Relax IRModule with edgevla ops lowered to TIR kernels; with `c_kernels`, the
    formats in C_KERNEL_FORMATS call the kernels_arm C kernels instead (link them with `addons`); with
    `int8_activations` (C kernels only), the formats in INT8_ACTIVATION_FORMATS quantize their activation rows
    to int8 inside the kernel (an approximation of the fp32 op that the bundle's tolerance states)."""
    if int8_activations and not c_kernels:
        raise ValueError("int8 activations need the C kernels (kernels='c' or 'auto' on a target that has them)")
    from edgevla.exporters.inspect_onnx import check_domain_version

    check_domain_version(model)
    check_supported(model)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ValueError(f"input {value.name!r} has a symbolic dimension; TVM compiles static shapes: "
                             "export with dynamic_batch=False")
    with _custom_converters(c_kernels, int8_activations):
        return relax.frontend.onnx.from_onnx(model, keep_params_in_input=False)


@dataclass(frozen=True)
class ConstantInfo:
    dtype: str
    shape: tuple[int, ...]


def relax_constants(mod: tvm.IRModule) -> list[ConstantInfo]:
    """Every constant tensor the Relax functions of `mod` hold (what ends up in the compiled module)."""
    found: list[ConstantInfo] = []

    def visit(expr):
        value = getattr(expr, "value", None) if isinstance(expr, tvm.ir.expr.Constant) else None
        if value is not None and hasattr(value, "shape") and hasattr(value, "dtype"):  # tensors, not scalars
            found.append(ConstantInfo(str(value.dtype), tuple(int(d) for d in value.shape)))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def compile_module(mod: tvm.IRModule, target: dict | str):
    """Relax IRModule -> VM executable for `target` (a TVM target dict or tag)."""
    tvm_target = tvm.target.Target(target)
    with tvm_target:
        return tvm.compile(mod, target=tvm_target)


def export_library(executable, path: Path, *, cross_compiler: str | None = None,
                   addons: list[Path] | None = None, link_options: list[str] | None = None) -> Path:
    """Write the shared library; `addons` are extra object files linked in (the kernels_arm C kernels),
    `link_options` extra linker arguments (the dense library: -ldnnl ...)."""
    path = Path(path)
    extra = {"addons": [str(a) for a in addons]} if addons else {}
    if link_options:
        extra["options"] = list(link_options)
    if cross_compiler:
        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cross_compiler), **extra)
    else:
        executable.export_library(str(path), **extra)
    return path


def tvm_version() -> str:
    return str(tvm.__version__)
