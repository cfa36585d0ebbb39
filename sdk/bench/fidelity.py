"""`edgevla bench fidelity`: what each compression method keeps of the policy, in closed loop.

For every method: closed-loop success on fixed held-out episodes relative to the fp32 policy, stored bits
per weight over the compressed layers, model bytes, and layer-output NMSE measured on held-out inputs
(not the calibration set, which the Hessian-based methods fit). Everything runs in one process with the
same seeds, so rows are comparable.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np

DEFAULT_METHODS = [
    ("sign", {"group_size": 80}),
    ("billm", {}),
    ("hbvla", {}),
    ("nm", {"n": 2, "m": 4, "criterion": "magnitude"}),
    ("nm", {"n": 2, "m": 4, "criterion": "wanda"}),
    ("nm", {"n": 2, "m": 4, "criterion": "sparsegpt"}),
    ("nm", {"n": 4, "m": 8, "criterion": "sparsegpt"}),
    ("nm", {"n": 1, "m": 4, "criterion": "sparsegpt"}),
    ("dense_sparse", {}),
    ("group_sparse", {"group": 4, "sparsity": 0.5}),
    ("budget", {"bits_per_weight": 2.0}),
]


@dataclass
class FidelityRow:
    method: str
    options: dict
    success_rate: float
    relative_success: float  # success / fp32 success
    bits_per_weight: float  # over compressed layers, scales/masks/indices counted
    model_bytes: int  # packed layers + everything kept in float32
    layer_nmse: float  # mean over compressed layers of ||dW X||^2 / ||W X + b||^2 on held-out inputs
    compress_seconds: float


def model_bytes(model) -> int:
    from edgevla.exporters.packed_layers import PackedLinear

    total = 0
    packed_params = set()
    for module in model.modules():
        if isinstance(module, PackedLinear):
            total += module.packed().nbytes
            packed_params.update(id(b) for b in module.buffers())
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) not in packed_params:
            total += p.numel() * p.element_size()
    return int(total)


def held_out_nmse(reference, compressed, report, held_out) -> float:
    """Mean layer NMSE on inputs the methods never saw (captured from the fp32 model)."""
    import torch

    from edgevla.exporters.calibration import collect_layer_stats
    from edgevla.runtime import formats

    values = []
    for layer in report.compressed:
        stats = collect_layer_stats(reference, layer.name, held_out)
        dense_layer = reference.get_submodule(layer.name)
        packed = compressed.get_submodule(layer.name).packed()
        approx = torch.from_numpy(formats.unpack(packed)).double()
        error = stats.output_error(dense_layer.weight.detach().double(), approx, dense_layer.bias.detach())
        values.append(error ** 2)
    return float(np.mean(values))


def run_fidelity(*, episodes: int = 100, calibration_samples: int = 512, methods=None, json_path: Path | None = None,
                 progress: bool = True, variant: str = "reference") -> list[FidelityRow]:
    import torch

    from edgevla.demo import calibration_inputs
    from edgevla.exporters.compress import compress
    from edgevla.models.reach_vla import LARGE, LARGE_TRAIN, ReachVLAConfig
    from edgevla.models.train_reach import TrainConfig, evaluate_torch, load_or_train

    torch.set_num_threads(2)
    if variant not in ("reference", "large"):
        raise ValueError(f"variant must be 'reference' or 'large', got {variant!r}")
    large = variant == "large"
    model = load_or_train(model_config=ReachVLAConfig(**LARGE) if large else ReachVLAConfig(),
                          train=TrainConfig(**LARGE_TRAIN) if large else TrainConfig(), progress=progress)
    print(f"policy: {variant} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)", flush=True)
    calibration = calibration_inputs(calibration_samples, seed=7, batch_size=32)
    held_out = calibration_inputs(128, seed=11, batch_size=32)
    baseline = evaluate_torch(model, episodes, progress=progress)["success_rate"]
    rows = [FidelityRow("fp32", {}, baseline, 1.0, 32.0, model_bytes(model), 0.0, 0.0)]
    for method, options in methods or DEFAULT_METHODS:
        started = time.perf_counter()
        result = compress(model, method, calibration=calibration, include=["blocks.*"], **options)
        seconds = time.perf_counter() - started
        success = evaluate_torch(result.model, episodes, progress=progress)["success_rate"]
        rows.append(FidelityRow(method, dict(options), success, success / max(baseline, 1e-9),
                                result.report.mean_bits_per_weight(), model_bytes(result.model),
                                held_out_nmse(model, result.model, result.report, held_out), seconds))
        print(format_row(rows[-1]), flush=True)
    print()
    print(format_table(rows, episodes))
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


def format_row(r: FidelityRow) -> str:
    options = ",".join(f"{k}={v}" for k, v in r.options.items())
    return (f"{r.method:12s} {options:32s} {r.success_rate * 100:7.1f}% {r.relative_success * 100:8.1f}% "
            f"{r.bits_per_weight:9.3f} {r.model_bytes:11,d} {r.layer_nmse:10.4f} {r.compress_seconds:8.1f}")


def format_table(rows: list[FidelityRow], episodes: int) -> str:
    header = (f"{'method':12s} {'options':32s} {'success':>8s} {'vs fp32':>9s} {'bits/w':>9s} {'bytes':>11s} "
              f"{'layer NMSE':>10s} {'seconds':>8s}")
    lines = [f"closed-loop success on {episodes} held-out episodes; bits/w over the compressed transformer "
             "layers; NMSE on held-out inputs", header, "-" * len(header)]
    lines += [format_row(r) for r in rows]
    return "\n".join(lines)
