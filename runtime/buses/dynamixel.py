"""Dynamixel Protocol 2.0 framing (ROBOTIS e-Manual, "DYNAMIXEL Protocol 2.0").

Frame: FF FF FD 00 | ID | LEN_L LEN_H | INST | params | CRC_L CRC_H, where LEN counts INST, params and the CRC
(for status frames INST is 0x55 followed by the error byte). Between INST and the CRC the byte sequence
FF FF FD is stuffed to FF FF FD FD, and LEN counts the stuffed bytes. The CRC is CRC-16 with polynomial
0x8005, initial value 0, no reflection, over everything before it (stuffed). Multi-byte values are
little-endian.
"""

from __future__ import annotations

from .protocol import Frame, Parsed, Protocol

HEADER = b"\xff\xff\xfd\x00"
STATUS_INSTRUCTION = 0x55
MAX_LENGTH = 1024  # longest LEN we accept; more is garbage that looked like a header

_ERROR_NUMBERS = {
    1: "result fail (the instruction could not be processed)",
    2: "instruction error (undefined instruction or ACTION without REG_WRITE)",
    3: "CRC error (the servo received a corrupt packet)",
    4: "data range error (value outside the register's range)",
    5: "data length error (fewer bytes than the register needs)",
    6: "data limit error (value beyond the configured limit)",
    7: "access error (read-only / write-only register, or torque enabled on an EEPROM write)",
}
ALERT_BIT = 0x80  # a hardware error is latched: read Hardware_Error_Status


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD inside the instruction/params region."""
    out = bytearray()
    for byte in body:
        out.append(byte)
        if byte == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if body[i] == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF \
                and i + 1 < len(body) and body[i + 1] == 0xFD:
            i += 1  # drop the stuffed byte
        i += 1
    return bytes(out)


class Dynamixel2(Protocol):
    name = "dynamixel"
    address_bytes = 2
    little_endian = True

    def _encode(self, servo_id: int, body: bytes) -> bytes:
        if not 0 <= servo_id <= 0xFE:
            raise ValueError(f"Dynamixel IDs are 0..252 (254 broadcast), got {servo_id}")
        body = stuff(body)
        length = len(body) + 2
        frame = HEADER + bytes([servo_id]) + length.to_bytes(2, "little") + body
        return frame + crc16(frame).to_bytes(2, "little")

    def encode_instruction(self, servo_id, instruction, params):
        return self._encode(servo_id, bytes([instruction]) + bytes(params))

    def encode_status(self, servo_id, error, params):
        return self._encode(servo_id, bytes([STATUS_INSTRUCTION, error]) + bytes(params))

    def parse(self, buffer, *, status):
        start = _find_header(buffer)
        if start < 0:  # keep a possible partial header at the end
            keep = next((k for k in (3, 2, 1) if buffer.endswith(HEADER[:k])), 0)
            return Parsed(None, len(buffer) - keep)
        if start > 0:
            return Parsed(None, start)
        if len(buffer) < 7:
            return Parsed(None, 0)
        length = int.from_bytes(buffer[5:7], "little")
        if length < 3 or length > MAX_LENGTH:
            return Parsed(None, 1)
        total = 7 + length
        if len(buffer) < total:
            return Parsed(None, 0)
        if crc16(buffer[:total - 2]) != int.from_bytes(buffer[total - 2:total], "little"):
            return Parsed(None, total, corrupt=True)
        body = unstuff(bytes(buffer[7:total - 2]))
        servo_id = buffer[4]
        if status:
            if body[0] != STATUS_INSTRUCTION or len(body) < 2:
                return Parsed(None, total)  # an instruction frame (our own echo on a shared line): not for us
            return Parsed(Frame(servo_id, body[1], body[2:]), total)
        if body[0] == STATUS_INSTRUCTION:
            return Parsed(None, total)
        return Parsed(Frame(servo_id, body[0], body[1:]), total)

    def is_error(self, error):
        return (error & 0x7F) != 0

    def error_meaning(self, error):
        number = error & 0x7F
        parts = []
        if number:
            parts.append(_ERROR_NUMBERS.get(number, f"unknown error number {number}"))
        if error & ALERT_BIT:
            parts.append("hardware alert (read Hardware_Error_Status)")
        return "; ".join(parts)


def _find_header(buffer: bytes) -> int:
    """Index of FF FF FD 00 (FF FF FD FD is stuffing, not a header), or -1."""
    return bytes(buffer).find(HEADER)
