"""Read an SDM meter over a serial port: one block read per poll, integers out, typed errors.

The agent signs what this returns, so energy is integral Wh and every electrical value is an
integer in a small unit (decivolt, milliampere, watt, millihertz). Energy comes from float32 kWh
registers: ``import_wh`` is the exact float32 value rounded to the nearest Wh (ties to even), and
``energy_step_mwh`` says how coarse the register itself is at that value (one float32 step: 0.98 Wh
between 8,192 and 16,384 kWh, 62.5 Wh near 1 GWh). Rounding is monotonic, so a counter that never
decreases on the meter never decreases here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from meterchain.bridge.errors import BridgeError
from meterchain.bridge.modbus.errors import MeterProtocolError, MeterTimeout
from meterchain.bridge.modbus.registers import (
    ENERGY_BLOCK_COUNT,
    ENERGY_BLOCK_START,
    MODEL_PROBE_ADDRESS,
    MODEL_PROBE_COUNT,
    RegisterMap,
    Table,
    decode_registers,
    identify_model,
    register_map_for,
)
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse

Clock = Callable[[], float]


class SerialPortError(BridgeError):
    """The serial port could not be opened (missing, no permission, or in use)."""


@dataclass(frozen=True)
class MeterValues:
    """One poll of a meter, all integers: what the agent turns into a signed reading."""

    model: str
    device_id: int
    serial: str
    import_wh: int
    export_wh: int
    energy_step_mwh: int  # float32 resolution of the larger energy register at this value
    power_w: int  # net active power, positive = import
    phase_power_w: tuple[int, ...]
    voltage_dv: tuple[int, ...]  # decivolts per phase
    current_ma: tuple[int, ...]  # milliamperes per phase
    frequency_mhz: int  # millihertz
    read_at: int  # UTC seconds, from the injected clock


def kwh_to_wh(kwh: float) -> int:
    """Nearest integral Wh of a float32 kWh value, computed exactly (no double rounding)."""
    if not math.isfinite(kwh):
        raise ValueError(f"energy register is not a number: {kwh!r}")
    return round(Fraction(kwh) * 1000)


def float32_step_mwh(kwh: float) -> int:
    """The gap between adjacent float32 values at ``kwh``, in mWh (at least 1)."""
    if kwh == 0:
        return 1
    exponent = math.frexp(abs(kwh))[1] - 1  # kwh in [2**exponent, 2**(exponent+1))
    return max(1, round(Fraction(2) ** (exponent - 23) * 1_000_000))


def _scaled(value: float, factor: int) -> int:
    return round(value * factor) if math.isfinite(value) else 0


def meter_values_from_registers(
    register_map: RegisterMap, device_id: int, block: list[int], serial_words: list[int],
    read_at: int,
) -> MeterValues:
    """Decode the energy block and the serial words into MeterValues (pure)."""
    values = decode_registers(register_map, Table.INPUT, ENERGY_BLOCK_START, block)
    serial = decode_registers(
        register_map, Table.HOLDING, register_map.register("serial_number").address, serial_words
    )["serial_number"]
    phases = register_map.phases
    phase_power = tuple(_scaled(float(values[f"power_{p}"]), 1) for p in phases)
    total = values.get("power_total")
    imported = float(values["import_energy"])
    exported = float(values["export_energy"])
    return MeterValues(
        model=register_map.model,
        device_id=device_id,
        serial=str(serial),
        import_wh=kwh_to_wh(imported),
        export_wh=kwh_to_wh(exported),
        energy_step_mwh=float32_step_mwh(max(imported, exported)),
        power_w=_scaled(float(total), 1) if total is not None else sum(phase_power),
        phase_power_w=phase_power,
        voltage_dv=tuple(_scaled(float(values[f"voltage_{p}"]), 10) for p in phases),
        current_ma=tuple(_scaled(float(values[f"current_{p}"]), 1000) for p in phases),
        frequency_mhz=_scaled(float(values["frequency"]), 1000),
        read_at=read_at,
    )


class ModbusMeterReader:
    """A serial port kept open across polls; reads any meter (id) on that bus.

    ``timeout`` bounds each request: a silent meter costs exactly one timeout (no retries: the
    agent polls again next interval, and a scan must not wait 4x per candidate).
    """

    def __init__(
        self, port: str, baudrate: int, *, timeout: float = 1.0, clock: Clock = time.time
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.clock = clock
        self._received = b""
        self._client = AsyncModbusSerialClient(
            port, framer=FramerType.RTU, baudrate=baudrate, timeout=timeout, retries=0,
            reconnect_delay=0, trace_packet=self._trace_packet,
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received = data  # the client's receive buffer so far, not yet a frame
        return data

    def _context(self, device_id: int) -> dict[str, object]:
        return {"port": self.port, "device_id": device_id, "baudrate": self.baudrate}

    async def open(self) -> None:
        if self._client.connected:
            return
        if not await self._client.connect():
            raise SerialPortError(
                "cannot open serial port", port=self.port, baudrate=self.baudrate
            )

    def close(self) -> None:
        self._client.close()

    async def __aenter__(self) -> ModbusMeterReader:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    async def read_registers(
        self, device_id: int, table: Table, address: int, count: int
    ) -> list[int]:
        """Words of one read request; MeterTimeout on silence, MeterProtocolError on a bad answer."""
        await self.open()
        read = (
            self._client.read_input_registers if table == Table.INPUT
            else self._client.read_holding_registers
        )
        self._received = b""
        context = self._context(device_id) | {"table": str(table), "address": hex(address)}
        try:
            response = await read(address, count=count, device_id=device_id)
        except (TimeoutError, ModbusException) as exc:
            if self._received:
                raise MeterProtocolError(
                    "answer with bad CRC or garbled frame", received=self._received.hex(),
                    **context,
                ) from exc
            raise MeterTimeout(
                f"no answer within {self.timeout} s", timeout=self.timeout, **context
            ) from exc
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", None)
            name = ExcCodes(code).name if isinstance(code, int) and code in ExcCodes._value2member_map_ else str(code)
            raise MeterProtocolError(
                f"meter answered exception {code} ({name})", exception_code=code, **context
            )
        words = list(response.registers)
        if len(words) != count:
            raise MeterProtocolError(
                f"short answer: {len(words)} of {count} registers", **context
            )
        return words

    async def read_values(self, device_id: int, model: str | RegisterMap) -> MeterValues:
        """One energy block read (76 registers) and the serial number, decoded to integers."""
        register_map = register_map_for(model)
        block = await self.read_registers(
            device_id, Table.INPUT, ENERGY_BLOCK_START, ENERGY_BLOCK_COUNT
        )
        serial_reg = register_map.register("serial_number")
        serial_words = await self.read_registers(
            device_id, serial_reg.table, serial_reg.address, serial_reg.words
        )
        read_at = int(self.clock())
        try:
            return meter_values_from_registers(
                register_map, device_id, block, serial_words, read_at
            )
        except ValueError as exc:
            raise MeterProtocolError(str(exc), **self._context(device_id)) from exc

    async def identify(self, device_id: int) -> RegisterMap:
        """Which model answers ``device_id`` (see registers.py: the three-phase probe)."""
        try:
            await self.read_registers(device_id, Table.INPUT, MODEL_PROBE_ADDRESS, MODEL_PROBE_COUNT)
        except MeterProtocolError as exc:
            if exc.context.get("exception_code") != ExcCodes.ILLEGAL_ADDRESS:
                raise
            await self.read_registers(device_id, Table.INPUT, ENERGY_BLOCK_START, 2)
            return identify_model(probe_answered=False)
        return identify_model(probe_answered=True)


async def read_meter(
    port: str, device_id: int, baudrate: int, model: str | RegisterMap = "sdm630",
    timeout: float = 1.0, clock: Clock = time.time,
) -> MeterValues:
    """Open the port, read one meter once, close the port."""
    async with ModbusMeterReader(port, baudrate, timeout=timeout, clock=clock) as reader:
        return await reader.read_values(device_id, model)
