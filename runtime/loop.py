"""The closed loop: observe -> preprocess -> infer -> postprocess -> act, timed section by section.

One CycleTimer owns timing: fixed-rate pacing on the monotonic clock (sleep, then spin for the last
stretch), every section's duration every tick, period error and overruns. Whatever goes wrong in a tick
(an observation of the wrong shape, an inference error, a non-finite action) the robot gets its safe
action in that same tick, and the event is counted.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from .engine import Policy
from .robots.base import Robot

SECTIONS = ("observe", "preprocess", "infer", "postprocess", "act")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How the control loop runs."""

    hz: float | None = None  # control rate, Hz; None runs ticks back to back (simulation, benchmarks)
    spin_s: float = 0.0005  # final stretch of each period spent spinning instead of sleeping, s
    action_index: int = 0  # which action of the predicted chunk is executed each tick

    def __post_init__(self):
        if self.hz is not None and self.hz <= 0:
            raise ValueError(f"hz must be positive or None, got {self.hz}")
        if self.spin_s < 0:
            raise ValueError(f"spin_s must be >= 0 s, got {self.spin_s}")


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {"count": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"count": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


class CycleTimer:
    """Named-section timing, fixed-rate pacing and overrun counting for one loop."""

    def __init__(self, hz: float | None = None, spin_s: float = 0.0005):
        self.period_ns = None if hz is None else int(round(1e9 / hz))
        self.spin_ns = int(spin_s * 1e9)
        self.sections: dict[str, list[int]] = {}
        self.period_errors_ns: list[int] = []
        self.overruns = 0
        self._next_tick = None

    @contextlib.contextmanager
    def section(self, name: str):
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.sections.setdefault(name, []).append(time.perf_counter_ns() - start)

    def wait_for_next_tick(self) -> None:
        """Block until the next period starts (no-op when free-running); counts overruns."""
        if self.period_ns is None:
            return
        now = time.monotonic_ns()
        if self._next_tick is None:
            self._next_tick = now
            return
        self._next_tick += self.period_ns
        if now > self._next_tick:
            self.overruns += 1
            self.period_errors_ns.append(now - self._next_tick)
            missed = (now - self._next_tick) // self.period_ns
            self._next_tick += missed * self.period_ns  # restart the grid instead of bursting to catch up
            return
        remaining = self._next_tick - now
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        while time.monotonic_ns() < self._next_tick:
            pass
        self.period_errors_ns.append(time.monotonic_ns() - self._next_tick)

    def summary(self) -> dict:
        return {"sections_ms": {name: percentiles_ms(v) for name, v in self.sections.items()},
                "period_error_ms": percentiles_ms(self.period_errors_ns), "overruns": self.overruns}


@dataclass
class LoopEvents:
    """Things the loop handled by sending the safe action instead of the policy's."""

    bad_observation: int = 0
    inference_error: int = 0
    bad_action: int = 0
    last_error: str = ""

    def total(self) -> int:
        return self.bad_observation + self.inference_error + self.bad_action


@dataclass
class EpisodeResult:
    steps: int
    success: bool | None  # None when the robot has no notion of success
    final_distance_m: float | None
    events: LoopEvents = field(default_factory=LoopEvents)


class ControlLoop:
    """Drives `robot` with `policy`; times every section of every tick into `self.timer`."""

    def __init__(self, robot: Robot, policy: Policy, *, config: LoopConfig | None = None):
        self.robot = robot
        self.policy = policy
        self.config = config or LoopConfig()
        self.timer = CycleTimer(self.config.hz, self.config.spin_s)
        self.events = LoopEvents()

    def tick(self) -> np.ndarray:
        """One control period; returns the action actually sent."""
        timer = self.timer
        timer.wait_for_next_tick()
        action = None
        with timer.section("observe"):
            observation = self.robot.observe()
        with timer.section("preprocess"):
            try:
                feed = self.policy.prepare(observation)
            except ValueError as e:
                self.events.bad_observation += 1
                self.events.last_error = str(e)
                feed = None
        with timer.section("infer"):
            outputs = None
            if feed is not None:
                try:
                    outputs = self.policy.run(feed)
                except Exception as e:  # any engine failure must still end in a safe action
                    self.events.inference_error += 1
                    self.events.last_error = f"{type(e).__name__}: {e}"
        with timer.section("postprocess"):
            if outputs is not None:
                chunk = np.asarray(outputs[0])[0]
                candidate = np.asarray(chunk[self.config.action_index], dtype=np.float32)
                if candidate.shape == self.robot.action_spec.shape and np.all(np.isfinite(candidate)):
                    action = candidate
                else:
                    self.events.bad_action += 1
                    self.events.last_error = f"policy produced action {candidate!r}"
            if action is None:
                action = self.robot.safe_action()
        with timer.section("act"):
            self.robot.act(action)
        return action

    def run_episode(self, seed: int, *, max_steps: int | None = None) -> EpisodeResult:
        """Reset an episodic robot (the simulator) and run until it is done."""
        reset = getattr(self.robot, "reset", None)
        if reset is None:
            raise TypeError(f"{type(self.robot).__name__} has no episodes (reset/done); use tick() in your own loop")
        reset(seed)
        before = LoopEvents(**vars(self.events))
        steps = 0
        while not self.robot.done() and (max_steps is None or steps < max_steps):
            self.tick()
            steps += 1
        events = LoopEvents(**{k: getattr(self.events, k) - getattr(before, k) for k in ("bad_observation",
                                                                                           "inference_error",
                                                                                           "bad_action")},
                            last_error=self.events.last_error)
        return EpisodeResult(steps=steps, success=bool(self.robot.succeeded()),
                             final_distance_m=float(self.robot.distance_to_target()), events=events)
