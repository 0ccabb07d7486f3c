"""OBIS codes (IEC 62056-6-1): the logical-name type, and every logical name meterchain reads or serves.

Each code is defined here once, as data; the client, the emulator, the agent's profile poller and the
installer's scan import it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meterchain.bridge.dlms.errors import CosemValueError

_OBIS_TEXT = re.compile(
    r"^(\d+)-(\d+):(\d+)\.(\d+)\.(\d+)(?:\.(\d+))?$|^(\d+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)$"
)


@dataclass(frozen=True, slots=True, order=True)
class Obis:
    """A 6-group OBIS code (logical name), e.g. ``Obis.parse("1-0:1.8.0.255")``."""

    a: int
    b: int
    c: int
    d: int
    e: int
    f: int = 255

    def __post_init__(self) -> None:
        for group in (self.a, self.b, self.c, self.d, self.e, self.f):
            if not 0 <= group <= 255:
                raise CosemValueError(
                    "OBIS group out of 0..255",
                    obis=(self.a, self.b, self.c, self.d, self.e, self.f),
                )

    @classmethod
    def parse(cls, text: str) -> Obis:
        """Parse ``A-B:C.D.E.F`` (F defaults to 255) or ``A.B.C.D.E.F``."""
        match = _OBIS_TEXT.match(text.strip())
        if not match:
            raise CosemValueError("not an OBIS code", text=text)
        groups = [int(g) for g in match.groups() if g is not None]
        return cls(*groups)

    @classmethod
    def decode(cls, raw: bytes) -> Obis:
        if len(raw) != 6:
            raise CosemValueError("a logical name is 6 bytes", raw=bytes(raw).hex())
        return cls(*raw)

    def encode(self) -> bytes:
        return bytes((self.a, self.b, self.c, self.d, self.e, self.f))

    def __str__(self) -> str:
        return f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}.{self.f}"


def as_obis(code: Obis | str) -> Obis:
    return code if isinstance(code, Obis) else Obis.parse(code)


# ---------------------------------------------------------------------------------------------
# The logical names meterchain uses (group F 255: the current value)

#: Clock (class 8): the meter's date-time and status.
CLOCK_OBIS = Obis(0, 0, 1, 0, 0, 255)
#: The meter's serial number (class 1, data).
SERIAL_NUMBER_OBIS = Obis(0, 0, 96, 1, 0, 255)
#: COSEM logical device name (class 1, data).
LOGICAL_DEVICE_NAME_OBIS = Obis(0, 0, 42, 0, 0, 255)
#: Load profile 1 (class 7): the interval readings a gateway signs.
LOAD_PROFILE_OBIS = Obis(1, 0, 99, 1, 0, 255)
#: Active energy import (+A), total, cumulative (class 3).
ACTIVE_IMPORT_OBIS = Obis(1, 0, 1, 8, 0, 255)
#: Active energy export (-A), total, cumulative (class 3).
ACTIVE_EXPORT_OBIS = Obis(1, 0, 2, 8, 0, 255)
#: Active energy import of the last interval (class 3).
INTERVAL_IMPORT_OBIS = Obis(1, 0, 1, 29, 0, 255)
#: Active power import (+P), instantaneous (class 3).
ACTIVE_POWER_OBIS = Obis(1, 0, 1, 7, 0, 255)
#: Voltage L1, instantaneous (class 3).
VOLTAGE_L1_OBIS = Obis(1, 0, 32, 7, 0, 255)
#: Maximum demand of active power import (class 4, extended register).
MAX_DEMAND_OBIS = Obis(1, 0, 1, 6, 0, 255)
