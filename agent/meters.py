"""Where the agent's meter values come from: a small protocol, and its Modbus implementation.

The Modbus side goes through the firmware bridge's reader. Meters on one serial port share one
bus: their reads are serialised by a lock per port, and the port stays open across polls.
Meters on different ports are read concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meterchain.agent.config import MeterConfig
from meterchain.bridge.modbus.reader import ModbusMeterReader


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """What a reading needs from a meter: who it is and its cumulative energy registers."""

    serial: str
    import_wh: int
    export_wh: int
    power_w: int | None = None  # net active power, positive = import; not signed, for live views
    voltage_dv: tuple[int, ...] = ()  # decivolts per phase, L1 first; not signed


class MeterSource(Protocol):
    name: str

    async def read(self) -> MeterSnapshot:
        """One read of the meter now; raises on failure (the poller counts and logs it)."""
        ...

    def close(self) -> None: ...


class _SharedBus:
    """One serial port opened once, with a lock so one request at a time is on the line."""

    def __init__(self, port: str, baudrate: int, timeout: float) -> None:
        self.reader = ModbusMeterReader(port, baudrate, timeout=timeout)
        self.lock = asyncio.Lock()


class ModbusMeterSource:
    """An Eastron SDM meter read through the bridge (one 76-register block read, then the serial)."""

    def __init__(self, config: MeterConfig, bus: _SharedBus) -> None:
        self.name = config.name
        self.config = config
        self._bus = bus

    async def read(self) -> MeterSnapshot:
        async with self._bus.lock:
            values = await self._bus.reader.read_values(self.config.modbus_id, self.config.model)
        return MeterSnapshot(
            serial=self.config.serial or values.serial,
            import_wh=values.import_wh,
            export_wh=values.export_wh,
            power_w=values.power_w,
            voltage_dv=values.voltage_dv,
        )

    def close(self) -> None:
        self._bus.reader.close()


def modbus_sources(meters: Sequence[MeterConfig]) -> list[ModbusMeterSource]:
    """One source per configured meter; meters on the same port and speed share a bus."""
    buses: dict[tuple[str, int], _SharedBus] = {}
    sources = []
    for meter in meters:
        key = (meter.port, meter.baudrate)
        if key not in buses:
            buses[key] = _SharedBus(meter.port, meter.baudrate, meter.timeout_seconds)
        sources.append(ModbusMeterSource(meter, buses[key]))
    return sources
