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

from edgevla.exporters.onnx_export import DOMAIN
from . import tvm_kernels


class UnsupportedOperatorError(ValueError):
    """An ONNX node that neither TVM's frontend nor edgevla can lower."""


class _BinaryMatMulConverter(onnx_frontend.OnnxOpConverter):
    """ai.edgevla::BinaryMatMul -> relax.call_tir to a TIR kernel over the packed uint8 bits."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, bits, scales = inputs[0], inputs[1], inputs[2]
        k, group = int(attr["in_features"]), int(attr["group_size"])
        x_shape = [int(d) for d in x.ty.shape]
        if x_shape[-1] != k:
            raise ValueError(f"BinaryMatMul {attr['tvm_custom']['name']}: input has {x_shape[-1]} features, "
                             f"in_features is {k}")
        n = int(bits.ty.shape[0])
        rows = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
        kernel = tvm_kernels.binary_matmul_kernel(rows, n, k, group)
        gv = bb.add_func(kernel, f"edgevla_binary_matmul_{rows}x{n}x{k}_g{group}")
        x2 = bb.emit(relax.op.reshape(x, (rows, k))) if len(x_shape) != 2 else x
        y = bb.emit(relax.call_tir(gv, [x2, bits, scales], out_ty=relax.TensorType((rows, n), "float32")))
        return relax.op.reshape(y, (*x_shape[:-1], n)) if len(x_shape) != 2 else y


CUSTOM_CONVERTERS = {"BinaryMatMul": _BinaryMatMulConverter}


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
def _custom_converters():
    original = onnx_frontend._get_convert_map

    def patched():
        table = original()
        table.update(CUSTOM_CONVERTERS)
        return table

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


def import_onnx(model: onnx.ModelProto) -> tvm.IRModule:
    """ONNX (static shapes) -> Relax IRModule with edgevla ops lowered to TIR kernels."""
    from edgevla.exporters.inspect_onnx import check_domain_version

    check_domain_version(model)
    check_supported(model)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ValueError(f"input {value.name!r} has a symbolic dimension; TVM compiles static shapes: "
                             "export with dynamic_batch=False")
    with _custom_converters():
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


def export_library(executable, path: Path, *, cross_compiler: str | None = None) -> Path:
    path = Path(path)
    if cross_compiler:
        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cross_compiler))
    else:
        executable.export_library(str(path))
    return path


def tvm_version() -> str:
    return str(tvm.__version__)
