"""What the outbox writes (issue 20): one transaction per poll cycle, none per publish or ack;
acked rows deleted in a batch inside a cycle; the OCMF record packed. Counted with SQLite's
statement trace, so a cycle split into several transactions fails here whatever the timing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from meterchain.agent import outbox as outbox_module
from meterchain.agent.meters import MeterSnapshot
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.ocmf import PackedRecordError, pack_record, unpack_record
from meterchain.agent.outbox import CycleEntry, Outbox
from meterchain.agent.scheduler import Poller
from meterchain.contract.ack import Ack, Rejection
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import CryptographySigner, generate_private_key_pem

from tests.support.agent import AcceleratedClock

DEVICE = "gw-writes"
RECORD = 'OCMF|{"FV":"1.0","GI":"meterchain-agent","MS":"21000001","RD":[]}|{"SD":"3045"}'


class Transactions:
    """Counts the transactions that wrote: each COMMIT, and each write statement run outside
    BEGIN .. COMMIT (SQLite commits those on their own)."""

    def __init__(self) -> None:
        self.commits = 0
        self.inside = False
        self.statements: list[str] = []

    def __call__(self, sql: str) -> None:
        words = sql.split(None, 1)
        verb = words[0].upper() if words else ""
        self.statements.append(sql)
        if verb == "BEGIN":
            self.inside = True
        elif verb in ("COMMIT", "END"):
            self.inside = False
            self.commits += 1
        elif verb == "ROLLBACK":
            self.inside = False
        elif verb in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not self.inside:
            self.commits += 1


class Meter:
    def __init__(self, number: int) -> None:
        self.name = f"m{number}"
        self.serial = f"2100{number:04d}"
        self.wh = 3_000_000 + number

    async def read(self) -> MeterSnapshot:
        self.wh += 10
        return MeterSnapshot(self.serial, self.wh, 600_000)

    def close(self) -> None:
        pass


async def traced(outbox: Outbox) -> Transactions:
    counter = Transactions()
    await outbox._db.set_trace_callback(counter)
    return counter


async def test_a_poll_cycle_of_ten_meters_is_one_transaction_and_publish_and_ack_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "PURGE_ROWS", 25)
    signer = CryptographySigner(generate_private_key_pem())
    clock = AcceleratedClock(1_800_000_000, 0.0)  # stands still: moved by hand
    async with await Outbox.open(tmp_path / "outbox.sqlite", DEVICE,
                                 companion=lambda message: RECORD) as outbox:
        poller = Poller(device=DEVICE, signer=signer, sources=[Meter(i) for i in range(10)],
                        outbox=outbox, clock=clock, interval=60, metrics=AgentMetrics(),
                        clock_sync=lambda: ClockSync.SYNCED, serials=None)
        counter = await traced(outbox)
        purged = False
        for cycle in range(4):
            end = 1_800_000_060 + 60 * cycle
            clock.origin = end + 1
            before = counter.commits
            seqs = await poller.poll_once(end)
            assert len(seqs) == 10 and counter.commits == before + 1, counter.statements[-30:]
            purged = purged or any(s.startswith("DELETE FROM readings WHERE seq <=")
                                   for s in counter.statements)
            # the publisher's bookkeeping and the backend's ack: nothing written
            await outbox.mark_sent(seqs, now=end + 2)
            assert (await outbox.readings())[0].send_count == 1
            result = await outbox.apply_ack(Ack(DEVICE, upto=seqs[-1]), now=end + 3)
            assert result.committed == 10 and await outbox.depth() == 0
            assert counter.commits == before + 1
        assert purged  # 30 acked rows reached PURGE_ROWS: deleted inside the fourth cycle
        assert (await outbox.readings()) == []


async def test_acks_are_kept_in_memory_until_a_cycle_purges_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart before the purge the retained ack applies again; after the purge the
    rows and the durable acked_upto are on disk."""
    monkeypatch.setattr(outbox_module, "PURGE_ROWS", 4)
    path = tmp_path / "outbox.sqlite"

    def entry(meter: str, end: int) -> CycleEntry:
        return CycleEntry(meter, end, lambda seq: f"{meter}|{end}|{seq}".encode())

    async with await Outbox.open(path, DEVICE) as outbox:
        await outbox.append_cycle([entry("a", 60), entry("b", 60), entry("c", 60)], now=61)
        await outbox.mark_sent([1, 2, 3], now=62)
        assert (await outbox.apply_ack(Ack(DEVICE, upto=3), now=63)).committed == 3
        assert await outbox.acked_upto() == 3 and await outbox.outstanding(10) == ([], 0)
    async with await Outbox.open(path, DEVICE) as outbox:  # restarted before any purge
        assert await outbox.acked_upto() == 0 and await outbox.depth() == 3
        assert [r.send_count for r in await outbox.readings()] == [0, 0, 0]  # sends forgotten
        assert outbox.first_own_seq == 4
        assert (await outbox.apply_ack(Ack(DEVICE, upto=3), now=70)).committed == 3
        await outbox.append_cycle([entry("a", 120)], now=121)  # 3 acked < 4: kept
        await outbox.apply_ack(Ack(DEVICE, upto=4), now=122)
        await outbox.append_cycle([entry("a", 180)], now=181)  # 4 acked: purged in this cycle
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM readings").fetchall() == [(5,)]
        assert db.execute("SELECT acked_upto, next_seq FROM state").fetchone() == (4, 6)
    async with await Outbox.open(path, DEVICE) as outbox:
        assert await outbox.acked_upto() == 4 and [r.seq for r in await outbox.readings()] == [5]


async def test_a_rejection_after_an_ack_covered_it_is_not_quarantined(tmp_path: Path) -> None:
    """An acked row waiting for its purge is committed, not something a later ack can reject."""
    async with await Outbox.open(tmp_path / "outbox.sqlite", DEVICE) as outbox:
        await outbox.append_cycle([CycleEntry("a", 60, lambda seq: b"x")], now=61)
        await outbox.apply_ack(Ack(DEVICE, upto=1), now=62)
        result = await outbox.apply_ack(Ack(DEVICE, upto=1, rejected=(Rejection(1, "late", "no"),)),
                                        now=63)
        assert result.quarantined == () and await outbox.quarantine_count() == 0


async def test_the_ocmf_record_is_stored_packed_and_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path, DEVICE, companion=lambda message: RECORD) as outbox:
        await outbox.append_cycle([CycleEntry("a", 60, lambda seq: b"message")], now=61)
        assert [r.ocmf for r in await outbox.readings()] == [RECORD]
    with sqlite3.connect(path) as db:
        text, packed = db.execute("SELECT ocmf, ocmf_packed FROM readings").fetchone()
    assert text is None and len(packed) < len(RECORD) and unpack_record(packed) == RECORD


def test_a_packed_record_that_is_damaged_is_refused_with_a_typed_error() -> None:
    packed = pack_record(RECORD)
    for damaged in (b"", b"\x02" + packed[1:], packed[:-3], packed + b"\x00", b"\x01\xff\xff"):
        with pytest.raises(PackedRecordError):
            unpack_record(damaged)


async def test_a_reading_is_handed_out_only_once_its_cycle_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher's reads share the poller's connection: run inside a cycle's open transaction
    (here: while its purge runs) they saw its rows before the COMMIT, so a reading could go out
    that a failed commit (full disk) or a kill then took back, and its sequence number was signed
    again for another reading."""
    path = tmp_path / "outbox.sqlite"
    inside = asyncio.Event()

    async def slow_failing_purge(self: Outbox) -> None:
        inside.set()
        await asyncio.sleep(0.2)
        raise sqlite3.OperationalError("database or disk is full")

    async with await Outbox.open(path, DEVICE) as outbox:
        monkeypatch.setattr(Outbox, "_purge_acked", slow_failing_purge)
        cycle = asyncio.create_task(outbox.append_cycle(
            [CycleEntry("a", 60, lambda seq: f"a|60|{seq}".encode())], now=61))
        await inside.wait()
        seen = ([r.seq for r in await outbox.unsent(10)], await outbox.oldest_seq(),
                [r.seq for r in await outbox.fetch([1])])
        with pytest.raises(sqlite3.OperationalError):
            await cycle
        assert seen == ([], None, [])
        assert await outbox.readings() == [] and await outbox.next_seq() == 1
