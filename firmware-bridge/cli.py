"""``meterchain emulate ...``: meters on pseudo-terminals, for the demo, tests and installers."""

from __future__ import annotations

import asyncio
import signal
from enum import StrEnum

import typer

from meterchain.bridge.dlms.emulator import DlmsMeterEmulator, EmulatedDlmsMeter, default_settings
from meterchain.bridge.dlms.hdlc import HdlcAddress
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


@app.command()
def dlms(
    server_address: int = typer.Option(1, min=1, max=0x3FFF, help="HDLC server (logical) address."),
    physical_address: int = typer.Option(
        -1, help="HDLC lower (physical) server address; -1 for a 1-byte address."
    ),
    password: str = typer.Option("12345678", help="LLS password of the management client (1)."),
    serial: str = typer.Option("MC20260001", help="Serial number (0-0:96.1.0.255)."),
    deviation: int = typer.Option(-60, help="Clock deviation in minutes (UTC = local + deviation)."),
    days: int = typer.Option(7, min=0, help="Days of 15-minute load profile before now."),
    time_scale: float = typer.Option(
        1.0, min=0.001, help="Simulated seconds per real second (60: a minute a second)."
    ),
    compress: bool = typer.Option(True, help="Send null-data timestamps for regular entries."),
) -> None:
    """Serve a DLMS/COSEM meter (HDLC) on a pseudo-terminal; prints its path; Ctrl-C stops it."""
    clock = accelerated_clock(time_scale)
    period = 900
    start = int(clock()) // period * period - days * 86400
    meter = EmulatedDlmsMeter(
        serial_number=serial, start=start, deviation=deviation, compress_timestamps=compress
    )
    lower = None if physical_address < 0 else physical_address
    settings = default_settings(password.encode(), HdlcAddress(server_address, lower))
    emulator = DlmsMeterEmulator(meter, settings, clock)
    announce = (
        f"DLMS meter {serial}, server address {settings.address}, clients 16 (public) and "
        f"1 (LLS), time x{time_scale:g}; Ctrl-C to stop"
    )
    asyncio.run(_serve_until_signal(emulator, announce))  # type: ignore[arg-type]
