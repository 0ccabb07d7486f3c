"""Eastron SDM meters over Modbus RTU: register maps as data, a pty emulator, and the reader.

See docs/modbus.md. The agent needs ``read_meter`` / ``ModbusMeterReader`` and ``MeterValues``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from meterchain.bridge.modbus.errors import MeterProtocolError, MeterTimeout, RegisterMapError
from meterchain.bridge.modbus.reader import (
    MeterValues,
    ModbusMeterReader,
    SerialPortError,
    read_meter,
)
from meterchain.bridge.modbus.registers import REGISTER_MAPS, SDM120, SDM630, RegisterMap
from meterchain.bridge.modbus.simulation import LoadProfile, MeterFaults

if TYPE_CHECKING:
    from meterchain.bridge.modbus.emulator import (
        EmulatedMeter,
        ModbusBusEmulator,
        ModbusMeterEmulator,
        accelerated_clock,
    )

#: The emulators load pymodbus's and asyncio's server side, which a gateway never runs: imported
#: when a test, the demo or `meterchain emulate` first names them (PEP 562), not with the agent.
_LAZY = dict.fromkeys(
    ["EmulatedMeter", "ModbusBusEmulator", "ModbusMeterEmulator", "accelerated_clock"],
    "meterchain.bridge.modbus.emulator",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REGISTER_MAPS", "SDM120", "SDM630", "EmulatedMeter", "LoadProfile", "MeterFaults",
    "MeterProtocolError", "MeterTimeout", "MeterValues", "ModbusBusEmulator",
    "ModbusMeterEmulator", "ModbusMeterReader", "RegisterMap", "RegisterMapError",
    "SerialPortError", "accelerated_clock", "read_meter",
]
