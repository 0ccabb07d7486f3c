"""COSEM objects a gateway reads: classes, scaler-unit (exact), clock, load profiles.

Numbers stay integers: a register value is ``value × 10**scaler`` in ``unit``, kept as the raw
integer and its exponent; ``RegisterValue.exact()`` is a ``Fraction`` and ``in_units_of()`` gives
an integer at a chosen power of ten, or raises if that would lose a digit.

Time: a COSEM date-time is local time plus a deviation with UTC = local time + deviation minutes
(0x8000 = unspecified, then the caller's fallback applies). Results are UTC integer seconds.
"""

from __future__ import annotations

import calendar
import enum
import time
from dataclasses import dataclass
from fractions import Fraction

from meterchain.bridge.dlms.axdr import Data, DateTime, Tag
from meterchain.bridge.dlms.errors import AxdrError, CosemValueError
from meterchain.bridge.dlms.obis import Obis, as_obis


class ClassId(enum.IntEnum):
    DATA = 1
    REGISTER = 3
    EXTENDED_REGISTER = 4
    DEMAND_REGISTER = 5
    PROFILE_GENERIC = 7
    CLOCK = 8
    ASSOCIATION_LN = 15


# Units (DLMS UA 1000-1 "Blue Book", enum of class 3's scaler_unit): the ones meters use most.
UNITS: dict[int, str] = {
    1: "a",
    2: "mo",
    3: "wk",
    4: "d",
    5: "h",
    6: "min",
    7: "s",
    8: "°",
    9: "°C",
    10: "currency",
    11: "m",
    12: "m/s",
    13: "m³",
    14: "m³ (corrected)",
    15: "m³/h",
    19: "l",
    20: "kg",
    21: "N",
    22: "Nm",
    23: "Pa",
    24: "bar",
    25: "J",
    26: "J/h",
    27: "W",
    28: "VA",
    29: "var",
    30: "Wh",
    31: "VAh",
    32: "varh",
    33: "A",
    34: "C",
    35: "V",
    36: "V/m",
    37: "F",
    38: "Ω",
    44: "Hz",
    253: "reserved",
    254: "other",
    255: "count",
}
UNIT_W, UNIT_WH, UNIT_V, UNIT_NONE = 27, 30, 35, 255


# ---------------------------------------------------------------------------------------------
# Register values


@dataclass(frozen=True, slots=True)
class RegisterValue:
    """A register reading: the raw integer, its power-of-ten scaler and the unit enum."""

    value: int
    scaler: int = 0
    unit: int = UNIT_NONE

    def exact(self) -> Fraction:
        """The physical value, exactly."""
        return Fraction(self.value) * Fraction(10) ** self.scaler

    def in_units_of(self, exponent: int = 0) -> int:
        """The value as an integer count of ``10**exponent`` units; raises if that loses digits.

        ``in_units_of(0)`` of an energy register in Wh is whole Wh; ``in_units_of(-3)`` is mWh.
        """
        shift = self.scaler - exponent
        factor: int = 10 ** abs(shift)  # int ** int is typed Any: it is a float for a negative exponent
        if shift >= 0:
            return self.value * factor
        quotient, remainder = divmod(self.value, factor)
        if remainder:
            raise CosemValueError(
                "value is not a whole number of the requested unit",
                value=self.value,
                scaler=self.scaler,
                exponent=exponent,
            )
        return quotient

    @property
    def unit_name(self) -> str:
        return UNITS.get(self.unit, f"unit {self.unit}")

    def __str__(self) -> str:
        return f"{self.exact()} {self.unit_name}"


def scaler_unit_from_data(data: Data) -> tuple[int, int]:
    """Decode attribute 3 of a (extended/demand) register: structure {integer scaler, enum unit}."""
    try:
        scaler, unit = data.items
        if scaler.tag is not Tag.INT8 or unit.tag is not Tag.ENUM:
            raise CosemValueError("scaler_unit must be {integer, enum}", data=data)
        return scaler.as_int(), unit.as_int()
    except (ValueError, AxdrError) as exc:
        raise CosemValueError("scaler_unit must be a 2-element structure", data=data) from exc


def scaler_unit_to_data(scaler: int, unit: int) -> Data:
    return Data.structure([Data(Tag.INT8, scaler), Data(Tag.ENUM, unit)])


def integer_value(data: Data, *, obis: Obis | None = None) -> int:
    """The integer of a register value attribute; floats and strings are refused, not rounded."""
    if data.tag in (Tag.FLOAT32, Tag.FLOAT64):
        raise CosemValueError(
            "register holds a float; refusing to round it", obis=str(obis), data=data
        )
    try:
        return data.as_int()
    except AxdrError as exc:
        raise CosemValueError(
            "register value is not an integer", obis=str(obis), data=data
        ) from exc


# ---------------------------------------------------------------------------------------------
# Date-time <-> UTC


def datetime_to_utc(value: DateTime, fallback_deviation: int | None = None) -> int:
    """UTC seconds of a COSEM date-time: UTC = local time + deviation (minutes).

    An unspecified deviation (0x8000) uses ``fallback_deviation``; without one this raises, as it
    does for unspecified date or time fields. Unspecified hundredths count as zero.
    """
    fields = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    if value.year == 0xFFFF or any(f == 0xFF for f in fields[1:]):
        raise CosemValueError("date-time has unspecified fields", value=value)
    deviation = value.deviation if value.deviation is not None else fallback_deviation
    if deviation is None:
        raise CosemValueError("date-time deviation unspecified and no fallback given", value=value)
    if not -720 <= deviation <= 840:
        raise CosemValueError("deviation out of range", deviation=deviation)
    if not (1 <= value.month <= 12 and value.hour < 24 and value.minute < 60 and value.second < 60):
        raise CosemValueError("date-time field out of range", value=value)
    if not 1 <= value.day <= calendar.monthrange(value.year, value.month)[1]:
        raise CosemValueError("day out of range for its month", value=value)
    local = calendar.timegm(
        (value.year, value.month, value.day, value.hour, value.minute, value.second)
    )
    return local + deviation * 60


def datetime_from_utc(utc: int, deviation: int = 0, status: int = 0) -> DateTime:
    """The COSEM date-time of UTC second ``utc`` as local time with ``deviation`` minutes."""
    local = time.gmtime(utc - deviation * 60)
    return DateTime(
        local.tm_year,
        local.tm_mon,
        local.tm_mday,
        local.tm_wday + 1,
        local.tm_hour,
        local.tm_min,
        local.tm_sec,
        0,
        deviation,
        status,
    )


def datetime_from_data(data: Data) -> DateTime | None:
    """A date-time attribute: a 12-byte octet string or tag 25; ``None`` for null-data."""
    if data.tag is Tag.NULL:
        return None
    if data.tag is Tag.DATE_TIME and isinstance(data.value, DateTime):
        return data.value
    if data.tag is Tag.OCTET_STRING and isinstance(data.value, bytes):
        try:
            return DateTime.decode(data.value)
        except AxdrError as exc:
            raise CosemValueError("date-time octet string must be 12 bytes", data=data) from exc
    raise CosemValueError("not a date-time", data=data)


class ClockStatus(enum.IntFlag):
    INVALID_VALUE = 0x01
    DOUBTFUL_VALUE = 0x02
    DIFFERENT_CLOCK_BASE = 0x04
    INVALID_CLOCK_STATUS = 0x08
    DAYLIGHT_SAVING_ACTIVE = 0x80


@dataclass(frozen=True, slots=True)
class MeterClock:
    """The meter's clock (class 8, attribute 2) in UTC, with its deviation and status byte."""

    utc: int
    deviation: int | None
    status: int | None
    raw: DateTime

    @property
    def trustworthy(self) -> bool:
        """False when the meter flags its own time invalid or doubtful."""
        if self.status is None:
            return True
        return not self.status & (ClockStatus.INVALID_VALUE | ClockStatus.DOUBTFUL_VALUE)


def meter_clock_from_data(data: Data, fallback_deviation: int | None = 0) -> MeterClock:
    raw = datetime_from_data(data)
    if raw is None:
        raise CosemValueError("clock time is null-data")
    status = None if raw.status == 0xFF else raw.status
    return MeterClock(datetime_to_utc(raw, fallback_deviation), raw.deviation, status, raw)


# ---------------------------------------------------------------------------------------------
# Profile generic (class 7)


@dataclass(frozen=True, slots=True)
class CaptureObject:
    """One column of a profile: which attribute of which object is captured."""

    class_id: int
    obis: Obis
    attribute: int
    data_index: int = 0

    def to_data(self) -> Data:
        return Data.structure(
            [
                Data(Tag.UINT16, self.class_id),
                Data.octets(self.obis.encode()),
                Data(Tag.INT8, self.attribute),
                Data(Tag.UINT16, self.data_index),
            ]
        )

    @classmethod
    def from_data(cls, data: Data) -> CaptureObject:
        try:
            class_id, name, attribute, index = data.items
            return cls(
                class_id.as_int(), Obis.decode(name.as_bytes()), attribute.as_int(), index.as_int()
            )
        except (ValueError, AxdrError) as exc:
            raise CosemValueError(
                "capture object must be {long-unsigned, octet-string, integer, long-unsigned}",
                data=data,
            ) from exc

    @property
    def is_clock(self) -> bool:
        return self.class_id == ClassId.CLOCK and self.attribute == 2


def capture_objects_from_data(data: Data) -> tuple[CaptureObject, ...]:
    if data.tag is not Tag.ARRAY:
        raise CosemValueError("capture_objects must be an array", data=data)
    return tuple(CaptureObject.from_data(item) for item in data.items)


def range_descriptor(
    restricting: CaptureObject,
    start: DateTime,
    end: DateTime,
    selected: tuple[CaptureObject, ...] = (),
) -> Data:
    """Selective access selector 1: entries whose ``restricting`` column lies in [start, end]."""
    return Data.structure(
        [
            restricting.to_data(),
            Data.octets(start.encode()),
            Data.octets(end.encode()),
            Data.array([c.to_data() for c in selected]),
        ]
    )


def entry_descriptor(
    from_entry: int, to_entry: int = 0, from_column: int = 1, to_column: int = 0
) -> Data:
    """Selective access selector 2: entries from..to (1-based, to 0 = last), columns likewise."""
    return Data.structure(
        [
            Data(Tag.UINT32, from_entry),
            Data(Tag.UINT32, to_entry),
            Data(Tag.UINT16, from_column),
            Data(Tag.UINT16, to_column),
        ]
    )


class QuantityKind(enum.Enum):
    """What a profile column holds, from OBIS value group D (electricity, A = 1)."""

    CUMULATIVE = "cumulative"  # D = 8, 9: meter reading since start / billing period (e.g. 1.8.0)
    INTERVAL = "interval"  # D = 29: energy over one capture period (e.g. 1.29.0)
    INSTANTANEOUS = "instantaneous"  # D = 7
    TIMESTAMP = "timestamp"
    OTHER = "other"


def quantity_kind(capture: CaptureObject) -> QuantityKind:
    if capture.is_clock:
        return QuantityKind.TIMESTAMP
    obis = capture.obis
    if obis.a == 1 and 1 <= obis.c <= 80:
        if obis.d in (8, 9):
            return QuantityKind.CUMULATIVE
        if obis.d == 29:
            return QuantityKind.INTERVAL
        if obis.d == 7:
            return QuantityKind.INSTANTANEOUS
    return QuantityKind.OTHER


@dataclass(frozen=True, slots=True)
class ProfileValue:
    """One captured value of an entry, scaled exactly, and whether it is a reading or interval."""

    capture: CaptureObject
    kind: QuantityKind
    value: RegisterValue | None  # None for non-integer columns: see ``raw``
    raw: Data


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """One row of a load profile, stamped in UTC seconds."""

    timestamp: int
    clock_status: int | None
    timestamp_rebuilt: bool
    values: tuple[ProfileValue, ...]

    def value_of(self, obis: Obis | str) -> RegisterValue:
        wanted = as_obis(obis)
        for item in self.values:
            if item.capture.obis == wanted and item.value is not None:
                return item.value
        raise CosemValueError("profile entry has no integer value for this OBIS", obis=str(wanted))


def decode_profile_buffer(
    buffer: Data,
    capture_objects: tuple[CaptureObject, ...],
    capture_period: int,
    scalers: dict[Obis, tuple[int, int]],
    fallback_deviation: int | None = 0,
    previous_timestamp: int | None = None,
) -> list[ProfileEntry]:
    """Turn a profile buffer (array of structures) into entries.

    A null-data timestamp (compressed profiles) is rebuilt as the previous entry's timestamp plus
    the capture period; without a previous entry that is an error, never a guess.
    """
    if buffer.tag is not Tag.ARRAY:
        raise CosemValueError("profile buffer must be an array", tag=buffer.tag.name)
    clock_columns = [i for i, c in enumerate(capture_objects) if c.is_clock]
    if not clock_columns:
        raise CosemValueError("profile has no clock column; cannot timestamp entries")
    clock_index = clock_columns[0]
    entries: list[ProfileEntry] = []
    last = previous_timestamp
    for row_number, row in enumerate(buffer.items):
        if row.tag is not Tag.STRUCTURE or len(row.items) != len(capture_objects):
            raise CosemValueError(
                "profile row does not match capture objects",
                row=row_number,
                columns=len(capture_objects),
            )
        stamp = datetime_from_data(row.items[clock_index])
        if stamp is None:
            if last is None or capture_period <= 0:
                raise CosemValueError(
                    "null timestamp with nothing to rebuild it from", row=row_number
                )
            timestamp, status, rebuilt = last + capture_period, None, True
        else:
            timestamp = datetime_to_utc(stamp, fallback_deviation)
            status, rebuilt = (None if stamp.status == 0xFF else stamp.status), False
        values = []
        for column, (capture, cell) in enumerate(zip(capture_objects, row.items, strict=True)):
            if column == clock_index:
                continue
            value = None
            if cell.tag not in (Tag.FLOAT32, Tag.FLOAT64) and cell.tag in _INTEGER_TAGS:
                scaler, unit = scalers.get(capture.obis, (0, UNIT_NONE))
                value = RegisterValue(cell.as_int(), scaler, unit)
            values.append(ProfileValue(capture, quantity_kind(capture), value, cell))
        entries.append(ProfileEntry(timestamp, status, rebuilt, tuple(values)))
        last = timestamp
    return entries


_INTEGER_TAGS = frozenset(
    {
        Tag.INT8,
        Tag.INT16,
        Tag.INT32,
        Tag.INT64,
        Tag.UINT8,
        Tag.UINT16,
        Tag.UINT32,
        Tag.UINT64,
        Tag.ENUM,
    }
)
