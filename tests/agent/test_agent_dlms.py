"""DLMS emulator → agent → broker → real backend ingest, in accelerated time (1 s = 15 minutes).

The emulated meter and the agent share one injected clock, so an interval lasts about a second
and a gateway outage of several intervals takes seconds. Every test ends with the same check:
the backend holds every interval of the meter's load profile exactly once, with the registers the
meter's profile holds, and the intervals read after an outage are flagged BACKFILLED.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from meterchain.agent.config import load_config
from meterchain.agent.outbox import Outbox
from meterchain.agent.service import Agent
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import open_store
from meterchain.contract.reading import ClockSync, Reading, StatusFlag
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import running, wait_until
from tests.support.dlms_site import DEVICE, HISTORY, PERIOD, Site, agent_config, site

pytestmark = pytest.mark.timeout(240)  # condition-based waits, each bounded by 60 s


async def caught_up(site_: Site, agent: Agent, timeout: float = 60) -> int:
    """Wait until the newest interval is signed and the backend has acked everything."""

    async def done() -> bool:
        return await site_.progress(agent) >= site_.latest()

    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, (
            f"the agent did not catch up with the meter within {timeout} s: signed up to "
            f"{await site_.progress(agent)}, the meter's newest {site_.latest()}")
        await asyncio.sleep(0.05)
    signed = int(agent.metrics.readings_signed._value.get())
    await wait_until(
        lambda: agent.metrics.readings_acked._value.get() >= signed, timeout, "the backend's acks"
    )
    return await site_.progress(agent)


async def read_live(site_: Site, timeout: float = 60) -> None:
    """Wait until the backend stores an interval the agent read live (signed within its interval).

    On a loaded machine an interval (one second here) can pass before its reading is signed, which
    makes it a backfill; the test waits for a live read rather than assuming one per second.
    """
    deadline = time.monotonic() + timeout
    while not any(not r.status & StatusFlag.BACKFILLED for r in await site_.stored()):
        assert time.monotonic() < deadline, f"no interval was read live within {timeout} s"
        await asyncio.sleep(0.1)


async def signed_upto(site_: Site) -> int:
    """The newest interval signed for the meter, from the outbox of a gateway that has stopped."""
    async with await Outbox.open(site_.config.outbox_path, DEVICE) as outbox:
        return await outbox.last_end(site_.meter.serial_number) or 0


async def stored_upto(site_: Site, signed: int, timeout: float = 60) -> int:
    """Once a stopped gateway's readings up to ``signed`` are stored, the newest stored interval.

    A gateway cancelled just after the test saw it caught up may have signed (and sent) one more
    interval; every interval is checked up to the newest one stored, not the one the test saw.
    """
    deadline = time.monotonic() + timeout
    while (upto := max((r.end for r in await site_.stored()), default=0)) < signed:
        assert time.monotonic() < deadline, f"the backend did not store up to {signed}: {upto}"
        await asyncio.sleep(0.1)
    return upto


def assert_every_interval_once(site_: Site, readings: list[Reading], upto: int) -> None:
    """Each capture from the meter's first entry to ``upto`` stored once, as the profile holds it."""
    meter = site_.meter
    ends = [r.end for r in readings]
    assert len(ends) == len(set(ends)), "an interval was stored twice"
    expected = list(range(meter.start, upto + 1, PERIOD))
    assert sorted(ends) == expected
    assert [r.seq for r in readings] == list(range(1, len(readings) + 1))
    for reading in readings:
        index = (reading.end - meter.start) // PERIOD
        stamp, cumulative, _ = meter.profile_row(index)
        assert (reading.start, reading.end) == (stamp - PERIOD, stamp)
        assert (reading.import_wh, reading.export_wh) == (cumulative, 0)
        assert reading.meter == meter.serial_number


async def test_a_gateway_outage_is_backfilled_and_every_interval_is_stored_once(
    tmp_path: Path, broker: RunningBroker
) -> None:
    async with site(tmp_path, broker) as s:
        first = s.agent()
        async with running(first.run):
            await caught_up(s, first)
            await read_live(s)  # at least one interval read live
            await caught_up(s, first)
        # The outage starts with the last interval the first gateway signed (it may have signed
        # one more between the test's look and its stop; the second gateway sends that one).
        outage_from = await signed_upto(s)
        await asyncio.sleep(5)  # gateway down for about five intervals
        second = s.agent()
        async with running(second.run):
            await wait_until(lambda: s.latest() >= outage_from + 4 * PERIOD, 60, "the outage")
            await caught_up(s, second)
            await asyncio.sleep(1.2)
            await caught_up(s, second)
        after = await stored_upto(s, await signed_upto(s))
        readings = await s.stored()
        assert_every_interval_once(s, readings, after)
        flags = {r.end: bool(r.status & StatusFlag.BACKFILLED) for r in readings}
        # Entries older than the meter's newest at the first start are history, read as backfill
        # (the newest itself is read live when the gateway signs it within its interval: on a
        # loaded machine that second can pass first, so it is not asserted here).
        history = range(s.meter.start, s.meter.start + (HISTORY - 1) * PERIOD, PERIOD)
        assert all(flags[end] for end in history), "history read at first start is backfilled"
        assert not all(flags[end] for end in flags if end <= outage_from), "read live before the outage"
        gap = [end for end in flags if outage_from < end < outage_from + 4 * PERIOD]
        assert len(gap) == 3 and all(flags[end] for end in gap)
        assert not all(flags.values()), "some intervals were read live"
        assert {r.clock for r in readings} == {ClockSync.SYNCED}
        # Seqs follow signing order: the backfilled gap comes after what was signed before it.
        by_end = sorted(readings, key=lambda r: r.end)
        assert [r.seq for r in by_end] == sorted(r.seq for r in by_end)


async def test_a_faulty_meter_never_crashes_the_agent_and_is_backfilled_when_it_answers(
    tmp_path: Path, broker: RunningBroker
) -> None:
    async with site(tmp_path, broker) as s:
        agent = s.agent()
        errors = agent.metrics.meter_read_errors
        async with running(agent.run) as task:
            await caught_up(s, agent)
            failures = errors.labels(meter="main", kind="RetriesExhausted")

            def failed() -> float:
                return float(failures._value.get())

            # Each fault lasts three interval boundaries (about the 2.5 s it used to) and until
            # the agent has failed on it (a cycle a second when the machine keeps up; fewer in a
            # fixed time when it does not), so at least three intervals are backfilled.
            silent_from = s.latest()
            s.meter.faults.silent = True
            await wait_until(lambda: failed() >= 2 and s.latest() >= silent_from + 3 * PERIOD, 60,
                             "three boundaries and two cycles failing on a silent meter")
            s.meter.faults.silent = False
            s.meter.faults.corrupt_crc = True
            before_crc, crc_from = failed(), s.latest()
            await wait_until(lambda: failed() >= before_crc + 1 and s.latest() >= crc_from + 3 * PERIOD,
                             60, "three boundaries and a cycle failing on bad CRCs")
            s.meter.faults.corrupt_crc = False
            assert not task.done()
            healed = await caught_up(s, agent)
            # A meter clock ten minutes fast: readings flagged DRIFTED, boundaries still UTC.
            drift_from = healed
            s.meter.faults.clock_offset_minutes = 10
            await wait_until(lambda: s.latest() >= drift_from + 2 * PERIOD, 60, "drifted cycles")
            await caught_up(s, agent)
            assert not task.done()
        s.meter.faults.clock_offset_minutes = 0  # once stopped: every interval after drift_from drifted
        drifted_upto = await stored_upto(s, await signed_upto(s))
        readings = await s.stored()
        assert_every_interval_once(s, readings, drifted_upto)
        clocks = {r.end: r.clock for r in readings}
        assert all(clocks[end] is ClockSync.DRIFTED for end in clocks if end > drift_from)
        assert all(clocks[end] is ClockSync.SYNCED for end in clocks if end <= healed - 2 * PERIOD)
        backfilled = [r.end for r in readings if r.status & StatusFlag.BACKFILLED]
        assert len([e for e in backfilled if e > s.meter.start + HISTORY * PERIOD]) >= 3


async def test_meterchain_emulate_dlms_and_an_agent_with_nothing_but_config(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """The CLI emulator prints its pty; the agent, built from the config file alone, backfills."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "meterchain"),
        *("emulate", "dlms", "--days", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        port = (await process.stdout.readline()).decode().strip()
        assert port.startswith("/dev/")
        config_path, spki = agent_config(tmp_path, port, broker.url, "backfill_days = 2\n")
        store_path = tmp_path / "backend.db"
        admin = await open_store(store_path)
        ingest = Ingest(await open_store(store_path), broker_url=broker.url)
        try:
            await enrol(admin, DEVICE, spki, int(time.time()))
            agent = Agent(load_config(config_path))
            async with running(ingest.run), running(agent.run):
                await wait_until(
                    lambda: agent.metrics.readings_signed._value.get() >= 97, 60, "a day of profile"
                )
                signed = int(agent.metrics.readings_signed._value.get())
                await wait_until(
                    lambda: agent.metrics.readings_acked._value.get() >= signed, 30, "acks"
                )
            ends = []
            for seq in range(1, signed + 1):
                row = await admin.reading(DEVICE, seq)
                assert row is not None
                ends.append(row.end)
            assert len(set(ends)) == len(ends) == signed
            assert ends == sorted(ends) and {b - a for a, b in itertools.pairwise(ends)} == {PERIOD}
        finally:
            ingest.close()
            await ingest.store.close()
            await admin.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
