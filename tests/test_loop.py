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
