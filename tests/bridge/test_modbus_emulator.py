"""Reader against the emulator on real pseudo-terminals: values, counters, speed, ids, faults, CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator, ModbusMeterEmulator
from meterchain.bridge.modbus.errors import MeterProtocolError, MeterTimeout
from meterchain.bridge.modbus.reader import ModbusMeterReader, kwh_to_wh, read_meter
from meterchain.bridge.modbus.registers import SDM630, Table
from meterchain.bridge.modbus.simulation import JOULES_PER_KWH, LoadProfile

START = 1_750_000_000 - 1_750_000_000 % 86_400 + 11 * 3600  # late morning UTC: load and PV
FAST = 38400


class ManualClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _float32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def _expected_wh(joules: int) -> int:
    return kwh_to_wh(_float32(joules / JOULES_PER_KWH))


@pytest.mark.parametrize("model,phases", [("sdm630", 3), ("sdm120", 1)])
async def test_reads_values_from_the_map(model: str, phases: int) -> None:
    clock = ManualClock(START)
    async with ModbusMeterEmulator(model, 5, FAST, 31337, LoadProfile(seed=2), clock) as emu:
        got = await read_meter(emu.path, 5, FAST, model, timeout=1.0, clock=clock)
        state = emu.meter.state
        assert (got.model, got.device_id, got.serial, got.read_at) == (model, 5, "31337", START)
        assert got.import_wh == _expected_wh(state.import_j)
        assert got.export_wh == _expected_wh(state.export_j)
        assert got.phase_power_w == state.profile.phase_power_w(START, phases)
        assert got.power_w == sum(got.phase_power_w)
        assert len(got.voltage_dv) == phases and all(2250 <= v <= 2350 for v in got.voltage_dv)
        assert 49_900 <= got.frequency_mhz <= 50_100
        async with ModbusMeterReader(emu.path, FAST, timeout=1.0) as reader:
            assert (await reader.identify(5)).model == model


async def test_counters_advance_monotonically_and_match_the_power_integral() -> None:
    clock = ManualClock(START)
    profile = LoadProfile(seed=4)
    async with (
        ModbusMeterEmulator("sdm630", 1, FAST, 1, profile, clock, wire_delay=False) as emu,
        ModbusMeterReader(emu.path, FAST, timeout=1.0, clock=clock) as reader,
    ):
        first = previous = await reader.read_values(1, "sdm630")
        for _ in range(12):
            clock.now += 3600  # an accelerated day in hour steps
            current = await reader.read_values(1, "sdm630")
            assert current.import_wh >= previous.import_wh
            assert current.export_wh >= previous.export_wh
            previous = current
    imported_j, exported_j = profile.energy_j(START, clock.now, 3)
    slack = 2  # one rounding at each end (float32 steps are < 1 Wh at these values)
    assert abs(previous.import_wh - first.import_wh - imported_j / 3600) <= slack
    assert abs(previous.export_wh - first.export_wh - exported_j / 3600) <= slack
    assert exported_j > 0 and imported_j > 0


async def test_accelerated_clock_advances_counters_in_real_time() -> None:
    from meterchain.bridge.modbus.emulator import accelerated_clock

    clock = accelerated_clock(3600, start=START)  # one real second = one simulated hour
    async with ModbusMeterEmulator("sdm120", 1, FAST, 1, LoadProfile(seed=6), clock) as emu:
        before = await read_meter(emu.path, 1, FAST, "sdm120", clock=clock)
        time.sleep(0.5)
        after = await read_meter(emu.path, 1, FAST, "sdm120", clock=clock)
    assert after.read_at - before.read_at >= 1500
    assert (after.import_wh - before.import_wh) + (after.export_wh - before.export_wh) > 0


async def test_wrong_baud_rate_is_a_bounded_timeout() -> None:
    async with ModbusMeterEmulator("sdm630", 1, 9600, clock=ManualClock(START)) as emu:
        began = time.monotonic()
        with pytest.raises(MeterTimeout) as info:
            await read_meter(emu.path, 1, 19200, "sdm630", timeout=0.3)
        assert time.monotonic() - began < 1.5
        assert info.value.context["baudrate"] == 19200
        assert "baud rate" in info.value.diagnostics()
        await read_meter(emu.path, 1, 9600, "sdm630", timeout=1.0)  # right speed: answers


async def test_wrong_device_id_is_a_timeout_not_an_exception_answer() -> None:
    async with (
        ModbusMeterEmulator("sdm630", 1, FAST, clock=ManualClock(START)) as emu,
        ModbusMeterReader(emu.path, FAST, timeout=0.3) as reader,
    ):
        with pytest.raises(MeterTimeout) as info:
            await reader.read_values(2, "sdm630")
        assert info.value.context["device_id"] == 2
        assert (await reader.read_values(1, "sdm630")).device_id == 1


async def test_faults_bad_crc_and_silence() -> None:
    async with (
        ModbusMeterEmulator("sdm120", 3, FAST, clock=ManualClock(START)) as emu,
        ModbusMeterReader(emu.path, FAST, timeout=0.3) as reader,
    ):
        emu.faults.bad_crc = True
        with pytest.raises(MeterProtocolError, match="CRC"):
            await reader.read_values(3, "sdm120")
        emu.faults.bad_crc, emu.faults.silent = False, True
        with pytest.raises(MeterTimeout):
            await reader.read_values(3, "sdm120")
        emu.faults.silent = False
        assert (await reader.read_values(3, "sdm120")).device_id == 3


async def test_unknown_register_is_illegal_data_address() -> None:
    async with (
        ModbusMeterEmulator("sdm120", 1, FAST, clock=ManualClock(START)) as emu,
        ModbusMeterReader(emu.path, FAST, timeout=0.5) as reader,
    ):
        with pytest.raises(MeterProtocolError) as info:
            await reader.read_registers(1, Table.INPUT, 0x0002, 126 - 2)
        assert info.value.context["exception_code"] in (2, 3)
        with pytest.raises(MeterProtocolError) as info:
            await reader.read_registers(1, Table.INPUT, 0x0200, 2)
        assert info.value.context["exception_code"] == 2
        with pytest.raises(MeterProtocolError):  # reading a three-phase meter's map
            await reader.read_registers(1, Table.INPUT, 0x00C8, 2)


async def test_several_meters_on_one_bus_each_at_its_own_speed() -> None:
    clock = ManualClock(START)
    bus = ModbusBusEmulator([
        EmulatedMeter("sdm630", 1, 9600, 1001, LoadProfile(seed=1), clock),
        EmulatedMeter("sdm120", 2, 9600, 1002, LoadProfile(seed=2), clock),
        EmulatedMeter("sdm120", 3, FAST, 1003, LoadProfile(seed=3), clock),
    ], wire_delay=False)
    async with bus:
        found = {}
        for baud in (9600, FAST):
            async with ModbusMeterReader(bus.path, baud, timeout=0.2) as reader:
                for device_id in (1, 2, 3, 4):
                    with contextlib.suppress(MeterTimeout):
                        found[(baud, device_id)] = (await reader.identify(device_id)).model
    assert found == {(9600, 1): "sdm630", (9600, 2): "sdm120", (FAST, 3): "sdm120"}


async def test_map_change_is_seen_by_emulator_and_reader() -> None:
    moved = dataclasses.replace(
        SDM630,
        registers=tuple(
            dataclasses.replace(r, address=0x0036) if r.name == "power_total" else r
            for r in SDM630.registers
        ),
    )
    clock = ManualClock(START)
    async with (
        ModbusMeterEmulator(moved, 1, FAST, clock=clock, wire_delay=False) as emu,
        ModbusMeterReader(emu.path, FAST, timeout=0.5) as reader,
    ):
        got = await reader.read_values(1, moved)
        assert got.power_w == sum(got.phase_power_w) != 0
        assert await reader.read_registers(1, Table.INPUT, 0x0034, 2) == [0, 0]
        assert await reader.read_registers(1, Table.INPUT, 0x0036, 2) != [0, 0]


def test_cli_serves_a_pty_that_a_reader_can_read() -> None:
    import asyncio

    exe = Path(sys.executable).with_name("meterchain")
    proc = subprocess.Popen(
        [str(exe), "emulate", "modbus", "--model", "sdm120", "--id", "7", "--baud", str(FAST),
         "--serial", "555", "--time-scale", "60", "--seed", "9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/") and os.path.exists(path)
        got = asyncio.run(read_meter(path, 7, FAST, "sdm120", timeout=2.0))
        assert (got.serial, got.model, got.device_id) == ("555", "sdm120", 7)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
