"""``meterchain agent scan PORT --protocol dlms``: find DLMS/COSEM meters by HDLC address.

The same bounded, polite scan as the Modbus one (scan.py): for every (baud rate, server address)
pair one HDLC SNRM, no retries, with a timeout scaled to the line speed; a UA is a meter. A silent
address is a timeout, counted, not an error, so an empty line takes at most
``len(addresses) * sum(probe_timeout(rate) for rate in baudrates)``. Frames with a bad check
sequence, from an unexpected address, or bytes that form no frame at all are counted as hints
(wrong speed, A/B swapped, noise). An answering meter is then identified in one association as
the public client (16, lowest-level security): serial (0-0:96.1.0.255) and logical device name
(0-0:42.0.0.255), clock, import and export registers, and the load profile's capture period
and columns, checked as the agent would; then released and disconnected.

The frames come from the bridge's sans-IO ``ClientConnection`` through ``DlmsMeterClient``;
this module only shares one open port between the probes of one speed. Optical ports that need
the IEC 62056-21 mode E hand-over (sign-on at 300 baud, then HDLC) are out of scope: scan the
meter's RS-485 or RS-232 port, or an optical head already in HDLC mode.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from meterchain.agent.backfill import check_clock
from meterchain.agent.dlms_config import DEFAULT_CLOCK_DRIFT_THRESHOLD_SECONDS
from meterchain.agent.meters_dlms import (
    DlmsProfileError,
    read_profile_layout,
    whole_wh,
)
from meterchain.agent.scan import Proposal
from meterchain.bridge.dlms import LOAD_PROFILE_OBIS, DlmsMeterClient, HdlcAddress, Obis, RegisterValue
from meterchain.bridge.dlms.errors import (
    AddressError,
    AssociationError,
    DataAccessError,
    DlmsError,
    HdlcError,
    LinkError,
    PortError,
    RetriesExhausted,
)
from meterchain.bridge.dlms.obis import ACTIVE_EXPORT_OBIS, ACTIVE_IMPORT_OBIS, LOGICAL_DEVICE_NAME_OBIS
from meterchain.bridge.dlms.serial_client import SerialTransport
from meterchain.contract.reading import METER_SERIAL_RE, ClockSync

_T = TypeVar("_T")

DEFAULT_DLMS_BAUDRATES = (9600, 2400, 4800, 19200)
DEFAULT_HDLC_ADDRESSES = "1,1/16-31"  # point-to-point logical 1; multi-drop stations 16-31
PUBLIC_CLIENT = 16
MAX_ADDRESSES = 1024  # a scan stays bounded whatever --hdlc says
_PROBE_WIRE_CHARS = 2 * 36  # SNRM with link parameters and its UA, 4-byte addresses
_RESERVED_LOWER = {0x7E, 0x7F, 0x3FFE, 0x3FFF}  # calling / all-station (broadcast) addresses


def dlms_probe_timeout(baudrate: int, base: float = 0.3) -> float:
    """Long enough for SNRM and UA on the wire at ``baudrate`` twice over, plus ``base``."""
    return base + 2 * _PROBE_WIRE_CHARS * 10 / baudrate


def dlms_scan_bound(baudrates: Sequence[int], addresses: Sequence[HdlcAddress],
                    base: float = 0.3) -> float:
    """The most the probing of an empty line can take, in seconds."""
    return sum(dlms_probe_timeout(rate, base) for rate in baudrates) * len(addresses)


def parse_hdlc_addresses(text: str) -> list[HdlcAddress]:
    """``1,1/16-31,2/4660``: logical addresses alone (1 byte) or logical/physical, with ranges.

    Raises ValueError for anything else, broadcast or reserved addresses, or too many of them.
    """
    addresses: list[HdlcAddress] = []
    for item in text.split(","):
        upper_text, slash, lower_text = item.strip().partition("/")
        if not slash:
            first, last = _span(upper_text, 1, 0x7D)
            addresses.extend(HdlcAddress(upper) for upper in range(first, last + 1))
            continue
        upper = int(upper_text)
        if not 1 <= upper <= 0x3FFD:
            raise ValueError(f"logical address {upper} is outside 1-16381")
        first, last = _span(lower_text, 1, 0x3FFD)
        addresses.extend(
            HdlcAddress(upper, lower) for lower in range(first, last + 1)
            if lower not in _RESERVED_LOWER
        )
    unique = list(dict.fromkeys(addresses))
    if not unique or len(unique) > MAX_ADDRESSES:
        raise ValueError(f"{len(unique)} addresses: give 1 to {MAX_ADDRESSES}")
    return unique


def _span(text: str, low: int, high: int) -> tuple[int, int]:
    first_text, _, last_text = text.strip().partition("-")
    first, last = int(first_text), int(last_text or first_text)
    if not low <= first <= last <= high:
        raise ValueError(f"{text!r} is not a range within {low}-{high}")
    return first, last


@dataclass(frozen=True, slots=True)
class FoundDlmsMeter:
    port: str
    baudrate: int
    server_address: int  # HDLC upper address: the logical device
    physical_address: int | None  # HDLC lower address; None: a 1-byte address
    serial: str | None  # 0-0:96.1.0.255; None: the meter has none
    logical_device_name: str | None  # 0-0:42.0.0.255
    import_wh: int | None
    export_wh: int | None  # None: no 1-0:2.8.0.255 (or not in whole Wh)
    clock_drift_seconds: float | None  # meter clock - gateway clock
    clock_drifted: bool  # beyond the agent's default threshold, or the meter doubts its clock
    capture_period: int | None  # of the load profile 1-0:99.1.0.255; None: no profile
    profile: str  # "ok", or why the agent cannot sign readings from it

    @property
    def address(self) -> str:
        return str(HdlcAddress(self.server_address, self.physical_address))

    @property
    def identity(self) -> str:
        return self.serial or self.logical_device_name or "?"


@dataclass(slots=True)
class DlmsScanReport:
    port: str
    baudrates: tuple[int, ...]
    addresses: tuple[str, ...]
    found: list[FoundDlmsMeter] = field(default_factory=list)
    silent: int = 0  # probes nobody answered: the normal case
    garbled: list[str] = field(default_factory=list)  # "9600 baud HDLC 1/17: bad FCS …"
    errors: list[str] = field(default_factory=list)  # meters that answered, then failed
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        found = [asdict(m) | {"address": m.address} for m in self.found]
        return asdict(self) | {"found": found}


class _SharedLine:
    """One open serial port lent to a client per probe; counts what arrives (noise is a hint)."""

    def __init__(self, port: str, baudrate: int) -> None:
        self.serial = SerialTransport(port, baudrate)
        self.received = 0

    async def open(self) -> None:
        """Opened once by the scan (``really_open``), not by each client."""

    async def really_open(self) -> None:
        await self.serial.open()

    def write(self, data: bytes) -> None:
        self.serial.write(data)

    async def read(self, timeout: float) -> bytes:
        data = await self.serial.read(timeout)
        self.received += len(data)
        return data

    def close(self) -> None:
        """A client's close leaves the port open for the next probe."""

    def really_close(self) -> None:
        self.serial.close()


async def scan_dlms_port(
    port: str, *, baudrates: Sequence[int] = DEFAULT_DLMS_BAUDRATES,
    addresses: Sequence[HdlcAddress] | None = None, base_timeout: float = 0.3,
    read_timeout: float = 2.0, clock: Callable[[], float] = time.time,
) -> DlmsScanReport:
    """Probe every address at every speed; raises PortError if the port cannot be opened."""
    addresses = list(addresses) if addresses is not None else parse_hdlc_addresses(
        DEFAULT_HDLC_ADDRESSES)
    report = DlmsScanReport(port, tuple(baudrates), tuple(str(a) for a in addresses))
    began = time.monotonic()
    for baudrate in baudrates:
        line = _SharedLine(port, baudrate)
        await line.really_open()
        try:
            for address in addresses:
                if await _probe(line, port, baudrate, address, base_timeout, report):
                    await _identify(line, port, baudrate, address, read_timeout, clock, report)
        finally:
            line.really_close()
    report.seconds = round(time.monotonic() - began, 2)
    return report


def _client(line: _SharedLine, port: str, baudrate: int, address: HdlcAddress, timeout: float,
            retries: int) -> DlmsMeterClient:
    return DlmsMeterClient(port, baudrate, client_address=PUBLIC_CLIENT, server_address=address,
                           timeout=timeout, max_retries=retries, transport=line)


async def _probe(line: _SharedLine, port: str, baudrate: int, address: HdlcAddress,
                 base_timeout: float, report: DlmsScanReport) -> bool:
    """One SNRM, no retry: True on a UA. The link is left up for the identifying session."""
    line.serial.discard_input()  # a late answer to the previous probe must not count here
    line.received = 0
    where = f"{baudrate} baud HDLC {address}"
    client = _client(line, port, baudrate, address, dlms_probe_timeout(baudrate, base_timeout), 0)
    try:
        await client.open_link()
        return True
    except PortError:
        raise
    except RetriesExhausted as exc:
        fault = exc.last_fault
        if isinstance(fault, (HdlcError, AddressError)):
            report.garbled.append(f"{where}: {fault.diagnostics()}")
        elif line.received:
            report.garbled.append(f"{where}: {line.received} bytes that form no HDLC frame")
        else:
            report.silent += 1  # nobody at this address and speed: the normal case
    except LinkError as exc:  # DM or FRMR: a station is there and refuses the link
        report.errors.append(f"{where}: {exc.diagnostics()} (another client may hold the "
                             "meter's link: stop it, or wait for its inactivity timeout)")
    return False


async def _identify(line: _SharedLine, port: str, baudrate: int, address: HdlcAddress,
                    read_timeout: float, clock: Callable[[], float],
                    report: DlmsScanReport) -> None:
    """Associate as the public client and read who the meter is; release and disconnect."""
    where = f"{baudrate} baud HDLC {address}"
    client = _client(line, port, baudrate, address, read_timeout, 2)
    try:
        await client.connect()
        report.found.append(await _read_meter(client, port, baudrate, address, clock))
    except PortError:
        raise
    except AssociationError as exc:
        report.errors.append(f"{where}: answers, but refused the public client's association "
                             f"({exc.diagnostics()})")
    except DlmsError as exc:
        report.errors.append(f"{where}: answers, then failed: {exc.diagnostics()}")
    finally:
        await client.close()


async def _optional(read: Callable[..., Awaitable[_T]], *args: object) -> _T | None:
    """The value, or None when the meter has no such object (it answered: not an error)."""
    try:
        return await read(*args)
    except DataAccessError:
        return None


async def _read_meter(client: DlmsMeterClient, port: str, baudrate: int, address: HdlcAddress,
                      clock: Callable[[], float]) -> FoundDlmsMeter:
    serial = await _optional(client.read_serial)
    name = await _optional(client.read_serial, LOGICAL_DEVICE_NAME_OBIS)
    asked = clock()
    meter_clock = await _optional(client.read_clock)
    answered = clock()
    drift, drifted = None, False
    if meter_clock is not None:
        check = check_clock(meter_clock.utc, asked_at=asked, answered_at=answered,
                            threshold=DEFAULT_CLOCK_DRIFT_THRESHOLD_SECONDS,
                            gateway=ClockSync.SYNCED, meter_trustworthy=meter_clock.trustworthy)
        drift, drifted = round(check.drift, 1) or 0.0, check.drifted  # no -0.0
    import_wh = _wh(await _optional(client.read_register, ACTIVE_IMPORT_OBIS), ACTIVE_IMPORT_OBIS)
    export_wh = _wh(await _optional(client.read_register, ACTIVE_EXPORT_OBIS), ACTIVE_EXPORT_OBIS)
    period, profile = None, "ok"
    try:
        layout = await read_profile_layout(client, LOAD_PROFILE_OBIS)
        period = layout.period
    except DataAccessError:
        profile = f"no load profile at {LOAD_PROFILE_OBIS} (set profile_obis if it is elsewhere)"
    except DlmsProfileError as exc:
        profile = str(exc)
    return FoundDlmsMeter(port, baudrate, address.upper, address.lower, serial, name, import_wh,
                          export_wh, drift, drifted, period, profile)


def _wh(value: RegisterValue | None, obis: Obis) -> int | None:
    if value is None:
        return None
    try:
        return whole_wh(value, obis, 0)
    except DlmsProfileError:
        return None  # not in whole Wh: the profile check says whether the agent minds


def propose_dlms_meters(found: Sequence[FoundDlmsMeter],
                        taken_ports: frozenset[str] = frozenset()) -> Proposal:
    """The config's DLMS meters: every meter of a line at the speed most of them answer at
    (the agent reads a multi-drop line at one speed, one meter at a time)."""
    meters: list[dict[str, object]] = []
    advice: list[str] = []
    for port in sorted({m.port for m in found}):
        on_port = sorted((m for m in found if m.port == port),
                         key=lambda m: (m.server_address, m.physical_address or 0))
        speeds = [m.baudrate for m in on_port]
        speed = max(speeds, key=speeds.count)  # ties: the lowest address's
        for meter in on_port:
            label = f"DLMS meter {meter.identity} (HDLC {meter.address}, {meter.baudrate} baud)"
            if port in taken_ports:
                advice.append(f"{label} shares {port} with the Modbus meters: a line carries one "
                              "protocol; wire it to another adapter")
                continue
            if meter.baudrate != speed:
                advice.append(f"{label} is on {port} with meters at {speed} baud: the agent reads "
                              f"a line at one speed; set the meter to {speed} baud")
                continue
            meters.append(_dlms_table(meter))
            advice.extend(_meter_advice(label, meter))
    return Proposal(meters, advice)


def _dlms_table(meter: FoundDlmsMeter) -> dict[str, object]:
    table: dict[str, object] = {
        "name": f"dlms-{meter.address.replace('/', '-')}", "model": "dlms", "port": meter.port,
        "baudrate": meter.baudrate, "client_address": PUBLIC_CLIENT,
        "server_address": meter.server_address,
    }
    if meter.physical_address is not None:
        table["physical_address"] = meter.physical_address
    if meter.serial is None and meter.logical_device_name is not None \
            and METER_SERIAL_RE.fullmatch(meter.logical_device_name):
        table["serial"] = meter.logical_device_name
    return table


def _meter_advice(label: str, meter: FoundDlmsMeter) -> list[str]:
    advice = []
    if meter.serial is None:
        advice.append(f"{label} has no serial number object 0-0:96.1.0.255: the proposal names "
                      "it by its logical device name; change `serial` when the meter is exchanged"
                      if meter.logical_device_name else
                      f"{label} has no serial number: set `serial` from its nameplate")
    if meter.profile != "ok":
        advice.append(f"{label}: {meter.profile}; the agent cannot sign its readings until fixed "
                      "(the public client may see less than the management client: try "
                      "client_address = 1 with its password_file)")
    if meter.clock_drifted:
        advice.append(f"{label}: its clock is {meter.clock_drift_seconds:+.0f} s off the "
                      "gateway's; set it with the utility's tool, or readings are marked drifted")
    return advice


def empty_line_causes(report: DlmsScanReport, *, wiring: bool = True) -> list[str]:
    """What to check when no DLMS meter answered; ``wiring=False`` leaves out the causes the
    Modbus scan's list already names (port, A/B, power)."""
    causes = [
        (f"baud rate or HDLC address outside the scan ({', '.join(map(str, report.baudrates))} "
         f"baud, addresses {','.join(report.addresses[:3])}"
         f"{'…' if len(report.addresses) > 3 else ''}): read them in the meter's menu or "
         "nameplate, pass --baud/--hdlc"),
        "an optical head needs the IEC 62056-21 mode E sign-on at 300 baud first (not "
        "supported): use the meter's RS-485 or RS-232 port",
    ]
    if wiring:
        causes = [
            f"wrong port: is the RS-485 adapter {report.port}? (ls -l /dev/serial/by-id/)",
            "A/B swapped: swap the two data wires of the RS-485 pair (a silent line is the usual "
            "sign)",
            *causes,
            "the meter has no power, or the line no 120 ohm termination at its far end",
        ]
    if report.garbled:
        causes.insert(0, "garbled answers: wrong baud rate, A/B swapped or a noisy line "
                         "(see the garbled list)")
    return causes


__all__ = ["DEFAULT_DLMS_BAUDRATES", "DEFAULT_HDLC_ADDRESSES", "DlmsScanReport", "FoundDlmsMeter",
           "dlms_probe_timeout", "dlms_scan_bound", "empty_line_causes", "parse_hdlc_addresses",
           "propose_dlms_meters", "scan_dlms_port"]
