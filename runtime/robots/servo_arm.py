"""A position-controlled arm of serial-bus servos (Dynamixel 2.0 or Feetech) behind the Robot interface.

Observation: joint positions (rad) and velocities (rad/s), read in one sync read per tick. Action: goal
joint positions (rad), written in one sync write. The safe action holds the last observed position, so a
missed chunk or an e-stop freezes the arm where it is (torque stays on: an arm under gravity would fall if
it were switched off). Connecting pings every joint and checks its model number before enabling torque.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..buses import BusConfig, BusError, ServoBus, model_named
from ..buses.tables import decode
from .base import ArraySpec, Robot


@dataclass(frozen=True, kw_only=True)
class ServoArmConfig:
    """Which servos make up the arm and how to reach them."""

    bus: BusConfig  # serial port, protocol, baud rate, reply timeout and retries
    joint_ids: tuple[int, ...]  # servo IDs, one per joint, in action order
    model: str  # servo model in the register tables (e.g. "xl430-w250", "sts3215")
    disable_torque_on_close: bool = False  # True lets the joints go limp on close (only for arms that rest safely)

    def __post_init__(self):
        if not self.joint_ids or len(set(self.joint_ids)) != len(self.joint_ids):
            raise ValueError(f"joint_ids must be distinct servo IDs, got {self.joint_ids}")
        model = model_named(self.model)
        if not self.bus.protocol.startswith(model.protocol):
            raise ValueError(f"servo model {self.model} speaks {model.protocol}, the bus is {self.bus.protocol}")


class ServoArm(Robot):
    name = "servo-arm"

    def __init__(self, config: ServoArmConfig, *, bus: ServoBus | None = None):
        self.config = config
        self.model = model_named(config.model)
        self.bus = bus or ServoBus(config.bus)
        self.ids = list(config.joint_ids)
        self._rad_per_tick = 2 * math.pi / self.model.ticks_per_revolution
        position, velocity = self.model.register("Present_Position"), self.model.register("Present_Velocity")
        self._span_start = min(position.address, velocity.address)
        self._span_size = max(position.address + position.size, velocity.address + velocity.size) - self._span_start
        # (register, offset in the span) of what one sync read per tick brings back
        self._position = (position, position.address - self._span_start)
        self._velocity = (velocity, velocity.address - self._span_start)
        self._hold: np.ndarray | None = None
        self._connected = False

    @property
    def observation_spec(self):
        n = len(self.ids)
        return {"joint_position": ArraySpec(shape=(n,), dtype="float32"),
                "joint_velocity": ArraySpec(shape=(n,), dtype="float32")}

    @property
    def action_spec(self):
        return ArraySpec(shape=(len(self.ids),), dtype="float32")

    def connect(self) -> None:
        if self._connected:
            return
        self.bus.open()
        for servo_id in self.ids:
            found = self.bus.ping(servo_id)
            if found != self.model.model_number:
                raise BusError(f"servo {servo_id} reports model number {found}, expected {self.model.model_number} "
                               f"({self.model.name}); check joint_ids and model")
        self.bus.sync_write_register(self.model, "Torque_Enable", {i: 1 for i in self.ids})
        self._hold = self.observe()["joint_position"]
        self._connected = True

    def to_rad(self, ticks: int) -> float:
        return (ticks - self.model.center_tick) * self._rad_per_tick

    def to_ticks(self, rad: float) -> int:
        return int(round(rad / self._rad_per_tick)) + self.model.center_tick

    def _field(self, data: bytes, field) -> int:
        register, offset = field
        return decode(register, self.bus.protocol.from_bytes(data[offset:offset + register.size]))

    def observe(self) -> dict[str, np.ndarray]:
        raw = self.bus.sync_read(self.ids, self._span_start, self._span_size)
        positions = [self.to_rad(self._field(raw[i], self._position)) for i in self.ids]
        velocities = [self._field(raw[i], self._velocity) * self.model.velocity_unit_rad_s for i in self.ids]
        position = np.asarray(positions, np.float32)
        self._hold = position
        return {"joint_position": position, "joint_velocity": np.asarray(velocities, np.float32)}

    def act(self, action: np.ndarray) -> None:
        action = np.asarray(action, np.float32)
        if action.shape != (len(self.ids),) or not np.all(np.isfinite(action)):
            raise ValueError(f"servo arm action must be {len(self.ids)} finite joint positions (rad), got {action!r}")
        self.bus.sync_write_register(self.model, "Goal_Position",
                                     {i: self.to_ticks(float(a)) for i, a in zip(self.ids, action)})

    def safe_action(self) -> np.ndarray:
        if self._hold is None:
            raise BusError("servo arm has no known position yet; connect() first")
        return self._hold.copy()

    def close(self) -> None:
        if not self._connected:
            self.bus.close()
            return
        try:
            self.act(self.safe_action())
            if self.config.disable_torque_on_close:
                self.bus.sync_write_register(self.model, "Torque_Enable", {i: 0 for i in self.ids})
        finally:
            self._connected = False
            self.bus.close()
