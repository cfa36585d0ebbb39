"""`edgevla demo`: one policy through the whole chain, measured in closed loop.

train (cached) -> compress 1-bit (hbvla, the method that keeps the policy working; sign as the naive
baseline) -> export ONNX (ai.edgevla custom ops) -> compile for the host with TVM -> run the reach task with
(a) fp32 in onnxruntime, (b) hbvla 1-bit in onnxruntime, (c) hbvla 1-bit compiled, (d) sign 1-bit compiled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_NAMES = ["image", "instruction", "state"]
OUTPUT_NAMES = ["actions"]


@dataclass
class VariantResult:
    name: str
    engine: str
    success_rate: float
    episodes: int
    median_final_distance_m: float
    sections_ms: dict
    model_bytes: int
    model_file: str
    safe_action_events: int


def calibration_inputs(samples: int, seed: int = 7, batch_size: int = 1):
    """Observations from expert rollouts on training-side seeds (never the held-out evaluation seeds),
    as model-input tuples of `batch_size` samples."""
    import torch

    from edgevla.runtime.robots.sim_reach import SimReach, expert_action

    robot = SimReach()
    batches = []
    try:
        episode = 0
        while len(batches) < samples:
            robot.reset(seed * 100_000 + 50_000 + episode)
            episode += 1
            while not robot.done() and len(batches) < samples:
                obs = robot.observe()
                batches.append(tuple(torch.from_numpy(obs[k])[None] for k in INPUT_NAMES))
                robot.act(expert_action(robot.ee_position(), robot.target_position()))
    finally:
        robot.close()
    if batch_size > 1:
        batches = [tuple(torch.cat(parts) for parts in zip(*batches[i:i + batch_size]))
                   for i in range(0, len(batches), batch_size)]
    return batches


def evaluate(policy, name: str, model_file: Path, episodes: int, progress: bool = True) -> VariantResult:
    """Closed-loop success and section timing; `model_file` is what the robot loads (ONNX file or library)."""
    from tqdm import tqdm

    from edgevla.models.train_reach import HELD_OUT_SEED_OFFSET
    from edgevla.runtime.loop import ControlLoop, LoopConfig
    from edgevla.runtime.robots.sim_reach import SimReach

    robot = SimReach()
    loop = ControlLoop(robot, policy, config=LoopConfig(hz=None))
    successes, distances = 0, []
    try:
        for episode in tqdm(range(episodes), desc=f"closed loop: {name}", disable=not progress):
            result = loop.run_episode(HELD_OUT_SEED_OFFSET + episode)
            successes += bool(result.success)
            distances.append(result.final_distance_m)
    finally:
        robot.close()
    return VariantResult(name=name, engine=policy.engine, success_rate=successes / episodes, episodes=episodes,
                         median_final_distance_m=float(np.median(distances)),
                         sections_ms=loop.timer.summary()["sections_ms"], model_bytes=model_file.stat().st_size,
                         model_file=str(model_file), safe_action_events=loop.events.total())


def format_table(results: list[VariantResult]) -> str:
    """One row per variant; "speed" is the fp32 onnxruntime row's infer p50 over this row's (first row = fp32)."""
    header = (f"{'variant':28s} {'success':>9s} {'final dist':>10s} {'observe p50/p99':>16s} "
              f"{'infer p50/p99':>16s} {'speed vs fp32 ORT':>18s} {'act p50/p99':>14s} {'model bytes':>12s}")
    lines = [header, "-" * len(header)]
    baseline = results[0].sections_ms["infer"]["p50"]
    for r in results:
        def pp(section):
            s = r.sections_ms[section]
            return f"{s['p50']:.2f}/{s['p99']:.2f} ms"
        speed = baseline / r.sections_ms["infer"]["p50"]
        lines.append(f"{r.name:28s} {r.success_rate * 100:8.1f}% {r.median_final_distance_m * 1000:7.1f} mm "
                     f"{pp('observe'):>16s} {pp('infer'):>16s} {speed:17.2f}x {pp('act'):>14s} {r.model_bytes:12,d}")
    return "\n".join(lines)


def run_demo(*, episodes: int = 50, workdir: Path = Path("artifacts/demo"), group_size: int = 80,
             progress: bool = True, json_path: Path | None = None) -> list[VariantResult]:
    import torch

    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_export import export
    from edgevla.models.train_reach import load_or_train
    from edgevla.runtime.engine import OnnxRuntimePolicy, TvmPolicy
    from edgevla.runtime.bundle import read_bundle
    from edgevla.targets import compile_bundle, verify_bundle

    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    print("[1/5] policy: load the cached checkpoint or train it by behaviour cloning", flush=True)
    model = load_or_train(progress=progress)
    torch.set_num_threads(1)

    print("[2/5] compress the transformer Linear layers to 1 bit: hbvla (calibrated) and sign (naive baseline)",
          flush=True)
    calibration = calibration_inputs(512, batch_size=32)  # as `bench fidelity`: hbvla overfits 64 samples
    methods = {"hbvla": compress(model, "hbvla", calibration=calibration, include=["blocks.*"]),
               "sign": compress(model, "sign", calibration=calibration, include=["blocks.*"], group_size=group_size)}
    for method, compressed in methods.items():
        print(f"      {method}: {len(compressed.report.compressed)} layers at "
              f"{compressed.report.mean_bits_per_weight():.3f} bits/weight", flush=True)

    print("[3/5] export ONNX (fp32, and 1-bit with ai.edgevla custom ops)", flush=True)
    example = tuple(t[:1] for t in calibration[0])
    fp32_path = workdir / "reach_fp32.onnx"
    export(model, example, fp32_path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)
    onnx_paths = {method: workdir / f"reach_{method}.onnx" for method in methods}
    for method, compressed in methods.items():
        export(compressed.model, example, onnx_paths[method], input_names=INPUT_NAMES, output_names=OUTPUT_NAMES)

    print("[4/5] compile the 1-bit models for the host with TVM and verify them against onnxruntime", flush=True)
    bundles = {}
    for method, path in onnx_paths.items():
        bundle_dir = workdir / f"reach_{method}_host"
        compile_bundle(path, "host", bundle_dir)
        report = verify_bundle(bundle_dir)
        print(f"      {method}: " + report.line(), flush=True)
        if not report.passed:
            raise RuntimeError(f"the compiled {method} bundle does not match onnxruntime: {report.line()}")
        bundles[method] = read_bundle(bundle_dir)

    print(f"[5/5] closed loop on {episodes} held-out episodes per variant", flush=True)
    vocab = model.config.vocab_size
    results = [
        evaluate(OnnxRuntimePolicy(fp32_path, vocabulary_size=vocab), "fp32 onnxruntime", fp32_path, episodes, progress),
        evaluate(OnnxRuntimePolicy(onnx_paths["hbvla"], vocabulary_size=vocab), "1-bit hbvla onnxruntime",
                 onnx_paths["hbvla"], episodes, progress),
        evaluate(TvmPolicy(bundles["hbvla"]), "1-bit hbvla TVM host", bundles["hbvla"].library, episodes, progress),
        evaluate(TvmPolicy(bundles["sign"]), "1-bit sign TVM host (naive)", bundles["sign"].library, episodes,
                 progress),
    ]
    print()
    print(format_table(results))
    print(f"(model bytes: ONNX file for onnxruntime, compiled library for TVM; speed: fp32 onnxruntime's infer p50 "
          f"over the row's, same run; success = end effector within 20 mm of the named ball; "
          f"{time.perf_counter() - started:.0f} s in all)")
    if json_path:
        Path(json_path).write_text(json.dumps([vars(r) for r in results], indent=2))
    return results
