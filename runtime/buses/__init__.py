"""Servo buses (Dynamixel Protocol 2.0, Feetech SCS/STS) over pyserial, and an emulator on a pty."""

from .bus import BusConfig, BusStats, ServoBus, protocol_named
from .protocol import BusError, BusTimeout, CorruptFrame, ServoStatusError
from .tables import MODELS, ServoModel, model_named

__all__ = ["BusConfig", "BusStats", "ServoBus", "protocol_named", "BusError", "BusTimeout", "CorruptFrame",
           "ServoStatusError", "MODELS", "ServoModel", "model_named"]
