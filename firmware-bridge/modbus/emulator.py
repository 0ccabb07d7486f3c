"""Eastron SDM meters on a pseudo-terminal, served by pymodbus, behaving as on a real RS-485 bus.

The pymodbus RTU server does the framing and the function codes; around it this module adds what a
real bus does and a plain pymodbus server does not:

- **Speed**: a pty carries bytes at any speed, so before answering a meter reads the speed the
  client configured on its end of the pty (on Linux ``termios.tcgetattr`` on either end returns the
  slave's termios, so the master sees the client's ``cfsetospeed``) and stays silent when it is not
  its own baud rate, as a meter would that sees only garbage on the line.
- **Unknown unit ids**: silent (pymodbus answers an exception by default; here the bus context
  raises ``NoSuchIdException`` and the server runs with ``ignore_missing_devices``).
- **Wire time**: an answer leaves after the time its bytes (and the request's) take on the wire at
  the meter's baud rate, 10 bits per character, plus two 3.5-character gaps.
- **Faults** for tests: a meter can go silent or answer with a corrupted CRC.

Several meters (different ids, each with its own baud rate) can share one pty, as on one bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import Callable, Sequence
from typing import Any

from meterchain.bridge.modbus.registers import (
    RegisterMap,
    Table,
    encode_registers,
    register_map_for,
)
from meterchain.bridge.modbus.simulation import LoadProfile, MeterFaults, MeterState
from meterchain.bridge.ptyline import pty_speed, set_pty_speed
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.transport import ModbusProtocol

Clock = Callable[[], float]
_FUNCTION_TABLES = {3: Table.HOLDING, 4: Table.INPUT}
_REQUEST_BYTES = 8  # a read request: id, function, address, count, CRC
def wire_seconds(frame_bytes: int, baudrate: int) -> float:
    """Time a request and its answer of ``frame_bytes`` spend on the line, with RTU gaps."""
    return (_REQUEST_BYTES + frame_bytes + 7) * 10 / baudrate


def accelerated_clock(
    time_scale: float = 1.0, start: float | None = None,
    monotonic: Clock = time.monotonic, wall: Clock = time.time,
) -> Clock:
    """Simulated UTC seconds that run ``time_scale`` times faster than real time."""
    origin = wall() if start is None else start
    began = monotonic()
    return lambda: origin + (monotonic() - began) * time_scale


class EmulatedMeter:
    """One meter on the bus: its map, id, speed, serial, load profile, clock and counters."""

    def __init__(
        self, model: str | RegisterMap = "sdm630", device_id: int = 1,
        baudrate: int | None = None, serial_number: int = 12_345_678,
        profile: LoadProfile | None = None, clock: Clock = time.time,
        initial_import_wh: int | None = None,
    ) -> None:
        if not 1 <= device_id <= 247:
            raise ValueError(f"Modbus device id must be 1..247, got {device_id}")
        register_map = register_map_for(model)
        profile = profile or LoadProfile()
        if initial_import_wh is None:  # a meter that has been in service a few years
            initial_import_wh = 3_000_000 + profile.seed % 1000 * 7_919
        self.clock = clock
        self.state = MeterState(
            register_map=register_map, device_id=device_id,
            baudrate=baudrate or register_map.default_baudrate, serial_number=serial_number,
            profile=profile, started_at=int(clock()),
            import_j=initial_import_wh * 3600, export_j=initial_import_wh * 3600 // 5,
        )

    @property
    def device_id(self) -> int:
        return self.state.device_id

    @property
    def baudrate(self) -> int:
        return self.state.baudrate

    @property
    def register_map(self) -> RegisterMap:
        return self.state.register_map

    @property
    def faults(self) -> MeterFaults:
        return self.state.faults

    def read(self, table: Table, address: int, count: int) -> list[int] | None:
        """Words for a read now (None: exception 02)."""
        return encode_registers(
            self.register_map, table, address, count, self.state.values(int(self.clock()))
        )


class _BusContext:
    """The pymodbus datastore for a bus: dispatches by id, silent where a real bus is silent."""

    def __init__(self, meters: dict[int, EmulatedMeter], line_speed: Callable[[], int | None]):
        self._meters = meters
        self._line_speed = line_speed

    def _meter(self, device_id: int) -> EmulatedMeter:
        meter = self._meters.get(device_id)
        if meter is None or meter.faults.silent or self._line_speed() != meter.baudrate:
            raise NoSuchIdException(f"no meter answers id {device_id} at this speed")
        return meter

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | ExcCodes:
        meter = self._meter(device_id)
        table = _FUNCTION_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        words = meter.read(table, address, count)
        return ExcCodes.ILLEGAL_ADDRESS if words is None else words

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int]
    ) -> ExcCodes | None:
        self._meter(device_id)
        return ExcCodes.ILLEGAL_ADDRESS  # configuration writes need the meter's password: refused

    def device_ids(self) -> list[int]:
        return list(self._meters)


class _PtyMasterTransport(asyncio.Transport):
    """The master side of the pty as an asyncio transport for the pymodbus request handler."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, master_fd: int, protocol: ModbusProtocol,
        shape_answer: Callable[[bytes], tuple[bytes, float]],
    ) -> None:
        super().__init__()
        self._loop = loop
        self._fd = master_fd
        self._protocol = protocol
        self._shape_answer = shape_answer
        self._pending: set[asyncio.TimerHandle] = set()
        self._closed = False
        loop.add_reader(master_fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no process has the slave open; nothing to read
            return
        if data:
            self._protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        frame, delay = self._shape_answer(bytes(data))
        now = self._loop.time()
        self._pending = {h for h in self._pending if h.when() > now}
        self._pending.add(self._loop.call_later(delay, self._send, frame))

    def _send(self, frame: bytes) -> None:
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._fd, frame)  # a pty buffers kilobytes; an answer is at most 256 bytes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._pending:
            handle.cancel()
        self._loop.remove_reader(self._fd)

    def is_closing(self) -> bool:
        return self._closed

    def get_protocol(self) -> Any:
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol


class ModbusBusEmulator:
    """Several emulated meters on one pseudo-terminal (one RS-485 bus)."""

    def __init__(self, meters: Sequence[EmulatedMeter], *, wire_delay: bool = True) -> None:
        ids = [m.device_id for m in meters]
        if not meters or len(set(ids)) != len(ids):
            raise ValueError(f"a bus needs meters with distinct ids, got {ids}")
        self.meters = {m.device_id: m for m in meters}
        self.wire_delay = wire_delay
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._server: ModbusSerialServer | None = None
        self._transport: _PtyMasterTransport | None = None
        self.path: str | None = None

    def _line_speed(self) -> int | None:
        assert self._master_fd is not None
        return pty_speed(self._master_fd)

    def _shape_answer(self, frame: bytes) -> tuple[bytes, float]:
        meter = self.meters.get(frame[0]) if frame else None
        if meter is None:
            return frame, 0.0
        if meter.faults.bad_crc:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        delay = wire_seconds(len(frame), meter.baudrate) if self.wire_delay else 0.0
        return frame, delay

    async def start(self) -> str:
        """Open the pty and serve; returns the slave path (e.g. /dev/pts/3) for the reader."""
        if self.path is not None:
            raise RuntimeError("emulator already started")
        master_fd, slave_fd = os.openpty()
        # Raw from the start: no echo, no newline translation before a client configures the port.
        tty.setraw(slave_fd)
        first = next(iter(self.meters.values()))
        set_pty_speed(slave_fd, first.baudrate)
        os.set_blocking(master_fd, False)
        self._master_fd, self._slave_fd = master_fd, slave_fd  # slave kept open: no EIO on master
        self.path = os.ttyname(slave_fd)
        placeholder = SimDevice(id=1, simdata=SimData(0, datatype=DataType.REGISTERS))
        server = ModbusSerialServer(
            placeholder, framer=FramerType.RTU, port=self.path, baudrate=first.baudrate,
            ignore_missing_devices=True,
        )
        # The bus context replaces pymodbus' simulator: values come from the meters' state now.
        server.context = _BusContext(self.meters, self._line_speed)  # type: ignore[assignment]
        handler = server.handle_new_connection()
        self._transport = _PtyMasterTransport(
            asyncio.get_running_loop(), master_fd, handler, self._shape_answer
        )
        handler.connection_made(self._transport)
        self._server = server
        return self.path

    async def stop(self) -> None:
        """Stop serving and close the pty; the reader then sees a closed port."""
        if self._transport is not None:
            self._transport.close()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
        for fd in (self._master_fd, self._slave_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master_fd = self._slave_fd = None
        self._server = self._transport = None
        self.path = None

    async def __aenter__(self) -> ModbusBusEmulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


class ModbusMeterEmulator(ModbusBusEmulator):
    """One emulated SDM meter alone on its own pseudo-terminal."""

    def __init__(
        self, model: str | RegisterMap = "sdm630", device_id: int = 1,
        baudrate: int | None = None, serial_number: int = 12_345_678,
        profile: LoadProfile | None = None, clock: Clock = time.time,
        *, wire_delay: bool = True,
    ) -> None:
        self.meter = EmulatedMeter(model, device_id, baudrate, serial_number, profile, clock)
        super().__init__([self.meter], wire_delay=wire_delay)

    @property
    def faults(self) -> MeterFaults:
        return self.meter.faults
