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
from .onnx_bodies import DOMAIN, OPS, binary_int4_body

DOMAIN_VERSION = 1
DEFAULT_OPSET = 18


def _register_schemas() -> None:
    """Register an op schema per format (the dynamo exporter needs them to emit custom-domain nodes)."""
    P, A = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute
    packed_types = ["tensor(uint8)", "tensor(uint16)", "tensor(float16)", "tensor(float)"]
    for format_name, (op_name, _) in OPS.items():
        if defs.has(op_name, DOMAIN):
            continue
        spec = formats.get_format(format_name)
        inputs = [P("X", "T", "activations [..., K]")]
        constraints = [("T", ["tensor(float)"], "float32 activations")]
        for i, array in enumerate(spec.array_names):
            inputs.append(P(array, f"P{i}", f"packed array {array!r} (edgevla.runtime.formats, {format_name})"))
            constraints.append((f"P{i}", packed_types, "packed array dtype"))
        defs.register_schema(defs.OpSchema(
            op_name, DOMAIN, DOMAIN_VERSION,
            doc=f"Y = X @ W.T with W in edgevla's {format_name!r} packed format (see edgevla.runtime.formats).",
            inputs=inputs, outputs=[P("Y", "T", "[..., N]")], type_constraints=constraints,
            attributes=[A(a, defs.OpSchema.AttrType.INT, a) for a in spec.attr_names]))


_register_schemas()


def _translation_table():
    import onnxscript
    import torch

    from .packed_layers import PACKED_OPS  # noqa: F401  (defines torch.ops.edgevla.*)

    ev = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def binary(x, bits, scales, in_features: int, group_size: int):
        return ev.BinaryMatMul(x, bits, scales, in_features=in_features, group_size=group_size)

    def nm(x, values, indices, in_features: int, n: int, m: int):
        return ev.NMSparseMatMul(x, values, indices, in_features=in_features, n=n, m=m)

    def haar_binary(x, salient_idx, salient_bits, salient_residual_bits, salient_scales, bits, scale_codes,
                    scale_base, in_features: int, salient: int, group_size: int):
        return ev.HaarBinaryMatMul(x, salient_idx, salient_bits, salient_residual_bits, salient_scales, bits,
                                   scale_codes, scale_base, in_features=in_features, salient=salient,
                                   group_size=group_size)

    def binary_split(x, salient_idx, bits, residual_bits, split_bits, scales, in_features: int, block_size: int,
                     salient: int):
        return ev.SplitBinaryMatMul(x, salient_idx, bits, residual_bits, split_bits, scales,
                                    in_features=in_features, block_size=block_size, salient=salient)

    def dense_sparse(x, dictionary, values, atom_idx, in_features: int, atoms: int, nonzeros: int):
        return ev.DenseSparseMatMul(x, dictionary, values, atom_idx, in_features=in_features, atoms=atoms,
                                    nonzeros=nonzeros)

    def group_sparse(x, values, group_idx, in_features: int, group: int, kept: int):
        return ev.GroupSparseMatMul(x, values, group_idx, in_features=in_features, group=group, kept=kept)

    ops = torch.ops.edgevla
    return {ops.binary_matmul.default: binary, ops.nm_matmul.default: nm, ops.haar_binary_matmul.default: haar_binary,
            ops.binary_split_matmul.default: binary_split, ops.dense_sparse_matmul.default: dense_sparse,
            ops.group_sparse_matmul.default: group_sparse}


FUNCTION_BUILDERS = {op_name: builder for op_name, builder in OPS.values()}
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

    from .packed_layers import PackedConv2d, PackedLinear

    unexportable = [f"{name} ({type(m).__name__}, format {m.format_name!r})" for name, m in model.named_modules()
                    if isinstance(m, PackedLinear) and (m.format_name not in EXPORTABLE_FORMATS
                                                        or isinstance(m, PackedConv2d))]
    if unexportable:
        raise ValueError(f"no ONNX exporter yet for these packed layers: {', '.join(unexportable)}; this edgevla "
                         f"exports Linear layers in formats {sorted(EXPORTABLE_FORMATS)}, no packed Conv2d yet (a "
                         "dense export would silently undo the compression)")
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
