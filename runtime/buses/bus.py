"""A servo bus on a serial port: ping, read, write, sync read, sync write, with timeouts and retries.

One class serves both protocols (`protocol.py` defines what differs). Every request either returns the
servo's answer or raises a `BusError` subclass within `retries + 1` reply timeouts: a servo that stops
answering never hangs the caller. Reads are retried (they are idempotent); so are writes, which set
absolute register values. Counters in `stats` say how often the link misbehaved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .dynamixel import Dynamixel2
from .feetech import Feetech
from .protocol import (BROADCAST_ID, PING, READ, SYNC_READ, SYNC_WRITE, WRITE, BusError, BusTimeout, CorruptFrame,
                       Frame, Protocol, ServoStatusError)
from .tables import ServoModel, decode, encode

PROTOCOLS = {"dynamixel": Dynamixel2, "feetech": Feetech, "feetech-scs": lambda: Feetech(big_endian=True)}


def protocol_named(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]()
    except KeyError:
        raise ValueError(f"unknown servo protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


@dataclass(frozen=True, kw_only=True)
class BusConfig:
    """How to reach the servos."""

    port: str  # serial device, e.g. /dev/ttyUSB0 (or the emulator's /dev/pts/N)
    protocol: str  # "dynamixel" (Protocol 2.0) | "feetech" (STS/SMS) | "feetech-scs" (SCS, big-endian)
    baudrate: int = 1_000_000  # bits/s; must match the servos' Baud_Rate register
    reply_timeout_s: float = 0.02  # s to wait for one status frame before the attempt counts as failed
    retries: int = 2  # extra attempts after a timeout or a corrupt reply; then BusTimeout / CorruptFrame

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown servo protocol {self.protocol!r}; known: {sorted(PROTOCOLS)}")
        if self.reply_timeout_s <= 0:
            raise ValueError(f"reply_timeout_s must be > 0 s, got {self.reply_timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")


@dataclass
class BusStats:
    requests: int = 0
    timeouts: int = 0  # attempts that got no (complete) answer in time
    corrupt_frames: int = 0  # replies dropped for a bad checksum/CRC
    retries: int = 0  # attempts beyond the first
    status_errors: int = 0  # answers whose error byte was set


class ServoBus:
    """Requests to the servos on one serial port."""

    def __init__(self, config: BusConfig, *, serial_port=None):
        self.config = config
        self.protocol = protocol_named(config.protocol)
        self.stats = BusStats()
        self._serial = serial_port
        self._rx = bytearray()  # bytes received but not yet parsed (a sync read's replies arrive together)

    # -- link ---------------------------------------------------------------------------------------
    def open(self) -> "ServoBus":
        if self._serial is None:
            import serial

            try:
                self._serial = serial.Serial(self.config.port, self.config.baudrate, timeout=0)
            except serial.SerialException as e:
                raise BusError(f"cannot open servo bus {self.config.port}: {e}; check the cable, the port name "
                               "and that no other program holds it") from e
        return self

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    @property
    def serial(self):
        if self._serial is None:
            raise BusError("servo bus is not open; call open() first")
        return self._serial

    # -- frames ---------------------------------------------------------------------------------------
    def send(self, servo_id: int, instruction: int, params: bytes = b"") -> bytes:
        frame = self.protocol.encode_instruction(servo_id, instruction, params)
        self.serial.reset_input_buffer()  # a late reply to an earlier request must not be taken for this one
        self._rx.clear()
        self.serial.write(frame)
        self.serial.flush()
        return frame

    def receive(self, servo_id: int) -> Frame:
        """The next status frame from `servo_id` within the reply timeout."""
        deadline = time.monotonic() + self.config.reply_timeout_s
        buffer = self._rx
        port = self.serial
        while True:
            while buffer:
                parsed = self.protocol.parse(buffer, status=True)
                if parsed.consumed == 0:
                    break
                del buffer[:parsed.consumed]
                if parsed.corrupt:
                    self.stats.corrupt_frames += 1
                    raise CorruptFrame(f"corrupt status frame on {self.config.port} while waiting for servo "
                                       f"{servo_id} (checksum/CRC mismatch)")
                if parsed.frame is not None and parsed.frame.servo_id == servo_id:
                    return parsed.frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stats.timeouts += 1
                raise BusTimeout(f"servo {servo_id} on {self.config.port} did not answer within "
                                 f"{self.config.reply_timeout_s * 1e3:.0f} ms")
            port.timeout = remaining
            chunk = port.read(max(1, port.in_waiting))
            buffer += chunk

    def _attempts(self, what: str, attempt):
        """Run `attempt()` up to retries + 1 times on timeouts and corrupt replies."""
        self.stats.requests += 1
        last: BusError | None = None
        for i in range(self.config.retries + 1):
            if i:
                self.stats.retries += 1
            try:
                return attempt()
            except (BusTimeout, CorruptFrame) as e:
                last = e
        raise type(last)(f"{what}: {last} (after {self.config.retries + 1} attempts)") from last

    def _checked(self, frame: Frame) -> Frame:
        if self.protocol.is_error(frame.code):
            self.stats.status_errors += 1
            raise ServoStatusError(frame.servo_id, frame.code, self.protocol.error_meaning(frame.code))
        return frame

    def request(self, servo_id: int, instruction: int, params: bytes = b"") -> Frame:
        def attempt():
            self.send(servo_id, instruction, params)
            return self.receive(servo_id)

        return self._checked(self._attempts(f"instruction 0x{instruction:02x} to servo {servo_id}", attempt))

    # -- instructions ---------------------------------------------------------------------------------
    def ping(self, servo_id: int) -> int:
        """The servo's model number."""
        frame = self.request(servo_id, PING)
        if self.protocol.model_number_register is None:
            return int.from_bytes(frame.params[:2], "little")
        address, size = self.protocol.model_number_register
        return self.protocol.from_bytes(self.read(servo_id, address, size))

    def read(self, servo_id: int, address: int, length: int) -> bytes:
        data = self.request(servo_id, READ, self.protocol.read_params(address, length)).params
        if len(data) != length:
            raise CorruptFrame(f"servo {servo_id} answered {len(data)} bytes to a {length}-byte read at {address}")
        return data

    def write(self, servo_id: int, address: int, data: bytes) -> None:
        params = self.protocol.write_params(address, data)
        if servo_id == BROADCAST_ID:
            self.send(servo_id, WRITE, params)
            return
        self.request(servo_id, WRITE, params)

    def sync_read(self, ids: list[int], address: int, length: int) -> dict[int, bytes]:
        params = self.protocol.sync_read_params(address, length, ids)

        def attempt():
            self.send(BROADCAST_ID, SYNC_READ, params)
            return [self.receive(servo_id) for servo_id in ids]

        frames = self._attempts(f"sync read of {length} bytes at {address} from servos {ids}", attempt)
        out = {}
        for frame in frames:
            self._checked(frame)
            if len(frame.params) != length:
                raise CorruptFrame(f"servo {frame.servo_id} answered {len(frame.params)} bytes to a {length}-byte "
                                   "sync read")
            out[frame.servo_id] = frame.params
        return out

    def sync_write(self, address: int, length: int, data: dict[int, bytes]) -> None:
        self.stats.requests += 1
        self.send(BROADCAST_ID, SYNC_WRITE, self.protocol.sync_write_params(address, length, data))

    # -- registers by name ----------------------------------------------------------------------------
    def read_register(self, servo_id: int, model: ServoModel, name: str) -> int:
        register = model.register(name)
        return decode(register, self.protocol.from_bytes(self.read(servo_id, register.address, register.size)))

    def write_register(self, servo_id: int, model: ServoModel, name: str, value: int) -> None:
        register = model.register(name)
        if not register.writable:
            raise ValueError(f"{model.name} register {name} is read-only")
        self.write(servo_id, register.address, self.protocol.to_bytes(encode(register, value), register.size))

    def sync_read_register(self, model: ServoModel, name: str, ids: list[int]) -> dict[int, int]:
        register = model.register(name)
        raw = self.sync_read(ids, register.address, register.size)
        return {i: decode(register, self.protocol.from_bytes(v)) for i, v in raw.items()}

    def sync_write_register(self, model: ServoModel, name: str, values: dict[int, int]) -> None:
        register = model.register(name)
        if not register.writable:
            raise ValueError(f"{model.name} register {name} is read-only")
        self.sync_write(register.address, register.size,
                        {i: self.protocol.to_bytes(encode(register, v), register.size) for i, v in values.items()})
