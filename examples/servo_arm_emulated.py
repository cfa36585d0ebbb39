"""A 3-joint servo arm on an emulated Dynamixel (or Feetech) bus, driven closed loop by an ONNX policy.

The emulator stands in for the servos on a pseudo-terminal; everything else is what runs on a real arm:
the Protocol 2.0 / Feetech driver, the ServoArm robot, async inference of action chunks merged by temporal
ensembling, safety limits, and per-tick telemetry, drawn to a PNG at the end. To drive a real arm, give
`--port /dev/ttyUSB0` (and --ids/--model) instead of using the emulator.

The policy is a small ONNX graph (built here with onnx.helper) that plans a chunk of joint targets moving
toward a fixed pose at a bounded speed: a stand-in for a trained policy with the same inputs and outputs.

    python examples/servo_arm_emulated.py [--protocol feetech] [--seconds 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

TARGET_RAD = (0.8, -0.5, 1.2)


def waypoint_policy_onnx(path: Path, *, joints: int, horizon: int, step_rad: float, target) -> Path:
    """actions[i] = q + clip(target - q, -(i+1)*step, (i+1)*step): a chunk of `horizon` joint targets."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    limits = (step_rad * np.arange(1, horizon + 1, dtype=np.float32)).reshape(1, horizon, 1)
    nodes = [
        helper.make_node("Sub", ["target", "joint_position"], ["delta"]),
        helper.make_node("Unsqueeze", ["delta", "axis1"], ["delta3"]),
        helper.make_node("Unsqueeze", ["joint_position", "axis1"], ["q3"]),
        helper.make_node("Neg", ["limits"], ["neg_limits"]),
        helper.make_node("Min", ["delta3", "limits"], ["upper"]),
        helper.make_node("Max", ["upper", "neg_limits"], ["step"]),
        helper.make_node("Add", ["q3", "step"], ["actions"]),
    ]
    graph = helper.make_graph(
        nodes, "waypoint_policy",
        [helper.make_tensor_value_info("joint_position", TensorProto.FLOAT, [1, joints]),
         helper.make_tensor_value_info("joint_velocity", TensorProto.FLOAT, [1, joints])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [1, horizon, joints])],
        initializer=[numpy_helper.from_array(np.asarray([target], np.float32), "target"),
                     numpy_helper.from_array(limits, "limits"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def main(argv=None) -> int:
    from edgevla.runtime.buses import BusConfig
    from edgevla.runtime.buses.emulator import DEFAULT_MODEL, ServoEmulator
    from edgevla.runtime.chunking import ChunkingConfig
    from edgevla.runtime.engine import OnnxRuntimePolicy
    from edgevla.runtime.loop import ControlLoop, LoopConfig
    from edgevla.runtime.robots.servo_arm import ServoArm, ServoArmConfig
    from edgevla.runtime.safety import SafetyLimits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["dynamixel", "feetech"], default="dynamixel")
    parser.add_argument("--port", help="a real servo bus (default: start the emulator)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3 s)")
    parser.add_argument("--hz", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="1 s run (what the test uses)")
    parser.add_argument("--out", default="artifacts/servo_arm", help="where telemetry and the PNG go")
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = (1, 2, 3)
    emulator = None
    if args.port is None:
        emulator = ServoEmulator(args.protocol, list(ids), max_speed_rad_s=4.0)
        port = emulator.start()
        print(f"emulated {args.protocol} bus on {port}")
    else:
        port = args.port
    try:
        with tempfile.TemporaryDirectory() as tmp:
            policy = OnnxRuntimePolicy(waypoint_policy_onnx(Path(tmp) / "policy.onnx", joints=3, horizon=10,
                                                            step_rad=2.0 / args.hz, target=TARGET_RAD))
            arm = ServoArm(ServoArmConfig(bus=BusConfig(port=port, protocol=args.protocol), joint_ids=ids,
                                          model=DEFAULT_MODEL[args.protocol]))
            config = LoopConfig(
                hz=args.hz, telemetry_path=str(out / "telemetry.jsonl"),
                chunking=ChunkingConfig(mode="async", execute_horizon=4, ensemble="exponential"),
                safety=SafetyLimits(action_min=(-2.5,) * 3, action_max=(2.5,) * 3, rate_max=(3.0,) * 3))
            arm.connect()
            loop = ControlLoop(arm, policy, config=config)
            try:
                summary = loop.run(duration_s=seconds)
                final = arm.observe()["joint_position"]
            finally:
                loop.close()
                arm.close()
    finally:
        if emulator is not None:
            emulator.stop()
    from edgevla.report import draw_report

    png, text = draw_report(out / "telemetry.jsonl", out / "report.png")
    error = float(np.abs(final - np.asarray(TARGET_RAD)).max())
    print(f"{summary['ticks']} ticks at {args.hz:g} Hz over {args.protocol}; actions {summary['action_sources']}")
    for name, s in summary["sections_ms"].items():
        print(f"  {name:12s} p50 {s['p50']:7.3f} ms  p99 {s['p99']:7.3f} ms")
    print(f"  period error p99 {summary['period_error_ms']['p99']:.3f} ms; bus {arm.bus.stats}")
    print(f"final joint error {error:.3f} rad (target {TARGET_RAD}); report {png}: {text}")
    return 0 if error < 0.05 or seconds < 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
