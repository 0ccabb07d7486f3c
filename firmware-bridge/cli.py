"""``meterchain emulate ...``: meters on pseudo-terminals, for the demo, tests and installers."""

from __future__ import annotations

import asyncio
import signal
from enum import StrEnum

import typer

from meterchain.bridge.modbus.emulator import ModbusMeterEmulator, accelerated_clock
from meterchain.bridge.modbus.registers import register_map_for
from meterchain.bridge.modbus.simulation import LoadProfile

app = typer.Typer(help="Meter emulators on pseudo-terminals", no_args_is_help=True)


class ModbusModel(StrEnum):
    SDM630 = "sdm630"
    SDM120 = "sdm120"


async def _serve_until_signal(emulator: ModbusMeterEmulator, announce: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    path = await emulator.start()
    try:
        typer.echo(path)
        typer.echo(announce, err=True)
        await stop.wait()
    finally:
        await emulator.stop()


@app.command()
def modbus(
    model: ModbusModel = typer.Option(ModbusModel.SDM630, help="Meter model to emulate."),
    device_id: int = typer.Option(1, "--id", min=1, max=247, help="Modbus device id."),
    baud: int = typer.Option(0, help="Baud rate (default: the model's factory setting)."),
    serial: int = typer.Option(12_345_678, help="Serial number (holding register 0xFC00)."),
    time_scale: float = typer.Option(
        1.0, min=0.001, help="Simulated seconds per real second (60: a minute a second)."
    ),
    seed: int = typer.Option(1, help="Seed of the load and PV profile."),
    start: int = typer.Option(0, help="Simulated UTC start time in seconds (default: now)."),
) -> None:
    """Serve an Eastron SDM meter on a pseudo-terminal; prints its path; Ctrl-C stops it."""
    register_map = register_map_for(model.value)
    baudrate = baud or register_map.default_baudrate
    clock = accelerated_clock(time_scale, start=start or None)
    emulator = ModbusMeterEmulator(
        register_map, device_id, baudrate, serial, LoadProfile(seed=seed), clock
    )
    announce = (
        f"{register_map.model} id {device_id} at {baudrate} baud, serial {serial}, "
        f"time x{time_scale:g}; Ctrl-C to stop"
    )
    asyncio.run(_serve_until_signal(emulator, announce))
