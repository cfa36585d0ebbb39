"""`edgevla inspect FILE.onnx`: what each compressed layer costs, and the file's ratio to fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from edgevla.runtime import formats
from .onnx_bodies import DOMAIN, OPS
from .onnx_export import DOMAIN_VERSION

_FORMAT_OF_OP = {op_name: format_name for format_name, (op_name, _) in OPS.items()}


@dataclass(frozen=True)
class LayerInfo:
    node: str
    op: str
    format: str
    shape: tuple[int, int]  # (out_features, in_features)
    packed_bytes: int
    bits_per_weight: float


def check_domain_version(model: onnx.ModelProto) -> None:
    for opset in model.opset_import:
        if opset.domain == DOMAIN and opset.version > DOMAIN_VERSION:
            raise ValueError(f"the file uses {DOMAIN} version {opset.version}; this edgevla knows version "
                             f"{DOMAIN_VERSION}: upgrade edgevla to read it")


def inspect_model(model: onnx.ModelProto) -> list[LayerInfo]:
    check_domain_version(model)
    initializers = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type not in _FORMAT_OF_OP:
            raise ValueError(f"node {node.name!r}: unknown {DOMAIN} op {node.op_type!r}; known: {sorted(_FORMAT_OF_OP)}")
        format_name = _FORMAT_OF_OP[node.op_type]
        spec = formats.get_format(format_name)
        missing = [name for name in node.input[1:] if name not in initializers]
        if missing:
            raise ValueError(f"node {node.name!r}: packed inputs {missing} are not initializers")
        arrays = {a: numpy_helper.to_array(initializers[name]) for a, name in zip(spec.array_names, node.input[1:])}
        attrs = {a.name: a.i for a in node.attribute}
        rows = formats.out_features_of(format_name, arrays)
        packed = formats.packed_from_arrays(format_name, arrays, attrs, rows)
        layers.append(LayerInfo(node.name, node.op_type, format_name, (rows, packed.in_features), packed.nbytes,
                                packed.bits_per_weight))
    return layers


def inspect_file(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    model = onnx.load(str(path))
    layers = inspect_model(model)
    size = path.stat().st_size
    packed = sum(layer.packed_bytes for layer in layers)
    dense = sum(4 * layer.shape[0] * layer.shape[1] for layer in layers)
    fp32_equivalent = size - packed + dense
    lines = [f"{path.name}: {size:,} bytes, {len(layers)} compressed layers"]
    if layers:
        lines.append(f"{'node':40s} {'op':18s} {'format':13s} {'shape':>12s} {'bytes':>10s} {'bits/w':>7s}")
        for layer in layers:
            lines.append(f"{layer.node[:40]:40s} {layer.op:18s} {layer.format:13s} {str(layer.shape):>12s} "
                         f"{layer.packed_bytes:10,d} {layer.bits_per_weight:7.3f}")
    lines.append(f"compression ratio vs fp32: {fp32_equivalent / size:.2f}x ({fp32_equivalent:,} bytes as fp32)")
    return "\n".join(lines)
