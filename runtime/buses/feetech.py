"""Feetech SCS/STS serial-bus protocol (Feetech "SCS/SMS/STS communication protocol" manual).

Frame: FF FF | ID | LEN | INST (or ERROR in a status frame) | params | CHECKSUM, where LEN counts INST, params
and the checksum, and CHECKSUM = ~(ID + LEN + INST + params) & 0xFF. Addresses and lengths are one byte.
STS/SMS servos store multi-byte registers little-endian; the older SCS series big-endian (`big_endian=True`),
which is what the vendor SDK's `PacketHandler(protocol_end)` selects with 0 (STS) or 1 (SCS).
"""

from __future__ import annotations

from .protocol import Frame, Parsed, Protocol

HEADER = b"\xff\xff"
MAX_LENGTH = 250  # the vendor SDK's RXPACKET_MAX_LEN

_ERROR_BITS = {
    0x01: "input voltage out of range",
    0x02: "angle sensor error",
    0x04: "overheat",
    0x08: "overcurrent",
    0x20: "overload",
}


def checksum(data: bytes) -> int:
    return (~sum(data)) & 0xFF


class Feetech(Protocol):
    address_bytes = 1
    model_number_register = (3, 2)  # PING's status frame is empty; the vendor SDK then reads Model_Number

    def __init__(self, *, big_endian: bool = False):
        self.little_endian = not big_endian
        self.name = "feetech-scs" if big_endian else "feetech"

    def _encode(self, servo_id: int, code: int, params: bytes) -> bytes:
        if not 0 <= servo_id <= 0xFE:
            raise ValueError(f"Feetech IDs are 0..253 (254 broadcast), got {servo_id}")
        body = bytes([servo_id, len(params) + 2, code]) + bytes(params)
        if len(params) + 2 > 255:
            raise ValueError(f"Feetech frames carry at most 253 parameter bytes, got {len(params)}")
        return HEADER + body + bytes([checksum(body)])

    def encode_instruction(self, servo_id, instruction, params):
        return self._encode(servo_id, instruction, params)

    def encode_status(self, servo_id, error, params):
        return self._encode(servo_id, error, params)

    def parse(self, buffer, *, status):
        start = bytes(buffer).find(HEADER)
        if start < 0:
            return Parsed(None, len(buffer) - (1 if bytes(buffer).endswith(b"\xff") else 0))
        if start > 0:
            return Parsed(None, start)
        if len(buffer) < 6:
            return Parsed(None, 0)
        servo_id, length = buffer[2], buffer[3]
        if servo_id == 0xFF or length < 2 or length > MAX_LENGTH or (status and buffer[4] > 0x7F):
            return Parsed(None, 1)  # FF FF FF ... : slide by one and look again
        total = 4 + length
        if len(buffer) < total:
            return Parsed(None, 0)
        if checksum(buffer[2:total - 1]) != buffer[total - 1]:
            return Parsed(None, total, corrupt=True)
        return Parsed(Frame(servo_id, buffer[4], bytes(buffer[5:total - 1])), total)

    def error_meaning(self, error):
        return "; ".join(text for bit, text in _ERROR_BITS.items() if error & bit) or (
            f"unknown error bits 0x{error:02x}" if error else "")
