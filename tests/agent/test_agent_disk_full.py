"""A full disk (issue 18): the agent stays up, says so, and signs what it missed when space returns.

Once with an injected failing store, once on a real size-limited tmpfs in a user and mount
namespace of its own (skipped, with the reason, where the kernel does not permit one).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from meterchain.agent.meters import MeterSnapshot
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import CycleEntry, Outbox, StorageFull, is_disk_full
from meterchain.agent.scheduler import Poller
from meterchain.contract.message import parse_message
from meterchain.contract.reading import ClockSync, StatusFlag
from meterchain.contract.signing import generate_private_key_pem, load_signer

from tests.support.tmpfs import in_tmpfs, unavailable

T0 = 1_800_000_000 - 1_800_000_000 % 900


class Clock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)


class Meter:
    name = "house"

    def __init__(self) -> None:
        self.wh = 1000

    async def read(self) -> MeterSnapshot:
        self.wh += 10
        return MeterSnapshot("630001", self.wh, 0)

    def close(self) -> None:
        pass


class FullDisk(Outbox):
    """An outbox whose disk is full while ``full`` is set."""

    full = False

    async def append_cycle(self, entries: Sequence[CycleEntry], now: int) -> list[int]:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return await super().append_cycle(entries, now)


def test_disk_full_is_told_apart_from_other_errors() -> None:
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(StorageFull("full"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(OSError(13, "Permission denied"))


async def test_the_poller_stays_up_says_so_once_a_minute_and_spans_the_gap_later(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    alarms: list[str] = []
    metrics = AgentMetrics()
    signer = load_signer(generate_private_key_pem())
    db = await Outbox.open(tmp_path / "outbox.sqlite", "gw-1")
    await db.close()
    outbox = await FullDisk.open(tmp_path / "outbox.sqlite", "gw-1")
    try:
        poller = Poller(device="gw-1", signer=signer, sources=[Meter()], outbox=outbox, clock=clock,
                        interval=15, metrics=metrics, clock_sync=lambda: ClockSync.SYNCED,
                        on_alarm=lambda kind, detail: alarms.append(kind))
        assert await poller.poll_once(T0 + 15) == [1]
        outbox.full = True
        for k in range(2, 12):  # 10 intervals of 15 s on a full disk: no exception
            clock.t = T0 + 15 * k
            assert await poller.poll_once(T0 + 15 * k) == []
        assert alarms == ["disk-full"] * 3  # at 30, 90 and 150 s: once a minute, not per cycle
        assert metrics.disk_full._value.get() == 1 and metrics.disk_full_cycles._value.get() == 10
        outbox.full = False
        clock.t = T0 + 15 * 12
        assert await poller.poll_once(T0 + 15 * 12) == [2]
        assert metrics.disk_full._value.get() == 0 and alarms[-1] == "disk-full-recovered"
        spanning = parse_message((await outbox.readings())[-1].message).reading
        assert (spanning.start, spanning.end) == (T0 + 15, T0 + 15 * 12)
        assert spanning.status & StatusFlag.SPANS_GAP
        clock.t = T0 + 15 * 13
        assert await poller.poll_once(T0 + 15 * 13) == [3]
        normal = parse_message((await outbox.readings())[-1].message).reading
        assert normal.start == T0 + 15 * 12 and not normal.status & StatusFlag.SPANS_GAP
    finally:
        await outbox.close()


async def test_a_spanning_reading_reaches_back_at_most_a_day(tmp_path: Path) -> None:
    clock = Clock(T0)
    signer = load_signer(generate_private_key_pem())
    outbox = await FullDisk.open(tmp_path / "outbox.sqlite", "gw-1")
    try:
        poller = Poller(device="gw-1", signer=signer, sources=[Meter()], outbox=outbox, clock=clock,
                        interval=900, metrics=AgentMetrics(), clock_sync=lambda: ClockSync.SYNCED)
        await poller.poll_once(T0)
        outbox.full = True
        await poller.poll_once(T0 + 900)
        outbox.full = False
        end = T0 + 2 * 86_400
        clock.t = end
        await poller.poll_once(end)
        spanning = parse_message((await outbox.readings())[-1].message).reading
        assert (spanning.start, spanning.end) == (end - 86_400, end)
    finally:
        await outbox.close()


CHILD = textwrap.dedent("""
    import asyncio, os, sys, sqlite3
    from pathlib import Path
    from meterchain.agent.metrics import AgentMetrics
    from meterchain.agent.outbox import Outbox, StorageFull
    from meterchain.agent.scheduler import Poller
    from meterchain.agent.meters import MeterSnapshot
    from meterchain.contract.message import parse_message
    from meterchain.contract.reading import ClockSync, StatusFlag
    from meterchain.contract.signing import generate_private_key_pem, load_signer

    mnt = Path(sys.argv[1])
    T0 = 1_800_000_000 - 1_800_000_000 % 900

    class Clock:
        t = float(T0)
        def now(self): return self.t
        async def sleep_until(self, d): self.t = max(self.t, d)

    class Meter:
        name = "house"; wh = 1000
        async def read(self):
            self.wh += 10
            return MeterSnapshot("630001", self.wh, 0)
        def close(self): pass

    async def main():
        clock, alarms = Clock(), []
        outbox = await Outbox.open(mnt / "outbox.sqlite", "gw-1")
        poller = Poller(device="gw-1", signer=load_signer(generate_private_key_pem()),
                        sources=[Meter()], outbox=outbox, clock=clock, interval=15,
                        metrics=AgentMetrics(), clock_sync=lambda: ClockSync.SYNCED,
                        on_alarm=lambda kind, detail: alarms.append(kind))
        assert await poller.poll_once(T0 + 15) == [1]
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the tmpfs to the last block
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        full_cycles, stored_end = 0, T0 + 15
        for k in range(2, 40):
            clock.t = T0 + 15 * k
            if await poller.poll_once(T0 + 15 * k) == []:
                full_cycles += 1
            else:  # a 1 KiB-page WAL frame may still fit in the slack of the file's last block
                stored_end = T0 + 15 * k
        assert full_cycles >= 30, full_cycles
        assert "disk-full" in alarms
        await outbox.close()
        try:  # a restart on the full disk: refused as full if at all, never taken for corrupt
            await (await Outbox.open(mnt / "outbox.sqlite", "gw-1")).close()
        except StorageFull:
            pass
        assert not list(mnt.glob("*.corrupt-*"))
        filler.unlink()
        outbox = await Outbox.open(mnt / "outbox.sqlite", "gw-1")
        poller.outbox = outbox
        clock.t = T0 + 15 * 40
        seqs = await poller.poll_once(T0 + 15 * 40)
        assert seqs, "space is back: signed"
        last = parse_message((await outbox.readings())[-1].message).reading
        assert last.status & StatusFlag.SPANS_GAP and last.start == stored_end, last
        await outbox.close()
        print("OK", full_cycles)

    try:
        asyncio.run(main())
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(1)  # an open aiosqlite thread would keep the process alive
""")


def test_a_real_full_tmpfs_costs_cycles_not_the_agent(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if why := unavailable(mnt):
        pytest.skip(why)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run = subprocess.run(in_tmpfs(mnt, "512k", [sys.executable, str(script), str(mnt)]),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("OK")
