"""`edgevla bench onnx`: the same 1-bit model in stock onnxruntime, generic body vs the INT4 fast path.

The generic BinaryMatMul body is constant-folded by onnxruntime into a dense float weight (the file is
small, memory and speed are fp32's). The `onnxruntime_int4` body folds into MatMulNBits instead, which keeps
4-bit weights in memory. Latencies are medians of interleaved runs, one thread, in one process.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .timing import median_ms_interleaved


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cases():
    import torch

    from edgevla.exporters.compress import compress
    from edgevla.exporters.packed_layers import BinaryLinear
    from edgevla.models.reach_vla import ReachVLA
    from edgevla.runtime import formats

    torch.manual_seed(0)
    policy = ReachVLA().eval()  # latency does not depend on the trained values
    example = (torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.tensor([[1, 2, 3, 5]]), torch.zeros(1, 8))
    binary = compress(policy, "sign", include=["blocks.*"], group_size=32).model
    yield "reach policy (1.3 M params)", policy, binary, example, ["image", "instruction", "state"]
    for size in (1024, 4096):
        dense = torch.nn.Linear(size, size)
        packed = formats.pack_binary(dense.weight.detach().numpy(), group_size=64)
        layer = torch.nn.Sequential(BinaryLinear(packed, dense.bias, method="sign")).eval()
        yield f"one {size}x{size} layer, batch 1", torch.nn.Sequential(dense).eval(), layer, \
            (torch.randn(1, size),), ["x"]


def run_onnx_speed(*, repeats: int = 200, json_path: Path | None = None) -> list[dict]:
    from edgevla.exporters.onnx_export import export

    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, dense_model, binary_model, example, names in _cases():
            files = {"fp32": Path(tmp) / "fp32.onnx", "1-bit generic": Path(tmp) / "b.onnx",
                     "1-bit int4 path": Path(tmp) / "b4.onnx"}
            export(dense_model, example, files["fp32"], input_names=names)
            export(binary_model, example, files["1-bit generic"], input_names=names)
            export(binary_model, example, files["1-bit int4 path"], input_names=names, onnxruntime_int4=True)
            feed = {n: t.numpy() for n, t in zip(names, example)}
            sessions = {name: _session(path) for name, path in files.items()}
            outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
            times = median_ms_interleaved({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}, repeats)
            for name in files:
                rows.append({"case": label, "variant": name, "file_bytes": files[name].stat().st_size,
                             "median_ms": times[name], "speedup_vs_fp32": times["fp32"] / times[name],
                             "max_abs_diff_vs_generic": float(np.abs(outputs[name] - outputs["1-bit generic"]).max())})
    print(format_table(rows))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'case':32s} {'variant':16s} {'file bytes':>12s} {'median ms':>10s} {'vs fp32':>8s} {'max diff':>9s}"
    lines = ["onnxruntime 1 thread, median of interleaved runs", header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['case']:32s} {r['variant']:16s} {r['file_bytes']:12,d} {r['median_ms']:10.3f} "
                     f"{r['speedup_vs_fp32']:7.2f}x {r['max_abs_diff_vs_generic']:9.2e}")
    return "\n".join(lines)
