"""The control loop: section timing, pacing, and the safe action whenever anything goes wrong."""

import time

import numpy as np
import pytest

from edgevla.runtime.bundle import TensorSpec
from edgevla.runtime.engine import Policy
from edgevla.runtime.loop import ControlLoop, CycleTimer, LoopConfig, SECTIONS
from edgevla.runtime.robots.base import ArraySpec, Robot


class RecordingRobot(Robot):
    """A robot double that records what it was sent (the loop, not the robot, is under test)."""

    name = "recording"

    def __init__(self, observation=None):
        self.sent = []
        self.observation = {"state": np.zeros(3, np.float32)} if observation is None else observation

    @property
    def observation_spec(self):
        return {"state": ArraySpec(shape=(3,), dtype="float32")}

    @property
    def action_spec(self):
        return ArraySpec(shape=(2,), dtype="float32")

    def connect(self):
        pass

    def observe(self):
        return dict(self.observation)

    def act(self, action):
        self.sent.append(np.asarray(action).copy())

    def safe_action(self):
        return np.zeros(2, np.float32)

    def close(self):
        pass


class LinearPolicy(Policy):
    engine = "numpy"

    def __init__(self, fail=None, output=None):
        super().__init__([TensorSpec("state", (1, 3), "float32")], [TensorSpec("actions", (1, 4, 2), "float32")])
        self.fail = fail
        self.output = output

    def run(self, feed):
        if self.fail:
            raise self.fail
        if self.output is not None:
            return [self.output]
        s = feed["state"]
        return [np.repeat(s[:, None, :2] + 1.0, 4, axis=1).astype(np.float32)]


def test_every_section_is_timed_and_policy_action_is_sent():
    robot = RecordingRobot()
    loop = ControlLoop(robot, LinearPolicy())
    for _ in range(5):
        loop.tick()
    np.testing.assert_array_equal(robot.sent[-1], [1.0, 1.0])
    summary = loop.timer.summary()
    assert set(summary["sections_ms"]) == set(SECTIONS)
    assert all(s["count"] == 5 for s in summary["sections_ms"].values())
    assert loop.events.total() == 0


@pytest.mark.parametrize("observation,counter", [
    ({"state": np.zeros(4, np.float32)}, "bad_observation"),           # wrong shape
    ({"state": np.zeros(3, np.float64)}, "bad_observation"),           # wrong dtype
    ({"state": np.array([np.nan, 0, 0], np.float32)}, "bad_observation"),
    ({}, "bad_observation"),                                            # missing entry
])
def test_bad_observation_sends_safe_action(observation, counter):
    robot = RecordingRobot(observation)
    loop = ControlLoop(robot, LinearPolicy())
    loop.tick()
    np.testing.assert_array_equal(robot.sent, [np.zeros(2)])
    assert getattr(loop.events, counter) == 1 and "state" in loop.events.last_error


def test_inference_failure_and_bad_action_send_safe_action():
    robot = RecordingRobot()
    loop = ControlLoop(robot, LinearPolicy(fail=RuntimeError("engine crashed")))
    loop.tick()
    assert loop.events.inference_error == 1 and "engine crashed" in loop.events.last_error
    loop = ControlLoop(robot, LinearPolicy(output=np.full((1, 4, 2), np.inf, np.float32)))
    loop.tick()
    assert loop.events.bad_action == 1
    np.testing.assert_array_equal(robot.sent, [np.zeros(2), np.zeros(2)])


def test_fixed_rate_pacing_and_overruns():
    timer = CycleTimer(hz=200)
    start = time.monotonic()
    for _ in range(21):
        timer.wait_for_next_tick()
    elapsed = time.monotonic() - start
    assert 0.09 < elapsed < 0.5  # 20 periods of 5 ms (loose: this machine is shared)
    timer.wait_for_next_tick()
    time.sleep(0.02)  # a tick that takes 4 periods
    timer.wait_for_next_tick()
    assert timer.overruns >= 1


def test_loop_config_validates():
    with pytest.raises(ValueError, match="hz must be positive"):
        LoopConfig(hz=0)


# -- action chunks, async inference, safety, watchdogs, telemetry -------------------------------------------

from edgevla.runtime.chunking import ActionQueue, ChunkingConfig  # noqa: E402
from edgevla.runtime.safety import SafetyLimits  # noqa: E402
from edgevla.runtime.telemetry import read_telemetry  # noqa: E402


class TimedRobot(RecordingRobot):
    """Records when each action went out."""

    def __init__(self, observation=None, observe_delay_s=0.0, fail_observe=0):
        super().__init__(observation)
        self.times = []
        self.observe_delay_s = observe_delay_s
        self.fail_observe = fail_observe

    def observe(self):
        if self.fail_observe:
            self.fail_observe -= 1
            raise OSError("servo 2 did not answer")
        time.sleep(self.observe_delay_s)
        return super().observe()

    def act(self, action):
        self.times.append(time.monotonic())
        super().act(action)


class ChunkPolicy(Policy):
    """Chunk k of 8 actions: action i is [k, i]; calls listed in `slow_calls` take `slow_s`."""

    engine = "numpy"

    def __init__(self, *, slow_calls=(), slow_s=0.0, horizon=8):
        super().__init__([TensorSpec("state", (1, 3), "float32")], [TensorSpec("actions", (1, horizon, 2), "float32")])
        self.calls = 0
        self.slow_calls, self.slow_s, self.horizon = set(slow_calls), slow_s, horizon

    def run(self, feed):
        k = self.calls
        self.calls += 1
        if k in self.slow_calls:
            time.sleep(self.slow_s)
        chunk = np.stack([np.full(self.horizon, k), np.arange(self.horizon)], axis=1).astype(np.float32)
        return [chunk[None]]


def test_temporal_ensembling_weights_match_act():
    queue = ActionQueue(ChunkingConfig(ensemble="exponential", ensemble_decay=0.5))
    queue.push(0, np.array([[0.0], [1.0], [2.0]]))
    queue.push(1, np.array([[10.0], [11.0], [12.0]]))
    w = np.exp(-0.5 * np.arange(2))
    np.testing.assert_allclose(queue.action_for(1), (w[0] * 1.0 + w[1] * 10.0) / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(queue.action_for(3), [12.0])  # only the newer chunk covers tick 3
    assert queue.action_for(4) is None and queue.remaining(4) == 0
    newest = ActionQueue(ChunkingConfig())
    newest.push(0, np.array([[0.0], [1.0]]))
    newest.push(1, np.array([[10.0], [11.0]]))
    np.testing.assert_allclose(newest.action_for(1), [10.0])


def test_overrunning_inference_keeps_the_old_chunk_then_sends_the_safe_action_on_time():
    hz = 50.0
    robot = TimedRobot()
    # The third inference takes 0.4 s = 20 ticks; chunks hold 8 actions, a new one is due every 2 ticks.
    policy = ChunkPolicy(slow_calls={2}, slow_s=0.4)
    loop = ControlLoop(robot, policy, config=LoopConfig(hz=hz, chunking=ChunkingConfig(mode="async", execute_horizon=2)))
    try:
        loop.run(ticks=45)
    finally:
        loop.close()
    gaps = np.diff(robot.times)
    assert len(robot.times) == 45
    assert gaps.max() < 1 / hz + 0.03, f"an action went out late: gap {gaps.max() * 1e3:.1f} ms"  # loose: shared machine
    sent = np.array(robot.sent)
    assert loop.events.late_chunks == 1
    assert loop.events.starved_ticks > 0 and loop.sources["safe"] >= loop.events.starved_ticks
    assert loop.sources.get("held", 0) > 0
    starved = np.where((sent == 0).all(axis=1))[0]
    assert len(starved) >= loop.events.starved_ticks
    # While the slow chunk was late, the loop executed chunk 1's remaining actions (index grows by one per tick).
    held = sent[(sent[:, 0] == 1)]
    assert np.all(np.diff(held[:, 1]) == 1) and held[-1, 1] == 7
    assert policy.calls >= 4  # inference resumed after the overrun


def test_emergency_stop_from_another_thread_stops_with_a_safe_action():
    import threading

    robot = TimedRobot()
    loop = ControlLoop(robot, ChunkPolicy(), config=LoopConfig(hz=100))
    threading.Timer(0.1, loop.emergency_stop, kwargs={"reason": "operator pressed e-stop"}).start()
    started = time.monotonic()
    summary = loop.run(duration_s=5)
    assert time.monotonic() - started < 1
    assert summary["events"]["stopped"] == "operator pressed e-stop"
    np.testing.assert_array_equal(robot.sent[-1], [0, 0])


def test_link_failures_stop_the_loop_and_a_stale_observation_sends_the_safe_action():
    robot = TimedRobot(fail_observe=5)
    loop = ControlLoop(robot, ChunkPolicy(), config=LoopConfig(safety=SafetyLimits(max_link_failures=3)))
    loop.run(ticks=10)
    assert loop.events.link_failures == 3 and "link lost" in loop.events.stopped
    assert "servo 2 did not answer" in loop.events.stopped
    assert all((a == 0).all() for a in robot.sent)
    slow = TimedRobot(observe_delay_s=0.03)
    loop = ControlLoop(slow, ChunkPolicy(), config=LoopConfig(safety=SafetyLimits(observation_timeout_s=0.01)))
    loop.tick()
    assert loop.events.stale_observation == 1
    np.testing.assert_array_equal(slow.sent, [np.zeros(2)])


def test_wrong_observation_in_async_mode_gets_a_clear_error_and_the_safe_action():
    robot = TimedRobot(observation={"state": np.zeros(5, np.float32)})
    loop = ControlLoop(robot, ChunkPolicy(), config=LoopConfig(hz=100, chunking=ChunkingConfig(mode="async")))
    try:
        loop.run(ticks=3)
    finally:
        loop.close()
    assert loop.events.bad_observation == 3 and "expected shape (3,)" in loop.events.last_error
    assert all((a == 0).all() for a in robot.sent)


def test_safety_limits_clamp_and_count():
    robot = RecordingRobot()
    limits = SafetyLimits(action_min=(-1.0, -0.5), action_max=(1.0, 0.5), rate_max=(10.0, 10.0))
    loop = ControlLoop(robot, LinearPolicy(output=np.full((1, 4, 2), 3.0, np.float32)),
                       config=LoopConfig(hz=100, safety=limits))
    loop.run(ticks=3)
    np.testing.assert_allclose(robot.sent, [[1.0, 0.5]] * 3)  # bounds
    assert loop.safety.bound_clamps == 3 and loop.safety.rate_clamps == 2  # ticks 2 and 3 asked to jump too
    loop.safety.reset(np.zeros(2))
    loop.tick()
    np.testing.assert_allclose(robot.sent[-1], [0.1, 0.1], rtol=1e-6)  # 10 units/s for 10 ms
    assert loop.safety.rate_clamps == 3
    with pytest.raises(ValueError, match="must be <= action_max"):
        SafetyLimits(action_min=(1.0,), action_max=(0.0,))
    with pytest.raises(ValueError, match="has 3 elements, the robot's action has 2"):
        ControlLoop(robot, LinearPolicy(), config=LoopConfig(safety=SafetyLimits(rate_max=(1.0, 1.0, 1.0))))


def test_telemetry_is_on_disk_while_the_loop_runs(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    robot = RecordingRobot()
    loop = ControlLoop(robot, LinearPolicy(), config=LoopConfig(hz=200, telemetry_path=str(path)))
    loop.run(ticks=7)
    header, ticks = read_telemetry(path)  # not closed yet: every line must already be flushed
    assert header["hz"] == 200 and len(ticks) == 7
    assert {f"{s}_ms" for s in SECTIONS} <= set(ticks[0]) and ticks[-1]["source"] == "policy"
    with open(path, "a") as f:
        f.write('{"tick": 7, "t_s": 1')  # a crash mid-write
    assert len(read_telemetry(path)[1]) == 7
    loop.close()
