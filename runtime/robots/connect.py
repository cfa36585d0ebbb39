"""Robots by name, as the command line writes them: `sim:reach`, `dynamixel:PORT`, `feetech:PORT`."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Robot


@dataclass(frozen=True, kw_only=True)
class ServoOptions:
    ids: tuple[int, ...] = (1, 2, 3)  # servo IDs, one per joint, in action order
    model: str | None = None  # servo model; None: the protocol's default (xl430-w250, sts3215)
    baudrate: int = 1_000_000  # bits/s
    reply_timeout_s: float = 0.02  # s per status frame
    retries: int = 2  # extra attempts per request


def _sim(target: str, options: ServoOptions) -> Robot:
    if target != "reach":
        raise ValueError(f"unknown simulated robot 'sim:{target}'; known: sim:reach")
    from .sim_reach import SimReach

    return SimReach()


def _servo(protocol: str):
    def make(port: str, options: ServoOptions) -> Robot:
        from ..buses import BusConfig
        from ..buses.emulator import DEFAULT_MODEL
        from .servo_arm import ServoArm, ServoArmConfig

        if not port:
            raise ValueError(f"{protocol}: needs a serial port, e.g. {protocol}:/dev/ttyUSB0")
        bus = BusConfig(port=port, protocol=protocol, baudrate=options.baudrate,
                        reply_timeout_s=options.reply_timeout_s, retries=options.retries)
        return ServoArm(ServoArmConfig(bus=bus, joint_ids=tuple(options.ids),
                                       model=options.model or DEFAULT_MODEL[protocol]))

    return make


ROBOTS = {"sim": _sim, "dynamixel": _servo("dynamixel"), "feetech": _servo("feetech"),
          "feetech-scs": _servo("feetech-scs")}


def robot_from_spec(spec: str, options: ServoOptions | None = None) -> Robot:
    kind, _, rest = spec.partition(":")
    if kind not in ROBOTS:
        raise ValueError(f"unknown robot {spec!r}; known: sim:reach, dynamixel:PORT, feetech:PORT, feetech-scs:PORT")
    return ROBOTS[kind](rest, options or ServoOptions())
