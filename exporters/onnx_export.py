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
from onnx import defs

from edgevla.runtime import formats
from .onnx_bodies import CONV_ATTRIBUTES, DOMAIN, OPS, binary_int4_body, conv_op_name

DOMAIN_VERSION = 1
DEFAULT_OPSET = 18


def _register_schemas() -> None:
    """Register an op schema per format and form (the dynamo exporter needs them to emit custom nodes)."""
    P, A = defs.OpSchema.FormalParameter, defs.OpSchema.AttrType
    packed_types = ["tensor(uint8)", "tensor(uint16)", "tensor(float16)", "tensor(float)"]
    for format_name, (matmul_name, _) in OPS.items():
        spec = formats.get_format(format_name)
        for op_name, conv in ((matmul_name, False), (conv_op_name(matmul_name), True)):
            if defs.has(op_name, DOMAIN):
                continue
            inputs = [P("X", "T", "activations [N, C, H, W]" if conv else "activations [..., K]")]
            constraints = [("T", ["tensor(float)"], "float32 activations")]
            for i, array in enumerate(spec.array_names):
                inputs.append(P(array, f"P{i}", f"packed array {array!r} (edgevla.runtime.formats, {format_name})"))
                constraints.append((f"P{i}", packed_types, "packed array dtype"))
            attributes = [defs.OpSchema.Attribute(a, A.INT, a) for a in spec.attr_names]
            if conv:
                attributes += [defs.OpSchema.Attribute(a, A.INTS, a) for a in CONV_ATTRIBUTES]
            what = "Conv(X, W as [O, C, kh, kw])" if conv else "Y = X @ W.T"
            defs.register_schema(defs.OpSchema(
                op_name, DOMAIN, DOMAIN_VERSION, inputs=inputs, outputs=[P("Y", "T", "output")],
                doc=f"{what} with W in edgevla's {format_name!r} packed format (see edgevla.runtime.formats).",
                type_constraints=constraints, attributes=attributes))


_register_schemas()


def _translation_function(format_name: str, conv: bool):
    """The onnxscript translation of `edgevla::<format>_{matmul|conv2d}`: emit one ai.edgevla node.
    Generated from the format's registry entry so every format and form has the same shape of code."""
    import onnxscript

    spec = formats.get_format(format_name)
    op_name = OPS[format_name][0] if not conv else conv_op_name(OPS[format_name][0])
    ints = list(spec.attr_names)
    int_lists = list(CONV_ATTRIBUTES) if conv else []
    params = ", ".join(["x", *spec.array_names, *(f"{a}: int" for a in ints),
                        *(f"{a}: Sequence[int]" for a in int_lists)])
    call = ", ".join(["x", *spec.array_names, *(f"{a}={a}" for a in ints + int_lists)])
    source = f"def translate({params}):\n    return ev.{op_name}({call})\n"
    scope = {"ev": onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION), "Sequence": Sequence}
    exec(compile(source, f"<edgevla {op_name} translation>", "exec"), scope)  # noqa: S102 (our own template)
    return scope["translate"]


def _translation_table():
    import torch

    from . import packed_layers  # noqa: F401  (defines torch.ops.edgevla.*)

    ops = torch.ops.edgevla
    table = {ops.binary_matmul.default: _translation_function("binary", False)}
    for format_name in OPS:
        if format_name != "binary":
            table[getattr(ops, f"{format_name}_matmul").default] = _translation_function(format_name, False)
        table[getattr(ops, f"{format_name}_conv2d").default] = _translation_function(format_name, True)
    return table


FUNCTION_BUILDERS = {op_name: builder for op_name, builder in OPS.values()}
FUNCTION_BUILDERS.update({conv_op_name(op_name): (lambda opset, b=builder: b(opset, conv=True))
                          for op_name, builder in OPS.values()})
EXPORTABLE_FORMATS = set(OPS)  # formats whose packed Linear layers leave torch as one ai.edgevla op


def _export_failure(model, error: Exception) -> str:
    """One readable line from torch.export's long report: what failed and where in the user's code."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    where = re.search(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', text)
    location = f" at {where.group(1)}:{where.group(2)} in {where.group(3)} (`{where.group(4).strip()}`)" if where else ""
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        return (f"could not export {type(model).__name__}: data-dependent control flow{location}; rewrite it "
                "with torch.where / torch.cond or make the branch static")
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return (f"could not export {type(model).__name__} to ONNX{location}: {first}. Unsupported module types and "
            "data-dependent control flow must be removed or rewritten first")


def export(model, example_inputs: Sequence, path: str | Path, *, opset: int | None = None,
           dynamic_batch: bool = False, input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, onnxruntime_int4: bool = False) -> onnx.ModelProto:
    """Export `model` (possibly holding packed layers) to ONNX at `path`; returns the saved model.

    Static shapes are the default because TVM compiles static shapes; `dynamic_batch=True` marks the first
    dimension of every input as symbolic (for onnxruntime use). `onnxruntime_int4=True` gives the binary
    layers a function body that stock onnxruntime turns into MatMulNBits (4-bit weights kept in memory,
    opset 21; every binary layer must have K a multiple of its group, a power of two >= 16).
    """
    import torch

    from .packed_layers import PackedLinear

    unexportable = [f"{name} ({type(m).__name__}, format {m.format_name!r})" for name, m in model.named_modules()
                    if isinstance(m, PackedLinear) and m.format_name not in EXPORTABLE_FORMATS]
    if unexportable:
        raise ValueError(f"no ONNX exporter yet for these packed layers: {', '.join(unexportable)}; this edgevla "
                         f"exports formats {sorted(EXPORTABLE_FORMATS)} (a dense export would silently undo the "
                         "compression)")
    opset = opset or (21 if onnxruntime_int4 else DEFAULT_OPSET)
    if onnxruntime_int4:
        if opset < 21:
            raise ValueError(f"onnxruntime_int4 needs opset >= 21, got {opset}")
        for name, m in model.named_modules():
            if isinstance(m, PackedLinear) and m.format_name == "binary":
                g, k = m.attrs["group_size"], m.attrs["in_features"]
                if k % g or g < 16 or g & (g - 1):
                    raise ValueError(f"layer {name!r}: onnxruntime_int4 needs in_features ({k}) to be a multiple "
                                     f"of group_size ({g}) and group_size a power of two >= 16; compress with "
                                     "such a group_size or export without onnxruntime_int4")
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
            raise RuntimeError(_export_failure(model, e)) from e
        finally:
            registration_log.setLevel(previous_level)
    proto = program.model_proto
    used = {node.op_type for node in proto.graph.node if node.domain == DOMAIN}
    builders = dict(FUNCTION_BUILDERS, BinaryMatMul=binary_int4_body) if onnxruntime_int4 else FUNCTION_BUILDERS
    proto.functions.extend(builders[op](opset) for op in sorted(used))
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
