"""`edgevla bench kernels`: the kernels_arm C kernels vs onnxruntime, one thread, one process.

For each weight shape (N x K) and batch: onnxruntime fp32 MatMul and onnxruntime int8 dynamic quantization
(quantize_dynamic: DynamicQuantizeLinear + MatMulInteger), then edgevla's fp32 x 1-bit, int8 x 1-bit and
N:M kernels (the best variant this CPU has). Each time is the median of interleaved runs. The roofline
column is the weight bytes streamed per second against a copy bandwidth measured in the same run (numpy
copy of 256 MiB): near 100% means bound by memory, far below means bound by compute.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .timing import median_ms_interleaved

GOALS = {"b1 fp32": 5.0, "b1 int8": 12.0, "b1 x b1": 60.0, "nm 2:4": 1.6, "nm 1:4": 2.8}


def _ort_sessions(weight: np.ndarray, tmp: Path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    n, k = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
                              initializer=[numpy_helper.from_array(np.ascontiguousarray(weight.T), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp / "fp32.onnx")
    quantize_dynamic(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return {name: ort.InferenceSession(str(tmp / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
            for name in ("fp32", "int8")}


def copy_bandwidth_gbs() -> float:
    src = np.ones(64 << 20, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - started)
    return 2 * src.nbytes / min(times) / 1e9  # read + write


def run_kernel_bench(*, shapes=((4096, 4096), (1024, 4096)), batches=(1, 8), repeats: int = 30,
                     json_path: Path | None = None) -> list[dict]:
    from edgevla.runtime import formats
    from edgevla.targets.ckernels import NativeKernels, binarize_activations

    native = NativeKernels()
    bandwidth = copy_bandwidth_gbs()
    rows_out = []
    for n, k in shapes:
        weight = np.random.default_rng(0).normal(size=(n, k)).astype(np.float32)
        packed = {"b1": formats.pack_binary(weight, group_size=64), "nm 2:4": formats.pack_nm(weight, n=2, m=4),
                  "nm 1:4": formats.pack_nm(weight, n=1, m=4)}
        with tempfile.TemporaryDirectory() as tmp:
            sessions = _ort_sessions(weight, Path(tmp))
            for batch in batches:
                x = np.random.default_rng(batch).normal(size=(batch, k)).astype(np.float32)
                y = {key: np.empty((batch, n), np.float32) for key in ("b1f32", "b1i8", "bxb", "nm24", "nm14")}
                x_binary = binarize_activations(x, 64)
                runs = {
                    "onnxruntime fp32": (lambda: sessions["fp32"].run(None, {"x": x}), weight.nbytes),
                    "onnxruntime int8": (lambda: sessions["int8"].run(None, {"x": x}), weight.size),
                    "b1 fp32": (lambda: native.call("b1f32", x, packed["b1"], y["b1f32"]), packed["b1"].nbytes),
                    "b1 int8": (lambda: native.call("b1i8", x, packed["b1"], y["b1i8"]), packed["b1"].nbytes),
                    "b1 x b1": (lambda: native.call("bxb", x, packed["b1"], y["bxb"], x_binary=x_binary),
                                packed["b1"].nbytes),
                    "nm 2:4": (lambda: native.call("nm", x, packed["nm 2:4"], y["nm24"]), packed["nm 2:4"].nbytes),
                    "nm 1:4": (lambda: native.call("nm", x, packed["nm 1:4"], y["nm14"]), packed["nm 1:4"].nbytes),
                }
                times_ms = median_ms_interleaved({name: run for name, (run, _) in runs.items()}, repeats)
                base = times_ms["onnxruntime fp32"] / 1e3
                int8_base = times_ms["onnxruntime int8"] / 1e3
                for name, (_, weight_bytes) in runs.items():
                    seconds = times_ms[name] / 1e3
                    goal = GOALS.get(name)
                    rows_out.append({"shape": f"{n}x{k}", "batch": batch, "kernel": name, "median_ms": seconds * 1e3,
                                     "vs_ort_fp32": base / seconds, "vs_ort_int8": int8_base / seconds,
                                     "weight_bytes": int(weight_bytes),
                                     "roofline": weight_bytes / seconds / 1e9 / bandwidth,
                                     "goal_vs_ort_fp32": goal,
                                     "met": None if goal is None or batch != 1 else base / seconds >= goal})
    print(format_table(rows_out, bandwidth, native.variant))
    if json_path:
        Path(json_path).write_text(json.dumps({"copy_bandwidth_gbs": bandwidth, "variant": native.variant,
                                               "rows": rows_out}, indent=2))
    return rows_out


def format_table(rows: list[dict], bandwidth: float, variant: str) -> str:
    header = (f"{'shape':10s} {'batch':>5s} {'kernel':18s} {'median ms':>10s} {'vs ORT fp32':>12s} "
              f"{'vs ORT int8':>12s} {'weight MB':>10s} {'roofline':>9s}  goal (batch 1)")
    lines = [f"one thread; edgevla kernels: {variant}; copy bandwidth {bandwidth:.1f} GB/s (numpy, same run)",
             header, "-" * len(header)]
    for r in rows:
        goal = "" if r["goal_vs_ort_fp32"] is None else f">= {r['goal_vs_ort_fp32']:g}x"
        verdict = "" if r["met"] is None else (" met" if r["met"] else " NOT met")
        lines.append(f"{r['shape']:10s} {r['batch']:5d} {r['kernel']:18s} {r['median_ms']:10.3f} "
                     f"{r['vs_ort_fp32']:11.2f}x {r['vs_ort_int8']:11.2f}x {r['weight_bytes'] / 1e6:10.2f} "
                     f"{r['roofline'] * 100:8.0f}%  {goal}{verdict}")
    return "\n".join(lines)
