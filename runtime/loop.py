"""The closed loop: observe -> preprocess -> infer -> postprocess -> act, timed section by section.

One CycleTimer owns timing: fixed-rate pacing on the monotonic clock (sleep, then spin for the last
stretch), every section's duration every tick, period error and overruns. Actions come from an ActionQueue
of predicted chunks (inference inline, or in a worker thread while the current chunk executes), pass the
safety limits, and go out every tick. Whatever goes wrong in a tick (an observation of the wrong shape or
too late, an inference error or overrun, a non-finite action, a failing link) the robot gets its safe action
in that same tick and the event is counted. Repeated link failures or `emergency_stop()` stop the loop
after a last safe action.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field, fields

import numpy as np

from .chunking import ActionQueue, AsyncInference, ChunkingConfig
from .engine import Policy
from .robots.base import Robot
from .safety import SafetyFilter, SafetyLimits
from .telemetry import TelemetryWriter

SECTIONS = ("observe", "preprocess", "infer", "postprocess", "act")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How the control loop runs."""

    hz: float | None = None  # control rate, Hz; None runs ticks back to back (simulation, benchmarks)
    spin_s: float = 0.0005  # final stretch of each period spent spinning instead of sleeping, s
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)  # sync/async inference, ensembling
    safety: SafetyLimits = field(default_factory=SafetyLimits)  # action limits and watchdogs
    telemetry_path: str | None = None  # JSON-lines file written (and flushed) every tick; None: none

    def __post_init__(self):
        if self.hz is not None and self.hz <= 0:
            raise ValueError(f"hz must be positive or None, got {self.hz}")
        if self.spin_s < 0:
            raise ValueError(f"spin_s must be >= 0 s, got {self.spin_s}")
        if self.chunking.mode == "async" and self.hz is None:
            raise ValueError("async chunking needs a fixed rate (hz): free-running ticks never wait for inference")


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

    def last_ms(self, name: str) -> float:
        samples = self.sections.get(name)
        return samples[-1] / 1e6 if samples else 0.0

    def wait_for_next_tick(self) -> int | None:
        """Block until the next period starts (no-op when free-running); counts overruns; returns the error, ns."""
        if self.period_ns is None:
            return None
        now = time.monotonic_ns()
        if self._next_tick is None:
            self._next_tick = now
            return 0
        self._next_tick += self.period_ns
        if now > self._next_tick:
            self.overruns += 1
            error = now - self._next_tick
            self.period_errors_ns.append(error)
            missed = (now - self._next_tick) // self.period_ns
            self._next_tick += missed * self.period_ns  # restart the grid instead of bursting to catch up
            return error
        remaining = self._next_tick - now
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        while time.monotonic_ns() < self._next_tick:
            pass
        error = time.monotonic_ns() - self._next_tick
        self.period_errors_ns.append(error)
        return error

    def summary(self) -> dict:
        return {"sections_ms": {name: percentiles_ms(v) for name, v in self.sections.items()},
                "period_error_ms": percentiles_ms(self.period_errors_ns), "overruns": self.overruns}


@dataclass
class LoopEvents:
    """Ticks in which the loop sent the safe action (or held an old chunk) instead of a fresh policy action."""

    bad_observation: int = 0  # observation failed the policy's input checks
    stale_observation: int = 0  # observe() took longer than the watchdog allows
    inference_error: int = 0  # the engine raised
    bad_action: int = 0  # the policy's action had the wrong shape or was not finite
    link_failures: int = 0  # observe() or act() raised (serial link, simulator)
    late_chunks: int = 0  # a new chunk missed its deadline; the old one kept executing
    starved_ticks: int = 0  # no chunk covered the tick (after the first chunk): safe action sent
    waiting_ticks: int = 0  # ticks before the first chunk arrived (async start-up): safe action sent
    last_error: str = ""
    stopped: str = ""  # why the loop stopped itself (e-stop, link lost); "" while running

    COUNTERS = ("bad_observation", "stale_observation", "inference_error", "bad_action", "link_failures",
                "late_chunks", "starved_ticks")

    def total(self) -> int:
        return sum(getattr(self, name) for name in self.COUNTERS)

    def minus(self, before: "LoopEvents") -> "LoopEvents":
        counts = {f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)
                  if isinstance(getattr(self, f.name), int)}
        return LoopEvents(**counts, last_error=self.last_error, stopped=self.stopped)


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
        self.queue = ActionQueue(self.config.chunking)
        self.safety = SafetyFilter(self.config.safety, int(np.prod(robot.action_spec.shape)))
        self.tick_index = 0
        self.sources: dict[str, int] = {}  # where each tick's action came from: policy, held, safe
        self._stop = threading.Event()
        self._consecutive_link_failures = 0
        self._last_request_tick: int | None = None
        self._late_counted_for: int | None = None
        self._had_chunk = False
        self._worker = AsyncInference(policy.run) if self.config.chunking.mode == "async" else None
        self._telemetry = None
        if self.config.telemetry_path:
            self._telemetry = TelemetryWriter(self.config.telemetry_path, {
                "hz": self.config.hz, "sections": list(SECTIONS), "robot": robot.name, "engine": policy.engine,
                "chunking": vars(self.config.chunking), "started_unix_s": time.time()})
        self._dt_s = (1.0 / self.config.hz if self.config.hz else
                      1.0 / getattr(getattr(robot, "config", None), "control_hz", 1e9))

    # -- control ---------------------------------------------------------------------------------------
    def emergency_stop(self, reason: str = "e-stop") -> None:
        """Thread-safe: the next tick sends the safe action and the loop stops."""
        if not self.events.stopped:
            self.events.stopped = reason
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        if self._telemetry is not None:
            self._telemetry.close()

    def _link_failed(self, what: str, error: Exception) -> None:
        self.events.link_failures += 1
        self.events.last_error = f"{what}: {type(error).__name__}: {error}"
        self._consecutive_link_failures += 1
        if self._consecutive_link_failures >= self.config.safety.max_link_failures:
            self.emergency_stop(f"link lost after {self._consecutive_link_failures} failed calls "
                                f"({self.events.last_error})")

    def _send_safe(self) -> np.ndarray:
        action = np.asarray(self.robot.safe_action(), np.float32)
        self.safety.reset(None)  # the rate limit restarts from wherever the safe action leaves the robot
        return action

    # -- one tick --------------------------------------------------------------------------------------
    def tick(self) -> np.ndarray:
        """One control period; returns the action actually sent."""
        timer, events, tick = self.timer, self.events, self.tick_index
        period_error_ns = timer.wait_for_next_tick()
        source, feed, observation = "policy", None, None
        if self.stopped:
            action = self._send_safe()
            with contextlib.suppress(Exception):
                self.robot.act(action)
            return action
        with timer.section("observe"):
            started = time.monotonic()
            try:
                observation = self.robot.observe()
                self._consecutive_link_failures = 0
            except Exception as e:  # a serial link or simulator failure must end in a safe action, not a crash
                self._link_failed("observe", e)
            timeout = self.config.safety.observation_timeout_s
            if observation is not None and timeout is not None and time.monotonic() - started > timeout:
                events.stale_observation += 1
                events.last_error = f"observation took {(time.monotonic() - started) * 1e3:.1f} ms (> {timeout * 1e3:.0f} ms)"
                observation = None
        with timer.section("preprocess"):
            if observation is not None:
                try:
                    feed = self.policy.prepare(observation)
                except ValueError as e:
                    events.bad_observation += 1
                    events.last_error = str(e)
        with timer.section("infer"):
            self._infer(tick, feed)
        with timer.section("postprocess"):
            action = None
            if feed is not None:
                action = self.queue.action_for(tick)
                if action is not None and (action.shape != self.robot.action_spec.shape or
                                           not np.all(np.isfinite(action))):
                    events.bad_action += 1
                    events.last_error = f"policy produced action {action!r}"
                    action = None
                elif action is None:
                    if self._had_chunk:
                        events.starved_ticks += 1
                    else:
                        events.waiting_ticks += 1
                elif self._worker is not None and self._worker.busy_since_tick is not None \
                        and self._late_counted_for == self._worker.busy_since_tick:
                    source = "held"  # the new chunk is late: still executing the old one
            if action is None:
                source = "safe"
                action = self._send_safe()
            else:
                action = self.safety.apply(action, self._dt_s)
        with timer.section("act"):
            try:
                self.robot.act(action)
            except Exception as e:
                self._link_failed("act", e)
        self.sources[source] = self.sources.get(source, 0) + 1
        if self._telemetry is not None:
            record = {"tick": tick, "t_s": round(time.monotonic(), 6), "source": source}
            record.update({f"{name}_ms": round(timer.last_ms(name), 4) for name in SECTIONS})
            if period_error_ns is not None:
                record["period_error_ms"] = round(period_error_ns / 1e6, 4)
            if events.last_error and source == "safe":
                record["error"] = events.last_error[:200]
            self._telemetry.write(record)
        self.tick_index += 1
        return action

    def _due(self, tick: int) -> bool:
        return self._last_request_tick is None or tick - self._last_request_tick >= self.config.chunking.execute_horizon

    def _push(self, start_tick: int, outputs) -> None:
        if outputs is None:
            return
        chunk = np.asarray(outputs[0])[0]
        if chunk.ndim == 1:  # a policy that predicts one action, not a chunk
            chunk = chunk[None]
        if self._worker is None:
            chunk = chunk[:self.config.chunking.execute_horizon]  # inline: fresh actions only, nothing stale held
        self.queue.push(start_tick, chunk)
        self._had_chunk = True

    def _infer(self, tick: int, feed) -> None:
        events = self.events
        if self._worker is None:
            if feed is None or not self._due(tick):
                return
            self._last_request_tick = tick
            try:
                outputs = self.policy.run(feed)
            except Exception as e:  # any engine failure must still end in a safe action
                events.inference_error += 1
                events.last_error = f"{type(e).__name__}: {e}"
                self.queue.clear()
                return
            self._push(tick, outputs)
            return
        result = self._worker.collect()
        if result is not None:
            started, outputs, error = result
            if error is not None:
                events.inference_error += 1
                events.last_error = f"{type(error).__name__}: {error}"
            else:
                self._push(started, outputs)
        busy = self._worker.busy_since_tick
        if busy is not None:
            if tick - busy >= self.config.chunking.execute_horizon and self._late_counted_for != busy:
                events.late_chunks += 1
                events.last_error = f"inference started at tick {busy} missed its deadline (tick {tick})"
                self._late_counted_for = busy
            return
        if feed is not None and self._due(tick) and self._worker.submit(tick, feed):
            self._last_request_tick = tick

    # -- runs --------------------------------------------------------------------------------------------
    def reset_chunks(self) -> None:
        self.queue.clear()
        self.safety.reset(None)
        self._last_request_tick = None
        self._had_chunk = False

    def run(self, *, ticks: int | None = None, duration_s: float | None = None) -> dict:
        """Tick until `ticks`, `duration_s`, or a stop; returns `summary()`."""
        if ticks is None and duration_s is None:
            raise ValueError("give ticks or duration_s (or call tick() in your own loop)")
        end = None if duration_s is None else time.monotonic() + duration_s
        count = 0
        while not self.stopped and (ticks is None or count < ticks) and (end is None or time.monotonic() < end):
            self.tick()
            count += 1
        if self.stopped:
            self.tick()  # the last tick after a stop sends the safe action
        return self.summary()

    def run_episode(self, seed: int, *, max_steps: int | None = None) -> EpisodeResult:
        """Reset an episodic robot (the simulator) and run until it is done."""
        reset = getattr(self.robot, "reset", None)
        if reset is None:
            raise TypeError(f"{type(self.robot).__name__} has no episodes (reset/done); use run() or tick()")
        reset(seed)
        self.reset_chunks()
        before = LoopEvents(**{f.name: getattr(self.events, f.name) for f in fields(self.events)})
        steps = 0
        while not self.robot.done() and not self.stopped and (max_steps is None or steps < max_steps):
            self.tick()
            steps += 1
        return EpisodeResult(steps=steps, success=bool(self.robot.succeeded()),
                             final_distance_m=float(self.robot.distance_to_target()),
                             events=self.events.minus(before))

    def summary(self) -> dict:
        counts = {f.name: getattr(self.events, f.name) for f in fields(self.events)}
        return {**self.timer.summary(), "ticks": self.tick_index, "events": counts, "action_sources": dict(self.sources),
                "safety": {"bound_clamps": self.safety.bound_clamps, "rate_clamps": self.safety.rate_clamps}}
