"""Crash safety: SIGKILL a real process that commits readings and seals them, at random moments
(seeded), again and again; after every kill the log's invariants hold, and at the end the
restarted sealer accepts the store and the audit rebuilds every node and checkpoint."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
from pathlib import Path

import cbor2
import pytest
from meterchain.backend.log.audit import audit
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import open_store

from tests.support.backend import Gateway, backend, close

CHILD = Path(__file__).with_name("log_crash_child.py")


def check_invariants(path: Path) -> int:
    """Every sealed leaf in exactly one batch, batches contiguous, one checkpoint per batch end."""
    with sqlite3.connect(path) as db:
        size = db.execute("SELECT coalesce(max(size), 0) FROM checkpoints").fetchone()[0]
        indices = [r[0] for r in db.execute(
            "SELECT leaf_index FROM leaves WHERE leaf_index IS NOT NULL ORDER BY leaf_index")]
        assert indices == list(range(size)), "sealed leaves are not exactly [0, size)"
        # Arrival order: every sealed leaf arrived before every pending one.
        newest_sealed = db.execute("SELECT max(id) FROM leaves WHERE leaf_index IS NOT NULL").fetchone()[0]
        oldest_pending = db.execute("SELECT min(id) FROM leaves WHERE leaf_index IS NULL").fetchone()[0]
        assert newest_sealed is None or oldest_pending is None or newest_sealed < oldest_pending
        batches = db.execute("SELECT idx, first, size FROM batches ORDER BY idx").fetchall()
        end = 0
        for position, (idx, first, batch_end) in enumerate(batches):
            assert (idx, first) == (position, end) and batch_end > first
            end = batch_end
        assert end == size
        assert {r[0] for r in db.execute("SELECT size FROM checkpoints")} == {b[2] for b in batches}
        orphans = db.execute("SELECT count(*) FROM readings r LEFT JOIN leaves l ON l.id = r.leaf_id "
                             "WHERE l.id IS NULL").fetchone()[0]
        assert orphans == 0
    return size


async def run_kills(tmp_path: Path, kills: int, seed: int) -> None:
    gateways = [Gateway("gw-1"), Gateway("gw-2")]
    admin, ingest, sealer, store = await backend(tmp_path, *gateways)
    key = tmp_path / "log.key"
    key.write_text(str(sealer.signer) + "\n")
    pool = [g.message(seq) for seq in range(1, 1 + 80 * kills) for g in gateways]
    (tmp_path / "pool.cbor").write_bytes(cbor2.dumps(pool))
    await ingest.process(pool[:100])  # some committed before the first start
    rng = random.Random(seed)
    path = tmp_path / "mc.db"
    sizes = []
    for kill in range(kills):
        start = await store.reading_count()
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), str(path), str(key), str(tmp_path / "pool.cbor"),
            str(start), str(rng.randrange(2**32)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None and child.stderr is not None
        line = await child.stdout.readline()
        if line != b"ready\n":
            await child.wait()
            pytest.fail(f"kill {kill}: the child did not start: {(await child.stderr.read()).decode()}")
        await asyncio.sleep(rng.uniform(0.0, 0.12))
        child.send_signal(signal.SIGKILL)
        await child.wait()
        sizes.append(check_invariants(path))
    assert sizes[-1] > 0 and sizes == sorted(sizes), sizes
    assert await store.count("leaves") < len(pool)  # the pool outlasted the kills
    # Restart: the start-up check passes, everything committed gets sealed, the audit agrees.
    restarted = Sealer(await open_store(path), sealer.signer)
    await restarted.start()
    await restarted.seal_all()
    size = check_invariants(path)
    assert size == await store.count("leaves")  # every committed reading is sealed, once
    report = await audit(store, sealer.signer.verifier)
    assert report.ok, report.findings[:5]
    assert report.checkpoints == report.batches == len(await store.batches(0, 10**6))
    await close(admin, ingest, sealer, restarted, store)


async def test_kills_at_random_moments_leave_the_log_whole(tmp_path: Path) -> None:
    await run_kills(tmp_path, kills=12, seed=20261124)


@pytest.mark.slow
async def test_many_kills_leave_the_log_whole(tmp_path: Path) -> None:
    await run_kills(tmp_path, kills=40, seed=7)
