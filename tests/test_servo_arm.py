"""The servo arm robot on the emulated bus, `edgevla run` / `edgevla report` on it, and the runnable examples."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgevla.runtime.buses import BusConfig, BusError
from edgevla.runtime.buses.emulator import Faults, ServoEmulator
from edgevla.runtime.loop import ControlLoop, LoopConfig
from edgevla.runtime.robots.servo_arm import ServoArm, ServoArmConfig
from edgevla.runtime.safety import SafetyLimits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from servo_arm_emulated import waypoint_policy_onnx  # noqa: E402


def _arm(path, protocol="dynamixel", ids=(1, 2), **bus):
    model = "xl430-w250" if protocol == "dynamixel" else "sts3215"
    return ServoArm(ServoArmConfig(bus=BusConfig(port=path, protocol=protocol, **bus), joint_ids=ids, model=model))


@pytest.mark.parametrize("protocol", ["dynamixel", "feetech"])
def test_arm_observes_in_radians_and_moves_to_commanded_joints(protocol):
    with ServoEmulator(protocol, [1, 2]) as emulator:
        arm = _arm(emulator.path, protocol)
        arm.connect()
        try:
            np.testing.assert_allclose(arm.observe()["joint_position"], [0, 0], atol=1e-3)
            arm.act(np.array([0.5, -0.25], np.float32))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                position = arm.observe()["joint_position"]
                if np.allclose(position, [0.5, -0.25], atol=2e-3):
                    break
                time.sleep(0.01)
            np.testing.assert_allclose(position, [0.5, -0.25], atol=2e-3)
            np.testing.assert_allclose(arm.safe_action(), position)  # the safe action holds where it is
            with pytest.raises(ValueError, match="2 finite joint positions"):
                arm.act(np.array([np.nan, 0], np.float32))
        finally:
            arm.close()


def test_wrong_model_is_refused_before_torque_goes_on():
    with ServoEmulator("dynamixel", {1: "xm430-w350", 2: "xl430-w250"}) as emulator:
        arm = _arm(emulator.path)
        with pytest.raises(BusError, match="servo 1 reports model number 1020, expected 1060"):
            arm.connect()
        arm.close()


def test_servo_that_stops_answering_ends_in_a_safe_stop_never_a_hang(tmp_path):
    with ServoEmulator("feetech", [1, 2]) as emulator:
        arm = _arm(emulator.path, "feetech", reply_timeout_s=0.01, retries=1)
        arm.connect()
        policy_path = waypoint_policy_onnx(tmp_path / "p.onnx", joints=2, horizon=4, step_rad=0.02, target=(0.3, 0.3))
        from edgevla.runtime.engine import OnnxRuntimePolicy

        loop = ControlLoop(arm, OnnxRuntimePolicy(policy_path),
                           config=LoopConfig(hz=100, safety=SafetyLimits(max_link_failures=3)))
        loop.run(ticks=10)
        emulator.set_faults(silent_ids=frozenset({2}))
        started = time.monotonic()
        summary = loop.run(ticks=1000)
        assert time.monotonic() - started < 2
        assert "link lost" in summary["events"]["stopped"] and summary["events"]["link_failures"] == 3
        emulator.set_faults(silent_ids=frozenset())
        held = arm.safe_action()
        loop.close()
        arm.close()
        # The arm was left holding where it was (the safe action), not at a policy step.
        assert abs(emulator.position(1) - arm.to_ticks(float(held[0]))) <= 2


def test_faults_on_the_bus_are_ridden_through_by_retries(tmp_path):
    faults = Faults(drop_reply_probability=0.05, corrupt_reply_probability=0.05, garbage_probability=0.2)
    with ServoEmulator("dynamixel", [1, 2], faults=faults, seed=3) as emulator:
        arm = _arm(emulator.path, reply_timeout_s=0.01, retries=4)
        arm.connect()
        from edgevla.runtime.engine import OnnxRuntimePolicy

        policy = OnnxRuntimePolicy(waypoint_policy_onnx(tmp_path / "p.onnx", joints=2, horizon=4, step_rad=0.02,
                                                        target=(0.3, -0.3)))
        loop = ControlLoop(arm, policy, config=LoopConfig(hz=100))
        summary = loop.run(ticks=100)
        loop.close()
        arm.close()
    assert not summary["events"]["stopped"]
    assert arm.bus.stats.retries > 0 and summary["events"]["link_failures"] == 0


def test_cli_run_on_an_emulated_bus_then_report(tmp_path):
    policy = waypoint_policy_onnx(tmp_path / "p.onnx", joints=3, horizon=8, step_rad=0.04, target=(0.2, 0.1, -0.1))
    telemetry, summary_path, png = tmp_path / "t.jsonl", tmp_path / "s.json", tmp_path / "r.png"
    with ServoEmulator("dynamixel", [1, 2, 3]) as emulator:
        result = subprocess.run([sys.executable, "-m", "edgevla.cli", "run", str(policy), "--robot",
                                 f"dynamixel:{emulator.path}", "--hz", "100", "--ticks", "60", "--async",
                                 "--horizon", "4", "--ensemble", "exponential", "--telemetry", str(telemetry),
                                 "--json", str(summary_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "period error" in result.stdout and "observe" in result.stdout
    summary = json.loads(summary_path.read_text())
    assert summary["ticks"] == 60 and summary["action_sources"]["policy"] >= 50
    result = subprocess.run([sys.executable, "-m", "edgevla.cli", "report", str(telemetry), "-o", str(png)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "60 ticks" in result.stdout


def test_cli_run_names_the_problem(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgevla.cli", "run", "x.onnx", "--robot", "kuka:/dev/x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown robot 'kuka:/dev/x'; known: sim:reach" in result.stderr
    policy = waypoint_policy_onnx(tmp_path / "p.onnx", joints=3, horizon=2, step_rad=0.1, target=(0, 0, 0))
    result = subprocess.run([sys.executable, "-m", "edgevla.cli", "run", str(policy), "--robot",
                             "dynamixel:/dev/no-such-port"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot open servo bus /dev/no-such-port" in result.stderr


def test_servo_arm_example_quick_mode(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "servo_arm_emulated.py"), "--quick",
                             "--protocol", "feetech", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final joint error" in result.stdout and (tmp_path / "report.png").is_file()


def test_reach_example_quick_mode(tmp_path, reach_onnx):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "reach_sim.py"), "--quick", "--policy",
                             str(reach_onnx["fp32"]), "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success" in result.stdout and (tmp_path / "report.png").is_file()


def test_loop_bench_runs_and_reports_goals(tmp_path):
    from edgevla.bench.loop_timing import run_loop_bench

    rows = run_loop_bench(ticks=500, seconds=0.3, json_path=tmp_path / "loop.json")
    assert [r.case for r in rows][0] == "overhead/tick, no telemetry" and len(rows) == 4
    assert all(r.ticks > 0 and 0 <= r.p50_us <= r.max_us for r in rows)
    assert json.loads((tmp_path / "loop.json").read_text())[2]["goal"] == "p99 <= 500 us"
