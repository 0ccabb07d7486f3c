"""Checking in worker processes (backend/ingest/pool.py, issue 20): the same results as checking
in this process, in order; a dead process costs no reading; a message that kills its process is
refused alone; closing stops the processes. Ingest with the pool on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from meterchain.backend.devices.registry import KeyRegistry
from meterchain.backend.ingest.checks import Checked, check_batch
from meterchain.backend.ingest.pool import RETRIES, RUNNING, CheckPool
from meterchain.contract import cbor
from meterchain.contract.leaves import DeviceLeaf

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory

POISON = b"kills the check process"


def dies_on_poison(messages: Sequence[tuple[str, bytes]], leaves: Mapping[str, Sequence[DeviceLeaf]],
                   now: int) -> list[Checked]:
    """A check that kills its process on :data:`POISON` (a crash in a C library, say)."""
    if any(payload == POISON for _, payload in messages):
        os._exit(3)
    return check_batch(messages, leaves, now)


@pytest.fixture(scope="module")
def pool() -> Iterator[CheckPool]:
    """Two processes, shared by the tests that do not break them (spawning costs a second)."""
    shared = CheckPool(2)
    yield shared
    shared.close()


def _bad_signature(gw: Gateway, seq: int) -> tuple[str, bytes]:
    """``gw``'s reading ``seq`` with the signature of another of its readings: fails only the
    signature check."""
    return gw.topic, cbor.encode([gw.signed(seq).reading_bytes, gw.signed(seq + 1).signature])


async def _leaves(tmp_path, *gateways: Gateway):  # type: ignore[no-untyped-def]
    admin, ingest, sealer, api = await backend(tmp_path, *gateways)
    registry = KeyRegistry()
    await registry.refresh(admin)
    await close(admin, ingest, sealer, api)
    return registry.snapshot()


def _mixed(a: Gateway, b: Gateway) -> list[tuple[str, bytes]]:
    messages = [m for seq in range(1, 41) for m in (a.message(seq), b.message(seq))]
    messages[7] = _bad_signature(a, 4)
    messages[20] = (a.topic, b"\xff" * 50)  # junk
    messages[33] = (a.topic, b.message(17)[1])  # b's reading on a's topic
    return messages


async def test_results_match_the_in_process_checks_in_order(pool: CheckPool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = Gateway("gw-a"), Gateway("gw-b")
    leaves = await _leaves(tmp_path, a, b)
    messages, now = _mixed(a, b), int(time.time())
    got = await pool.check(messages, leaves, now)
    assert got == check_batch(messages, leaves, now)  # every field, in message order
    reasons = {i: c.rejection.reason for i, c in enumerate(got) if c.rejection is not None}
    assert reasons == {7: "signature", 20: "encoding", 33: "topic"}
    assert pool.cpu_ns > 0


async def test_a_killed_check_process_costs_no_reading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = Gateway("gw-a"), Gateway("gw-b")
    leaves = await _leaves(tmp_path, a, b)
    messages, now = _mixed(a, b) * 5, int(time.time())
    pool = CheckPool(1)
    try:
        await pool.start()
        checking = asyncio.create_task(pool.check(messages, leaves, now))
        await asyncio.sleep(0.02)  # before or while it checks: either way the batch is redone
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        assert await checking == check_batch(messages, leaves, now)
        assert pool.restarts >= 1
        assert await pool.check(messages[:3], leaves, now) == check_batch(messages[:3], leaves, now)
    finally:
        pool.close()


async def test_a_message_that_kills_its_process_is_refused_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = Gateway("gw-a")
    leaves = await _leaves(tmp_path, gw)
    now = int(time.time())
    messages = [gw.message(1), (gw.topic, POISON), gw.message(2)]
    pool = CheckPool(1, check=dies_on_poison)
    try:
        got = await pool.check(messages, leaves, now)
    finally:
        pool.close()
    assert [c.reading.seq for c in got if c.reading is not None] == [1, 2]
    refused = got[1].rejection
    assert refused is not None and (refused.reason, refused.permanent) == ("internal", False)
    assert refused.device == "gw-a"  # counted under the topic's enrolled device, not in its ack
    assert pool.restarts == RETRIES + 1


async def test_a_late_report_of_a_death_leaves_the_new_processes_running(tmp_path: Path) -> None:
    """Two batches at once both see one process die: the later report must not shut down the
    processes the earlier one's retry started (their queued chunks would be cancelled)."""
    gateway = Gateway("gw-late")
    leaves = await _leaves(tmp_path, gateway)
    pool = CheckPool(1)
    try:
        await pool.start()
        dead = pool._executor
        assert dead is not None
        pool._restart(BrokenProcessPool("first report"), dead)
        await pool.start()
        alive = pool._executor
        assert alive is not None and alive is not dead
        pool._restart(BrokenProcessPool("late report"), dead)
        assert pool._executor is alive and pool.restarts == 1
        checked = await pool.check([gateway.message(1)], leaves, int(time.time()))
        assert [c.reading is not None for c in checked] == [True]
    finally:
        pool.close()


async def test_close_stops_every_check_process() -> None:
    pool = CheckPool(2)
    await pool.start()
    pids = pool.pids()
    assert len(pids) == 2 and RUNNING._value.get() == 2
    pool.close()
    assert RUNNING._value.get() == 0
    for pid in pids:  # joined by close(): gone, not even a zombie
        assert not os.path.exists(f"/proc/{pid}")
    assert pool.pids() == []
    with pytest.raises(RuntimeError, match="closed"):  # closed for good: a bug, not a dead process
        await pool.check([("meterchain/v1/gw-a/readings", b"x")], {}, 0)


async def test_ingest_in_processes_stores_the_good_and_refuses_a_bad_signature(
    store_factory: StoreFactory, pool: CheckPool
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    ingest.check_pool = pool
    batch = [gw.message(seq) for seq in range(1, 201)]
    batch[99] = _bad_signature(gw, 100)
    report = await ingest.process(batch)
    assert (report.stored, report.rejected) == (199, {"signature": 1})
    # A forged reading consumes no sequence number: the ack stops below it until the real one.
    assert report.acks[0].upto == 99
    report = await ingest.process([gw.message(100)])
    assert (report.stored, report.acks[0].upto) == (1, 200)
    assert await api.reading_count("gw-1") == 200
    ingest.check_pool = None  # the module's pool: closed by the fixture, not by this ingest
    await close(admin, ingest, sealer, api)


async def test_stage_cpu_is_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    await ingest.process([gw.message(seq) for seq in range(1, 51)])
    cpu = ingest.cpu_seconds()
    assert set(cpu) == {"receive", "check", "store", "ack", "loop", "other-threads"}
    assert cpu["check"] > 0 and cpu["loop"] > 0 and cpu["receive"] == 0  # no broker here
    await close(admin, ingest, sealer, api)
