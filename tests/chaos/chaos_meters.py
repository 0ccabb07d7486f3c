"""The meters the chaos suite kills: two emulated SDM meters on one pseudo-terminal, a process of
their own, recording every energy value they serve (the oracle's register timeline).

Usage: python chaos_meters.py LINK TIMELINE STARTED_AT
The pty's path is published as the symlink LINK (a restart makes a new pty; the agent's config
names LINK, as a gateway names /dev/serial/by-id/...). The meters' counters integrate their load
from STARTED_AT, so a restarted meter shows the counters it would have had: a meter keeps its
registers in non-volatile memory. Each energy read served appends ``t meter import_kwh export_kwh``
(the exact values before float32 encoding) to TIMELINE. Prints "ready" once serving.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TextIO

from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator
from meterchain.bridge.modbus.registers import Table

#: (model, Modbus id, serial): the meters of tests/support/agent.py's gateway.
METERS = (("sdm630", 1, 630001), ("sdm120", 2, 120002))


class RecordingMeter(EmulatedMeter):
    """An emulated meter that writes down the energy counters of every read it answers."""

    timeline: TextIO

    def read(self, table: Table, address: int, count: int) -> list[int] | None:
        now = int(self.clock())
        words = super().read(table, address, count)
        if words is not None and table == Table.INPUT and address <= 0x0048 < address + count:
            values = self.state.values(now)
            self.timeline.write(f"{now} {self.state.serial_number} {values['import_energy']!r} "
                                f"{values['export_energy']!r}\n")
            self.timeline.flush()
        return words


async def main(link: str, timeline: str, started_at: str) -> None:
    start = int(started_at)
    sink = open(timeline, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    meters = []
    for model, unit, serial in METERS:
        meter = RecordingMeter(model, device_id=unit, baudrate=9600, serial_number=serial,
                               clock=lambda: float(start))  # counters from STARTED_AT ...
        meter.clock = time.time  # ... then the wall clock
        meter.timeline = sink
        meters.append(meter)
    bus = ModbusBusEmulator(meters, wire_delay=False)
    path = await bus.start()
    tmp = f"{link}.{os.getpid()}"
    os.symlink(path, tmp)
    os.replace(tmp, link)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
