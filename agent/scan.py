"""``meterchain agent scan PORT``: find the Modbus meters on a serial line, propose their config.

A bounded, polite scan: every (baud rate, id) pair gets one short request (the three-phase probe
of ``ModbusMeterReader.identify``) with a timeout scaled to the line speed, no retries, one at a
time. A silent id is a timeout, not an error; the whole scan of an empty bus takes at most
``len(baudrates) * len(ids) * timeout``. An answering meter is identified from its registers
(SDM630: three-phase registers present; SDM120: absent), then read once for its serial and
first values. Garbled answers are counted: they mean a wrong baud rate, A/B swapped or noise.

Meters that answer at different speeds on one port cannot share that bus in the config (one bus,
one speed): the proposal keeps the speed most meters use and says which meter to reconfigure.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from meterchain.bridge.errors import BridgeError
from meterchain.bridge.modbus.errors import MeterTimeout
from meterchain.bridge.modbus.reader import ModbusMeterReader, SerialPortError
from meterchain.bridge.modbus.registers import RegisterMap

DEFAULT_BAUDRATES = (9600, 2400, 19200, 4800, 38400, 1200)
DEFAULT_IDS = tuple(range(1, 17))
_PROBE_WIRE_CHARS = 8 + 9 + 7  # request, 2-register answer, two 3.5-character gaps


def probe_timeout(baudrate: int, base: float = 0.15) -> float:
    """Long enough for the probe's wire time at ``baudrate`` twice over, plus ``base``."""
    return base + 2 * _PROBE_WIRE_CHARS * 10 / baudrate


@dataclass(frozen=True, slots=True)
class FoundMeter:
    port: str
    baudrate: int
    modbus_id: int
    model: str
    serial: str
    import_wh: int
    export_wh: int
    power_w: int


@dataclass(slots=True)
class ScanReport:
    port: str
    baudrates: tuple[int, ...]
    ids: tuple[int, ...]
    found: list[FoundMeter] = field(default_factory=list)
    garbled: list[str] = field(default_factory=list)  # "9600 baud id 3: bad CRC …"
    errors: list[str] = field(default_factory=list)  # meters that answered, then failed
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


async def scan_port(port: str, *, baudrates: Sequence[int] = DEFAULT_BAUDRATES,
                    ids: Sequence[int] = DEFAULT_IDS, base_timeout: float = 0.15) -> ScanReport:
    """Probe every id at every speed; raises SerialPortError if the port cannot be opened."""
    report = ScanReport(port, tuple(baudrates), tuple(ids))
    began = time.monotonic()
    for baudrate in baudrates:
        answered: list[tuple[int, RegisterMap]] = []
        reader = ModbusMeterReader(port, baudrate, timeout=probe_timeout(baudrate, base_timeout))
        try:
            await reader.open()
            for modbus_id in ids:
                register_map = await _probe(reader, modbus_id, report)
                if register_map is not None:
                    answered.append((modbus_id, register_map))
        finally:
            reader.close()
        if answered:  # the 76-register block takes longer on the wire than the probe
            block_timeout = probe_timeout(baudrate, base_timeout) * (8 + 157 + 7) / 24
            async with ModbusMeterReader(port, baudrate, timeout=block_timeout) as values_reader:
                for modbus_id, register_map in answered:
                    await _read_first_values(values_reader, modbus_id, register_map, report)
    report.seconds = round(time.monotonic() - began, 2)
    return report


async def _probe(reader: ModbusMeterReader, modbus_id: int, report: ScanReport) -> RegisterMap | None:
    try:
        return await reader.identify(modbus_id)
    except MeterTimeout:
        return None  # nobody there at this speed: the normal case
    except BridgeError as exc:
        report.garbled.append(f"{reader.baudrate} baud id {modbus_id}: {exc}")
        return None


async def _read_first_values(reader: ModbusMeterReader, modbus_id: int, register_map: RegisterMap,
                             report: ScanReport) -> None:
    try:
        values = await reader.read_values(modbus_id, register_map)
    except BridgeError as exc:
        report.errors.append(f"{reader.baudrate} baud id {modbus_id} ({register_map.model}): {exc}")
        return
    report.found.append(FoundMeter(reader.port, reader.baudrate, modbus_id, register_map.model,
                                   values.serial, values.import_wh, values.export_wh,
                                   values.power_w))


@dataclass(frozen=True, slots=True)
class Proposal:
    meters: list[dict[str, object]]  # the [[meters]] tables for the agent config
    advice: list[str]


def propose_meters(found: Sequence[FoundMeter]) -> Proposal:
    """The config's meters section; one speed per port, the others named with what to do."""
    meters: list[dict[str, object]] = []
    advice: list[str] = []
    for port in sorted({m.port for m in found}):
        on_port = [m for m in found if m.port == port]
        speed = Counter(m.baudrate for m in on_port).most_common(1)[0][0]
        for meter in sorted(on_port, key=lambda m: m.modbus_id):
            if meter.baudrate != speed:
                advice.append(
                    f"{meter.model} id {meter.modbus_id} (serial {meter.serial}) answers at "
                    f"{meter.baudrate} baud, the others on {port} at {speed}: set it to {speed} "
                    "baud on its display (one bus, one speed), or wire it to another port")
                continue
            meters.append({"name": f"{meter.model}-{meter.modbus_id}", "model": meter.model,
                           "port": port, "baudrate": meter.baudrate,
                           "modbus_id": meter.modbus_id})
    return Proposal(meters, advice)


def empty_bus_causes(report: ScanReport) -> list[str]:
    """What to check when nothing answered (in the order an installer can check them)."""
    causes = [
        f"wrong port: is the RS-485 adapter {report.port}? (ls -l /dev/serial/by-id/)",
        "A/B swapped: swap the two data wires of the RS-485 pair (a silent bus is the usual sign)",
        (f"baud rate or id outside the scan ({', '.join(map(str, report.baudrates))} baud, ids "
         f"{report.ids[0]}-{report.ids[-1]}): read them on the meter's display, pass --baud/--ids"),
        "the meter has no power, or the bus no 120 ohm termination at its far end",
    ]
    if report.garbled:
        causes.insert(0, "garbled answers: wrong baud rate, A/B swapped or a noisy line "
                         "(see the garbled list)")
    return causes


__all__ = ["FoundMeter", "Proposal", "ScanReport", "SerialPortError", "empty_bus_causes",
           "probe_timeout", "propose_meters", "scan_port"]
