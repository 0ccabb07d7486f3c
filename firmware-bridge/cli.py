"""``meterchain emulate ...``: meters on pseudo-terminals, for the demo, tests and installers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from enum import StrEnum

import typer
from meterchain.bridge.dlms.emulator import (
    BusMeter,
    DlmsBusEmulator,
    EmulatedDlmsMeter,
    default_settings,
)
from meterchain.bridge.dlms.hdlc import HdlcAddress
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator, accelerated_clock
from meterchain.bridge.modbus.registers import register_map_for
from meterchain.bridge.modbus.simulation import LoadProfile
from meterchain.bridge.ptyline import LINE_SPEEDS

app = typer.Typer(help="Meter emulators on pseudo-terminals", no_args_is_help=True)


class ModbusModel(StrEnum):
    SDM630 = "sdm630"
    SDM120 = "sdm120"


async def _serve_until_signal(
    emulator: ModbusBusEmulator | DlmsBusEmulator, announce: str, lines: Sequence[str] = ()
) -> None:
    """Serve until SIGINT/SIGTERM: the pty path first on stdout (scripts read that line), then
    ``lines`` (one per meter), and ``announce`` on stderr."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    path = await emulator.start()
    try:
        typer.echo(path)
        for line in lines:
            typer.echo(line)
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
    meters: int = typer.Option(
        1, min=1, max=247, help="Meters on the one pty (one RS-485 bus): ids --id, --id+1, …, "
        "serials --serial, --serial+1, …, seeds --seed, --seed+1, …; all at --baud."
    ),
) -> None:
    """Serve Eastron SDM meters on a pseudo-terminal (one bus); prints its path, then one line
    per meter (unit id, model, serial, baud); Ctrl-C stops it."""
    register_map = register_map_for(model.value)
    baudrate = baud or register_map.default_baudrate
    if device_id + meters - 1 > 247:
        raise typer.BadParameter(f"ids {device_id}..{device_id + meters - 1}: Modbus ids end at "
                                 "247", param_hint="--meters")
    clock = accelerated_clock(time_scale, start=start or None)
    bus = ModbusBusEmulator([
        EmulatedMeter(register_map, device_id + i, baudrate, serial + i, LoadProfile(seed=seed + i),
                      clock)
        for i in range(meters)
    ])
    lines = [f"id {device_id + i} {register_map.model} serial {serial + i} baud {baudrate}"
             for i in range(meters)]
    ids = f"id {device_id}" if meters == 1 else f"ids {device_id}..{device_id + meters - 1}"
    announce = (
        f"{meters} × {register_map.model} {ids} at {baudrate} baud, serial {serial}"
        f"{'' if meters == 1 else f'..{serial + meters - 1}'}, time x{time_scale:g}; "
        "Ctrl-C to stop"
    )
    asyncio.run(_serve_until_signal(bus, announce, lines))


@app.command()
def dlms(
    server_address: int = typer.Option(1, min=1, max=0x3FFF, help="HDLC server (logical) address."),
    physical_address: list[int] = typer.Option(
        [], help="HDLC lower (physical) address; repeat for several meters on one line "
        "(multi-drop); none: one meter with a 1-byte address."
    ),
    password: str = typer.Option("12345678", help="LLS password of the management client (1)."),
    serial: list[str] = typer.Option(
        ["MC20260001"], help="Serial number (0-0:96.1.0.255), one per meter; missing ones count "
        "up from the last."
    ),
    baud: int = typer.Option(0, help="The meters' baud rate: silent at any other (0: any speed)."),
    deviation: int = typer.Option(-60, help="Clock deviation in minutes (UTC = local + deviation)."),
    days: int = typer.Option(7, min=0, help="Days of 15-minute load profile before now."),
    time_scale: float = typer.Option(
        1.0, min=0.001, help="Simulated seconds per real second (60: a minute a second)."
    ),
    compress: bool = typer.Option(True, help="Send null-data timestamps for regular entries."),
) -> None:
    """Serve DLMS/COSEM meters (HDLC) on a pseudo-terminal; prints its path; Ctrl-C stops it."""
    if baud and baud not in LINE_SPEEDS:
        raise typer.BadParameter(f"--baud {baud}: use one of {', '.join(map(str, LINE_SPEEDS))}")
    clock = accelerated_clock(time_scale)
    period = 900
    start = int(clock()) // period * period - days * 86400
    lowers: list[int | None] = list(physical_address) or [None]
    meters = []
    for index, lower in enumerate(lowers):
        number = serial_for(serial, index)
        meter = EmulatedDlmsMeter(
            serial_number=number, start=start, deviation=deviation, compress_timestamps=compress
        )
        settings = default_settings(password.encode(), HdlcAddress(server_address, lower))
        meters.append(BusMeter(meter, settings, baud or None))
    emulator = DlmsBusEmulator(meters, clock)
    described = ", ".join(f"{m.meter.serial_number} at {m.settings.address}" for m in meters)
    announce = (
        f"DLMS meter(s) {described} (server address), {baud or 'any'} baud, clients 16 (public) "
        f"and 1 (LLS), time x{time_scale:g}; Ctrl-C to stop"
    )
    asyncio.run(_serve_until_signal(emulator, announce))


def serial_for(serials: list[str], index: int) -> str:
    """The ``index``-th meter's serial: given, or the last given counted up (MC…01, MC…02)."""
    if index < len(serials):
        return serials[index]
    last = serials[-1] if serials else "MC20260001"
    digits = len(last) - len(last.rstrip("0123456789"))
    if not digits:
        return f"{last}-{index + 1}"
    number = int(last[-digits:]) + index - len(serials) + 1
    return f"{last[:-digits]}{number:0{digits}d}"
