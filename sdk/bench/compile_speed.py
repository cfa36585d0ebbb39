"""`edgevla bench compile`: the compiled reference policy on the host vs the fp32 policy in onnxruntime.

One process, one thread each (TVM_NUM_THREADS=1 and onnxruntime intra-op 1), medians of interleaved runs on
the bundle's reference input: onnxruntime fp32 (the baseline), TVM fp32 (what the compiler does with the
same graph), and TVM with the transformer layers compressed (1-bit sign, HBVLA 1-bit, 2:4) running
edgevla's packed-format kernels: the TIR kernels, and (for the formats that have one) the kernels_arm C
kernel linked into the library, which is what `compile --kernels auto` picks; with `tune_trials` > 0 also the
same bundles after `edgevla tune` (MetaSchedule, that many measured candidates each, measured here). Latency
does not depend on trained values, so the policy is untrained.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

from .timing import median_ms_interleaved

VARIANTS = [("1-bit sign", "sign", {"group_size": 64}, "c"), ("1-bit sign", "sign", {"group_size": 64}, "tir"),
            ("1-bit hbvla", "hbvla", {}, "c"), ("1-bit hbvla", "hbvla", {}, "tir"), ("2:4 nm", "nm", {"n": 2, "m": 4}, "c"),
            ("2:4 nm", "nm", {"n": 2, "m": 4}, "tir")]


def run_compile_speed(*, repeats: int = 50, json_path: Path | None = None, variants=VARIANTS,
                      tune_trials: int = 400) -> list[dict]:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import onnxruntime as ort
    import torch

    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_export import export
    from edgevla.models.reach_vla import ReachVLA
    from edgevla.runtime.engine import TvmPolicy
    from edgevla.targets import compile_bundle
    from edgevla.targets.tune import TuneSettings

    torch.manual_seed(0)
    policy = ReachVLA().eval()
    example = (torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.tensor([[1, 2, 3, 5]]), torch.zeros(1, 8))
    names = ["image", "instruction", "state"]
    calibration = [tuple(t.repeat(8, *([1] * (t.dim() - 1))) for t in example)]
    runs, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(tmp)
        export(policy, example, tmp / "fp32.onnx", input_names=names, output_names=["actions"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(tmp / "fp32.onnx"), options, providers=["CPUExecutionProvider"])
        bundle = compile_bundle(tmp / "fp32.onnx", "host", tmp / "fp32_host")
        feed, _ = bundle.check_pair()
        runs["onnxruntime fp32"] = lambda: session.run(None, feed)
        sizes["onnxruntime fp32"] = (tmp / "fp32.onnx").stat().st_size
        policies = {"TVM fp32": TvmPolicy(bundle)}
        sizes["TVM fp32"] = bundle.library.stat().st_size
        tuning = TuneSettings(trials=tune_trials) if tune_trials > 0 else None
        if tuning:
            tuned = compile_bundle(tmp / "fp32.onnx", "host", tmp / "fp32_host_tuned", tuning=tuning)
            policies["TVM fp32, tuned"] = TvmPolicy(tuned)
            sizes["TVM fp32, tuned"] = tuned.library.stat().st_size
        for label, method, opts, kernels in variants:
            model = compress(policy, method, calibration=calibration, include=["blocks.*"], **opts).model
            export(model, example, tmp / f"{method}.onnx", input_names=names, output_names=["actions"])
            for tune_it in (False, True) if tuning and kernels == "c" else (False,):
                compiled = compile_bundle(tmp / f"{method}.onnx", "host", tmp / f"{method}_{kernels}_{tune_it}",
                                          kernels=kernels, tuning=tuning if tune_it else None)
                name = f"TVM {label} ({'C' if kernels == 'c' else 'TIR'} kernels{', tuned' if tune_it else ''})"
                policies[name] = TvmPolicy(compiled)
                sizes[name] = compiled.library.stat().st_size
        prepared = {name: p.prepare(feed) for name, p in policies.items()}
        for name, p in policies.items():
            runs[name] = (lambda p=p, f=prepared[name]: p.run(f))
        for run in runs.values():  # warm up
            run()
        times = median_ms_interleaved(runs, repeats)
    base = times["onnxruntime fp32"]
    rows = [{"variant": name, "median_ms": ms, "speedup_vs_onnxruntime_fp32": base / ms, "file_bytes": sizes[name]}
            for name, ms in times.items()]
    print(format_table(rows, repeats))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    return rows


def format_table(rows: list[dict], repeats: int) -> str:
    header = f"{'variant':42s} {'median ms':>10s} {'vs ORT fp32':>12s} {'file bytes':>12s}"
    lines = [f"reach policy (1.3 M params), batch 1, one thread, median of {repeats} interleaved runs; "
             "goal: compiled 1-bit >= 3x lower latency than onnxruntime fp32", header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['variant']:42s} {r['median_ms']:10.3f} {r['speedup_vs_onnxruntime_fp32']:11.2f}x "
                     f"{r['file_bytes']:12,d}")
    return "\n".join(lines)
