"""`edgevla bench kernels`: the kernels_arm C kernels vs onnxruntime, one thread, one process.

For each weight shape (N x K) and batch: onnxruntime fp32 MatMul and onnxruntime int8 dynamic quantization
(quantize_dynamic: DynamicQuantizeLinear + MatMulInteger), then edgevla's fp32 x 1-bit, int8 x 1-bit and
N:M, Haar-domain 1-bit (haar_binary, 1% salient columns) and group-sparse kernels (the best variant this CPU
has). Each time is the median of interleaved runs. The roofline column is the weight bytes streamed per second
against a copy bandwidth measured in the same run (numpy copy of 256 MiB): near 100% means bound by memory,
far below means bound by compute.

With a cost-table path, the batch-1 timings of the kernels a deployed layer runs with are fitted to a line
per kernel configuration (seconds = per call + per unit x units, see edgevla.exporters.cost_table) and written
as the table the `budget` compression method reads for a latency budget.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevla.exporters.cost_table import cost_units

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


# Benchmark rows that time the kernel a deployed layer of that configuration runs (its cost-table key).
COST_KEYS = {"b1 fp32": "binary", "haar b1 fp32": "haar_binary", "nm 2:4": "nm:2:4", "nm 1:4": "nm:1:4",
             "group-sparse g4": "group_sparse:4"}


def random_haar(n: int, k: int, rng, *, salient_fraction: float = 0.01, group_size: int = 64):
    """A haar_binary weight of this shape with random signs and scale codes: the bytes and work of a real one."""
    from edgevla.runtime import formats

    salient = int(round(salient_fraction * k))
    kh = formats.haar_padded_length(k - salient)
    while kh % group_size:  # keep the Haar-domain width a multiple of the group
        salient += 1
        kh = formats.haar_padded_length(k - salient)
    return formats.pack_haar_binary(
        haar_signs=rng.random((n, kh)) < 0.5, scale_codes=rng.integers(200, 256, size=(n, kh // group_size)),
        scale_base=0.1, salient_idx=np.sort(rng.choice(k, size=salient, replace=False)),
        salient_signs=rng.random((n, salient)) < 0.5, salient_residual_signs=rng.random((n, salient)) < 0.5,
        salient_scales=np.full((2, salient), 0.05, np.float32), in_features=k, group_size=group_size)


def random_group_sparse(weight: np.ndarray, rng, *, group: int = 4, density: float = 0.5):
    from edgevla.runtime import formats

    n, k = weight.shape
    groups = -(-k // group)
    keep = np.zeros((n, groups), bool)
    kept = max(1, int(round(density * groups)))
    for row in keep:
        row[rng.choice(groups, size=kept, replace=False)] = True
    return formats.pack_group_sparse(weight, group=group, keep=keep)


def run_kernel_bench(*, shapes=((4096, 4096), (1024, 4096)), batches=(1, 8), repeats: int = 30,
                     json_path: Path | None = None, cost_table_path: Path | None = None) -> list[dict]:
    from edgevla.runtime import formats
    from edgevla.targets.ckernels import NativeKernels, binarize_activations

    native = NativeKernels()
    bandwidth = copy_bandwidth_gbs()
    rows_out = []
    for n, k in shapes:
        weight = np.random.default_rng(0).normal(size=(n, k)).astype(np.float32)
        rng = np.random.default_rng(1)
        packed = {"b1": formats.pack_binary(weight, group_size=64), "nm 2:4": formats.pack_nm(weight, n=2, m=4),
                  "nm 1:4": formats.pack_nm(weight, n=1, m=4), "haar": random_haar(n, k, rng),
                  "gs": random_group_sparse(weight, rng)}
        with tempfile.TemporaryDirectory() as tmp:
            sessions = _ort_sessions(weight, Path(tmp))
            for batch in batches:
                x = np.random.default_rng(batch).normal(size=(batch, k)).astype(np.float32)
                y = {key: np.empty((batch, n), np.float32)
                     for key in ("b1f32", "b1i8", "bxb", "nm24", "nm14", "haar", "gs")}
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
                    "haar b1 fp32": (lambda: native.call("haar", x, packed["haar"], y["haar"]), packed["haar"].nbytes),
                    "group-sparse g4": (lambda: native.call("gs", x, packed["gs"], y["gs"]), packed["gs"].nbytes),
                }
                units = {name: cost_units(packed[key]) for name, key in (
                    ("b1 fp32", "b1"), ("haar b1 fp32", "haar"), ("nm 2:4", "nm 2:4"), ("nm 1:4", "nm 1:4"),
                    ("group-sparse g4", "gs"))}
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
                                     "goal_vs_ort_fp32": goal, "cost_units": units.get(name),
                                     "met": None if goal is None or batch != 1 else base / seconds >= goal})
    print(format_table(rows_out, bandwidth, native.variant))
    if cost_table_path:
        table = cost_table_from_rows(rows_out, target=f"{platform.machine()}/{native.variant}")
        table.save(cost_table_path)
        print(f"\ncost table for {table.target} (batch 1) written to {cost_table_path}:")
        for key, entry in table.entries.items():
            print(f"  {key:16s} {entry.seconds_per_call * 1e6:8.2f} us per call + "
                  f"{entry.seconds_per_unit * 1e12:8.3f} ps per unit")
    if json_path:
        Path(json_path).write_text(json.dumps({"copy_bandwidth_gbs": bandwidth, "variant": native.variant,
                                               "rows": rows_out}, indent=2))
    return rows_out


def cost_table_from_rows(rows: list[dict], *, target: str):
    """Fit one cost line per kernel configuration through its batch-1 timings over the benchmarked shapes."""
    from edgevla.exporters.cost_table import CostTable, fit_cost

    points: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["batch"] == 1 and r["kernel"] in COST_KEYS:
            points.setdefault(COST_KEYS[r["kernel"]], []).append((r["cost_units"], r["median_ms"] / 1e3))
    return CostTable(target=target, batch=1, entries={key: fit_cost(p) for key, p in points.items()})


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
