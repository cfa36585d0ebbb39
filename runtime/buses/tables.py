"""Register tables as data, one per servo family, each with the datasheet it was taken from.

A register is (address, size in bytes, sign encoding). Dynamixel stores signed values in two's complement;
Feetech STS stores signed values as sign-magnitude with the sign in a given bit (bit 15 for positions and
velocities, 11 for the homing offset, 10 for the load),
which `decode`/`encode` handle, so callers always see plain Python ints in the servo's own units (ticks).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Register:
    address: int
    size: int  # bytes
    signed: str = ""  # "" unsigned, "twos" two's complement, "signN" sign-magnitude with the sign in bit N
    writable: bool = True


@dataclass(frozen=True)
class ServoModel:
    """One servo family: its register table, identity and the numbers needed to convert units."""

    name: str
    protocol: str  # "dynamixel" | "feetech"
    model_number: int  # what PING (Dynamixel) or the Model_Number register (Feetech) reports
    registers: dict[str, Register]
    ticks_per_revolution: int  # position resolution
    center_tick: int  # position tick at 0 rad
    velocity_unit_rad_s: float  # one velocity tick in rad/s
    datasheet: str

    def register(self, name: str) -> Register:
        try:
            return self.registers[name]
        except KeyError:
            raise KeyError(f"{self.name} has no register {name!r}; known: {sorted(self.registers)}") from None


def decode(register: Register, raw: int) -> int:
    bits = 8 * register.size
    if register.signed == "twos" and raw >= 1 << (bits - 1):
        return raw - (1 << bits)
    if register.signed.startswith("sign"):
        sign_bit = 1 << int(register.signed[4:])
        return -(raw & (sign_bit - 1)) if raw & sign_bit else raw
    return raw


def encode(register: Register, value: int) -> int:
    bits = 8 * register.size
    value = int(value)
    if register.signed == "twos":
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{value} does not fit a signed {bits}-bit register")
        return value & ((1 << bits) - 1)
    if register.signed.startswith("sign"):
        sign_bit = 1 << int(register.signed[4:])
        if abs(value) >= sign_bit:
            raise ValueError(f"{value} does not fit a sign-magnitude register with the sign in bit "
                             f"{register.signed[4:]}")
        return (abs(value) | sign_bit) if value < 0 else value
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{value} does not fit an unsigned {bits}-bit register")
    return value


def _r(address, size, signed="", writable=True):
    return Register(address, size, signed, writable)


# ROBOTIS e-Manual, XL430-W250-T control table (X-series, Protocol 2.0); XM430/XL330 share these addresses.
_DYNAMIXEL_X = {
    "Model_Number": _r(0, 2, writable=False),
    "Model_Information": _r(2, 4, writable=False),
    "Firmware_Version": _r(6, 1, writable=False),
    "ID": _r(7, 1),
    "Baud_Rate": _r(8, 1),
    "Return_Delay_Time": _r(9, 1),
    "Drive_Mode": _r(10, 1),
    "Operating_Mode": _r(11, 1),
    "Protocol_Type": _r(13, 1),
    "Homing_Offset": _r(20, 4, "twos"),
    "Temperature_Limit": _r(31, 1),
    "Max_Voltage_Limit": _r(32, 2),
    "Min_Voltage_Limit": _r(34, 2),
    "Velocity_Limit": _r(44, 4),
    "Max_Position_Limit": _r(48, 4),
    "Min_Position_Limit": _r(52, 4),
    "Torque_Enable": _r(64, 1),
    "LED": _r(65, 1),
    "Status_Return_Level": _r(68, 1),
    "Hardware_Error_Status": _r(70, 1, writable=False),
    "Position_D_Gain": _r(80, 2),
    "Position_I_Gain": _r(82, 2),
    "Position_P_Gain": _r(84, 2),
    "Goal_Velocity": _r(104, 4, "twos"),
    "Profile_Acceleration": _r(108, 4),
    "Profile_Velocity": _r(112, 4),
    "Goal_Position": _r(116, 4, "twos"),
    "Realtime_Tick": _r(120, 2, writable=False),
    "Moving": _r(122, 1, writable=False),
    "Present_Load": _r(126, 2, "twos", writable=False),
    "Present_Velocity": _r(128, 4, "twos", writable=False),
    "Present_Position": _r(132, 4, "twos", writable=False),
    "Present_Input_Voltage": _r(144, 2, writable=False),
    "Present_Temperature": _r(146, 1, writable=False),
}

# Feetech STS3215 memory table (Feetech "STS3215 memory table", SMS/STS series); also LeRobot's SO-100 arm servo.
_FEETECH_STS = {
    "Firmware_Major_Version": _r(0, 1, writable=False),
    "Firmware_Minor_Version": _r(1, 1, writable=False),
    "Model_Number": _r(3, 2, writable=False),
    "ID": _r(5, 1),
    "Baud_Rate": _r(6, 1),
    "Return_Delay_Time": _r(7, 1),
    "Response_Status_Level": _r(8, 1),
    "Min_Position_Limit": _r(9, 2),
    "Max_Position_Limit": _r(11, 2),
    "Max_Temperature_Limit": _r(13, 1),
    "Max_Voltage_Limit": _r(14, 1),
    "Min_Voltage_Limit": _r(15, 1),
    "Max_Torque_Limit": _r(16, 2),
    "P_Coefficient": _r(21, 1),
    "D_Coefficient": _r(22, 1),
    "I_Coefficient": _r(23, 1),
    "Homing_Offset": _r(31, 2, "sign11"),
    "Operating_Mode": _r(33, 1),
    "Torque_Enable": _r(40, 1),
    "Acceleration": _r(41, 1),
    "Goal_Position": _r(42, 2, "sign15"),
    "Goal_Time": _r(44, 2),
    "Goal_Velocity": _r(46, 2, "sign15"),
    "Torque_Limit": _r(48, 2),
    "Lock": _r(55, 1),
    "Present_Position": _r(56, 2, "sign15", writable=False),
    "Present_Velocity": _r(58, 2, "sign15", writable=False),
    "Present_Load": _r(60, 2, "sign10", writable=False),
    "Present_Voltage": _r(62, 1, writable=False),
    "Present_Temperature": _r(63, 1, writable=False),
    "Status": _r(65, 1, writable=False),
    "Moving": _r(66, 1, writable=False),
    "Present_Current": _r(69, 2, writable=False),
}

MODELS: dict[str, ServoModel] = {
    "xl430-w250": ServoModel(
        name="xl430-w250", protocol="dynamixel", model_number=1060, registers=_DYNAMIXEL_X,
        ticks_per_revolution=4096, center_tick=2048, velocity_unit_rad_s=0.229 * 2 * 3.141592653589793 / 60,
        datasheet="ROBOTIS e-Manual: XL430-W250-T control table (emanual.robotis.com/docs/en/dxl/x/xl430-w250/)"),
    "xm430-w350": ServoModel(
        name="xm430-w350", protocol="dynamixel", model_number=1020, registers=_DYNAMIXEL_X,
        ticks_per_revolution=4096, center_tick=2048, velocity_unit_rad_s=0.229 * 2 * 3.141592653589793 / 60,
        datasheet="ROBOTIS e-Manual: XM430-W350-T control table (emanual.robotis.com/docs/en/dxl/x/xm430-w350/)"),
    "sts3215": ServoModel(
        name="sts3215", protocol="feetech", model_number=777, registers=_FEETECH_STS,
        ticks_per_revolution=4096, center_tick=2048, velocity_unit_rad_s=2 * 3.141592653589793 / 4096,
        datasheet="Feetech STS3215 memory table (SMS/STS series user manual, register map v3.x)"),
}


def model_named(name: str) -> ServoModel:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown servo model {name!r}; known: {sorted(MODELS)}") from None


def model_for_number(protocol: str, model_number: int) -> ServoModel | None:
    return next((m for m in MODELS.values() if m.protocol == protocol and m.model_number == model_number), None)
