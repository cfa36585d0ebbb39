"""Servo-bus framing, register encodings, and the driver against the emulator under injected faults."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from edgevla.runtime.buses import BusConfig, BusTimeout, CorruptFrame, ServoBus, ServoStatusError, model_named
from edgevla.runtime.buses.dynamixel import Dynamixel2, crc16, stuff, unstuff
from edgevla.runtime.buses.emulator import Faults, ServoEmulator
from edgevla.runtime.buses.feetech import Feetech
from edgevla.runtime.buses.protocol import PING, READ, WRITE
from edgevla.runtime.buses.tables import Register, decode, encode

XL430 = model_named("xl430-w250")
STS = model_named("sts3215")


def test_frames_match_the_datasheet_examples():
    # ROBOTIS e-Manual Protocol 2.0, PING example to ID 1 and its status reply (XM430, model 1030, fw 38).
    assert Dynamixel2().encode_instruction(1, PING, b"").hex(" ") == "ff ff fd 00 01 03 00 01 19 4e"
    assert Dynamixel2().encode_status(1, 0, bytes([0x06, 0x04, 0x26])).hex(" ") == \
        "ff ff fd 00 01 07 00 55 00 06 04 26 65 5d"
    # Feetech manual: PING to ID 1; READ 2 bytes at 56 from ID 1.
    assert Feetech().encode_instruction(1, PING, b"").hex(" ") == "ff ff 01 02 01 fb"
    assert Feetech().encode_instruction(1, READ, bytes([56, 2])).hex(" ") == "ff ff 01 04 02 38 02 be"


def test_crc16_is_crc16_buypass():
    assert crc16(b"123456789") == 0xFEE8  # the catalogue check value of CRC-16/BUYPASS (poly 0x8005)


def test_byte_stuffing_round_trips():
    rng = random.Random(0)
    alphabet = [0xFF, 0xFD, 0x00, 0x01]
    for _ in range(2000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        stuffed = stuff(body)
        assert unstuff(stuffed) == body
        assert b"\xff\xff\xfd\x00" not in stuffed  # no packet header can appear inside a body
    assert stuff(b"\x03\xff\xff\xfd\x00") == b"\x03\xff\xff\xfd\xfd\x00"


@pytest.mark.parametrize("protocol", [Dynamixel2(), Feetech(), Feetech(big_endian=True)], ids=lambda p: p.name)
def test_parser_resyncs_after_garbage_truncation_and_bad_checksums(protocol):
    good = protocol.encode_status(3, 0, b"\x10\x20\x30\x40")
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    stream = bytearray(b"\x00\xff\x13\xff" + bytes(bad) + b"\xfe\x01" + good)
    frames, corrupt = [], 0
    for cut in (5, len(stream)):  # the first pass sees a truncated stream and must wait, not fail
        view = bytearray(stream[:cut])
        consumed_total = 0
        while view:
            parsed = protocol.parse(view, status=True)
            if parsed.consumed == 0:
                break
            del view[:parsed.consumed]
            consumed_total += parsed.consumed
            corrupt += parsed.corrupt
            if parsed.frame:
                frames.append(parsed.frame)
        if cut < len(stream):
            assert not frames
            frames, corrupt = [], 0
    assert [(f.servo_id, f.params) for f in frames] == [(3, b"\x10\x20\x30\x40")]
    assert corrupt == 1


def test_register_encodings():
    assert decode(Register(0, 4, "twos"), 0xFFFFFFFF) == -1
    assert encode(Register(0, 4, "twos"), -2) == 0xFFFFFFFE
    assert decode(Register(0, 2, "sign15"), 0x8005) == -5 and encode(Register(0, 2, "sign15"), -5) == 0x8005
    assert decode(Register(0, 2, "sign11"), 0x0805) == -5
    with pytest.raises(ValueError, match="does not fit"):
        encode(Register(0, 1), 300)
    with pytest.raises(KeyError, match="known"):
        XL430.register("Goal_Pos")


@pytest.mark.parametrize("protocol,model", [("dynamixel", XL430), ("feetech", STS)])
def test_ping_read_write_sync_and_motion(protocol, model):
    with ServoEmulator(protocol, [1, 2]) as emulator, ServoBus(BusConfig(port=emulator.path, protocol=protocol)) as bus:
        assert bus.ping(1) == bus.ping(2) == model.model_number
        bus.sync_write_register(model, "Torque_Enable", {1: 1, 2: 1})
        bus.sync_write_register(model, "Goal_Position", {1: 2048 + 400, 2: 2048 - 400})
        assert bus.sync_read_register(model, "Goal_Position", [1, 2]) == {1: 2448, 2: 1648}
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # 400 ticks at one revolution per second: ~0.1 s
            positions = bus.sync_read_register(model, "Present_Position", [1, 2])
            if positions == {1: 2448, 2: 1648}:
                break
            time.sleep(0.01)
        assert positions == {1: 2448, 2: 1648}
        assert bus.stats.timeouts == bus.stats.corrupt_frames == 0


def test_read_only_register_is_refused_by_driver_and_servo():
    with ServoEmulator("dynamixel", [1]) as emulator, ServoBus(BusConfig(port=emulator.path, protocol="dynamixel")) as bus:
        with pytest.raises(ValueError, match="read-only"):
            bus.write_register(1, XL430, "Present_Position", 5)
        with pytest.raises(ServoStatusError, match="access error"):
            bus.write(1, XL430.register("Present_Position").address, b"\x05\x00\x00\x00")
        assert bus.stats.status_errors == 1


@pytest.mark.parametrize("protocol", ["dynamixel", "feetech"])
def test_retries_ride_through_dropped_corrupt_and_garbage_replies(protocol):
    model = XL430 if protocol == "dynamixel" else STS
    faults = Faults(drop_reply_probability=0.15, corrupt_reply_probability=0.15, garbage_probability=0.5)
    config = BusConfig(port="", protocol=protocol, reply_timeout_s=0.01, retries=6)
    with ServoEmulator(protocol, [1], faults=faults, seed=1) as emulator:
        with ServoBus(BusConfig(**{**vars(config), "port": emulator.path})) as bus:
            for _ in range(60):
                assert bus.read_register(1, model, "Model_Number") == model.model_number
    assert bus.stats.timeouts > 0 and bus.stats.corrupt_frames > 0 and bus.stats.retries > 0


def test_a_corrupt_reply_on_every_attempt_raises_corrupt_frame():
    with ServoEmulator("feetech", [1], faults=Faults(corrupt_reply_probability=1.0)) as emulator:
        with ServoBus(BusConfig(port=emulator.path, protocol="feetech", retries=2)) as bus:
            with pytest.raises(CorruptFrame, match="after 3 attempts"):
                bus.read(1, 56, 2)
            assert bus.stats.corrupt_frames == 3


@pytest.mark.parametrize("protocol", ["dynamixel", "feetech"])
def test_a_servo_that_stops_answering_times_out_in_bounded_time(protocol):
    config = dict(protocol=protocol, reply_timeout_s=0.02, retries=2)
    with ServoEmulator(protocol, [1, 2]) as emulator, ServoBus(BusConfig(port=emulator.path, **config)) as bus:
        bus.ping(2)
        emulator.set_faults(silent_ids=frozenset({2}))
        started = time.monotonic()
        with pytest.raises(BusTimeout, match="servo 2 .* did not answer"):
            bus.sync_read([1, 2], 56, 2)
        elapsed = time.monotonic() - started
        assert elapsed < 3 * 0.02 + 0.5  # three attempts of 20 ms, plus scheduling slack: never a hang
        assert bus.ping(1)  # the bus itself is still usable


def test_emulator_runs_on_its_own_and_prints_its_pty():
    process = subprocess.Popen([sys.executable, "-m", "edgevla.runtime.buses.emulator", "--protocol", "dynamixel",
                                "--ids", "4,5"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        path = line.split(" on ")[1].split(" ")[0]
        with ServoBus(BusConfig(port=path, protocol="dynamixel", reply_timeout_s=0.2)) as bus:
            assert bus.ping(4) == bus.ping(5) == XL430.model_number
            with pytest.raises(BusTimeout):
                bus.ping(6)
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="known: \\['dynamixel'"):
        BusConfig(port="/dev/null", protocol="herkulex")
    with pytest.raises(Exception, match="cannot open servo bus"):
        ServoBus(BusConfig(port="/dev/does-not-exist", protocol="dynamixel")).open()
    with pytest.raises(ValueError, match="speaks feetech"):
        ServoEmulator("dynamixel", {1: "sts3215"})
