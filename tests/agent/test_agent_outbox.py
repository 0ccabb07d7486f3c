"""The agent's durable outbox: seqs never reused, one transaction per cycle, acks and quarantine."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from meterchain.agent.outbox import MIGRATIONS, CycleEntry, Outbox, OutboxError
from meterchain.contract.ack import Ack, Rejection

DEVICE = "gw-test"


def entry(meter: str, end: int) -> CycleEntry:
    """A cycle entry whose 'message' records the seq it was signed with, as a real one does."""
    return CycleEntry(meter, end, lambda seq: f"{meter}|{end}|{seq}".encode())


async def open_outbox(tmp_path: Path) -> Outbox:
    return await Outbox.open(tmp_path / "outbox.sqlite", DEVICE)


async def test_a_cycle_gets_consecutive_seqs_and_survives_a_reopen(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    assert await outbox.append_cycle([entry("m1", 900), entry("m2", 900)], now=901) == [1, 2]
    await outbox.close()
    outbox = await open_outbox(tmp_path)
    try:
        assert await outbox.append_cycle([entry("m1", 1800), entry("m2", 1800)], now=1801) == [3, 4]
        stored = await outbox.readings()
        assert [(r.seq, r.message) for r in stored] == [
            (1, b"m1|900|1"),
            (2, b"m2|900|2"),
            (3, b"m1|1800|3"),
            (4, b"m2|1800|4"),
        ]
        assert await outbox.depth() == 4
    finally:
        await outbox.close()


async def test_a_failed_signature_stores_nothing_and_uses_no_seq(tmp_path: Path) -> None:
    def broken(seq: int) -> bytes:
        raise RuntimeError("secure element unplugged")

    async with await open_outbox(tmp_path) as outbox:
        with pytest.raises(RuntimeError):
            await outbox.append_cycle([entry("m1", 900), CycleEntry("m2", 900, broken)], now=901)
        assert await outbox.depth() == 0
        assert await outbox.last_end("m1") is None
        assert await outbox.append_cycle([entry("m1", 900)], now=902) == [1]


async def test_an_interval_already_stored_for_a_meter_is_not_signed_again(tmp_path: Path) -> None:
    async with await open_outbox(tmp_path) as outbox:
        await outbox.append_cycle([entry("m1", 900)], now=901)
        assert await outbox.append_cycle([entry("m1", 900), entry("m2", 900)], now=905) == [2]
        assert await outbox.append_cycle([entry("m1", 1800)], now=1801) == [3]
        assert await outbox.next_seq() == 4


async def test_pending_is_oldest_first_and_respects_the_republish_timeout(tmp_path: Path) -> None:
    async with await open_outbox(tmp_path) as outbox:
        for end in range(900, 900 * 11, 900):
            await outbox.append_cycle([entry("m1", end)], now=end)
        first = await outbox.pending(3, now=10_000, republish_after=60)
        assert [r.seq for r in first] == [1, 2, 3]
        await outbox.mark_sent([1, 2, 3], now=10_000)
        assert [r.seq for r in await outbox.pending(3, now=10_030, republish_after=60)] == [4, 5, 6]
        # After the timeout the unconfirmed ones are due again, oldest first.
        again = await outbox.pending(3, now=10_060, republish_after=60)
        assert [(r.seq, r.send_count) for r in again] == [(1, 1), (2, 1), (3, 1)]
        assert await outbox.next_due(60) == 10_060


async def test_a_draining_backlog_keeps_slots_for_the_newest_readings(tmp_path: Path) -> None:
    async with await open_outbox(tmp_path) as outbox:
        for end in range(900, 900 * 21, 900):
            await outbox.append_cycle([entry("m1", end)], now=end)
        batch = await outbox.pending(5, now=20_000, republish_after=60, newest=2)
        assert [r.seq for r in batch] == [1, 2, 3, 19, 20]


async def test_an_ack_deletes_committed_and_quarantines_rejected(tmp_path: Path) -> None:
    async with await open_outbox(tmp_path) as outbox:
        for end in range(900, 900 * 7, 900):
            await outbox.append_cycle([entry("m1", end)], now=end)
        ack = Ack(
            DEVICE,
            upto=3,
            rejected=(
                Rejection(2, "signature", "does not verify"),
                Rejection(5, "conflict", "other bytes at seq 5"),
            ),
        )
        result = await outbox.apply_ack(ack, now=7000)
        assert result.committed == 2 and result.quarantined == (2, 5)
        assert [r.seq for r in await outbox.readings()] == [4, 6]
        quarantined = await outbox.quarantined()
        assert [(q.seq, q.reason, q.message) for q in quarantined] == [
            (2, "signature", b"m1|1800|2"),
            (5, "conflict", b"m1|4500|5"),
        ]
        # The same retained ack again changes nothing; a stale one does not go backwards.
        again = await outbox.apply_ack(ack, now=7001)
        assert again.committed == 0 and again.quarantined == ()
        await outbox.apply_ack(Ack(DEVICE, upto=1), now=7002)
        assert await outbox.acked_upto() == 3


async def test_an_ack_never_moves_the_counter(tmp_path: Path) -> None:
    """Issue 14: an ack of upto=1000 made the agent jump to 1001 and wedged the device."""
    async with await open_outbox(tmp_path) as outbox:
        await outbox.apply_ack(Ack(DEVICE, upto=41), now=100)
        assert await outbox.append_cycle([entry("m1", 900)], now=901) == [1]


async def test_an_ack_for_another_device_is_refused(tmp_path: Path) -> None:
    async with await open_outbox(tmp_path) as outbox:
        with pytest.raises(OutboxError) as info:
            await outbox.apply_ack(Ack("other", upto=1), now=1)
        assert info.value.context["ack_device"] == "other"


async def test_schema_is_versioned_and_settings_are_durable(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path, DEVICE):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(OutboxError, match="newer agent"):
        await Outbox.open(path, DEVICE)


async def test_an_outbox_belongs_to_one_device(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path, DEVICE):
        pass
    with pytest.raises(OutboxError, match="belongs to device"):
        await Outbox.open(path, "someone-else")


async def cancel_after(coro: Coroutine[Any, Any, object], steps: int) -> None:
    """Run ``coro`` for ``steps`` event-loop turns, then cancel it (as a shutdown would)."""
    task = asyncio.ensure_future(coro)
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_cancelled_transaction_leaves_a_consistent_outbox(tmp_path: Path) -> None:
    """Cancelled at every await of a cycle and of an ack (a shutdown), the outbox stays usable
    and its counter matches what it stored: aiosqlite may finish a COMMIT the caller gave up on."""

    async with await open_outbox(tmp_path) as outbox:
        end = 900
        for steps in range(12):
            end += 900
            await cancel_after(
                outbox.append_cycle([entry("m1", end), entry("m2", end)], now=end), steps
            )
            stored = await outbox.readings()
            assert await outbox.next_seq() == (stored[-1].seq + 1 if stored else 1)
            assert len(stored) % 2 == 0  # a cycle is stored whole or not at all
            await cancel_after(outbox.apply_ack(Ack(DEVICE, upto=0), now=end), steps)
        seqs = await outbox.append_cycle([entry("m1", end + 900)], now=end + 900)
        assert seqs == [await outbox.next_seq() - 1]
