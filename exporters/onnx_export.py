"""`edgevla.export`: a torch model with packed layers -> one ONNX file with `ai.edgevla` custom ops.

Each packed layer leaves torch as a single custom-domain node that keeps the packed uint8 weights (so a
compiler can give it a real kernel). The file also carries a model-local function per custom op whose
body is made of standard ONNX ops, so stock onnxruntime and `onnx.reference` run the same file.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import onnx
from onnx import TensorProto, defs, helper

from edgevla.runtime import formats

DOMAIN = "ai.edgevla"
DOMAIN_VERSION = 1
DEFAULT_OPSET = 18


def _register_schemas() -> None:
    """Register our op schemas with onnx (the dynamo exporter needs them to emit custom nodes)."""
    if defs.has("BinaryMatMul", DOMAIN):
        return
    P, A = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute
    defs.register_schema(defs.OpSchema(
        "BinaryMatMul", DOMAIN, DOMAIN_VERSION,
        doc="Y = X @ W.T with W in edgevla's `binary` packed format (see edgevla.runtime.formats).",
        inputs=[P("X", "T", "activations [..., K]"), P("bits", "tensor(uint8)", "[N, Kp/8] sign bits"),
                P("scales", "tensor(float16)", "[N, Kp/G] group scales")],
        outputs=[P("Y", "T", "[..., N]")],
        type_constraints=[("T", ["tensor(float)"], "float32 activations")],
        attributes=[A("in_features", defs.OpSchema.AttrType.INT, "K"),
                    A("group_size", defs.OpSchema.AttrType.INT, "G")]))


_register_schemas()


def _translation_table():
    import onnxscript
    import torch

    from . import packed_layers  # noqa: F401  (registers torch.ops.edgevla.*)

    edgevla = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def binary_matmul(x, bits, scales, in_features: int, group_size: int):
        return edgevla.BinaryMatMul(x, bits, scales, in_features=in_features, group_size=group_size)

    return {torch.ops.edgevla.binary_matmul.default: binary_matmul}


def binary_matmul_function(opset: int) -> onnx.FunctionProto:
    """BinaryMatMul as standard ops: unpack bits LSB first, sign = 2*bit-1, times group scale, MatMul."""
    def ref_int(name, attribute):
        """A Constant whose value_int is the calling node's attribute `attribute`."""
        return onnx.NodeProto(op_type="Constant", output=[name], attribute=[
            onnx.AttributeProto(name="value_int", ref_attr_name=attribute, type=onnx.AttributeProto.INT)])

    nodes = [
        helper.make_node("Constant", [], ["shifts"], value=helper.make_tensor("s", TensorProto.UINT8, [8], list(range(8)))),
        helper.make_node("Constant", [], ["one_u8"], value=helper.make_tensor("o", TensorProto.UINT8, [], [1])),
        helper.make_node("Constant", [], ["last_axis"], value=helper.make_tensor("a", TensorProto.INT64, [1], [-1])),
        helper.make_node("Constant", [], ["zero_i64"], value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["minus1"], value=helper.make_tensor("m", TensorProto.INT64, [1], [-1])),
        helper.make_node("Constant", [], ["one_axis"], value=helper.make_tensor("x", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["two_f"], value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0])),
        helper.make_node("Constant", [], ["one_f"], value=helper.make_tensor("f", TensorProto.FLOAT, [], [1.0])),
        ref_int("k_scalar", "in_features"),
        ref_int("g_scalar", "group_size"),
        helper.make_node("Unsqueeze", ["k_scalar", "zero_i64"], ["k_1d"]),
        helper.make_node("Unsqueeze", ["g_scalar", "zero_i64"], ["g_1d"]),
        # bits [N, Kp/8] -> [N, Kp/8, 8] -> bit values -> signs +-1
        helper.make_node("Unsqueeze", ["bits", "last_axis"], ["bits3"]),
        helper.make_node("BitShift", ["bits3", "shifts"], ["shifted"], direction="RIGHT"),
        helper.make_node("BitwiseAnd", ["shifted", "one_u8"], ["bit"]),
        helper.make_node("Cast", ["bit"], ["bit_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["bit_f", "two_f"], ["bit_2"]),
        helper.make_node("Sub", ["bit_2", "one_f"], ["signs"]),
        # signs -> [N, Kp/G, G] times scales [N, Kp/G, 1] -> [N, Kp] -> first K columns
        helper.make_node("Concat", ["zero_i64", "minus1", "g_1d"], ["group_shape"], axis=0),
        helper.make_node("Reshape", ["signs", "group_shape"], ["signs_g"]),
        helper.make_node("Cast", ["scales"], ["scales_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["scales_f", "last_axis"], ["scales3"]),
        helper.make_node("Mul", ["signs_g", "scales3"], ["weight_g"]),
        helper.make_node("Concat", ["zero_i64", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["weight_g", "flat_shape"], ["weight_padded"]),
        helper.make_node("Slice", ["weight_padded", "zero_i64", "k_1d", "one_axis"], ["weight"]),
        helper.make_node("Transpose", ["weight"], ["weight_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["X", "weight_t"], ["Y"]),
    ]
    return helper.make_function(DOMAIN, "BinaryMatMul", ["X", "bits", "scales"], ["Y"], nodes,
                                [helper.make_opsetid("", opset)], attributes=["in_features", "group_size"])


FUNCTION_BUILDERS = {"BinaryMatMul": binary_matmul_function}
EXPORTABLE_FORMATS = {"binary"}  # formats whose packed layers leave torch as one ai.edgevla op


def export(model, example_inputs: Sequence, path: str | Path, *, opset: int | None = None,
           dynamic_batch: bool = False, input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None) -> onnx.ModelProto:
    """Export `model` (possibly holding packed layers) to ONNX at `path`; returns the saved model.

    Static shapes are the default because TVM compiles static shapes; `dynamic_batch=True` marks the first
    dimension of every input as symbolic (for onnxruntime use).
    """
    import torch

    from .packed_layers import PackedLinear

    unexportable = [f"{name} ({type(m).__name__}, format {m.format_name!r})" for name, m in model.named_modules()
                    if isinstance(m, PackedLinear) and m.format_name not in EXPORTABLE_FORMATS]
    if unexportable:
        raise ValueError(f"no ONNX exporter yet for these packed layers: {', '.join(unexportable)}; this edgevla "
                         f"exports formats {sorted(EXPORTABLE_FORMATS)} (a dense export would silently undo "
                         "the compression)")
    opset = opset or DEFAULT_OPSET
    if opset < 18:
        raise ValueError(f"edgevla exports at opset >= 18 (BitwiseAnd, the transformer ops), got {opset}")
    model.eval()
    args = tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in args)
    # torch logs one warning per torchvision op it cannot register; they are noise for policies.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, args, dynamo=True, opset_version=opset, verbose=False,
                                        custom_translation_table=_translation_table(),
                                        dynamic_shapes=dynamic_shapes, input_names=input_names,
                                        output_names=output_names, optimize=True)
        except Exception as e:  # torch raises many types here; name the model and chain the cause
            raise RuntimeError(f"could not export {type(model).__name__} to ONNX: {e}. Data-dependent control "
                               "flow and unsupported module types must be removed or rewritten first") from e
        finally:
            registration_log.setLevel(previous_level)
    proto = program.model_proto
    used = {node.op_type for node in proto.graph.node if node.domain == DOMAIN}
    proto.functions.extend(FUNCTION_BUILDERS[op](opset) for op in sorted(used))
    layers = {name: {"format": m.format_name, "method": m.method, "bits_per_weight": round(m.bits_per_weight, 4)}
              for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    from edgevla import __version__
    meta = {"edgevla_version": __version__, "edgevla_format_version": str(formats.FORMAT_VERSION),
            "edgevla_layers": json.dumps(layers, sort_keys=True)}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return proto
