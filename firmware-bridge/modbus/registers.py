"""Register maps of Eastron SDM meters, as data, and the one codec both reader and emulator use.

A map says, per register: table (input or holding), address, name, value type and unit. The
emulator serves exactly what its map says (anything else is "illegal data address"); the reader
finds every value through the same map, so a map entry moved is moved for both sides.

Word order: float32 and uint32 take two registers, high word first ("big"), as Eastron documents.
Spans: real SDM meters answer block reads that cross reserved words inside a parameter block (the
reserved words read as zero); outside the spans they answer exception 02. ``spans`` records the
blocks; a register must lie inside one.

Model identification (for a bus scan): the line-to-line voltage registers (input 0x00C8...) exist
only on three-phase meters. A meter that answers input 0x00C8 is three-phase (SDM630), one that
answers exception 02 there but answers 0x0000 is single-phase (SDM120). This does not depend on
the values (an SDM630 wired single-phase still has the registers, its L2/L3 just read 0 V).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Final

from meterchain.bridge.modbus.errors import RegisterMapError
from pymodbus.client.mixin import ModbusClientMixin

DATATYPE = ModbusClientMixin.DATATYPE
WORD_ORDER: Final = "big"

# The agent's one block read: 0x0000..0x004B holds voltages, currents, powers, frequency and the
# import/export energy registers of both models (76 registers, within the 125-register limit).
ENERGY_BLOCK_START = 0x0000
ENERGY_BLOCK_COUNT = 76
# Read to tell a three-phase meter from a single-phase one (see module docstring).
MODEL_PROBE_ADDRESS = 0x00C8
MODEL_PROBE_COUNT = 2


class Table(StrEnum):
    """Which Modbus table a register lives in (function 04 reads input, 03 holding)."""

    INPUT = "input"
    HOLDING = "holding"


class ValueType(StrEnum):
    FLOAT32 = "float32"
    UINT32 = "uint32"


_DATATYPES = {ValueType.FLOAT32: DATATYPE.FLOAT32, ValueType.UINT32: DATATYPE.UINT32}


@dataclass(frozen=True)
class Register:
    """One value: where it is, what it is called, how it is encoded, what unit it has."""

    table: Table
    address: int
    name: str
    value_type: ValueType
    unit: str

    @property
    def words(self) -> int:
        return 2

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.words


@dataclass(frozen=True)
class Span:
    """A block of addresses a meter answers; words in it without a register read as zero."""

    table: Table
    first: int
    last: int

    def contains(self, address: int, count: int) -> bool:
        return self.first <= address and address + count - 1 <= self.last


@dataclass(frozen=True)
class RegisterMap:
    """Everything the reader and the emulator know about one meter model."""

    model: str
    phases: tuple[str, ...]
    default_baudrate: int
    baud_codes: Mapping[int, int]
    spans: tuple[Span, ...]
    registers: tuple[Register, ...]
    _by_name: dict[str, Register] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Register] = {}
        for reg in self.registers:
            if reg.name in by_name:
                raise RegisterMapError("duplicate register name", model=self.model, name=reg.name)
            if not any(s.table == reg.table and s.contains(reg.address, reg.words) for s in self.spans):
                raise RegisterMapError(
                    "register outside every span", model=self.model, name=reg.name,
                    address=hex(reg.address),
                )
            by_name[reg.name] = reg
        for table in Table:
            ordered = sorted((r for r in self.registers if r.table == table), key=lambda r: r.address)
            for before, after in pairwise(ordered):
                if after.address < before.end:
                    raise RegisterMapError(
                        "overlapping registers", model=self.model, first=before.name,
                        second=after.name,
                    )
        object.__setattr__(self, "_by_name", by_name)

    def register(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise RegisterMapError("no such register", model=self.model, name=name) from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def covers(self, table: Table, address: int, count: int) -> bool:
        """Whether the meter answers a read of ``count`` words at ``address`` (else exception 02)."""
        return count >= 1 and any(s.table == table and s.contains(address, count) for s in self.spans)

    def in_range(self, table: Table, address: int, count: int) -> list[Register]:
        """Registers wholly inside [address, address + count)."""
        return [
            r for r in self.registers
            if r.table == table and address <= r.address and r.end <= address + count
        ]


def encode_registers(
    register_map: RegisterMap, table: Table, address: int, count: int,
    values: Mapping[str, float | int],
) -> list[int] | None:
    """The words a meter answers for a read; ``None`` means exception 02 (illegal data address).

    Registers the values do not name, and reserved words, read as zero. A register cut by the read
    window contributes the words inside it, as on a real meter.
    """
    if not register_map.covers(table, address, count):
        return None
    words = [0] * count
    for reg in register_map.registers:
        if reg.table != table or reg.end <= address or reg.address >= address + count:
            continue
        value = values.get(reg.name, 0)
        value = float(value) if reg.value_type == ValueType.FLOAT32 else int(value)
        encoded = ModbusClientMixin.convert_to_registers(
            value, _DATATYPES[reg.value_type], word_order=WORD_ORDER
        )
        for offset, word in enumerate(encoded):
            if address <= reg.address + offset < address + count:
                words[reg.address + offset - address] = word
    return words


def decode_registers(
    register_map: RegisterMap, table: Table, address: int, words: Sequence[int]
) -> dict[str, float | int]:
    """Values of every register wholly inside a block read, by name."""
    decoded: dict[str, float | int] = {}
    for reg in register_map.in_range(table, address, len(words)):
        chunk = list(words[reg.address - address : reg.end - address])
        value = ModbusClientMixin.convert_from_registers(
            chunk, _DATATYPES[reg.value_type], word_order=WORD_ORDER
        )
        if not isinstance(value, (int, float)):  # every type of a register map decodes to one number
            raise RegisterMapError("register did not decode to a number", model=register_map.model, name=reg.name)
        decoded[reg.name] = value
    return decoded


def _float_block(table: Table, entries: Sequence[tuple[int, str, str]]) -> tuple[Register, ...]:
    return tuple(Register(table, addr, name, ValueType.FLOAT32, unit) for addr, name, unit in entries)


def _phase_entries(phases: Sequence[str]) -> list[tuple[int, str, str]]:
    """The per-phase blocks: each quantity takes 2 words per phase, three phases reserved."""
    quantities = (
        (0x0000, "voltage", "V"), (0x0006, "current", "A"), (0x000C, "power", "W"),
        (0x0012, "apparent_power", "VA"), (0x0018, "reactive_power", "var"),
        (0x001E, "power_factor", ""), (0x0024, "phase_angle", "deg"),
    )
    return [
        (base + 2 * i, f"{name}_{phase}", unit)
        for base, name, unit in quantities
        for i, phase in enumerate(phases)
    ]


_ENERGY_ENTRIES = [
    (0x0046, "frequency", "Hz"),
    (0x0048, "import_energy", "kWh"),
    (0x004A, "export_energy", "kWh"),
    (0x004C, "import_reactive_energy", "kvarh"),
    (0x004E, "export_reactive_energy", "kvarh"),
    (0x0156, "total_energy", "kWh"),
    (0x0158, "total_reactive_energy", "kvarh"),
]

_HOLDING = (
    *_float_block(Table.HOLDING, [
        (0x0012, "network_parity_stop", "code"),
        (0x0014, "modbus_address", ""),
        (0x001C, "baud_code", "code"),
    ]),
    Register(Table.HOLDING, 0xFC00, "serial_number", ValueType.UINT32, ""),
)

_HOLDING_SPANS = (
    Span(Table.HOLDING, 0x0012, 0x0015),
    Span(Table.HOLDING, 0x001C, 0x001D),
    Span(Table.HOLDING, 0xFC00, 0xFC01),
)

SDM630 = RegisterMap(
    model="sdm630",
    phases=("l1", "l2", "l3"),
    default_baudrate=9600,
    baud_codes={2400: 0, 4800: 1, 9600: 2, 19200: 3, 38400: 4},
    spans=(
        Span(Table.INPUT, 0x0000, 0x004F),
        Span(Table.INPUT, 0x00C8, 0x00CF),
        Span(Table.INPUT, 0x00E0, 0x00E1),
        Span(Table.INPUT, 0x0156, 0x0159),
        *_HOLDING_SPANS,
    ),
    registers=(
        *_float_block(Table.INPUT, _phase_entries(("l1", "l2", "l3"))),
        *_float_block(Table.INPUT, [
            (0x002A, "average_voltage", "V"),
            (0x002E, "average_current", "A"),
            (0x0030, "sum_current", "A"),
            (0x0034, "power_total", "W"),
            (0x0038, "apparent_power_total", "VA"),
            (0x003C, "reactive_power_total", "var"),
            (0x003E, "power_factor_total", ""),
            (0x0042, "phase_angle_total", "deg"),
            *_ENERGY_ENTRIES,
            (0x00C8, "voltage_l1_l2", "V"),
            (0x00CA, "voltage_l2_l3", "V"),
            (0x00CC, "voltage_l3_l1", "V"),
            (0x00CE, "average_line_voltage", "V"),
            (0x00E0, "neutral_current", "A"),
        ]),
        *_HOLDING,
    ),
)

SDM120 = RegisterMap(
    model="sdm120",
    phases=("l1",),
    default_baudrate=2400,
    baud_codes={1200: 5, 2400: 0, 4800: 1, 9600: 2},
    spans=(
        Span(Table.INPUT, 0x0000, 0x004F),
        Span(Table.INPUT, 0x0156, 0x0159),
        *_HOLDING_SPANS,
    ),
    registers=(
        *_float_block(Table.INPUT, _phase_entries(("l1",))),
        *_float_block(Table.INPUT, _ENERGY_ENTRIES),
        *_HOLDING,
    ),
)

REGISTER_MAPS: dict[str, RegisterMap] = {m.model: m for m in (SDM630, SDM120)}


def register_map_for(model: str | RegisterMap) -> RegisterMap:
    """A shipped map by model name (case-insensitive), or the map itself."""
    if isinstance(model, RegisterMap):
        return model
    try:
        return REGISTER_MAPS[model.lower()]
    except KeyError:
        raise RegisterMapError(
            "unknown meter model", model=model, known=sorted(REGISTER_MAPS)
        ) from None


def identify_model(
    probe_answered: bool, candidates: Sequence[RegisterMap] = (SDM630, SDM120)
) -> RegisterMap:
    """The one map consistent with the probe read of input ``MODEL_PROBE_ADDRESS``.

    ``probe_answered`` is True when the meter answered the probe with data, False when it answered
    exception 02. A silent meter is not identified here (the reader raises MeterTimeout).
    """
    matches = [
        m for m in candidates
        if m.covers(Table.INPUT, MODEL_PROBE_ADDRESS, MODEL_PROBE_COUNT) == probe_answered
    ]
    if len(matches) != 1:
        raise RegisterMapError(
            "probe does not single out one model", probe_answered=probe_answered,
            matches=[m.model for m in matches],
        )
    return matches[0]
