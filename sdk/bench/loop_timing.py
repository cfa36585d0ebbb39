"""`edgevla bench loop`: what the runtime costs per tick, and how steadily it keeps a 100 Hz rate.

1. Overhead per tick excluding inference: the ControlLoop free-running with a robot whose observe/act
   cost nothing and a policy that returns a precomputed chunk, so what is measured is the loop itself
   (input checks, chunk queue, safety limits, section timing; with and without telemetry). Goal p99 <= 100 us.
2. Period error at 100 Hz: the ControlLoop (sleep, then spin) and a plain `time.sleep(period - elapsed)`
   loop, run one after the other in the same process, with the same trivial work per tick. Both measured
   the same way: each tick's start stamped on the monotonic clock, error = |actual period - nominal|.
   Goal p99 <= 0.5 ms on an idle machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgevla.runtime.bundle import TensorSpec
from edgevla.runtime.engine import Policy
from edgevla.runtime.robots.base import ArraySpec, Robot

JOINTS = 6
CHUNK = 8


class _StampingRobot(Robot):
    """Observe returns a ready observation and stamps the tick start; act does nothing."""

    name = "bench"

    def __init__(self):
        self.stamps: list[int] = []
        self._observation = {"joint_position": np.zeros(JOINTS, np.float32)}
        self._safe = np.zeros(JOINTS, np.float32)

    @property
    def observation_spec(self):
        return {"joint_position": ArraySpec(shape=(JOINTS,), dtype="float32")}

    @property
    def action_spec(self):
        return ArraySpec(shape=(JOINTS,), dtype="float32")

    def connect(self):
        pass

    def observe(self):
        self.stamps.append(time.monotonic_ns())
        return self._observation

    def act(self, action):
        pass

    def safe_action(self):
        return self._safe

    def close(self):
        pass


class _ConstantPolicy(Policy):
    engine = "constant"

    def __init__(self):
        super().__init__([TensorSpec("joint_position", (1, JOINTS), "float32")],
                         [TensorSpec("actions", (1, CHUNK, JOINTS), "float32")])
        self._out = [np.full((1, CHUNK, JOINTS), 0.1, np.float32)]

    def run(self, feed):
        return self._out


@dataclass
class LoopBenchRow:
    case: str
    ticks: int
    p50_us: float
    p95_us: float
    p99_us: float
    max_us: float
    goal: str
    met: bool | None


def _row(case, values_ns, goal_us=None) -> LoopBenchRow:
    a = np.asarray(values_ns, np.float64) / 1e3
    p99 = float(np.percentile(a, 99))
    return LoopBenchRow(case, int(a.size), float(np.median(a)), float(np.percentile(a, 95)), p99, float(a.max()),
                        f"p99 <= {goal_us:g} us" if goal_us else "", None if goal_us is None else p99 <= goal_us)


def overhead_per_tick(ticks: int, telemetry: Path | None) -> list[int]:
    from edgevla.runtime.loop import ControlLoop, LoopConfig

    robot = _StampingRobot()
    loop = ControlLoop(robot, _ConstantPolicy(), config=LoopConfig(
        hz=None, telemetry_path=str(telemetry) if telemetry else None))
    for _ in range(200):  # warm-up
        loop.tick()
    robot.stamps.clear()
    infer_before = len(loop.timer.sections["infer"])
    for _ in range(ticks + 1):
        loop.tick()
    loop.close()
    infer = loop.timer.sections["infer"][infer_before:]
    # Tick k's cost is the time from its start to the next tick's start, minus its inference.
    return [b - a - i for a, b, i in zip(robot.stamps, robot.stamps[1:], infer)]


def period_errors_control_loop(hz: float, seconds: float) -> list[int]:
    from edgevla.runtime.loop import ControlLoop, LoopConfig

    robot = _StampingRobot()
    loop = ControlLoop(robot, _ConstantPolicy(), config=LoopConfig(hz=hz))
    loop.run(ticks=int(seconds * hz))
    loop.close()
    return _period_errors(robot.stamps, hz)


def period_errors_plain_sleep(hz: float, seconds: float) -> list[int]:
    robot, policy = _StampingRobot(), _ConstantPolicy()
    period = 1.0 / hz
    for _ in range(int(seconds * hz)):
        start = time.monotonic()
        observation = robot.observe()
        policy.run({"joint_position": observation["joint_position"][None]})
        robot.act(robot.safe_action())
        time.sleep(max(0.0, period - (time.monotonic() - start)))
    return _period_errors(robot.stamps, hz)


def _period_errors(stamps: list[int], hz: float) -> list[int]:
    nominal = 1e9 / hz
    return [int(abs((b - a) - nominal)) for a, b in zip(stamps, stamps[1:])]


def run_loop_bench(*, ticks: int = 20_000, seconds: float = 10.0, hz: float = 100.0,
                   json_path: Path | None = None) -> list[LoopBenchRow]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            _row("overhead/tick, no telemetry", overhead_per_tick(ticks, None), 100),
            _row("overhead/tick, telemetry on", overhead_per_tick(ticks, Path(tmp) / "t.jsonl"), 100),
        ]
    rows.append(_row(f"period error {hz:g} Hz, ControlLoop", period_errors_control_loop(hz, seconds), 500))
    rows.append(_row(f"period error {hz:g} Hz, time.sleep loop", period_errors_plain_sleep(hz, seconds)))
    print(format_table(rows))
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


def format_table(rows: list[LoopBenchRow]) -> str:
    header = f"{'case':40s} {'ticks':>6s} {'p50 us':>8s} {'p95 us':>8s} {'p99 us':>8s} {'max us':>9s}  goal"
    lines = [header, "-" * len(header)]
    for r in rows:
        verdict = "" if r.met is None else (" met" if r.met else " NOT met")
        lines.append(f"{r.case:40s} {r.ticks:6d} {r.p50_us:8.1f} {r.p95_us:8.1f} {r.p99_us:8.1f} {r.max_us:9.1f}  "
                     f"{r.goal}{verdict}")
    return "\n".join(lines)
