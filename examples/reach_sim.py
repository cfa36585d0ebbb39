"""The MuJoCo reach task driven closed loop by the runtime, exactly as a robot would run a bundle.

Without --policy, the reference VLA policy is trained (or loaded from the cache), exported to ONNX and
used. With --policy, any bundle directory or .onnx file with the reach task's inputs runs. The loop paces
at the task's 20 Hz, infers asynchronously while the current action chunk executes, merges chunks by
temporal ensembling, and writes telemetry; the report PNG is drawn at the end.

    python examples/reach_sim.py [--policy FILE_OR_BUNDLE] [--episodes 5] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def reference_policy_onnx(out: Path) -> Path:
    import warnings

    from edgevla.demo import calibration_inputs
    from edgevla.exporters.onnx_export import export
    from edgevla.models.train_reach import load_or_train

    path = out / "reach_fp32.onnx"
    example = tuple(t[:1] for t in calibration_inputs(1, batch_size=1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(load_or_train(), example, path, input_names=["image", "instruction", "state"], output_names=["actions"])
    return path


def main(argv=None) -> int:
    from edgevla.models.train_reach import HELD_OUT_SEED_OFFSET
    from edgevla.report import draw_report
    from edgevla.runtime.chunking import ChunkingConfig
    from edgevla.runtime.engine import load_policy
    from edgevla.runtime.loop import ControlLoop, LoopConfig
    from edgevla.runtime.robots.sim_reach import SimReach

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="bundle directory or .onnx file (default: the reference policy)")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one episode (what the test uses)")
    parser.add_argument("--out", default="artifacts/reach_sim", help="where telemetry and the PNG go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = 1 if args.quick else args.episodes
    policy = load_policy(args.policy or reference_policy_onnx(out), vocabulary_size=6)
    robot = SimReach()
    config = LoopConfig(hz=robot.config.control_hz, telemetry_path=str(out / "telemetry.jsonl"),
                        chunking=ChunkingConfig(mode="async", execute_horizon=2, ensemble="exponential"))
    robot.connect()
    loop = ControlLoop(robot, policy, config=config)
    successes = 0
    try:
        for episode in range(episodes):
            result = loop.run_episode(HELD_OUT_SEED_OFFSET + 20_000 + episode)
            successes += bool(result.success)
            print(f"episode {episode}: {'success' if result.success else 'miss'} at "
                  f"{result.final_distance_m * 1e3:.1f} mm after {result.steps} ticks")
    finally:
        loop.close()
        robot.close()
    summary = loop.summary()
    png, text = draw_report(out / "telemetry.jsonl", out / "report.png")
    print(f"success {successes}/{episodes}; infer p50 {summary['sections_ms']['infer']['p50']:.2f} ms; "
          f"actions {summary['action_sources']}; report {png}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
