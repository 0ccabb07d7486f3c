"""A DLMS/COSEM electricity meter on a pseudo-terminal, for tests, demos and installers.

``EmulatedDlmsMeter`` is the meter's object model (pure: time is an argument): registers, a clock,
a serial number, and a 15-minute load profile that grows by one entry every capture period and
answers selective access by range and by entry. ``DlmsMeterEmulator`` serves it with the same
codec the client uses (server.py) on ``os.openpty()``. ``DlmsBusEmulator`` puts several meters on
one pty, as on a multi-drop RS-485 line: each has its own HDLC address and answers only frames for
it. A meter given a baud rate stays silent while the client's end of the pty is set to another
speed (a real meter sees only garbage then). ``EmulatorFaults`` makes it misbehave: silence,
dropped answers, corrupted check sequences, a wrong source address, a clock off by minutes,
objects that report object-unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from meterchain.bridge.dlms.apdu import (
    AccessSelection,
    AttributeDescriptor,
    DataAccessResult,
    GetResult,
)
from meterchain.bridge.dlms.axdr import Data, Tag
from meterchain.bridge.dlms.cosem import (
    UNIT_V,
    UNIT_W,
    UNIT_WH,
    CaptureObject,
    ClassId,
    capture_objects_from_data,
    datetime_from_data,
    datetime_from_utc,
    datetime_to_utc,
    scaler_unit_to_data,
)
from meterchain.bridge.dlms.errors import AxdrError, CosemValueError, HdlcError
from meterchain.bridge.dlms.hdlc import HdlcAddress, decode_frame, encode_frame
from meterchain.bridge.dlms.obis import (
    ACTIVE_EXPORT_OBIS,
    ACTIVE_IMPORT_OBIS,
    ACTIVE_POWER_OBIS,
    CLOCK_OBIS,
    INTERVAL_IMPORT_OBIS,
    LOAD_PROFILE_OBIS,
    LOGICAL_DEVICE_NAME_OBIS,
    MAX_DEMAND_OBIS,
    SERIAL_NUMBER_OBIS,
    VOLTAGE_L1_OBIS,
    Obis,
)
from meterchain.bridge.dlms.security import Authentication, LowestLevelSecurity, LowLevelSecurity
from meterchain.bridge.dlms.server import ServerConnection, ServerSettings
from meterchain.bridge.ptyline import LINE_SPEEDS, pty_speed, set_pty_speed

Clock = Callable[[], float]



@dataclass
class EmulatorFaults:
    """Misbehaviour on demand; change the fields while the emulator runs."""

    silent: bool = False  # never answer
    drop_next: int = 0  # swallow this many answer frames
    corrupt_crc: bool = False  # every answer has a broken FCS
    corrupt_next: int = 0  # this many answers have a broken FCS
    wrong_address: bool = False  # answers come from another server address
    clock_offset_minutes: int = 0  # the meter's clock runs off by this much
    unavailable: set[Obis] = field(default_factory=set)  # these answer object-unavailable


def interval_energy(index: int) -> int:
    """Wh imported in capture interval ``index``: a fixed, irregular daily shape (deterministic)."""
    hour_of_day = (index // 4) % 24
    base = 40 + 110 * (7 <= hour_of_day <= 9) + 160 * (17 <= hour_of_day <= 21)
    return base + (index * 37) % 23


class EmulatedDlmsMeter:
    """The meter's COSEM objects, computed from UTC time passed in."""

    def __init__(
        self,
        *,
        serial_number: str = "MC20260001",
        logical_device_name: str | None = None,
        start: int = 1_767_225_600,  # 2026-01-01T00:00:00Z: the first profile entry
        capture_period: int = 900,
        deviation: int = -60,  # UTC = local + deviation: -60 is CET
        base_import_wh: int = 1_234_000,
        profile_entries: int = 96 * 62,
        compress_timestamps: bool = True,
        faults: EmulatorFaults | None = None,
    ) -> None:
        if capture_period <= 0 or start % capture_period:
            raise CosemValueError(
                "profile start must be aligned to a positive capture period",
                start=start,
                capture_period=capture_period,
            )
        self.serial_number = serial_number
        # Manufacturer's three-letter FLAG id, then the device: 16 characters at most.
        self.logical_device_name = logical_device_name or f"MCE{serial_number}"[:16]
        self.start = start
        self.capture_period = capture_period
        self.deviation = deviation
        self.base_import_wh = base_import_wh
        self.profile_entries = profile_entries
        self.compress_timestamps = compress_timestamps
        self.faults = faults or EmulatorFaults()
        self.capture_objects = (
            CaptureObject(ClassId.CLOCK, CLOCK_OBIS, 2),
            CaptureObject(ClassId.REGISTER, ACTIVE_IMPORT_OBIS, 2),
            CaptureObject(ClassId.REGISTER, INTERVAL_IMPORT_OBIS, 2),
        )
        self._cumulative = [base_import_wh]  # import Wh at the end of interval k-1, prefix sums

    # -- energy model --------------------------------------------------------------------------

    def _import_at_boundary(self, count: int) -> int:
        """Import register after ``count`` whole intervals since ``start``."""
        while len(self._cumulative) <= count:
            k = len(self._cumulative) - 1
            self._cumulative.append(self._cumulative[-1] + interval_energy(k))
        return self._cumulative[count]

    def import_wh(self, now: int) -> int:
        """The 1.8.0 register at ``now``: whole intervals plus the elapsed share of this one."""
        if now <= self.start:
            return self.base_import_wh
        done, into = divmod(now - self.start, self.capture_period)
        return self._import_at_boundary(done) + interval_energy(done) * into // self.capture_period

    def power_w(self, now: int) -> int:
        index = max(now - self.start, 0) // self.capture_period
        return interval_energy(index) * 3600 // self.capture_period

    def meter_time(self, now: int) -> int:
        return now + self.faults.clock_offset_minutes * 60

    # -- profile -------------------------------------------------------------------------------

    def profile_range(self, now: int) -> tuple[int, int]:
        """Indices (first, last) of the buffer's entries; entry k is stamped start + k*period."""
        last = (self.meter_time(now) - self.start) // self.capture_period
        if last < 0:
            return 0, -1
        return max(0, last - self.profile_entries + 1), last

    def profile_row(self, index: int) -> tuple[int, int, int]:
        """(timestamp, cumulative import Wh, import Wh in the interval ending then)."""
        stamp = self.start + index * self.capture_period
        cumulative = self._import_at_boundary(index)
        interval = interval_energy(index - 1) if index > 0 else 0
        return stamp, cumulative, interval

    def _row_data(self, index: int, columns: list[int], stamp_null: bool) -> Data:
        stamp, cumulative, interval = self.profile_row(index)
        cells = [
            Data.null()
            if stamp_null
            else Data.octets(datetime_from_utc(stamp, self.deviation, 0).encode()),
            Data(Tag.UINT32, cumulative),
            Data(Tag.UINT32, interval),
        ]
        return Data.structure([cells[c] for c in columns])

    def _buffer(self, indices: range, columns: list[int]) -> Data:
        rows = []
        previous: int | None = None
        for index in indices:
            null = self.compress_timestamps and previous == index - 1 and 0 in columns
            rows.append(self._row_data(index, columns, null))
            previous = index
        return Data.array(rows)

    def _select_columns(self, selected: tuple[Data, ...]) -> list[int] | DataAccessResult:
        if not selected:
            return list(range(len(self.capture_objects)))
        columns = []
        for item in selected:
            try:
                wanted = CaptureObject.from_data(item)
            except CosemValueError:
                return DataAccessResult.TYPE_UNMATCHED
            match = [
                i
                for i, c in enumerate(self.capture_objects)
                if (c.class_id, c.obis, c.attribute)
                == (wanted.class_id, wanted.obis, wanted.attribute)
            ]
            if not match:
                return DataAccessResult.OBJECT_UNAVAILABLE
            columns.append(match[0])
        return columns

    def _profile_buffer(self, access: AccessSelection | None, now: int) -> GetResult:
        first, last = self.profile_range(now)
        if access is None:
            return self._buffer(range(first, last + 1), [0, 1, 2])
        try:
            params = access.parameters.items
            if access.selector == 1:
                return self._by_range(params, first, last)
            if access.selector == 2:
                return self._by_entry(params, first, last)
        except (AxdrError, CosemValueError, ValueError):
            return DataAccessResult.TYPE_UNMATCHED
        return DataAccessResult.SCOPE_OF_ACCESS_VIOLATED

    def _by_range(self, params: tuple[Data, ...], first: int, last: int) -> GetResult:
        restricting, start_data, end_data, selected = params
        column = CaptureObject.from_data(restricting)
        if not column.is_clock:
            return DataAccessResult.SCOPE_OF_ACCESS_VIOLATED
        start_dt, end_dt = datetime_from_data(start_data), datetime_from_data(end_data)
        if start_dt is None or end_dt is None:
            return DataAccessResult.TYPE_UNMATCHED
        start_utc = datetime_to_utc(start_dt, self.deviation)
        end_utc = datetime_to_utc(end_dt, self.deviation)
        columns = self._select_columns(selected.items)
        if isinstance(columns, DataAccessResult):
            return columns
        lo = max(first, -((self.start - start_utc) // self.capture_period))  # ceil
        hi = min(last, (end_utc - self.start) // self.capture_period)
        return self._buffer(range(lo, hi + 1), columns)

    def _by_entry(self, params: tuple[Data, ...], first: int, last: int) -> GetResult:
        from_entry, to_entry, from_value, to_value = (p.as_int() for p in params)
        count = last - first + 1
        to_entry = count if to_entry == 0 else min(to_entry, count)
        ncols = len(self.capture_objects)
        to_value = ncols if to_value == 0 else to_value
        if from_entry < 1 or from_value < 1 or to_value > ncols or from_value > to_value:
            return DataAccessResult.SCOPE_OF_ACCESS_VIOLATED
        columns = list(range(from_value - 1, to_value))
        return self._buffer(range(first + from_entry - 1, first + to_entry), columns)

    # -- COSEM get -----------------------------------------------------------------------------

    def get(
        self, descriptor: AttributeDescriptor, access: AccessSelection | None, now: int
    ) -> GetResult:
        """Answer one attribute read at UTC second ``now``."""
        obis, attribute, class_id = descriptor.instance, descriptor.attribute, descriptor.class_id
        if obis in self.faults.unavailable:
            return DataAccessResult.OBJECT_UNAVAILABLE
        if attribute == 1:
            if self._class_of(obis) != class_id:
                return DataAccessResult.OBJECT_UNDEFINED
            return Data.octets(obis.encode())
        meter_now = self.meter_time(now)
        registers = {
            ACTIVE_IMPORT_OBIS: (Data(Tag.UINT32, self.import_wh(meter_now)), 0, UNIT_WH),
            ACTIVE_EXPORT_OBIS: (Data(Tag.UINT32, 0), 0, UNIT_WH),
            INTERVAL_IMPORT_OBIS: (
                Data(Tag.UINT32, self.profile_row(max(self.profile_range(now)[1], 0))[2]),
                0,
                UNIT_WH,
            ),
            ACTIVE_POWER_OBIS: (Data(Tag.INT32, self.power_w(meter_now)), 0, UNIT_W),
            VOLTAGE_L1_OBIS: (Data(Tag.UINT16, 2301), -1, UNIT_V),
        }
        expected = self._class_of(obis)
        if expected is None:
            return DataAccessResult.OBJECT_UNDEFINED
        if expected != class_id:
            return DataAccessResult.OBJECT_CLASS_INCONSISTENT
        if obis in registers and access is None:
            value, scaler, unit = registers[obis]
            if attribute == 2:
                return value
            if attribute == 3:
                return scaler_unit_to_data(scaler, unit)
        elif obis == MAX_DEMAND_OBIS and access is None:
            peak_time = self.start + 18 * 3600
            answers = {
                2: Data(Tag.UINT32, 18_400),
                3: scaler_unit_to_data(-1, UNIT_W),
                4: Data(Tag.UINT8, 0),
                5: Data.octets(datetime_from_utc(peak_time, self.deviation, 0).encode()),
            }
            if attribute in answers:
                return answers[attribute]
        elif obis == CLOCK_OBIS and access is None:
            answers = {
                2: Data.octets(datetime_from_utc(meter_now, self.deviation, 0).encode()),
                3: Data(Tag.INT16, self.deviation),
                4: Data(Tag.UINT8, 0),
            }
            if attribute in answers:
                return answers[attribute]
        elif obis == SERIAL_NUMBER_OBIS and attribute == 2 and access is None:
            return Data.octets(self.serial_number.encode("ascii"))
        elif obis == LOGICAL_DEVICE_NAME_OBIS and attribute == 2 and access is None:
            return Data.octets(self.logical_device_name.encode("ascii"))
        elif obis == LOAD_PROFILE_OBIS:
            if attribute == 2:
                return self._profile_buffer(access, now)
            first, last = self.profile_range(now)
            answers = {
                3: Data.array([c.to_data() for c in self.capture_objects]),
                4: Data(Tag.UINT32, self.capture_period),
                7: Data(Tag.UINT32, max(last - first + 1, 0)),
                8: Data(Tag.UINT32, self.profile_entries),
            }
            if attribute in answers and access is None:
                return answers[attribute]
        return (
            DataAccessResult.READ_WRITE_DENIED
            if attribute > 0
            else DataAccessResult.OBJECT_UNDEFINED
        )

    def _class_of(self, obis: Obis) -> int | None:
        if obis in (ACTIVE_IMPORT_OBIS, ACTIVE_EXPORT_OBIS, INTERVAL_IMPORT_OBIS, ACTIVE_POWER_OBIS, VOLTAGE_L1_OBIS):
            return ClassId.REGISTER
        return {
            MAX_DEMAND_OBIS: ClassId.EXTENDED_REGISTER,
            CLOCK_OBIS: ClassId.CLOCK,
            SERIAL_NUMBER_OBIS: ClassId.DATA,
            LOGICAL_DEVICE_NAME_OBIS: ClassId.DATA,
            LOAD_PROFILE_OBIS: ClassId.PROFILE_GENERIC,
        }.get(obis)

    def check_capture_objects(self) -> None:
        """The capture objects survive their own encoding (used by tests and at start-up)."""
        encoded = Data.array([c.to_data() for c in self.capture_objects])
        if capture_objects_from_data(encoded) != self.capture_objects:
            raise CosemValueError("capture objects do not round-trip")


def default_settings(
    password: bytes | None = b"12345678", address: HdlcAddress | None = None
) -> ServerSettings:
    """Public client 16 without authentication; management client 1 with LLS ``password``."""
    clients: dict[int, Authentication] = {16: LowestLevelSecurity()}
    if password is not None:
        clients[1] = LowLevelSecurity(password)
    return ServerSettings(address=address or HdlcAddress(1), clients=clients)


def shape_answer(frame: bytes, faults: EmulatorFaults) -> bytes | None:
    """Apply the transport faults to one answer frame (None: swallowed)."""
    if faults.silent:
        return None
    if faults.drop_next > 0:
        faults.drop_next -= 1
        return None
    if faults.wrong_address:
        with contextlib.suppress(HdlcError):
            decoded = decode_frame(frame)
            wrong = HdlcAddress(
                (decoded.source.upper + 1) % 0x80, decoded.source.lower, decoded.source.size
            )
            frame = encode_frame(replace(decoded, source=wrong))
    if faults.corrupt_crc or faults.corrupt_next > 0:
        faults.corrupt_next = max(faults.corrupt_next - 1, 0)
        frame = frame[:-3] + bytes([frame[-3] ^ 0x55]) + frame[-2:]
    return frame


@dataclass
class BusMeter:
    """One meter on an emulated line: its objects, its address and clients, and its speed."""

    meter: EmulatedDlmsMeter
    settings: ServerSettings = field(default_factory=lambda: default_settings())
    baudrate: int | None = None  # None: answers at whatever speed the client set
    connection: ServerConnection = field(init=False)

    def __post_init__(self) -> None:
        self.connection = ServerConnection(self.settings, self.meter)

    @property
    def faults(self) -> EmulatorFaults:
        return self.meter.faults


class DlmsBusEmulator:
    """DLMS meters sharing one pseudo-terminal (a multi-drop line); ``start()`` returns its path.

    Every byte the client writes reaches every meter whose speed matches the line; each meter's
    server ignores frames for another address, so only the addressed one answers, as on RS-485.
    """

    def __init__(self, meters: Sequence[BusMeter], clock: Clock = time.time) -> None:
        addresses = [(m.settings.address.upper, m.settings.address.lower) for m in meters]
        if not meters or len(set(addresses)) != len(addresses):
            raise ValueError(
                f"a line needs meters with distinct HDLC addresses, got "
                f"{[str(m.settings.address) for m in meters]}"
            )
        unknown = [m.baudrate for m in meters if m.baudrate not in (None, *LINE_SPEEDS)]
        if unknown:
            raise ValueError(f"baud rates {unknown} are not among {LINE_SPEEDS}")
        self.meters = list(meters)
        self.clock = clock
        self.path: str | None = None
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> str:
        if self.path is not None:
            raise RuntimeError("emulator already started")
        master_fd, slave_fd = os.openpty()
        tty.setraw(slave_fd)  # no echo or line editing before the client configures the port
        speeds = [m.baudrate for m in self.meters if m.baudrate is not None]
        set_pty_speed(slave_fd, speeds[0] if speeds else 9600)
        os.set_blocking(master_fd, False)
        self._master_fd, self._slave_fd = master_fd, slave_fd  # slave kept open: no EIO on master
        self.path = os.ttyname(slave_fd)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master_fd, self._read_ready)
        return self.path

    def _read_ready(self) -> None:
        assert self._master_fd is not None
        try:
            data = os.read(self._master_fd, 4096)
        except OSError:  # BlockingIOError, or EIO while no client has the port open
            return
        if not data:
            return
        speed = pty_speed(self._master_fd)
        now = int(self.clock())
        for member in self.meters:
            if member.baudrate is not None and member.baudrate != speed:
                continue  # at another speed the meter hears only noise, and says nothing
            member.connection.receive_data(data, now)
            for frame in member.connection.frames_to_send():
                shaped = shape_answer(frame, member.faults)
                if shaped is not None:
                    with contextlib.suppress(OSError):  # nobody listening: lost, as on a wire
                        os.write(self._master_fd, shaped)

    async def stop(self) -> None:
        if self._loop is not None and self._master_fd is not None:
            self._loop.remove_reader(self._master_fd)
        for fd in (self._master_fd, self._slave_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master_fd = self._slave_fd = None
        self.path = None

    async def __aenter__(self) -> DlmsBusEmulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


class DlmsMeterEmulator(DlmsBusEmulator):
    """Serves one ``EmulatedDlmsMeter`` alone on a pseudo-terminal."""

    def __init__(
        self,
        meter: EmulatedDlmsMeter | None = None,
        settings: ServerSettings | None = None,
        clock: Clock = time.time,
        *,
        baudrate: int | None = None,
    ) -> None:
        self.member = BusMeter(
            meter or EmulatedDlmsMeter(), settings or default_settings(), baudrate
        )
        super().__init__([self.member], clock)

    @property
    def meter(self) -> EmulatedDlmsMeter:
        return self.member.meter

    @property
    def settings(self) -> ServerSettings:
        return self.member.settings

    @property
    def connection(self) -> ServerConnection:
        return self.member.connection

    @property
    def faults(self) -> EmulatorFaults:
        return self.meter.faults

    async def __aenter__(self) -> DlmsMeterEmulator:
        await self.start()
        return self
