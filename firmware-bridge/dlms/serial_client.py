"""DLMS/COSEM meter client over a serial port: a thin asyncio layer around ``ClientConnection``.

Use it as::

    async with DlmsMeterClient("/dev/ttyUSB0", 9600, server_address=1) as meter:
        energy = await meter.read_register("1-0:1.8.0.255")      # RegisterValue, exact integers
        clock = await meter.read_clock()                           # MeterClock, UTC seconds
        rows = await meter.read_load_profile(LOAD_PROFILE_OBIS, start_utc, end_utc)

All waiting happens here: each answer gets ``timeout`` seconds counted from our last write (bytes
that never form a frame do not extend it), and the sans-IO connection decides about retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import serial
from meterchain.bridge.dlms.apdu import (
    AccessSelection,
    AttributeDescriptor,
    Conformance,
    DataAccessResult,
    GetResult,
)
from meterchain.bridge.dlms.axdr import Data, Tag
from meterchain.bridge.dlms.client import (
    AssociationAccepted,
    ClientConnection,
    ClientSettings,
    ClientState,
    Event,
    GetCompleted,
    LinkClosed,
    LinkEstablished,
    ReleaseCompleted,
)
from meterchain.bridge.dlms.cosem import (
    CaptureObject,
    ClassId,
    MeterClock,
    ProfileEntry,
    RegisterValue,
    capture_objects_from_data,
    datetime_from_data,
    datetime_from_utc,
    datetime_to_utc,
    decode_profile_buffer,
    entry_descriptor,
    integer_value,
    meter_clock_from_data,
    range_descriptor,
    scaler_unit_from_data,
)
from meterchain.bridge.dlms.errors import (
    CosemValueError,
    DataAccessError,
    DlmsError,
    LinkError,
    PortError,
)
from meterchain.bridge.dlms.hdlc import HdlcAddress
from meterchain.bridge.dlms.obis import CLOCK_OBIS, LOAD_PROFILE_OBIS, SERIAL_NUMBER_OBIS, Obis, as_obis
from meterchain.bridge.dlms.security import Authentication, LowestLevelSecurity, LowLevelSecurity

E = TypeVar("E", bound=Event)
_REGISTER_CLASSES = (ClassId.REGISTER, ClassId.EXTENDED_REGISTER, ClassId.DEMAND_REGISTER)


class Transport(Protocol):
    """Bytes in and out; ``read`` returns b"" when nothing arrived within ``timeout`` seconds."""

    async def open(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    async def read(self, timeout: float) -> bytes: ...

    def close(self) -> None: ...


class SerialTransport:
    """pyserial in non-blocking mode, woken by the event loop when the port is readable."""

    def __init__(self, port: str, baudrate: int) -> None:
        self.port = port
        self.baudrate = baudrate
        self._serial: serial.Serial | None = None

    async def open(self) -> None:
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=5)
        except (serial.SerialException, OSError) as exc:
            raise PortError(
                "cannot open serial port", port=self.port, baudrate=self.baudrate
            ) from exc

    def _port(self) -> serial.Serial:
        if self._serial is None:
            raise LinkError("serial port is not open", port=self.port)
        return self._serial

    def write(self, data: bytes) -> None:
        try:
            self._port().write(data)
        except (serial.SerialException, OSError) as exc:
            raise PortError("serial write failed", port=self.port) from exc

    async def read(self, timeout: float) -> bytes:
        port = self._port()
        try:
            data = port.read(4096)
            if data:
                return bytes(data)
            loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            loop.add_reader(port.fileno(), ready.set)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
                # comes in the turn the port turns readable, and the reader would go on after it.
                async with asyncio.timeout(timeout):
                    await ready.wait()
            except TimeoutError:
                return b""
            finally:
                loop.remove_reader(port.fileno())
            return bytes(port.read(4096))
        except (serial.SerialException, OSError) as exc:
            raise PortError("serial read failed", port=self.port) from exc

    def close(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._serial.close()
            self._serial = None

    def discard_input(self) -> None:
        """Drop what arrived unasked (a late answer to an earlier request, line noise)."""
        try:
            self._port().reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise PortError("serial flush failed", port=self.port) from exc


@dataclass(frozen=True, slots=True)
class ExtendedRegisterReading:
    """Class 4: the value, the meter's status attribute as sent, and when the value was captured."""

    value: RegisterValue
    status: Data
    capture_time: int | None


class DlmsMeterClient:
    """Reads registers, the clock, the serial number and load profiles from one DLMS meter."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        client_address: int = 16,
        server_address: int | HdlcAddress = 1,
        password: bytes | str | None = None,
        *,
        timeout: float = 2.0,
        max_retries: int = 3,
        max_info_length: int = 128,
        max_pdu_size: int = 1024,
        authentication: Authentication | None = None,
        transport: Transport | None = None,
    ) -> None:
        if authentication is None:
            if password is None:
                authentication = LowestLevelSecurity()
            else:
                raw = password.encode("ascii") if isinstance(password, str) else password
                authentication = LowLevelSecurity(raw)
        address = (
            server_address
            if isinstance(server_address, HdlcAddress)
            else HdlcAddress(server_address)
        )
        self.settings = ClientSettings(
            server_address=address,
            client_address=client_address,
            authentication=authentication,
            max_info_length=max_info_length,
            max_pdu_size=max_pdu_size,
            max_retries=max_retries,
        )
        self.timeout = timeout
        self.transport: Transport = transport or SerialTransport(port, baudrate)
        self.connection = ClientConnection(self.settings)
        self.deviation: int | None = None  # the meter's, learnt from its clock
        self._scalers: dict[Obis, tuple[int, int]] = {}
        self._opened = False
        self._context = {"port": port, "server": str(address), "client": client_address}

    # -- lifecycle -----------------------------------------------------------------------------

    async def open_link(self) -> None:
        """Open the port and set up the HDLC link (SNRM/UA) only, without associating.

        A UA proves a meter answers at this server address and speed: what a line scan asks.
        """
        if not self._opened:
            await self.transport.open()
            self._opened = True
        if self.connection.state is ClientState.DISCONNECTED:
            await self._exchange(self.connection.connect, LinkEstablished)

    async def connect(self) -> None:
        """Open the port, set up the HDLC link (SNRM/UA) and associate (AARQ/AARE)."""
        await self.open_link()
        if self.connection.state is ClientState.LINK_UP:
            await self._exchange(self.connection.associate, AssociationAccepted)

    async def close(self) -> None:
        """Release the association and the link, then close the port; errors here are swallowed."""
        with contextlib.suppress(DlmsError):
            if self.connection.state is ClientState.ASSOCIATED:
                await self._exchange(self.connection.release, ReleaseCompleted)
            if self.connection.state is ClientState.LINK_UP:
                await self._exchange(self.connection.disconnect, LinkClosed)
        self.transport.close()
        self._opened = False
        self.connection = ClientConnection(self.settings)

    async def __aenter__(self) -> DlmsMeterClient:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- I/O loop ------------------------------------------------------------------------------

    def _flush(self) -> bool:
        out = self.connection.data_to_send()
        if out:
            self.transport.write(out)
        return bool(out)

    async def _exchange(self, start: Callable[[], None], want: type[E]) -> E:
        """Run one request to completion: write, read until the wanted event, retry on timeout."""
        start()
        try:
            return await self._await_event(want)
        except BaseException:
            # Cancelled, or the port failed: the exchange cannot be resumed, so drop it.
            if self.connection.busy:
                self.connection.abort()
            raise

    async def _await_event(self, want: type[E]) -> E:
        loop = asyncio.get_running_loop()
        self._flush()
        deadline = loop.time() + self.timeout
        while True:
            remaining = deadline - loop.time()
            chunk = await self.transport.read(remaining) if remaining > 0 else b""
            if not chunk:
                if loop.time() < deadline:
                    continue
                self.connection.timeout()  # re-sends, or raises RetriesExhausted
                self._flush()
                deadline = loop.time() + self.timeout
                continue
            events = self.connection.receive_data(chunk)
            if self._flush():
                deadline = loop.time() + self.timeout
            for event in events:
                if isinstance(event, want):
                    return event

    async def get_many(
        self, requests: Sequence[tuple[AttributeDescriptor, AccessSelection | None]]
    ) -> tuple[GetResult, ...]:
        """GET several attributes: one GET-With-List if the meter supports it, else one by one."""
        if self.connection.state is not ClientState.ASSOCIATED:
            await self.connect()
        conn = self.connection
        if len(requests) > 1 and conn.conformance & Conformance.MULTIPLE_REFERENCES:
            done = await self._exchange(lambda: conn.get_with_list(requests), GetCompleted)
            return done.results
        results: list[GetResult] = []
        for descriptor, access in requests:
            done = await self._exchange(functools.partial(conn.get, descriptor, access), GetCompleted)
            results.extend(done.results)
        return tuple(results)

    async def get(
        self, class_id: int, obis: Obis | str, attribute: int, access: AccessSelection | None = None
    ) -> Data:
        """GET one attribute; a data-access-result error raises ``DataAccessError``."""
        descriptor = AttributeDescriptor(class_id, as_obis(obis), attribute)
        (result,) = await self.get_many([(descriptor, access)])
        return self._data(result, descriptor)

    def _data(self, result: GetResult, descriptor: AttributeDescriptor) -> Data:
        if isinstance(result, Data):
            return result
        name = (
            result.name.lower().replace("_", "-")
            if isinstance(result, DataAccessResult)
            else str(result)
        )
        raise DataAccessError(
            f"meter refused the read: {name}",
            result=int(result),
            obis=str(descriptor.instance),
            class_id=descriptor.class_id,
            attribute=descriptor.attribute,
            **self._context,
        )

    # -- what a gateway reads ------------------------------------------------------------------

    async def read_register(
        self, obis: Obis | str, class_id: int = ClassId.REGISTER
    ) -> RegisterValue:
        """Value and scaler_unit of a (extended/demand) register, as exact integers."""
        code = as_obis(obis)
        value_desc = AttributeDescriptor(class_id, code, 2)
        scaler_desc = AttributeDescriptor(class_id, code, 3)
        value_result, scaler_result = await self.get_many([(value_desc, None), (scaler_desc, None)])
        value = integer_value(self._data(value_result, value_desc), obis=code)
        scaler, unit = scaler_unit_from_data(self._data(scaler_result, scaler_desc))
        self._scalers[code] = (scaler, unit)
        return RegisterValue(value, scaler, unit)

    async def read_extended_register(self, obis: Obis | str) -> ExtendedRegisterReading:
        """Extended register (class 4): value, scaler_unit, status and capture time (UTC)."""
        code = as_obis(obis)
        descriptors = [
            AttributeDescriptor(ClassId.EXTENDED_REGISTER, code, a) for a in (2, 3, 4, 5)
        ]
        results = await self.get_many([(d, None) for d in descriptors])
        value, scaler_unit, status, captured = (
            self._data(r, d) for r, d in zip(results, descriptors, strict=True)
        )
        scaler, unit = scaler_unit_from_data(scaler_unit)
        stamp = datetime_from_data(captured)
        fallback = self.deviation if self.deviation is not None else 0
        capture_time = None
        if stamp is not None and stamp.year != 0xFFFF:
            capture_time = datetime_to_utc(stamp, fallback)
        return ExtendedRegisterReading(
            RegisterValue(integer_value(value, obis=code), scaler, unit), status, capture_time
        )

    async def read_clock(self) -> MeterClock:
        """The meter's clock in UTC; an unspecified deviation falls back to its time_zone."""
        data = await self.get(ClassId.CLOCK, CLOCK_OBIS, 2)
        raw = datetime_from_data(data)
        fallback = self.deviation
        if raw is not None and raw.deviation is None and fallback is None:
            fallback = (await self.get(ClassId.CLOCK, CLOCK_OBIS, 3)).as_int()
        clock = meter_clock_from_data(data, fallback)
        self.deviation = clock.deviation if clock.deviation is not None else fallback
        return clock

    async def read_serial(self, obis: Obis | str = SERIAL_NUMBER_OBIS) -> str:
        """The serial number (Data object): octet or visible string, or an integer."""
        data = await self.get(ClassId.DATA, obis, 2)
        if data.tag is Tag.OCTET_STRING and isinstance(data.value, bytes):
            try:
                return data.value.decode("ascii")
            except UnicodeDecodeError:
                return data.value.hex()
        if isinstance(data.value, str):
            return data.value
        if isinstance(data.value, int) and not isinstance(data.value, bool):
            return str(data.value)
        raise CosemValueError(
            "serial number has an unexpected type", tag=data.tag.name, **self._context
        )

    async def _profile_layout(self, obis: Obis) -> tuple[tuple[CaptureObject, ...], int]:
        captures_desc = AttributeDescriptor(ClassId.PROFILE_GENERIC, obis, 3)
        period_desc = AttributeDescriptor(ClassId.PROFILE_GENERIC, obis, 4)
        captures, period = await self.get_many([(captures_desc, None), (period_desc, None)])
        capture_objects = capture_objects_from_data(self._data(captures, captures_desc))
        capture_period = self._data(period, period_desc).as_int()
        unknown = [
            c
            for c in capture_objects
            if c.class_id in _REGISTER_CLASSES and c.attribute == 2 and c.obis not in self._scalers
        ]
        if unknown:
            requests = [(AttributeDescriptor(c.class_id, c.obis, 3), None) for c in unknown]
            for capture, result in zip(unknown, await self.get_many(requests), strict=True):
                desc = AttributeDescriptor(capture.class_id, capture.obis, 3)
                self._scalers[capture.obis] = scaler_unit_from_data(self._data(result, desc))
        return capture_objects, capture_period

    async def read_load_profile(
        self, obis: Obis | str = LOAD_PROFILE_OBIS, start_utc: int = 0, end_utc: int = 0
    ) -> list[ProfileEntry]:
        """Entries stamped within [start_utc, end_utc], by selective access on the clock column."""
        if end_utc < start_utc:
            raise CosemValueError("end before start", start_utc=start_utc, end_utc=end_utc)
        code = as_obis(obis)
        capture_objects, period = await self._profile_layout(code)
        clock_columns = [c for c in capture_objects if c.is_clock]
        if not clock_columns:
            raise CosemValueError("profile has no clock column", obis=str(code))
        if self.deviation is None:
            await self.read_clock()
        deviation = self.deviation if self.deviation is not None else 0
        selector = range_descriptor(
            clock_columns[0],
            datetime_from_utc(start_utc, deviation, 0xFF),
            datetime_from_utc(end_utc, deviation, 0xFF),
        )
        buffer = await self.get(ClassId.PROFILE_GENERIC, code, 2, AccessSelection(1, selector))
        entries = decode_profile_buffer(buffer, capture_objects, period, self._scalers, deviation)
        return [e for e in entries if start_utc <= e.timestamp <= end_utc]

    async def read_profile_entries(
        self, obis: Obis | str = LOAD_PROFILE_OBIS, from_entry: int = 1, to_entry: int = 0
    ) -> list[ProfileEntry]:
        """Entries by number (1 = oldest in the buffer, ``to_entry`` 0 = newest), all columns."""
        code = as_obis(obis)
        capture_objects, period = await self._profile_layout(code)
        if self.deviation is None:
            await self.read_clock()
        access = AccessSelection(2, entry_descriptor(from_entry, to_entry))
        buffer = await self.get(ClassId.PROFILE_GENERIC, code, 2, access)
        return decode_profile_buffer(buffer, capture_objects, period, self._scalers, self.deviation)
