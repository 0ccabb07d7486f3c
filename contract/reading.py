"""The reading: what a gateway attests about one meter for one interval.

A deterministic CBOR map (see docs/format.md §2). Its type key ``t`` is the shortest key, so it
always comes first and every reading's bytes start with the same 24-byte prefix; no other signed
form of the device key (an OCMF record, say) can be mistaken for a reading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.signing import KEY_ID_SIZE

READING_TYPE = "meterchain/reading/v1"
#: A reading never needs more; larger input is refused before it is parsed.
MAX_READING_SIZE = 2048
MAX_REGISTERS = 16
#: JSON clients lose precision above 2^53 − 1; the contract bounds every integer by it.
MAX_SAFE_INT = 2**53 - 1
MAX_INTERVAL_SECONDS = 86_400
DEFAULT_INTERVAL_SECONDS = 900

IMPORT_OBIS = "1-0:1.8.0"
EXPORT_OBIS = "1-0:2.8.0"
REGISTER_UNITS = frozenset({"Wh", "varh", "VAh"})

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
METER_SERIAL_RE = re.compile(r"[\x21-\x7e]{1,64}")
#: ASCII digits only: in a str pattern \d also matches other scripts' digits (Arabic-Indic "١"), which int()
#: reads, so one register would have several spellings under one signature check.
OBIS_RE = re.compile(r"(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})", re.ASCII)
#: The ASCII OBIS codes OBIS_RE accepts with every group at most 255, in one match (the common
#: case per register); anything else takes OBIS_RE and the group check.
_OBIS_BYTE = r"(?:[01]?[0-9]?[0-9]|2[0-4][0-9]|25[0-5])"
_OBIS_FAST_RE = re.compile(rf"{_OBIS_BYTE}-{_OBIS_BYTE}:{_OBIS_BYTE}\.{_OBIS_BYTE}\.{_OBIS_BYTE}")
_READING_KEYS = frozenset(
    {"t", "dev", "kid", "seq", "meter", "start", "end", "regs", "clock", "status", "quality"}
)


class ClockSync(StrEnum):
    """How far the interval boundaries can be trusted."""

    SYNCED = "synced"  # meter and gateway clocks agree within the configured threshold
    DRIFTED = "drifted"  # the meter's clock is off by more than the threshold
    UNSYNCED = "unsynced"  # the gateway has no synchronised time source
    UNKNOWN = "unknown"  # the meter has no readable clock


class Quality(StrEnum):
    """Where the register values come from."""

    MEASURED = "measured"
    ESTIMATED = "estimated"
    SUBSTITUTED = "substituted"


class StatusFlag:
    """Bits of the ``status`` field; unknown bits are kept and must be ignored by readers."""

    METER_ERROR = 1 << 0  # the meter reported an error during the interval
    POWER_FAILURE = 1 << 1  # the meter or gateway lost power during the interval
    BACKFILLED = 1 << 2  # read from the meter's load profile after an outage, not live
    METER_EXCHANGED = 1 << 3  # first reading of a new meter on this metering point
    TAMPER = 1 << 4  # the meter reported a tamper event
    # One reading over intervals the gateway could not sign in time (its disk was full): it
    # starts at the meter's previous reading (at most a day back), no per-interval values.
    SPANS_GAP = 1 << 5


@dataclass(frozen=True, slots=True)
class Register:
    """A cumulative register at the interval's end: an integer with its unit."""

    value: int
    unit: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter's registers at the end of one interval, as one gateway saw them."""

    device: str
    key_id: bytes
    seq: int
    meter: str
    start: int
    end: int
    registers: Mapping[str, Register]
    clock: ClockSync = ClockSync.SYNCED
    status: int = 0
    quality: Quality = Quality.MEASURED

    def __post_init__(self) -> None:
        object.__setattr__(self, "registers", MappingProxyType(dict(self.registers)))
        object.__setattr__(self, "clock", _enum(ClockSync, self.clock, "clock"))
        object.__setattr__(self, "quality", _enum(Quality, self.quality, "quality"))
        _validate(self)

    @property
    def import_wh(self) -> int:
        return self.registers[IMPORT_OBIS].value

    @property
    def export_wh(self) -> int:
        return self.registers[EXPORT_OBIS].value

    def to_cbor(self) -> bytes:
        """The reading's one byte form: what the device signs and the log keeps."""
        return cbor.encode(
            {
                "t": READING_TYPE,
                "dev": self.device,
                "kid": self.key_id,
                "seq": self.seq,
                "meter": self.meter,
                "start": self.start,
                "end": self.end,
                "regs": {obis: [r.value, r.unit] for obis, r in self.registers.items()},
                "clock": self.clock.value,
                "status": self.status,
                "quality": self.quality.value,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> Reading:
        """Parse and validate a reading; only its one deterministic byte form is accepted."""
        obj = cbor.decode(data, what="reading", max_size=MAX_READING_SIZE)
        if not isinstance(obj, dict):
            raise EncodingError("reading: not a CBOR map", what="reading")
        if obj.keys() != _READING_KEYS:
            missing, extra = sorted(_READING_KEYS - set(obj)), sorted(set(obj) - _READING_KEYS)
            raise FieldError(f"reading: missing {missing}, unknown {extra}", field="keys")
        if obj["t"] != READING_TYPE:
            raise FieldError(f"reading: type is {obj['t']!r}, expected {READING_TYPE!r}", field="t")
        regs = obj["regs"]
        if not isinstance(regs, dict):
            raise FieldError("reading: regs must be a map", field="regs")
        registers: dict[str, Register] = {}
        for obis, pair in regs.items():
            if not (isinstance(pair, list) and len(pair) == 2):
                raise FieldError(f"reading: register {obis} must be [value, unit]", field="regs")
            registers[obis] = Register(value=pair[0], unit=pair[1])
        for name in ("clock", "quality"):
            if not isinstance(obj[name], str):
                raise FieldError(f"reading: {name} must be text", field=name)
        return cls(
            device=obj["dev"],
            key_id=obj["kid"],
            seq=obj["seq"],
            meter=obj["meter"],
            start=obj["start"],
            end=obj["end"],
            registers=registers,
            clock=obj["clock"],
            status=obj["status"],
            quality=obj["quality"],
        )


def aligned_interval(now: int, length: int = DEFAULT_INTERVAL_SECONDS) -> tuple[int, int]:
    """The last complete interval before ``now``, aligned to UTC (``length`` divides a day)."""
    if length <= 0 or MAX_INTERVAL_SECONDS % length:
        raise ValueError(f"interval length {length} s must divide a day")
    end = now - now % length
    return end - length, end


def _enum(kind: type[StrEnum], value: Any, name: str) -> Any:
    if type(value) is kind:
        return value
    if type(value) is str and (member := kind._value2member_map_.get(value)) is not None:
        return member  # what kind(value) returns, without the enum machinery's call
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise FieldError(f"reading: {name} {value!r} is not one of {allowed}", field=name) from None


def _int(value: object, name: str, low: int, high: int = MAX_SAFE_INT) -> None:
    if type(value) is int and low <= value <= high:  # the common case, before the general one
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(f"reading: {name} must be an integer", field=name)
    if not low <= value <= high:
        raise FieldError(f"reading: {name} {value} is outside [{low}, {high}]", field=name)


def _check_obis(obis: object) -> None:
    groups = OBIS_RE.fullmatch(obis) if isinstance(obis, str) else None
    if groups is None:
        raise FieldError(f"reading: {obis!r} is not an OBIS code like 1-0:1.8.0", field="regs")
    if any(int(part) > 255 for part in groups.groups()):
        raise FieldError(f"reading: OBIS {obis} has a group above 255", field="regs")


def _validate(r: Reading) -> None:
    if not isinstance(r.device, str) or not DEVICE_ID_RE.fullmatch(r.device):
        raise FieldError(
            "reading: device id must be 1-64 of A-Z a-z 0-9 . _ - (it names an MQTT topic)",
            field="dev",
        )
    if not isinstance(r.key_id, bytes) or len(r.key_id) != KEY_ID_SIZE:
        raise FieldError("reading: key id must be 32 bytes (SHA-256 of the SPKI)", field="kid")
    _int(r.seq, "seq", 1)
    if not isinstance(r.meter, str) or not METER_SERIAL_RE.fullmatch(r.meter):
        raise FieldError("reading: meter serial must be 1-64 printable ASCII characters", field="meter")
    _int(r.start, "start", 0)
    _int(r.end, "end", 1)
    if not 0 < r.end - r.start <= MAX_INTERVAL_SECONDS:
        raise FieldError(
            f"reading: interval [{r.start}, {r.end}) must be 1 s to one day long", field="end"
        )
    _int(r.status, "status", 0, 2**32 - 1)
    if not 2 <= len(r.registers) <= MAX_REGISTERS:
        raise FieldError(
            f"reading: {len(r.registers)} registers; need 2 to {MAX_REGISTERS}", field="regs"
        )
    for obis, reg in r.registers.items():
        if not (isinstance(obis, str) and _OBIS_FAST_RE.fullmatch(obis)):
            _check_obis(obis)
        if not isinstance(reg, Register):
            raise FieldError(f"reading: register {obis} is not a Register", field="regs")
        if type(reg.value) is not int or not 0 <= reg.value <= MAX_SAFE_INT:
            _int(reg.value, f"register {obis}", 0)
        if reg.unit not in REGISTER_UNITS:
            raise FieldError(
                f"reading: register {obis} unit {reg.unit!r} is not one of {sorted(REGISTER_UNITS)}",
                field="regs",
            )
    for obis in (IMPORT_OBIS, EXPORT_OBIS):
        if obis not in r.registers:
            raise FieldError(f"reading: register {obis} is required", field="regs")
        if r.registers[obis].unit != "Wh":
            raise FieldError(f"reading: register {obis} must be in Wh", field="regs")
