"""Eastron SDM meters over Modbus RTU: register maps as data, a pty emulator, and the reader.

See docs/modbus.md. The agent needs ``read_meter`` / ``ModbusMeterReader`` and ``MeterValues``.
"""

from meterchain.bridge.modbus.emulator import (
    EmulatedMeter,
    ModbusBusEmulator,
    ModbusMeterEmulator,
    accelerated_clock,
)
from meterchain.bridge.modbus.errors import MeterProtocolError, MeterTimeout, RegisterMapError
from meterchain.bridge.modbus.reader import (
    MeterValues,
    ModbusMeterReader,
    SerialPortError,
    read_meter,
)
from meterchain.bridge.modbus.registers import REGISTER_MAPS, SDM120, SDM630, RegisterMap
from meterchain.bridge.modbus.simulation import LoadProfile, MeterFaults

__all__ = [
    "REGISTER_MAPS", "SDM120", "SDM630", "EmulatedMeter", "LoadProfile", "MeterFaults",
    "MeterProtocolError", "MeterTimeout", "MeterValues", "ModbusBusEmulator",
    "ModbusMeterEmulator", "ModbusMeterReader", "RegisterMap", "RegisterMapError",
    "SerialPortError", "accelerated_clock", "read_meter",
]
