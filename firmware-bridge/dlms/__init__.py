"""DLMS/COSEM over HDLC (IEC 62056-46/-53/-62): a sans-IO codec, a client and a meter emulator.

Licence-clean: written from the published structure of the protocol, no code taken from gurux-dlms
(GPL) or dlms-cosem (BSL). See docs/dlms.md for what is supported. The agent needs only what is
re-exported here; the modules below hold the layers (hdlc, axdr, apdu, cosem, client, server).
"""

from meterchain.bridge.dlms.cosem import (
    ClassId,
    MeterClock,
    ProfileEntry,
    ProfileValue,
    QuantityKind,
    RegisterValue,
)
from meterchain.bridge.dlms.emulator import (
    BusMeter,
    DlmsBusEmulator,
    DlmsMeterEmulator,
    EmulatedDlmsMeter,
    EmulatorFaults,
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
