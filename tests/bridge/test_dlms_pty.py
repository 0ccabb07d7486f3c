"""End to end over a pseudo-terminal: DlmsMeterClient (pyserial) against the emulated meter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest
from meterchain.bridge.dlms.cosem import (
    ClassId,
    QuantityKind,
    RegisterValue,
)
from meterchain.bridge.dlms.emulator import (
    ACTIVE_IMPORT_OBIS,
    INTERVAL_IMPORT_OBIS,
    MAX_DEMAND_OBIS,
    DlmsMeterEmulator,
    EmulatedDlmsMeter,
)
from meterchain.bridge.dlms.errors import (
    AssociationError,
    DataAccessError,
    DlmsTimeoutError,
    LinkError,
    RetriesExhausted,
)
from meterchain.bridge.dlms.obis import LOAD_PROFILE_OBIS, Obis
from meterchain.bridge.dlms.serial_client import DlmsMeterClient

START = 1_767_225_600  # 2026-01-01T00:00:00Z
pytestmark = pytest.mark.timeout(30)


class FakeTime:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime(START + 3 * 86400 + 1234)


@pytest.fixture
async def emulator(clock: FakeTime) -> AsyncIterator[DlmsMeterEmulator]:
    async with DlmsMeterEmulator(EmulatedDlmsMeter(start=START), clock=clock) as running:
        yield running


async def test_reads_registers_clock_serial(emulator: DlmsMeterEmulator, clock: FakeTime) -> None:
    assert emulator.path is not None
    async with DlmsMeterClient(emulator.path, 9600, timeout=1.0) as meter:
        energy = await meter.read_register("1-0:1.8.0.255")
        assert energy == RegisterValue(emulator.meter.import_wh(clock.now), 0, 30)
        volts = await meter.read_register(Obis.parse("1-0:32.7.0.255"))
        assert volts.in_units_of(-1) == 2301 and volts.unit_name == "V"
        demand = await meter.read_register(MAX_DEMAND_OBIS, class_id=ClassId.EXTENDED_REGISTER)
        assert demand == RegisterValue(18_400, -1, 27)
        extended = await meter.read_extended_register(MAX_DEMAND_OBIS)
        assert extended.value == demand and extended.capture_time == START + 18 * 3600
        meter_clock = await meter.read_clock()
        assert meter_clock.utc == clock.now and meter_clock.deviation == -60
        assert meter_clock.trustworthy
        assert await meter.read_serial() == "MC20260001"
        emulator.faults.clock_offset_minutes = -7
        assert (await meter.read_clock()).utc == clock.now - 7 * 60


async def test_load_profile_by_range(emulator: DlmsMeterEmulator, clock: FakeTime) -> None:
    assert emulator.path is not None
    start, end = clock.now - 6 * 3600, clock.now
    async with DlmsMeterClient(emulator.path, 9600, timeout=1.0) as meter:
        entries = await meter.read_load_profile(LOAD_PROFILE_OBIS, start, end)
        assert len(entries) == 24
        assert all(e.timestamp % 900 == 0 and start <= e.timestamp <= end for e in entries)
        assert [b.timestamp - a.timestamp for a, b in pairwise(entries)] == [900] * 23
        assert entries[0].timestamp_rebuilt is False and entries[1].timestamp_rebuilt is True
        for entry in entries:
            index = (entry.timestamp - START) // 900
            _, cumulative, interval = emulator.meter.profile_row(index)
            assert entry.value_of(ACTIVE_IMPORT_OBIS) == RegisterValue(cumulative, 0, 30)
            assert entry.value_of(INTERVAL_IMPORT_OBIS) == RegisterValue(interval, 0, 30)
            kinds = {v.capture.obis: v.kind for v in entry.values}
            assert kinds == {
                ACTIVE_IMPORT_OBIS: QuantityKind.CUMULATIVE,
                INTERVAL_IMPORT_OBIS: QuantityKind.INTERVAL,
            }
        # Consecutive cumulative readings differ by the interval value: the columns agree.
        for a, b in pairwise(entries):
            delta = b.value_of(ACTIVE_IMPORT_OBIS).value - a.value_of(ACTIVE_IMPORT_OBIS).value
            assert delta == b.value_of(INTERVAL_IMPORT_OBIS).value
        # The profile grows by one entry per capture period.
        clock.now += 900
        later = await meter.read_load_profile(LOAD_PROFILE_OBIS, start, clock.now)
        assert len(later) == 25 and later[-1].timestamp == entries[-1].timestamp + 900
        assert await meter.read_load_profile(LOAD_PROFILE_OBIS, START - 86400, START - 3600) == []


async def test_load_profile_by_entry(emulator: DlmsMeterEmulator) -> None:
    assert emulator.path is not None
    async with DlmsMeterClient(emulator.path, 9600, timeout=1.0, max_pdu_size=256) as meter:
        entries = await meter.read_profile_entries(LOAD_PROFILE_OBIS, 1, 5)
        assert [e.timestamp for e in entries] == [START + i * 900 for i in range(5)]
        newest = await meter.read_profile_entries(LOAD_PROFILE_OBIS, 3 * 96, 0)
        # 290 entries so far (index 0 at START ... 289 at START + 3 days + 15 min): the last 3.
        assert [e.timestamp for e in newest] == [START + i * 900 for i in (287, 288, 289)]


async def test_low_level_security_over_the_port(emulator: DlmsMeterEmulator) -> None:
    assert emulator.path is not None
    async with DlmsMeterClient(
        emulator.path, client_address=1, password="12345678", timeout=1.0
    ) as meter:
        assert await meter.read_serial() == "MC20260001"
    wrong = DlmsMeterClient(emulator.path, client_address=1, password="nope", timeout=1.0)
    with pytest.raises(AssociationError):
        await wrong.connect()
    await wrong.close()


async def test_faults_over_the_port(emulator: DlmsMeterEmulator) -> None:
    assert emulator.path is not None
    async with DlmsMeterClient(emulator.path, timeout=0.2, max_retries=2) as meter:
        emulator.faults.corrupt_next = 1
        assert (await meter.read_register(ACTIVE_IMPORT_OBIS)).unit == 30
        emulator.faults.unavailable.add(ACTIVE_IMPORT_OBIS)
        with pytest.raises(DataAccessError) as refused:
            await meter.read_register(ACTIVE_IMPORT_OBIS)
        assert refused.value.result == 11 and refused.value.context["obis"] == "1-0:1.8.0.255"
        assert "object-unavailable" in str(refused.value)
        emulator.faults.unavailable.clear()
        emulator.faults.silent = True
        with pytest.raises(RetriesExhausted) as gave_up:
            await meter.read_serial()
        assert isinstance(gave_up.value.last_fault, DlmsTimeoutError)
        # After the meter comes back, the client reconnects by itself on the next read.
        emulator.faults.silent = False
        assert await meter.read_serial() == "MC20260001"


async def test_a_cancelled_read_leaves_a_usable_client(emulator: DlmsMeterEmulator) -> None:
    assert emulator.path is not None
    async with DlmsMeterClient(emulator.path, timeout=5.0) as meter:
        emulator.faults.silent = True
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(meter.read_serial(), 0.2)
        emulator.faults.silent = False
        assert await meter.read_serial() == "MC20260001"


async def test_missing_port_is_a_link_error(tmp_path: object) -> None:
    client = DlmsMeterClient("/dev/does-not-exist", timeout=0.1)
    with pytest.raises(LinkError):
        await client.connect()
