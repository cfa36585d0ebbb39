"""A servo-bus emulator on a pseudo-terminal: Dynamixel 2.0 or Feetech servos without hardware.

It opens a pty, prints (or returns) the path of its device end, and answers PING, READ, WRITE, SYNC READ and
SYNC WRITE from a register memory laid out by the servo model's table, exactly as a chain of servos on a
half-duplex bus would: one status frame per addressed servo, none for broadcasts. Servos with torque
enabled move their Present_Position toward Goal_Position at a bounded speed, so a closed loop sees motion.

Faults can be injected to test the host side: dropped replies, corrupted replies (checksum/CRC broken),
garbage bytes before a reply, reply delays, and servos that stop answering altogether.

Run on its own:  python -m edgevla.runtime.buses.emulator --protocol feetech --ids 1,2,3
"""

from __future__ import annotations

import argparse
import math
import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field, replace

from .bus import protocol_named
from .protocol import BROADCAST_ID, PING, READ, SYNC_READ, SYNC_WRITE, WRITE, Frame
from .tables import ServoModel, decode, encode, model_named

DEFAULT_MODEL = {"dynamixel": "xl430-w250", "feetech": "sts3215", "feetech-scs": "sts3215"}
_DXL_INSTRUCTION_ERROR = 0x02
_DXL_ACCESS_ERROR = 0x07


@dataclass(frozen=True, kw_only=True)
class Faults:
    """What the emulated bus does wrong, on purpose."""

    drop_reply_probability: float = 0.0  # chance that a servo silently skips one reply
    corrupt_reply_probability: float = 0.0  # chance that a reply's checksum/CRC is broken
    garbage_probability: float = 0.0  # chance that 1-8 random bytes precede a reply
    reply_delay_s: float = 0.0  # extra delay before every reply, s
    silent_ids: frozenset[int] = frozenset()  # servos that never answer (unplugged, browned out)


@dataclass
class EmulatedServo:
    model: ServoModel
    memory: bytearray
    max_speed_ticks_s: float  # how fast Present_Position follows Goal_Position with torque on
    last_update: float = field(default_factory=time.monotonic)
    position: float = 0.0  # ticks, kept as float between updates


class ServoEmulator:
    """Servos on a pty. Use as a context manager or start()/stop(); `path` is the device to open."""

    def __init__(self, protocol: str, servos: dict[int, str] | list[int], *, faults: Faults | None = None,
                 seed: int = 0, max_speed_rad_s: float = 2 * math.pi):
        self.protocol = protocol_named(protocol)
        self.protocol_name = protocol
        if isinstance(servos, list):
            servos = {i: DEFAULT_MODEL[protocol] for i in servos}
        self.servos = {i: self._make_servo(i, model_named(m), max_speed_rad_s) for i, m in servos.items()}
        self.faults = faults or Faults()
        self.random = random.Random(seed)
        self.received: list[bytes] = []  # every valid instruction frame, raw, in arrival order
        self.corrupt_requests = 0
        self.replies = 0
        self.path: str | None = None
        self._master = self._slave = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _make_servo(self, servo_id: int, model: ServoModel, max_speed_rad_s: float) -> EmulatedServo:
        if model.protocol != self.protocol_name.split("-")[0]:
            raise ValueError(f"servo model {model.name} speaks {model.protocol}, the emulated bus {self.protocol_name}")
        servo = EmulatedServo(model, bytearray(256), max_speed_rad_s / (2 * math.pi) * model.ticks_per_revolution)
        defaults = {"Model_Number": model.model_number, "ID": servo_id, "Present_Position": model.center_tick,
                    "Goal_Position": model.center_tick, "Max_Position_Limit": model.ticks_per_revolution - 1,
                    "Present_Temperature": 31, "Firmware_Version": 46, "Firmware_Major_Version": 3,
                    "Firmware_Minor_Version": 10, "Max_Torque_Limit": 1000, "Torque_Limit": 1000}
        for name, value in defaults.items():
            if name in model.registers:
                self._store(servo, name, value)
        servo.position = float(model.center_tick)
        return servo

    def _store(self, servo: EmulatedServo, name: str, value: int) -> None:
        register = servo.model.register(name)
        data = self.protocol.to_bytes(encode(register, value), register.size)
        servo.memory[register.address:register.address + register.size] = data

    def _load(self, servo: EmulatedServo, name: str) -> int:
        register = servo.model.register(name)
        return decode(register, self.protocol.from_bytes(servo.memory[register.address:register.address + register.size]))

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> str:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.path = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="servo-emulator", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self) -> "ServoEmulator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_faults(self, **changes) -> None:
        with self._lock:
            self.faults = replace(self.faults, **changes)

    def position(self, servo_id: int) -> int:
        with self._lock:
            servo = self.servos[servo_id]
            self._move(servo)
            return self._load(servo, "Present_Position")

    # -- serving --------------------------------------------------------------------------------------
    def _serve(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.02)
            if not ready:
                continue
            try:
                buffer += os.read(self._master, 4096)
            except OSError:  # the pty went away
                return
            while buffer:
                parsed = self.protocol.parse(buffer, status=False)
                if parsed.consumed == 0:
                    break
                raw = bytes(buffer[:parsed.consumed])
                del buffer[:parsed.consumed]
                if parsed.corrupt:
                    self.corrupt_requests += 1  # real servos ignore frames that fail the check
                elif parsed.frame is not None:
                    self.received.append(raw)
                    with self._lock:
                        replies = self._handle(parsed.frame)
                    for reply in replies:
                        self._send(reply)

    def _send(self, reply: tuple[int, bytes]) -> None:
        servo_id, frame = reply
        faults = self.faults
        if servo_id in faults.silent_ids or self.random.random() < faults.drop_reply_probability:
            return
        if self.random.random() < faults.corrupt_reply_probability:
            frame = frame[:-1] + bytes([frame[-1] ^ 0x5A])
        if self.random.random() < faults.garbage_probability:
            frame = bytes(self.random.randrange(256) for _ in range(self.random.randint(1, 8))) + frame
        if faults.reply_delay_s:
            time.sleep(faults.reply_delay_s)
        os.write(self._master, frame)
        self.replies += 1

    def _status(self, servo_id: int, error: int = 0, params: bytes = b"") -> tuple[int, bytes]:
        return servo_id, self.protocol.encode_status(servo_id, error, params)

    def _handle(self, frame: Frame) -> list[tuple[int, bytes]]:
        dxl = self.protocol.name == "dynamixel"
        targets = list(self.servos) if frame.servo_id == BROADCAST_ID else (
            [frame.servo_id] if frame.servo_id in self.servos else [])
        for servo in self.servos.values():
            self._move(servo)
        if frame.code == PING:
            if frame.servo_id == BROADCAST_ID and not dxl:
                return []
            out = []
            for i in targets:
                model = self.servos[i].model
                params = (model.model_number.to_bytes(2, "little") + bytes([self._load(self.servos[i], "Firmware_Version")])
                          if dxl else b"")
                out.append(self._status(i, 0, params))
            return out
        if frame.code == READ:
            (address, length), _ = self.protocol.split_address(frame.params, 2)
            if frame.servo_id not in self.servos:
                return []
            servo = self.servos[frame.servo_id]
            if address + length > len(servo.memory):
                return [self._status(frame.servo_id, _DXL_ACCESS_ERROR)] if dxl else []
            return [self._status(frame.servo_id, 0, bytes(servo.memory[address:address + length]))]
        if frame.code == WRITE:
            (address,), data = self.protocol.split_address(frame.params, 1)
            out = []
            for i in targets:
                error = self._write(self.servos[i], address, data)
                if frame.servo_id != BROADCAST_ID:
                    out.append(self._status(i, error if dxl else 0))
            return out
        if frame.code == SYNC_WRITE:
            (address, length), rest = self.protocol.split_address(frame.params, 2)
            for k in range(0, len(rest), length + 1):
                group = rest[k:k + 1 + length]
                if len(group) == length + 1 and group[0] in self.servos:
                    self._write(self.servos[group[0]], address, group[1:])
            return []
        if frame.code == SYNC_READ:
            (address, length), ids = self.protocol.split_address(frame.params, 2)
            return [self._status(i, 0, bytes(self.servos[i].memory[address:address + length]))
                    for i in ids if i in self.servos]
        return [self._status(i, _DXL_INSTRUCTION_ERROR) for i in targets] if dxl and frame.servo_id != BROADCAST_ID \
            else []

    def _write(self, servo: EmulatedServo, address: int, data: bytes) -> int:
        end = address + len(data)
        if end > len(servo.memory):
            return _DXL_ACCESS_ERROR
        for name, register in servo.model.registers.items():
            overlaps = register.address < end and address < register.address + register.size
            if overlaps and not register.writable:
                return _DXL_ACCESS_ERROR
        servo.memory[address:end] = data
        return 0

    def _move(self, servo: EmulatedServo) -> None:
        now = time.monotonic()
        dt, servo.last_update = now - servo.last_update, now
        if not self._load(servo, "Torque_Enable"):
            self._store(servo, "Present_Velocity", 0)
            return
        goal = self._load(servo, "Goal_Position")
        step = max(-servo.max_speed_ticks_s * dt, min(servo.max_speed_ticks_s * dt, goal - servo.position))
        servo.position += step
        self._store(servo, "Present_Position", int(round(servo.position)))
        velocity = step / dt / (servo.model.velocity_unit_rad_s * servo.model.ticks_per_revolution / (2 * math.pi)) \
            if dt > 0 else 0.0
        self._store(servo, "Present_Velocity", int(round(velocity)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevla.runtime.buses.emulator",
                                     description="Emulate a chain of servos on a pseudo-terminal.")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_MODEL), required=True)
    parser.add_argument("--ids", default="1,2,3", help="comma-separated servo IDs (default 1,2,3)")
    parser.add_argument("--model", help="servo model (default: xl430-w250 for dynamixel, sts3215 for feetech)")
    parser.add_argument("--drop", type=float, default=0.0, help="probability of dropping a reply")
    parser.add_argument("--corrupt", type=float, default=0.0, help="probability of corrupting a reply")
    parser.add_argument("--garbage", type=float, default=0.0, help="probability of garbage bytes before a reply")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before every reply, ms")
    parser.add_argument("--silent", default="", help="comma-separated IDs that never answer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ids = [int(i) for i in args.ids.split(",") if i]
    model = args.model or DEFAULT_MODEL[args.protocol]
    faults = Faults(drop_reply_probability=args.drop, corrupt_reply_probability=args.corrupt,
                    garbage_probability=args.garbage, reply_delay_s=args.delay_ms / 1e3,
                    silent_ids=frozenset(int(i) for i in args.silent.split(",") if i))
    with ServoEmulator(args.protocol, {i: model for i in ids}, faults=faults, seed=args.seed) as emulator:
        print(f"{args.protocol} servo emulator on {emulator.path} (servos {','.join(map(str, ids))}, {model}); "
              "Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
