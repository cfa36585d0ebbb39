"""The one interface every robot (simulated or real) implements.

The control loop only ever talks to this class, so the loop that runs the MuJoCo reach task in CI is the
same code that drives a servo arm: connect, observe, act, and always be able to produce a safe action.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """Shape and dtype of one observation entry or of the action."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "uint8", "float32", "int64"

    def check(self, name: str, value: np.ndarray) -> None:
        """Raise a ValueError naming the entry if `value` does not match this spec."""
        value = np.asarray(value)
        if tuple(value.shape) != tuple(self.shape) or value.dtype != np.dtype(self.dtype):
            raise ValueError(
                f"observation '{name}': expected shape {self.shape} dtype {self.dtype}, "
                f"got shape {tuple(value.shape)} dtype {value.dtype}; "
                "check the robot's camera/joint configuration against the policy's manifest"
            )


class Robot(abc.ABC):
    """A robot the control loop can drive.

    Actions are float32 vectors in the robot's own action space (for the reach task: end-effector velocity
    in m/s). `safe_action()` must be valid at any time, including before the first observation, so the loop
    can always send something harmless when inference is late or the input is bad.
    """

    name: str = "robot"

    @property
    @abc.abstractmethod
    def observation_spec(self) -> dict[str, ArraySpec]:
        """What `observe()` returns, entry by entry."""

    @property
    @abc.abstractmethod
    def action_spec(self) -> ArraySpec:
        """What `act()` accepts."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the link (serial port, simulator). Idempotent."""

    @abc.abstractmethod
    def observe(self) -> dict[str, np.ndarray]:
        """Return the current observation, matching `observation_spec`."""

    @abc.abstractmethod
    def act(self, action: np.ndarray) -> None:
        """Send one action and advance by one control period."""

    @abc.abstractmethod
    def safe_action(self) -> np.ndarray:
        """An action that holds the robot still (zero velocity / hold position)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the robot in a safe state and release the link."""

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
