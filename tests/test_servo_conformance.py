"""Conformance with the vendor SDKs (`dynamixel-sdk`, `feetech-servo-sdk` from PyPI).

1. For the same commands, our driver's instruction frames are byte-identical to the vendor SDK's: both
   talk to the emulator, which records every frame it receives.
2. Each vendor SDK, pointed at our emulator's pty, pings, reads and writes successfully; what it writes is
   what our driver reads back.
"""

from __future__ import annotations

import time

import pytest

from edgevla.runtime.buses import BusConfig, ServoBus, model_named
from edgevla.runtime.buses.emulator import ServoEmulator

IDS = [1, 2, 3]
STUFFED_GOAL = 0x00FDFFFF  # little-endian bytes FF FF FD 00: forces Protocol 2.0 byte stuffing


def dynamixel_sdk_session(path: str) -> dict:
    import dynamixel_sdk as sdk

    port = sdk.PortHandler(path)
    handler = sdk.PacketHandler(2.0)
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        out = {}
        model, result, error = handler.ping(port, 1)
        assert (result, error) == (sdk.COMM_SUCCESS, 0), handler.getTxRxResult(result)
        out["model"] = model
        assert handler.write1ByteTxRx(port, 1, 64, 1)[0] == sdk.COMM_SUCCESS
        assert handler.write4ByteTxRx(port, 2, 116, STUFFED_GOAL)[0] == sdk.COMM_SUCCESS
        value, result, _ = handler.read4ByteTxRx(port, 2, 116)
        assert result == sdk.COMM_SUCCESS
        out["goal_2"] = value
        writer = sdk.GroupSyncWrite(port, handler, 116, 4)
        for i, goal in zip(IDS, (1000, 2048, 3000)):
            assert writer.addParam(i, list(goal.to_bytes(4, "little")))
        assert writer.txPacket() == sdk.COMM_SUCCESS
        reader = sdk.GroupSyncRead(port, handler, 116, 4)
        for i in IDS:
            assert reader.addParam(i)
        assert reader.txRxPacket() == sdk.COMM_SUCCESS
        out["goals"] = {i: reader.getData(i, 116, 4) for i in IDS}
        return out
    finally:
        port.closePort()


def our_dynamixel_session(path: str) -> dict:
    model = model_named("xl430-w250")
    with ServoBus(BusConfig(port=path, protocol="dynamixel")) as bus:
        out = {"model": bus.ping(1)}
        bus.write_register(1, model, "Torque_Enable", 1)
        bus.write_register(2, model, "Goal_Position", STUFFED_GOAL)
        out["goal_2"] = bus.read_register(2, model, "Goal_Position")
        bus.sync_write_register(model, "Goal_Position", {1: 1000, 2: 2048, 3: 3000})
        out["goals"] = bus.sync_read_register(model, "Goal_Position", IDS)
        return out


def feetech_sdk_session(path: str) -> dict:
    import scservo_sdk as sdk

    port = sdk.PortHandler(path)
    handler = sdk.PacketHandler(0)  # STS: little-endian registers
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        out = {}
        model, result, error = handler.ping(port, 1)
        assert (result, error) == (sdk.COMM_SUCCESS, 0), handler.getTxRxResult(result)
        out["model"] = model
        assert handler.write1ByteTxRx(port, 1, 40, 1)[0] == sdk.COMM_SUCCESS
        assert handler.write2ByteTxRx(port, 2, 42, 3000)[0] == sdk.COMM_SUCCESS
        value, result, _ = handler.read2ByteTxRx(port, 2, 42)
        assert result == sdk.COMM_SUCCESS
        out["goal_2"] = value
        writer = sdk.GroupSyncWrite(port, handler, 42, 2)
        for i, goal in zip(IDS, (1000, 2048, 3000)):
            assert writer.addParam(i, list(goal.to_bytes(2, "little")))
        assert writer.txPacket() == sdk.COMM_SUCCESS
        reader = sdk.GroupSyncRead(port, handler, 42, 2)
        for i in IDS:
            assert reader.addParam(i)
        assert reader.txRxPacket() == sdk.COMM_SUCCESS
        out["goals"] = {i: reader.getData(i, 42, 2) for i in IDS}
        return out
    finally:
        port.closePort()


def our_feetech_session(path: str) -> dict:
    model = model_named("sts3215")
    with ServoBus(BusConfig(port=path, protocol="feetech")) as bus:
        out = {"model": bus.ping(1)}
        bus.write_register(1, model, "Torque_Enable", 1)
        bus.write_register(2, model, "Goal_Position", 3000)
        out["goal_2"] = bus.read_register(2, model, "Goal_Position")
        bus.sync_write_register(model, "Goal_Position", {1: 1000, 2: 2048, 3: 3000})
        out["goals"] = bus.sync_read_register(model, "Goal_Position", IDS)
        return out


def sdk_stuffed(frame: bytes) -> bytes:
    """The vendor SDK's own byte stuffing and CRC applied to a frame it sent unstuffed."""
    import dynamixel_sdk as sdk

    handler = sdk.PacketHandler(2.0)
    stuffed = handler.addStuffing(list(frame))
    crc = handler.updateCRC(0, stuffed, len(stuffed) - 2)
    return bytes(stuffed[:-2] + [crc & 0xFF, crc >> 8])


SESSIONS = {
    "dynamixel": (dynamixel_sdk_session, our_dynamixel_session, 1060),
    "feetech": (feetech_sdk_session, our_feetech_session, 777),
}


def _settle(emulator: ServoEmulator, expected_frames: int) -> None:
    """Broadcast frames get no reply: wait until the emulator has taken in everything we sent."""
    deadline = time.monotonic() + 2
    while len(emulator.received) < expected_frames and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.parametrize("protocol", sorted(SESSIONS))
def test_vendor_sdk_works_against_our_emulator_and_our_frames_match_it(protocol):
    vendor_session, our_session, model_number = SESSIONS[protocol]
    with ServoEmulator(protocol, IDS) as emulator:
        vendor = vendor_session(emulator.path)
        vendor_frames = list(emulator.received)
    with ServoEmulator(protocol, IDS) as emulator:
        ours = our_session(emulator.path)
        _settle(emulator, len(vendor_frames))
        our_frames = list(emulator.received)
    assert vendor["model"] == ours["model"] == model_number
    assert vendor == ours
    assert len(vendor_frames) == len(our_frames) >= 6
    differing = [k for k, (theirs, mine) in enumerate(zip(vendor_frames, our_frames)) if theirs != mine]
    if protocol == "feetech":
        assert not differing, [(vendor_frames[k].hex(" "), our_frames[k].hex(" ")) for k in differing]
    else:
        # One known difference: the write whose payload holds FF FF FD. Protocol 2.0 requires byte stuffing
        # there, and the SDK's own addStuffing() produces it, but its txPacket() (4.1.0) drops the result
        # when stuffing lengthens the frame, so the vendor SDK puts the unstuffed frame on the wire. We send
        # the stuffed frame: exactly what the SDK's addStuffing + CRC make of its own unstuffed frame.
        assert len(differing) == 1 and b"\xff\xff\xfd\xfd" in our_frames[differing[0]]
        assert our_frames[differing[0]] == sdk_stuffed(vendor_frames[differing[0]])


@pytest.mark.parametrize("protocol", sorted(SESSIONS))
def test_what_the_vendor_sdk_writes_our_driver_reads(protocol):
    vendor_session, _, _ = SESSIONS[protocol]
    model = model_named("xl430-w250" if protocol == "dynamixel" else "sts3215")
    with ServoEmulator(protocol, IDS) as emulator:
        vendor_session(emulator.path)
        with ServoBus(BusConfig(port=emulator.path, protocol=protocol)) as bus:
            assert bus.sync_read_register(model, "Goal_Position", IDS) == {1: 1000, 2: 2048, 3: 3000}
            assert bus.read_register(1, model, "Torque_Enable") == 1
