"""The log's storage at scale: proofs from the strata equal the pure module's, in few reads;
audit catches a tampered or missing stored node; migration 4 drops the derived levels."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.backend.audit import audit
from meterchain.backend.log.nodes import NodeReader
from meterchain.backend.log.proofs import consistency_proof, inclusion_proof
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.log.strata import STRIDE, is_stored, span_of
from meterchain.backend.log.tree import CompactRange, NodeId, consistency_plan, inclusion_plan
from meterchain.backend.store import open_store
from meterchain.backend.store.schema import MIGRATIONS
from meterchain.contract import merkle
from meterchain.contract.note import NoteSigner

SIZE = 70_000  # three stored levels (0, 8, 16) and a partial tile at each
SIGNER = NoteSigner.generate("test.example/log")


def add_leaves(path: Path, count: int, first_id: int = 1) -> list[bytes]:
    """Unsealed synthetic leaves (kind settlement), inserted as ingest would, in arrival order."""
    data = [i.to_bytes(8, "big") for i in range(first_id, first_id + count)]
    hashes = [merkle.leaf_hash(d) for d in data]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO leaves (id, kind, data, leaf_hash, received_at) VALUES (?, 'settlement', ?, ?, 0)",
            [(first_id + i, d, h) for i, (d, h) in enumerate(zip(data, hashes, strict=True))],
        )
    return hashes


async def seal_in_random_batches(path: Path, seed: int, largest: int = 5000) -> int:
    store = await open_store(path)
    sealer = Sealer(store, SIGNER)
    rng, total = random.Random(seed), 0
    try:
        while True:
            sealer.max_leaves = rng.randint(1, largest)
            if not (count := await sealer.seal_once()):
                return total
            total += count
    finally:
        await store.close()


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    path = tmp_path_factory.mktemp("log") / "mc.db"

    async def build() -> list[bytes]:
        await (await open_store(path)).close()  # create and migrate
        hashes = add_leaves(path, SIZE)
        assert await seal_in_random_batches(path, seed=5) == SIZE
        return hashes
    return path, asyncio.run(build())


def test_sealing_stores_only_the_strata(big_log: tuple[Path, list[bytes]]) -> None:
    path, _ = big_log
    with sqlite3.connect(path) as db:
        levels = dict(db.execute("SELECT level, count(*) FROM log_nodes GROUP BY level"))
        indexed = [r[0] for r in db.execute("SELECT leaf_index FROM leaves ORDER BY id")]
    assert levels == {8: SIZE >> 8, 16: SIZE >> 16}
    assert indexed == list(range(SIZE))


async def _proofs(path: Path, index: int, old: int, size: int
                  ) -> tuple[list[bytes], list[bytes], int, int]:
    store = await open_store(path)
    try:
        reader = NodeReader(store, cached_tiles=0)
        inclusion = inclusion_plan(index, size).assemble(
            await reader.hashes(inclusion_plan(index, size).node_ids, size))
        inclusion_reads = reader.reads
        consistency = consistency_plan(old, size).assemble(
            await reader.hashes(consistency_plan(old, size).node_ids, size))
        # The API path (cached reader) gives the same answer.
        assert await inclusion_proof(store, index, size) == inclusion
        assert await consistency_proof(store, old, size) == consistency
        return inclusion, consistency, inclusion_reads, reader.reads - inclusion_reads
    finally:
        await store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_proofs_from_storage_equal_the_pure_module(big_log: tuple[Path, list[bytes]],
                                                   data: st.DataObject) -> None:
    path, hashes = big_log
    size = data.draw(st.one_of(st.integers(1, SIZE), st.sampled_from(
        [1, 255, 256, 257, 65_535, 65_536, 65_537, SIZE])), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    old = data.draw(st.integers(1, size), label="old")
    inclusion, consistency, inclusion_reads, consistency_reads = asyncio.run(
        _proofs(path, index, old, size))
    assert inclusion == merkle.inclusion_proof(index, hashes[:size])
    assert consistency == merkle.consistency_proof(old, hashes[:size])
    # O(log n) reads: at most two tiles (a full one and the right edge) per stored level.
    assert inclusion_reads <= 2 * 3 and consistency_reads <= 2 * 3


async def test_audit_names_a_tampered_or_missing_stored_node(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    add_leaves(path, 700)
    await seal_in_random_batches(path, seed=1, largest=300)
    store = await open_store(path)
    assert (report := await audit(store, SIGNER.verifier)).ok, report.findings
    assert report.nodes == 700 >> 8
    with sqlite3.connect(path) as db:
        db.execute("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 8 AND idx = 1")
    names = [str(f) for f in (await audit(store, SIGNER.verifier)).findings]
    assert names == ["node (8, 1): hash differs from the rebuilt tree"]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM log_nodes WHERE level = 8 AND idx = 0")
    names = [str(f) for f in (await audit(store, SIGNER.verifier)).findings]
    assert "node (8, 0): missing" in names
    await store.close()


async def test_migration_4_drops_the_derived_levels_and_the_log_still_proves(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    hashes = add_leaves(path, 600)
    await seal_in_random_batches(path, seed=2, largest=250)
    with sqlite3.connect(path) as db:  # a database written before migration 4 kept every level
        db.executemany("INSERT INTO log_nodes VALUES (?, ?, zeroblob(32))",
                       [(level, i) for level in range(8) for i in range(600 >> level)])
        for statement in MIGRATIONS[3]:
            db.execute(statement)
    store = await open_store(path)
    assert await store.count("log_nodes") == 600 >> 8
    assert await inclusion_proof(store, 300, 600) == merkle.inclusion_proof(300, hashes)
    assert (await audit(store, SIGNER.verifier)).ok
    await store.close()


def test_audit_rebuild_checks_the_log_from_its_leaves_and_names_a_bad_node(tmp_path: Path) -> None:
    from meterchain.cli.main import app as cli
    from typer.testing import CliRunner

    path = tmp_path / "mc.db"

    async def build() -> None:
        await (await open_store(path)).close()
        add_leaves(path, 600)
        await seal_in_random_batches(path, seed=3, largest=200)

    asyncio.run(build())
    runner = CliRunner()
    args = ["audit", "--db", str(path), "--log-key", str(SIGNER.verifier), "--rebuild"]
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert "audit ok" in done.output and "600 leaves, 2 nodes" in done.output
    assert "log only" in done.output
    with sqlite3.connect(path) as db:
        db.execute("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 8 AND idx = 1")
    done = runner.invoke(cli, args)
    assert done.exit_code == 1
    assert "MISMATCH node (8, 1): hash differs from the rebuilt tree" in done.output


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 700))
def test_extend_keeps_exactly_the_strata_that_append_creates(before: int, more: int) -> None:
    hashes = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(before + more)]
    one_by_one, bulk = CompactRange(), CompactRange()
    bulk.extend(hashes[:before], STRIDE)
    for value in hashes[:before]:
        one_by_one.append(value)
    expected = [(node.level, node.index, value) for h in hashes[before:]
                for node, value in one_by_one.append(h) if node.level and is_stored(node.level)]
    assert bulk.extend(hashes[before:], STRIDE) == expected
    assert (bulk.size, bulk.root()) == (one_by_one.size, one_by_one.root())


@given(st.integers(0, 40), st.integers(0, 2**40))
def test_every_node_is_the_fold_of_its_stored_span(level: int, index: int) -> None:
    span = span_of(NodeId(level, index))
    assert is_stored(span.level) and span.level <= level < span.level + STRIDE
    assert span.first << span.level == index << level  # same first leaf
    assert span.count << span.level == 1 << level  # same width
    assert (span.first + span.count - 1) // 256 == span.tile  # inside one tile
