"""What the two servo-bus protocols share: frames, errors, and a streaming frame reader.

Dynamixel Protocol 2.0 and Feetech SCS/STS are both half-duplex request/response buses: the host sends an
instruction frame to one servo ID (or to the broadcast ID 0xFE), the addressed servo answers with a status
frame. Each protocol module defines how a frame is encoded and how it is found in a byte stream; the bus
(`bus.py`) and the emulator (`emulator.py`) are written once against this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

BROADCAST_ID = 0xFE

# Instruction codes are the same on both buses.
PING = 0x01
READ = 0x02
WRITE = 0x03
REG_WRITE = 0x04
ACTION = 0x05
SYNC_READ = 0x82
SYNC_WRITE = 0x83


class BusError(IOError):
    """Anything that went wrong talking to the servo bus."""


class BusTimeout(BusError):
    """A servo did not answer within the reply timeout (after all retries)."""


class CorruptFrame(BusError):
    """A frame arrived with a bad checksum/CRC or an impossible header (after all retries)."""


class ServoStatusError(BusError):
    """The servo answered, and its status frame reports an error."""

    def __init__(self, servo_id: int, error: int, meaning: str):
        self.servo_id = servo_id
        self.error = error
        super().__init__(f"servo {servo_id} reports error 0x{error:02x}: {meaning}")


@dataclass(frozen=True)
class Frame:
    """One decoded frame. For instruction frames `code` is the instruction; for status frames the error byte."""

    servo_id: int
    code: int
    params: bytes


@dataclass(frozen=True)
class Parsed:
    """What `Protocol.parse` found at the start of a buffer."""

    frame: Frame | None  # a complete valid frame, or None
    consumed: int  # bytes to drop from the buffer (frame length, or garbage skipped)
    corrupt: bool = False  # the dropped bytes were a frame whose checksum/CRC failed


class Protocol(abc.ABC):
    """Encoding and framing of one servo-bus protocol."""

    name: str = ""
    address_bytes: int = 1  # width of register addresses and lengths in READ/WRITE/SYNC parameters
    little_endian: bool = True  # byte order of multi-byte register values
    model_number_register: tuple[int, int] | None = None  # (address, size) to read after PING; None: PING reports it

    @abc.abstractmethod
    def encode_instruction(self, servo_id: int, instruction: int, params: bytes) -> bytes:
        """The bytes the host sends."""

    @abc.abstractmethod
    def encode_status(self, servo_id: int, error: int, params: bytes) -> bytes:
        """The bytes a servo sends back."""

    @abc.abstractmethod
    def parse(self, buffer: bytes, *, status: bool) -> Parsed:
        """Look for one frame at the start of `buffer` (status frames if `status`, else instruction frames).

        Returns Parsed(None, 0) when more bytes are needed, Parsed(None, n) to drop n bytes of garbage or a
        corrupt frame, Parsed(frame, n) for a good frame of n bytes.
        """

    @abc.abstractmethod
    def error_meaning(self, error: int) -> str:
        """Readable meaning of a status frame's error byte ('' when it reports no error)."""

    def is_error(self, error: int) -> bool:
        return error != 0

    # Parameter layouts of the common instructions.
    def _field(self, value: int) -> bytes:
        """An address or length field of an instruction (protocol byte order is little-endian for both)."""
        return int(value).to_bytes(self.address_bytes, "little")

    def read_params(self, address: int, length: int) -> bytes:
        return self._field(address) + self._field(length)

    def write_params(self, address: int, data: bytes) -> bytes:
        return self._field(address) + bytes(data)

    def sync_read_params(self, address: int, length: int, ids: list[int]) -> bytes:
        return self._field(address) + self._field(length) + bytes(ids)

    def sync_write_params(self, address: int, length: int, data: dict[int, bytes]) -> bytes:
        body = bytearray(self._field(address) + self._field(length))
        for servo_id, value in data.items():
            if len(value) != length:
                raise ValueError(f"sync write of {length} bytes per servo, got {len(value)} for servo {servo_id}")
            body += bytes([servo_id]) + bytes(value)
        return bytes(body)

    def split_address(self, params: bytes, count: int) -> tuple[list[int], bytes]:
        """Decode `count` address/length fields at the start of an instruction's parameters."""
        n = self.address_bytes
        fields = [int.from_bytes(params[i * n:(i + 1) * n], "little") for i in range(count)]
        return fields, params[count * n:]

    def to_bytes(self, value: int, size: int) -> bytes:
        """A register value in this protocol's byte order (`value` already in the register's raw encoding)."""
        return int(value).to_bytes(size, "little" if self.little_endian else "big")

    def from_bytes(self, data: bytes) -> int:
        return int.from_bytes(bytes(data), "little" if self.little_endian else "big")
