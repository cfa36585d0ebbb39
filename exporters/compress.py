"""`edgevla.compress`: replace a model's Linear layers by packed layers, with a per-layer report.

Methods are looked up by name in METHODS; each takes a dense weight (and the layer's calibration inputs
when it needs them) and returns a PackedWeight. The spine ships `sign`; the compression issue adds the
others behind the same table.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from edgevla.runtime import formats
from .packed_layers import PACKED_LINEAR_TYPES, PackedLinear


@dataclass(frozen=True, kw_only=True)
class LayerReport:
    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    method: str  # compression method, or "kept" for layers left in full precision
    bits_per_weight: float  # stored bits per weight (scales, indices counted; bias not)
    relative_error: float | None  # ||y_compressed - y|| / ||y|| on the calibration inputs, None without them
    note: str = ""  # why a layer was kept, padding applied, ...


@dataclass
class CompressionReport:
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def compressed(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.method != "kept"]

    def mean_bits_per_weight(self) -> float:
        """Average over compressed layers, weighted by each layer's weight count."""
        layers = self.compressed
        weights = sum(l.shape[0] * l.shape[1] for l in layers)
        return sum(l.bits_per_weight * l.shape[0] * l.shape[1] for l in layers) / max(weights, 1)

    def table(self) -> str:
        lines = [f"{'layer':32s} {'shape':>12s} {'method':>8s} {'bits/w':>7s} {'rel.err':>8s}  note"]
        for l in self.layers:
            err = "-" if l.relative_error is None else f"{l.relative_error:.4f}"
            lines.append(f"{l.name:32s} {str(l.shape):>12s} {l.method:>8s} {l.bits_per_weight:7.3f} {err:>8s}  {l.note}")
        return "\n".join(lines)


@dataclass
class Compressed:
    model: nn.Module
    report: CompressionReport


def _sign(weight: np.ndarray, inputs: torch.Tensor | None, *, group_size: int = formats.BINARY_DEFAULT_GROUP):
    """XNOR-Net style: sign of each weight times the mean |w| of its group of `group_size` inputs."""
    return formats.pack_binary(weight, group_size=group_size)


METHODS: dict[str, Callable[..., formats.PackedWeight]] = {"sign": _sign}
_METHOD_OPTIONS = {"sign": {"group_size"}}


def default_targets(model: nn.Module, min_in_features: int = 64) -> tuple[list[str], dict[str, str]]:
    """Linear layers to compress by default, and the reasons others are kept.

    Like the 1-bit VLA papers, the first Linear (input projection / stem side) and the last (the action
    head's output) stay in full precision, and so do layers too narrow for a group of weights.
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    targets, kept = [], {}
    for i, name in enumerate(linears):
        layer = model.get_submodule(name)
        if i == 0:
            kept[name] = "first Linear (input side) kept in full precision"
        elif i == len(linears) - 1:
            kept[name] = "last Linear (output head) kept in full precision"
        elif layer.in_features < min_in_features:
            kept[name] = f"in_features {layer.in_features} < {min_in_features}"
        else:
            targets.append(name)
    return targets, kept


def compress(model: nn.Module, method: str, *, calibration: Iterable | None = None,
             include: list[str] | None = None, exclude: list[str] | None = None, inplace: bool = False,
             **options) -> Compressed:
    """Compress the Linear layers of `model` with `method`.

    calibration: an iterable of model inputs (a tensor, a tuple of positional tensors, or a dict of
        keyword tensors); used to measure each layer's output error (and by methods that need data).
    include / exclude: fnmatch patterns on module names (e.g. "blocks.*"); with `include` given, exactly
        the matching Linear layers are compressed, otherwise the defaults of `default_targets`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known methods: {sorted(METHODS)}")
    unknown = set(options) - _METHOD_OPTIONS[method]
    if unknown:
        raise TypeError(f"method {method!r} got unknown options {sorted(unknown)}; "
                        f"it accepts {sorted(_METHOD_OPTIONS[method])}")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    if include:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        targets = [n for n in linears if any(fnmatch.fnmatchcase(n, p) for p in include)]
        kept = {n: "not matched by include" for n in linears if n not in targets}
        if not targets:
            raise ValueError(f"include patterns {include} match no Linear layer; Linear layers are: {linears}")
    else:
        targets, kept = default_targets(model)
    for name in list(targets):
        if exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            targets.remove(name)
            kept[name] = "excluded by pattern"

    inputs = _capture_inputs(model, targets, calibration) if calibration is not None else {}
    report = CompressionReport()
    for name in targets:
        layer = model.get_submodule(name)
        weight = layer.weight.detach().cpu().numpy()
        try:
            packed = METHODS[method](weight, inputs.get(name), **options)
        except ValueError as e:
            raise ValueError(f"layer {name!r} ({tuple(weight.shape)}): {e}") from e
        new_layer = PACKED_LINEAR_TYPES[packed.format](packed, layer.bias, method=method)
        error = None
        if name in inputs:
            with torch.no_grad():
                reference = layer(inputs[name])
                approx = new_layer(inputs[name])
                error = float(torch.linalg.vector_norm(approx - reference) /
                              torch.linalg.vector_norm(reference).clamp_min(1e-12))
        note = ""
        padded_k = formats.padded_length(packed.in_features, packed.attrs.get("group_size", packed.attrs.get("m", 1)))
        if padded_k != packed.in_features:
            note = f"K={packed.in_features} padded to {padded_k}"
        _set_submodule(model, name, new_layer)
        report.layers.append(LayerReport(name=name, shape=tuple(weight.shape), method=method,
                                         bits_per_weight=packed.bits_per_weight, relative_error=error, note=note))
    for name, reason in kept.items():
        layer = model.get_submodule(name)
        report.layers.append(LayerReport(name=name, shape=tuple(layer.weight.shape), method="kept",
                                         bits_per_weight=32.0, relative_error=None, note=reason))
    return Compressed(model=model, report=report)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _capture_inputs(model: nn.Module, names: list[str], calibration: Iterable) -> dict[str, torch.Tensor]:
    """Run the calibration inputs and collect each target layer's input activations (flattened rows)."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = []
    for name in names:
        def hook(module, args, _name=name):
            captured[_name].append(args[0].detach().reshape(-1, args[0].shape[-1]))
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for i, batch in enumerate(calibration):
                try:
                    if isinstance(batch, dict):
                        model(**batch)
                    elif isinstance(batch, (tuple, list)):
                        model(*batch)
                    else:
                        model(batch)
                except (RuntimeError, TypeError, ValueError) as e:
                    raise ValueError(f"calibration batch {i} does not fit the model: {e}") from e
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(rows) for name, rows in captured.items() if rows}
