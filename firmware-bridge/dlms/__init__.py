"""DLMS/COSEM over HDLC (IEC 62056-46/-53/-62): a sans-IO codec, a client and a meter emulator.

Licence-clean: written from the published structure of the protocol, no code taken from gurux-dlms
(GPL) or dlms-cosem (BSL). See docs/dlms.md for what is supported. The agent needs only what is
re-exported here; the modules below hold the layers (hdlc, axdr, apdu, cosem, client, server).
"""

import importlib
from typing import TYPE_CHECKING, Any

from meterchain.bridge.dlms.cosem import (
    ClassId,
    MeterClock,
    ProfileEntry,
    ProfileValue,
    QuantityKind,
    RegisterValue,
)
from meterchain.bridge.dlms.errors import (
    AssociationError,
    DataAccessError,
    DlmsError,
    LinkError,
    RetriesExhausted,
)
from meterchain.bridge.dlms.hdlc import HdlcAddress
from meterchain.bridge.dlms.obis import LOAD_PROFILE_OBIS, Obis
from meterchain.bridge.dlms.serial_client import DlmsMeterClient, ExtendedRegisterReading

if TYPE_CHECKING:
    from meterchain.bridge.dlms.emulator import (
        BusMeter,
        DlmsBusEmulator,
        DlmsMeterEmulator,
        EmulatedDlmsMeter,
        EmulatorFaults,
    )

#: The emulators load pymodbus's and asyncio's server side, which a gateway never runs: imported
#: when a test, the demo or `meterchain emulate` first names them (PEP 562), not with the agent.
_LAZY = dict.fromkeys(
    ["BusMeter", "DlmsBusEmulator", "DlmsMeterEmulator", "EmulatedDlmsMeter", "EmulatorFaults"],
    "meterchain.bridge.dlms.emulator",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOAD_PROFILE_OBIS",
    "AssociationError",
    "BusMeter",
    "ClassId",
    "DataAccessError",
    "DlmsBusEmulator",
    "DlmsError",
    "DlmsMeterClient",
    "DlmsMeterEmulator",
    "EmulatedDlmsMeter",
    "EmulatorFaults",
    "ExtendedRegisterReading",
    "HdlcAddress",
    "LinkError",
    "MeterClock",
    "Obis",
    "ProfileEntry",
    "ProfileValue",
    "QuantityKind",
    "RegisterValue",
    "RetriesExhausted",
]
