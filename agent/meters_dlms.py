"""A DLMS/COSEM meter as a source of interval readings: its load profile, read by range.

Everything model-specific lives here: how to reach the meter (the bridge's ``DlmsMeterClient``),
which profile columns become the reading's registers, and how the meter's clock is checked. The
poller (profile_poller.py) only sees :class:`ProfileSession`: a status, then intervals by range.

Registers: a reading carries cumulative registers at the interval's end, so the profile must
capture the cumulative import register 1-0:1.8.0 (Wh, any scaler that gives whole Wh). A profile
of interval values only (1-0:1.29.0) is refused with :class:`DlmsProfileError`: deriving meter
readings from interval sums would need an anchor the agent cannot attest. Export 1-0:2.8.0 comes
from the profile when captured; if it is not, the live 2.8.0 register is read each cycle and,
when it is 0, every earlier export reading was 0 too (a cumulative register never decreases),
so the readings carry 0 Wh; a non-zero or missing live register is a :class:`DlmsProfileError`.

Time: an entry's capture time is the meter's (the bridge converts it to UTC with the meter's
deviation); a reading covers ``[capture − period, capture)``. Entries off the period grid (a
meter's extra entry at power-up or a clock change) and repeated timestamps are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from meterchain.agent.backfill import ClockCheck, check_clock
from meterchain.agent.clock import Clock
from meterchain.agent.config import MeterConfig
from meterchain.agent.dlms_config import DlmsSettings
from meterchain.bridge.dlms import DlmsMeterClient, HdlcAddress, Obis, ProfileEntry
from meterchain.bridge.dlms.cosem import (
    UNIT_WH,
    ClassId,
    ClockStatus,
    QuantityKind,
    RegisterValue,
    capture_objects_from_data,
    quantity_kind,
)
from meterchain.bridge.dlms.errors import CosemValueError, DataAccessError
from meterchain.bridge.dlms.obis import ACTIVE_EXPORT_OBIS, ACTIVE_IMPORT_OBIS
from meterchain.contract.errors import MeterchainError
from meterchain.contract.reading import MAX_INTERVAL_SECONDS, METER_SERIAL_RE, ClockSync

log = logging.getLogger(__name__)

_DOUBTFUL = ClockStatus.INVALID_VALUE | ClockStatus.DOUBTFUL_VALUE


class DlmsProfileError(MeterchainError):
    """The meter's profile cannot give attestable readings (layout, units, period, serial)."""

    check = "dlms-profile"


@dataclass(frozen=True, slots=True)
class ProfileLayout:
    """What the poller needs to know of a meter's profile: its period and export column."""

    period: int
    has_export: bool


@dataclass(frozen=True, slots=True)
class IntervalValues:
    """One profile entry as a reading's content: registers at ``end`` in whole Wh."""

    end: int
    import_wh: int
    export_wh: int
    clock_doubtful: bool = False  # the meter flagged its clock invalid/doubtful at capture


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """Read at the start of every cycle: who the meter is, its profile, and its clock."""

    serial: str
    layout: ProfileLayout
    clock: ClockCheck
    meter_utc: int


def check_layout(captures: Sequence[tuple[Obis, QuantityKind]], period: int) -> ProfileLayout:
    """Refuse a profile that cannot give cumulative import readings on a day-aligned period."""
    if period <= 0 or MAX_INTERVAL_SECONDS % period:
        raise DlmsProfileError(
            f"capture period {period} s does not divide a day; readings need aligned intervals",
            capture_period=period,
        )
    kinds = {obis: kind for obis, kind in captures}
    if kinds.get(ACTIVE_IMPORT_OBIS) is not QuantityKind.CUMULATIVE:
        interval_only = [str(o) for o, k in captures if k is QuantityKind.INTERVAL]
        raise DlmsProfileError(
            "the load profile does not capture the cumulative import register 1-0:1.8.0.255"
            + (
                " (it holds interval values only; add 1.8.0 to its capture objects)"
                if interval_only
                else ""
            ),
            captures=[str(o) for o, _ in captures],
        )
    return ProfileLayout(period, kinds.get(ACTIVE_EXPORT_OBIS) is QuantityKind.CUMULATIVE)


async def read_profile_layout(client: DlmsMeterClient, obis: Obis) -> ProfileLayout:
    """The profile's capture objects and period, read and checked (also what a scan reports)."""
    captures = capture_objects_from_data(await client.get(ClassId.PROFILE_GENERIC, obis, 3))
    period = (await client.get(ClassId.PROFILE_GENERIC, obis, 4)).as_int()
    columns = [(c.obis, quantity_kind(c)) for c in captures if not c.is_clock]
    if not any(c.is_clock for c in captures):
        raise DlmsProfileError("the load profile has no clock column", profile=str(obis))
    return check_layout(columns, period)


def whole_wh(value: RegisterValue | None, obis: Obis, when: int) -> int:
    """A register in whole Wh (kWh with scaler 3 is fine); anything else is an error."""
    if value is None:
        raise DlmsProfileError("profile value is not an integer", obis=str(obis), capture=when)
    if value.unit != UNIT_WH:
        raise DlmsProfileError(
            f"register is in {value.unit_name}, not Wh", obis=str(obis), capture=when
        )
    try:
        wh = value.in_units_of(0)
    except CosemValueError as exc:  # a fraction of a Wh would be dropped
        raise DlmsProfileError(
            "register is not a whole number of Wh", obis=str(obis), capture=when, value=str(value)
        ) from exc
    if wh < 0:
        raise DlmsProfileError("energy register is negative", obis=str(obis), capture=when)
    return wh


def profile_intervals(
    entries: Sequence[ProfileEntry], layout: ProfileLayout, *, first: int, last: int
) -> tuple[list[IntervalValues], list[tuple[int, str]]]:
    """Entries stamped on the period grid in ``[first, last]`` as interval values, ascending.

    Returns the intervals and the skipped entries as ``(timestamp, why)``: off the grid, outside
    the range, a repeated timestamp, or a bad value (one bad entry must not block the rest).
    """
    intervals: dict[int, IntervalValues] = {}
    skipped: list[tuple[int, str]] = []
    for entry in entries:
        stamp = entry.timestamp
        if stamp % layout.period:
            skipped.append((stamp, "off the capture-period grid"))
            continue
        if not first <= stamp <= last:
            skipped.append((stamp, "outside the requested range"))
            continue
        if stamp in intervals:
            skipped.append((stamp, "timestamp repeated"))
            continue
        try:
            import_wh = whole_wh(_column(entry, ACTIVE_IMPORT_OBIS), ACTIVE_IMPORT_OBIS, stamp)
            export_wh = (
                whole_wh(_column(entry, ACTIVE_EXPORT_OBIS), ACTIVE_EXPORT_OBIS, stamp)
                if layout.has_export
                else 0
            )
        except DlmsProfileError as exc:
            skipped.append((stamp, exc.diagnostics()))
            continue
        doubtful = entry.clock_status is not None and bool(entry.clock_status & _DOUBTFUL)
        intervals[stamp] = IntervalValues(stamp, import_wh, export_wh, doubtful)
    return [intervals[t] for t in sorted(intervals)], skipped


def _column(entry: ProfileEntry, obis: Obis) -> RegisterValue | None:
    for item in entry.values:
        if item.capture.obis == obis:
            return item.value
    return None


class DlmsMeterSource:
    """One DLMS meter on a serial port; a session per cycle (connect, read, release).

    A session per cycle costs a few frames but survives the meter's inactivity timeout and any
    half-open association after a fault: every cycle starts from a clean link. Meters of one
    multi-drop line share ``port_lock``: a session holds it from opening the port to closing it
    (SNRM … DISC), so the master talks to one meter at a time, as RS-485 requires.
    """

    def __init__(
        self, config: MeterConfig, clock: Clock, port_lock: asyncio.Lock | None = None
    ) -> None:
        if config.dlms is None:
            raise ValueError(f"meter {config.name!r} is not a DLMS meter")
        self.name = config.name
        self.config = config
        self.settings: DlmsSettings = config.dlms
        self.clock = clock
        self.port_lock = port_lock if port_lock is not None else asyncio.Lock()
        self.profile_obis = Obis.parse(self.settings.profile_obis)
        self._serial: str | None = config.serial
        self._layout: ProfileLayout | None = None

    def _client(self) -> DlmsMeterClient:
        s = self.settings
        address: int | HdlcAddress = (
            s.server_address
            if s.physical_address is None and s.server_address <= 0x7F
            else HdlcAddress(s.server_address, s.physical_address)
        )
        return DlmsMeterClient(
            self.config.port,
            self.config.baudrate,
            client_address=s.client_address,
            server_address=address,
            password=s.password,
            timeout=self.config.timeout_seconds,
            max_retries=s.max_retries,
        )

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[DlmsSession]:
        """Connected and associated for the block; released and closed after, whatever happens.

        The port's lock is held throughout: another meter on the line waits for the DISC.
        """
        async with self.port_lock:
            client = self._client()
            try:
                await client.connect()
                yield DlmsSession(self, client)
            except BaseException:
                self._layout = None  # re-read the layout after any failure (meter replaced?)
                raise
            finally:
                await client.close()

    def close(self) -> None:
        """Nothing stays open between sessions."""


class DlmsSession:
    """One association with the meter: status first, then intervals by range."""

    def __init__(self, source: DlmsMeterSource, client: DlmsMeterClient) -> None:
        self.source = source
        self.client = client

    async def status(self, gateway: ClockSync) -> MeterStatus:
        source, client = self.source, self.client
        if source._serial is None:
            serial = await client.read_serial()
            if not METER_SERIAL_RE.fullmatch(serial):
                raise DlmsProfileError(
                    "the meter's serial number cannot name a reading; set `serial` in the config",
                    meter=source.name,
                    serial=serial,
                )
            source._serial = serial
        if source._layout is None:
            source._layout = await self._read_layout()
        asked = source.clock.now()
        meter_clock = await client.read_clock()
        answered = source.clock.now()
        check = check_clock(
            meter_clock.utc,
            asked_at=asked,
            answered_at=answered,
            threshold=source.settings.clock_drift_threshold_seconds,
            gateway=gateway,
            meter_trustworthy=meter_clock.trustworthy,
        )
        if not source._layout.has_export:
            await self._prove_no_export()
        return MeterStatus(source._serial, source._layout, check, meter_clock.utc)

    async def _read_layout(self) -> ProfileLayout:
        return await read_profile_layout(self.client, self.source.profile_obis)

    async def _prove_no_export(self) -> None:
        """Export is not in the profile: only a live 2.8.0 of 0 proves every past one was 0."""
        try:
            live = await self.client.read_register(ACTIVE_EXPORT_OBIS)
        except DataAccessError as exc:
            raise DlmsProfileError(
                "the profile captures no export register and the meter has no 1-0:2.8.0.255",
                meter=self.source.name,
            ) from exc
        if whole_wh(live, ACTIVE_EXPORT_OBIS, 0) != 0:
            raise DlmsProfileError(
                "the meter has exported energy but its profile does not capture 1-0:2.8.0.255;"
                " add it to the profile's capture objects",
                meter=self.source.name,
                export=str(live),
            )

    async def intervals(self, layout: ProfileLayout, first: int, last: int) -> list[IntervalValues]:
        """The profile's entries with capture times in ``[first, last]`` (selective access)."""
        entries = await self.client.read_load_profile(self.source.profile_obis, first, last)
        intervals, skipped = profile_intervals(entries, layout, first=first, last=last)
        for stamp, why in skipped:
            log.warning(
                "event=profile_entry_skipped meter=%s capture=%d why=%r",
                self.source.name,
                stamp,
                why,
            )
        return intervals


def dlms_sources(meters: Sequence[MeterConfig], clock: Clock) -> list[DlmsMeterSource]:
    """One source per configured DLMS meter (the others are Modbus: see meters.py); the meters
    of one port share one lock, so their sessions take turns on the line."""
    locks: dict[str, asyncio.Lock] = {}
    return [
        DlmsMeterSource(meter, clock, locks.setdefault(meter.port, asyncio.Lock()))
        for meter in meters
        if meter.dlms is not None
    ]
