"""Limits every action passes through before it reaches the robot, and the counters that say how often.

Limits are per action element, in the robot's own action units: joint-position targets in rad for a servo
arm (then `rate_max` is the joint velocity limit in rad/s), end-effector velocities in m/s for the reach
task. A clamped action is sent clamped and counted; it is never dropped, so the robot always gets a command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class SafetyLimits:
    """Per-element action limits and the watchdogs. Every field is optional (None: no limit)."""

    action_min: tuple[float, ...] | None = None  # lower bound per action element (rad or m/s: the action's unit)
    action_max: tuple[float, ...] | None = None  # upper bound per action element
    rate_max: tuple[float, ...] | None = None  # max change per second per element (rad/s for joint targets)
    observation_timeout_s: float | None = 0.25  # an observe() slower than this counts as stale: safe action
    max_link_failures: int = 3  # consecutive failed observe()/act() calls before the loop stops (safe stop)

    def __post_init__(self):
        for name in ("action_min", "action_max", "rate_max"):
            value = getattr(self, name)
            if value is not None and not all(np.isfinite(value)):
                raise ValueError(f"{name} must be finite numbers, got {value}")
        if self.action_min is not None and self.action_max is not None:
            if len(self.action_min) != len(self.action_max) or any(
                    lo > hi for lo, hi in zip(self.action_min, self.action_max)):
                raise ValueError(f"action_min {self.action_min} must be <= action_max {self.action_max}, element "
                                 "by element, and of the same length")
        if self.rate_max is not None and any(r <= 0 for r in self.rate_max):
            raise ValueError(f"rate_max must be > 0 per element, got {self.rate_max}")
        if self.observation_timeout_s is not None and self.observation_timeout_s <= 0:
            raise ValueError(f"observation_timeout_s must be > 0 s or None, got {self.observation_timeout_s}")
        if self.max_link_failures < 1:
            raise ValueError(f"max_link_failures must be >= 1, got {self.max_link_failures}")

    def check_size(self, size: int) -> None:
        for name in ("action_min", "action_max", "rate_max"):
            value = getattr(self, name)
            if value is not None and len(value) != size:
                raise ValueError(f"safety limit {name} has {len(value)} elements, the robot's action has {size}")


class SafetyFilter:
    """Clamps actions to `limits`, counting position and rate clamps. Keeps the last action for the rate limit."""

    def __init__(self, limits: SafetyLimits, size: int):
        limits.check_size(size)
        self.limits = limits
        self.low = None if limits.action_min is None else np.asarray(limits.action_min, np.float32)
        self.high = None if limits.action_max is None else np.asarray(limits.action_max, np.float32)
        self.rate = None if limits.rate_max is None else np.asarray(limits.rate_max, np.float32)
        self.last: np.ndarray | None = None
        self.bound_clamps = 0  # actions changed by action_min/action_max
        self.rate_clamps = 0  # actions changed by rate_max

    def reset(self, last: np.ndarray | None = None) -> None:
        self.last = None if last is None else np.asarray(last, np.float32).copy()

    def apply(self, action: np.ndarray, dt_s: float) -> np.ndarray:
        out = np.asarray(action, np.float32).copy()
        if self.rate is not None and self.last is not None and dt_s > 0:
            step = self.rate * dt_s
            limited = np.clip(out, self.last - step, self.last + step)
            if not np.array_equal(limited, out):
                self.rate_clamps += 1
                out = limited
        if self.low is not None or self.high is not None:
            limited = np.clip(out, self.low if self.low is not None else -np.inf,
                              self.high if self.high is not None else np.inf).astype(np.float32)
            if not np.array_equal(limited, out):
                self.bound_clamps += 1
                out = limited
        self.last = out
        return out
