"""A community end to end: 20 emulated households (half of them PV prosumers) on five Modbus buses
→ five gateway agents → a real broker → the real backend ``serve()`` → settled intervals, delta
lines and monthly bills, over two simulated days in accelerated time (15 minutes = 0.25 s).

One meter falls silent for sixteen intervals: the intervals whose deadline passes meanwhile are
settled with it MISSING; its next reading spans the gap, the gap is filled by spreading, and those
intervals are re-settled as delta lines with new settlement leaves. Every member's settled energy
then adds up exactly to its meter's register difference, and the January bills equal bills built
from the final revisions directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from meterchain.agent.cli import write_private_key
from meterchain.agent.config import load_config
from meterchain.agent.service import Agent
from meterchain.backend.access.model import PointKind
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.config import BackendConfig
from meterchain.backend.devices.registry import enrol
from meterchain.backend.service import serve
from meterchain.backend.settlement.netting import BillBuilder, Quality
from meterchain.backend.settlement.runner import bill_community, rebuild
from meterchain.backend.settlement.tables import SettlementTables, Terms
from meterchain.backend.settlement.verify import verify_settlement
from meterchain.backend.store import open_store
from meterchain.bridge.modbus import LoadProfile
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator
from meterchain.contract.leaves import SettlementLeaf, parse_leaf
from meterchain.contract.note import NoteSigner, NoteVerifier
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import generate_private_key_pem, load_signer
from meterchain.mqtt.broker import RunningBroker, free_port

from tests.support.agent import FAST_BACKOFF, AcceleratedClock

pytestmark = pytest.mark.timeout(180)

START = 1_769_731_200  # 2026-01-30 00:00 UTC: two days, then January closes
END = START + 2 * 86_400
LEAD = 7_200  # the agents start two simulated hours early (their first readings are not bound)
SCALE = 3_600.0  # simulated seconds per real second: a quarter hour in 0.25 s
DEADLINE = 2_700
BUSES = ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10), (11, 12, 13, 14, 15), (16, 17, 18, 19), (20,))
# Four silent hours: at 3,600x a settlement pass that lags a second on a loaded machine still settles
# a dozen of its intervals at their deadline before the meter answers again.
SILENT_FROM, SILENT_TO = START + 10 * 3600 + 60, START + 14 * 3600 + 60
ADMIN = "admin-token-for-the-e2e"
PROGRESS = bool(os.environ.get("MC_E2E_PROGRESS"))


@dataclass
class Bus:
    device: str
    emulator: ModbusBusEmulator
    meters: dict[int, EmulatedMeter]  # household number -> meter
    config: Path


def point(n: int) -> str:
    return f"mp-{n:02d}"


async def start_bus(tmp_path: Path, index: int, households: tuple[int, ...],
                    clock: AcceleratedClock, broker: RunningBroker) -> Bus:
    device = f"gw-{index}"
    meters = {
        n: EmulatedMeter("sdm630", device_id=k, baudrate=115200, serial_number=40_000 + n,
                         profile=LoadProfile(seed=n, pv_peak_w=5000 if n % 2 else 0),
                         clock=clock.now)
        for k, n in enumerate(households, start=1)
    }
    emulator = ModbusBusEmulator(list(meters.values()), wire_delay=False)
    port = await emulator.start()
    write_private_key(tmp_path / f"{device}.key", generate_private_key_pem(), force=False)
    config = tmp_path / f"{device}.toml"
    tables = "".join(
        f'\n[[meters]]\nname = "house-{n}"\nmodel = "sdm630"\nport = "{port}"\n'
        f'baudrate = 115200\nmodbus_id = {k}\nserial = "M-{n:02d}"\ntimeout_seconds = 0.2\n'
        for k, n in enumerate(households, start=1))
    config.write_text(
        f'device_id = "{device}"\nkey_path = "{device}.key"\n'
        f'backend_url = "http://127.0.0.1:8000"\noutbox_path = "{device}-outbox.sqlite"\n'
        f"interval_seconds = 900\nack_timeout_seconds = 14400\ntelemetry_seconds = 0\n\n"
        f'[broker]\nurl = "{broker.url}"\n{tables}')
    return Bus(device, emulator, meters, config)


async def register_community(db: Path, buses: list[Bus]) -> None:
    store = await open_store(db)
    try:
        parties = PartyTables(store)
        await parties.add_utility("u-1", "Stadtwerke", START)
        await parties.add_community("c-1", "u-1", "Sonnenhof", START)
        for bus in buses:
            spki = load_signer((db.parent / f"{bus.device}.key").read_bytes()).public_key_der
            await enrol(store, bus.device, spki, START)
            for n in bus.meters:
                kind = PointKind.GENERATION if n % 2 else PointKind.CONSUMPTION
                await parties.add_metering_point(point(n), "u-1", "c-1", kind, START)
                await parties.bind_meter(point(n), bus.device, f"M-{n:02d}", START, None, START)
        await SettlementTables(store).set_terms(Terms(
            "c-1", START, interval_seconds=900, deadline_seconds=DEADLINE, timezone="UTC",
            retail_price=320_000, feed_in_price=82_000, local_network_fee=25_000,
            grid_network_fee=75_000, platform_fee=5_000, monthly_fee=5_000_000,
            vat_basis_points=1900, co2_grams_per_kwh=380), START)
    finally:
        await store.close()


async def fault_meter(meter: EmulatedMeter, clock: AcceleratedClock) -> None:
    """Silence household 20's meter for four hours of the first day: most of those intervals reach
    their deadline (45 minutes) before it answers again."""
    await clock.sleep_until(SILENT_FROM)
    meter.faults.silent = True
    await clock.sleep_until(SILENT_TO)
    meter.faults.silent = False


async def test_twenty_households_two_days_settled_with_deltas_and_bills(
    tmp_path: Path, broker: RunningBroker
) -> None:
    logging.getLogger("meterchain.agent.mqtt").setLevel(logging.ERROR)  # "pending publish calls"
    clock = AcceleratedClock(START - LEAD, SCALE)
    buses = [await start_bus(tmp_path, i, households, clock, broker)
             for i, households in enumerate(BUSES, start=1)]
    db = tmp_path / "backend.sqlite"
    await register_community(db, buses)
    config = BackendConfig(db=str(db), broker=broker.url, http_port=free_port(),
                           log_key=str(tmp_path / "log.key"), origin="e2e.example/log",
                           admin_token=ADMIN, seal_interval=0.5, settle_every=0.25)
    stop, ready = asyncio.Event(), asyncio.Event()
    backend = asyncio.create_task(serve(config, stop=stop, ready=ready, clock=clock.now))
    await asyncio.wait_for(ready.wait(), 120)  # a start-up budget (the clock restarts after it)
    clock.restart_at(START - LEAD)  # the two hours of lead begin now, not before the start-up
    # The agents' timers run on the accelerated clock too: acks are awaited ~4 s and status
    # messages sent every ~5 s of real time.
    agents = [asyncio.create_task(Agent(load_config(b.config), clock=clock,
                                        backoff=FAST_BACKOFF, status_interval=5 * SCALE,
                                        clock_sync=lambda: ClockSync.SYNCED).run())
              for b in buses]
    fault = asyncio.create_task(fault_meter(buses[-1].meters[20], clock))
    observer = await open_store(db)
    tables = SettlementTables(observer)
    try:
        async def january_billed() -> bool:
            return len(await tables.bills("c-1", period_start=END - 31 * 86_400)) == 20

        deadline = time.monotonic() + 120
        while not await january_billed():
            assert time.monotonic() < deadline, "January was not billed in time"
            if PROGRESS:
                state = await tables.state("c-1")
                print(f"sim {clock.now() - START:9.0f} s, readings "
                      f"{await observer.reading_count()}, state {state}", flush=True)
            if backend.done():
                raise AssertionError("the backend stopped") from backend.exception()
            await asyncio.sleep(0.2)
        await clock.sleep_until(clock.now() + 1800)  # let a pass see it all once more
    finally:
        for task in (*agents, fault):
            task.cancel()
        # bounded: an agent that ignored its cancellation fails the test instead of hanging the run
        await asyncio.wait_for(asyncio.gather(*agents, fault, return_exceptions=True), 60)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend, 30)
        for bus in buses:
            await bus.emulator.stop()
    try:
        await check_settlement(tables, observer, tmp_path)
    finally:
        await observer.close()


async def check_settlement(tables: SettlementTables, store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    members = tuple(point(n) for n in range(1, 21))
    in_force = await tables.in_force("c-1", START, END)
    assert sorted(in_force) == list(range(START, END, 900))  # 192 intervals, every one settled
    assert all(row.members == 20 for row in in_force.values())

    # The silent meter: intervals settled at their deadline, then re-settled as delta lines.
    revisions = await tables.revisions("c-1", START, END)
    resettled = sorted({r.interval_start for r in revisions if r.revision > 0})
    silent = [s for s in resettled if SILENT_FROM - 900 <= s < SILENT_TO]
    assert len(silent) >= 2, resettled
    for start in silent:
        first = next(r for r in revisions if r.interval_start == start and r.revision == 0)
        assert first.reason == "deadline" and first.missing >= 1
        final = in_force[start]
        assert final.reason == "late-reading" and final.missing == 0 and final.substituted >= 1
        settled, _ = rebuild(final)
        k = settled.interval.member_ids.index("mp-20")
        assert int(settled.interval.quality[k]) == Quality.SUBSTITUTED
        deltas = [line for _, rev, line in await tables.lines("c-1", start, start + 1)
                  if rev == final.revision]
        assert deltas and all(d["is_delta"] for d in deltas)
        assert sum(d["bought_local_wh"] for d in deltas) == sum(d["sold_local_wh"] for d in deltas)
        for d in deltas:
            assert d["import_wh"] == d["bought_local_wh"] + d["bought_grid_wh"]
            assert d["export_wh"] == d["sold_local_wh"] + d["sold_grid_wh"]

    # Energy is conserved: each member's settled energy is its register difference, exactly.
    totals = {m: np.zeros(2, np.int64) for m in members}
    for row in in_force.values():
        settled, _ = rebuild(row)
        for k, m in enumerate(settled.interval.member_ids):
            totals[m] += (int(settled.interval.import_wh[k]), int(settled.interval.export_wh[k]))
    for m in members:
        readings = await tables.point_readings(m, START, END)
        by_end = {r.end: r for r in readings}
        assert START in by_end and END in by_end, (m, "boundary readings")
        assert tuple(totals[m]) == (by_end[END].import_wh - by_end[START].import_wh,
                                    by_end[END].export_wh - by_end[START].export_wh), m
    prosumers = [m for m in members if int(m[-2:]) % 2]
    assert all(totals[m][1] > 0 for m in prosumers)
    assert sum(row.local_wh for row in in_force.values()) > 0

    # January's bills: one per member, lines add up, and equal bills of the final revisions.
    bills = {b.member: b for b in await tables.bills("c-1", period_start=END - 31 * 86_400)}
    assert set(bills) == set(members)
    terms = (await tables.terms("c-1"))[0]
    direct = BillBuilder(bill_community(terms), END - 31 * 86_400, END)
    for row in in_force.values():
        direct.add(rebuild(row)[1])
    for m, bill in bills.items():
        assert sum(int(line["amount"]) for line in bill.lines) == bill.total  # type: ignore[arg-type]
        expected = direct.bill(m)
        assert bill.total == expected.total and bill.energy == expected.energy, m

    # Every settlement is a sealed leaf of the log, and an auditor re-derives one re-settled
    # interval from the signed readings and gets the logged digest.
    for row in revisions:
        data, _, index = await tables.leaf_data(row.leaf_id)
        leaf = parse_leaf(data)
        assert isinstance(leaf, SettlementLeaf) and leaf.fields["digest"] == row.digest
        assert index is not None
    verifier = NoteVerifier.parse(
        str(NoteSigner.parse((tmp_path / "log.key").read_text()).verifier))
    report = await verify_settlement(store, "c-1", silent[0], log_key=verifier)
    assert report.ok, report.problems
