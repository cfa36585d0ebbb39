"""`edgevla.compress`: replace a model's Linear layers by packed layers, with a per-layer report.

Methods are looked up by name in `methods.METHODS`; each takes a dense weight and the layer's calibration
statistics and returns a PackedWeight. Layers are compressed one after another, in module order, and each
layer's statistics are gathered with the layers before it already compressed (GPTQ's sequential mode), so
only one layer's Hessian exists at a time.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from edgevla.runtime import formats
from .calibration import collect_layer_stats, compute_device
from .methods import METHOD_OPTIONS, METHODS, NEEDS_CALIBRATION, POLICY_AWARE
from .packed_layers import compressible, packed_module, replace_module, weight_matrix


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
    finetune_loss: list[float] = field(default_factory=list)  # per step, when straight-through fine-tuned

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


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def _not_called(model: nn.Module, name: str) -> str | None:
    """Why a Linear cannot be swapped for a packed layer, if its parent reads `.weight` directly."""
    parent = _parent(model, name)
    if isinstance(parent, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return (f"weight read directly by its parent nn.{type(parent).__name__} (its fused forward never calls "
                "the module); write the block with plain nn.Linear layers to compress it")
    return None


def default_targets(model: nn.Module, min_in_features: int = 32) -> tuple[list[str], dict[str, str]]:
    """Linear layers to compress by default, and the reasons others are kept.

    Like the 1-bit VLA papers, the first Linear (input projection / stem side) and the last (the action
    head's output) stay in full precision, and so do layers too narrow for a group of weights.
    """
    linears = [name for name, module in model.named_modules() if compressible(module)]
    targets, kept = [], {}
    for i, name in enumerate(linears):
        layer = model.get_submodule(name)
        in_features = layer.weight[0].numel()
        fused = _not_called(model, name)
        if fused:
            kept[name] = fused
        elif i == 0:
            kept[name] = "first layer (input side / stem) kept in full precision"
        elif i == len(linears) - 1:
            kept[name] = "last layer (output head) kept in full precision"
        elif in_features < min_in_features:
            kept[name] = f"in_features {in_features} < {min_in_features}"
        else:
            targets.append(name)
    return targets, kept


def compress(model: nn.Module, method: str, *, calibration: Iterable | None = None,
             include: list[str] | None = None, exclude: list[str] | None = None, inplace: bool = False,
             device: str | torch.device | None = None, **options) -> Compressed:
    """Compress the Linear layers of `model` with `method`.

    calibration: an iterable of model inputs (a tensor, a tuple of positional tensors, or a dict of
        keyword tensors); used to measure each layer's output error (and by methods that need data).
    include / exclude: fnmatch patterns on module names (e.g. "blocks.*"); with `include` given, exactly
        the matching Linear layers are compressed, otherwise the defaults of `default_targets`.
    device: where the per-layer Hessians and the methods' float64 arithmetic run (the model itself stays
        where it is; one layer's statistics exist at a time). Default: "cuda" when torch sees a GPU, else "cpu".
    """
    if method not in METHOD_OPTIONS:
        raise ValueError(f"unknown compression method {method!r}; known methods: {sorted(METHOD_OPTIONS)}")
    unknown = set(options) - METHOD_OPTIONS[method]
    if unknown:
        raise TypeError(f"method {method!r} got unknown options {sorted(unknown)}; "
                        f"it accepts {sorted(METHOD_OPTIONS[method])}")
    calibration = list(calibration) if calibration is not None else None
    needs_data = method in NEEDS_CALIBRATION or options.get("criterion", "magnitude") != "magnitude"
    if needs_data and not calibration:
        raise ValueError(f"method {method!r} needs calibration data: pass calibration=[model inputs, ...]")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    if include:
        linears = [n for n, m in model.named_modules() if compressible(m)]
        targets = [n for n in linears if any(fnmatch.fnmatchcase(n, p) for p in include)]
        kept = {n: "not matched by include" for n in linears if n not in targets}
        for n in list(targets):
            fused = _not_called(model, n)
            if fused:
                targets.remove(n)
                kept[n] = fused
        if not targets:
            raise ValueError(f"include patterns {include} match no Linear/Conv2d layer; those layers are: {linears}")
    else:
        targets, kept = default_targets(model)
    for name in list(targets):
        if exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            targets.remove(name)
            kept[name] = "excluded by pattern"

    finetune = {key: options.pop(key) for key in ("finetune_loss", "finetune_steps", "finetune_lr") if key in options}
    device = torch.device(device) if device is not None else compute_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); pass device='cpu' or install a CUDA build of torch")
    if method == "budget":
        return _compress_to_budget(model, targets, kept, calibration, device, **options)
    report = CompressionReport()
    for name in targets:
        layer = model.get_submodule(name)
        stats = None
        if calibration:
            stats = collect_layer_stats(model, name, calibration, policy_aware=method in POLICY_AWARE, device=device)
        weight = _finite_weight(layer, name, device)
        try:
            packed = METHODS[method](weight, stats, **options)
        except ValueError as e:
            raise ValueError(f"layer {name!r} ({tuple(weight.shape)}): {e}") from e
        dense = _finite_dense(packed, name, method, weight)
        new_layer = packed_module(packed, layer, method=method).to(layer.weight.device)
        error = None if stats is None else _output_error(stats, weight, dense, layer)
        replace_module(model, name, new_layer)
        report.layers.append(LayerReport(name=name, shape=tuple(weight.shape), method=method,
                                         bits_per_weight=packed.bits_per_weight, relative_error=error,
                                         note=_layout_note(packed)))
    report.layers += _kept_rows(model, kept)
    if finetune.get("finetune_loss") is not None:
        from .finetune import finetune_dense_sparse

        steps = int(finetune.get("finetune_steps", 100))
        history = finetune_dense_sparse(model, finetune["finetune_loss"], steps=steps,
                                        learning_rate=float(finetune.get("finetune_lr", 1e-3)))
        report.finetune_loss = history
    return Compressed(model=model, report=report)


def _compress_to_budget(model, targets, kept, calibration, device, *, candidates=None, budget_bytes=None,
                        bits_per_weight=None, cost_table=None, budget_seconds=None) -> Compressed:
    """ROCKET-style allocation: every candidate (method, options) is applied to every layer with the same
    (uncompressed-model) statistics; a multiple-choice knapsack then picks one candidate per layer that
    minimises the summed calibration NMSE under the byte budget (or the latency budget in seconds per
    inference, from a per-target kernel cost table that `edgevla bench kernels --cost-table FILE` writes)."""
    from .cost_table import CostTable
    from .methods import DEFAULT_BUDGET_CANDIDATES, solve_multiple_choice_knapsack

    candidates = list(candidates or DEFAULT_BUDGET_CANDIDATES)
    given = [x is not None for x in (budget_bytes, bits_per_weight, budget_seconds)]
    if sum(given) != 1:
        raise ValueError("budget needs exactly one of budget_bytes, bits_per_weight (average over the "
                         "compressed layers) or budget_seconds (with cost_table)")
    if budget_seconds is not None and not cost_table:
        raise ValueError("budget_seconds needs cost_table= (a file written by `edgevla bench kernels --cost-table "
                         "FILE`, its JSON, or a CostTable)")
    table = CostTable.load(cost_table) if budget_seconds is not None else None
    for cand_method, cand_options in candidates:
        if cand_method not in METHODS or cand_method == "budget":
            raise ValueError(f"budget candidate {cand_method!r} is not a compression method; known: {sorted(METHODS)}")
        unknown = set(cand_options) - METHOD_OPTIONS[cand_method]
        if unknown:
            raise TypeError(f"budget candidate {cand_method!r} got unknown options {sorted(unknown)}")
    options_per_layer, costs, errors = [], [], []
    total_weights = 0
    for name in targets:
        layer = model.get_submodule(name)
        weight = _finite_weight(layer, name, device)
        total_weights += weight.numel()
        # Errors are always measured with the plain statistics so that candidates compare on one scale.
        plain = collect_layer_stats(model, name, calibration, device=device)
        aware = None
        layer_options, layer_costs, layer_errors = [], [], []
        for cand_method, cand_options in candidates:
            stats = plain
            if cand_method in POLICY_AWARE:
                aware = aware or collect_layer_stats(model, name, calibration, policy_aware=True, device=device)
                stats = aware
            try:
                packed = METHODS[cand_method](weight, stats, **cand_options)
                dense = _finite_dense(packed, name, cand_method, weight)
            except ValueError:
                continue  # e.g. hbvla cannot meet its own bit budget on this shape: not a choice here
            error = _output_error(plain, weight, dense, layer)
            if table is not None:
                cost = table.seconds(packed)
            else:
                cost = packed.nbytes
            layer_options.append((cand_method, packed, error))
            layer_costs.append(cost)
            layer_errors.append(error ** 2)
        if not layer_options:
            raise ValueError(f"no budget candidate can compress layer {name!r}")
        options_per_layer.append(layer_options)
        costs.append(layer_costs)
        errors.append(layer_errors)
    budget = budget_seconds if budget_seconds is not None else (
        budget_bytes if budget_bytes is not None else bits_per_weight * total_weights / 8.0)
    chosen = solve_multiple_choice_knapsack(costs, errors, budget)
    report = CompressionReport()
    for name, layer_options, pick in zip(targets, options_per_layer, chosen):
        cand_method, packed, error = layer_options[pick]
        layer = model.get_submodule(name)
        replace_module(model, name, packed_module(packed, layer, method=cand_method).to(layer.weight.device))
        report.layers.append(LayerReport(name=name, shape=tuple(weight_matrix(layer).shape), method=cand_method,
                                         bits_per_weight=packed.bits_per_weight, relative_error=error,
                                         note=f"budget pick; {_layout_note(packed)}".rstrip("; ")))
    report.layers += _kept_rows(model, kept)
    return Compressed(model=model, report=report)


def _finite_weight(layer: nn.Module, name: str, device: torch.device) -> torch.Tensor:
    """The layer's weight matrix in float64 on `device`; NaN or inf is an error naming the layer and entry."""
    weight = weight_matrix(layer).to(device=device, dtype=torch.float64)
    if not torch.isfinite(weight).all():
        bad = torch.nonzero(~torch.isfinite(weight))[0].tolist()
        raise ValueError(f"layer {name!r} ({tuple(weight.shape)}): weight has a NaN or inf at row {bad[0]}, "
                         f"column {bad[1]}; fix the model (or its training) before compressing")
    return weight


def _finite_dense(packed: formats.PackedWeight, name: str, method: str, weight: torch.Tensor) -> torch.Tensor:
    """The packed weight decoded (like `weight`: dtype, device). Packed formats store scales and values in
    float16: a method result beyond its range would decode to inf and poison every later layer's
    calibration, so that is refused here, naming the layer."""
    dense = formats.unpack(packed)
    if not np.isfinite(dense).all():
        raise ValueError(f"layer {name!r} ({tuple(weight.shape)}): method {method!r} produced weights that do not fit "
                         f"the float16 fields of format {packed.format!r} (|w| up to "
                         f"{float(weight.abs().max()):.3g}, float16 holds up to {float(np.finfo(np.float16).max):g}); "
                         f"rescale the layer (e.g. fold a constant into the next layer) or exclude it with "
                         f"exclude=[{name!r}]")
    return torch.from_numpy(dense).to(weight)


def _output_error(stats, weight: torch.Tensor, dense: torch.Tensor, layer: nn.Module) -> float:
    bias = None if layer.bias is None else layer.bias.detach().to(weight.device)
    return stats.output_error(weight, dense, bias)


def _kept_rows(model: nn.Module, kept: dict[str, str]) -> list[LayerReport]:
    return [LayerReport(name=name, shape=tuple(weight_matrix(model.get_submodule(name)).shape), method="kept",
                        bits_per_weight=32.0, relative_error=None, note=reason) for name, reason in kept.items()]


def _layout_note(packed: formats.PackedWeight) -> str:
    a = packed.attrs
    notes = []
    block = a.get("group_size", a.get("block_size", a.get("m")))
    if packed.format in ("binary", "binary_split", "nm") and block:
        padded = formats.padded_length(packed.in_features, block)
        if padded != packed.in_features:
            notes.append(f"K={packed.in_features} padded to {padded}")
    if a.get("salient"):
        notes.append(f"{a['salient']} salient columns")
    if packed.format == "haar_binary":
        notes.append(f"Haar groups of {a['group_size']}")
    if packed.format == "nm":
        notes.append(f"{a['n']}:{a['m']}")
    return ", ".join(notes)

