"""The log's storage at scale: proofs from every 4th level equal the pure module's, in one query
of a few 16-node groups; audit catches a tampered or missing stored node; migration 4 dropped the
derived levels; a log of the older layout (levels 8, 16, ... only) proves right at once and gets
its missing levels from the sealer's start-up backfill, resuming after a crash."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.backend.log.audit import audit
from meterchain.backend.log.backfill import backfill_strata
from meterchain.backend.log.nodes import NodeReader, reader_for
from meterchain.backend.log.proofs import consistency_proof, inclusion_proof, inclusion_proofs
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.log.strata import GROUP_WIDTH, LEGACY_STRIDE, STRIDE, is_stored, span_of
from meterchain.backend.log.tree import CompactRange, NodeId, consistency_plan, inclusion_plan
from meterchain.backend.store import SqliteStore, open_store
from meterchain.backend.store.schema import MIGRATIONS
from meterchain.contract import merkle
from meterchain.contract.errors import ProofError
from meterchain.contract.note import NoteSigner

SIZE = 70_000  # five stored levels (0, 4, 8, 12, 16) and a partial group at each
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


def test_sealing_stores_every_4th_level(big_log: tuple[Path, list[bytes]]) -> None:
    path, _ = big_log
    with sqlite3.connect(path) as db:
        levels = dict(db.execute("SELECT level, count(*) FROM log_nodes GROUP BY level"))
        indexed = [r[0] for r in db.execute("SELECT leaf_index FROM leaves ORDER BY id")]
        layout = db.execute("SELECT value FROM log_meta WHERE key = 'stride'").fetchone()[0]
    assert levels == {4: SIZE >> 4, 8: SIZE >> 8, 12: SIZE >> 12, 16: SIZE >> 16}
    assert indexed == list(range(SIZE))
    assert layout == STRIDE == 4


async def _proofs(path: Path, index: int, old: int, size: int
                  ) -> tuple[list[bytes], list[bytes], list[tuple[int, int]]]:
    """Both proofs from an uncached reader, with (queries, hashes read) for each."""
    store = await open_store(path)
    try:
        reader = NodeReader(store, cached_groups=0)
        inclusion = inclusion_plan(index, size).assemble(
            await reader.hashes(inclusion_plan(index, size).node_ids, size))
        costs = [(reader.reads, reader.hashes_read)]
        consistency = consistency_plan(old, size).assemble(
            await reader.hashes(consistency_plan(old, size).node_ids, size))
        costs.append((reader.reads - costs[0][0], reader.hashes_read - costs[0][1]))
        assert reader.derived == 0
        # The API path (cached reader) gives the same answer.
        assert await inclusion_proof(store, index, size) == inclusion
        assert await consistency_proof(store, old, size) == consistency
        return inclusion, consistency, costs
    finally:
        await store.close()


#: Tree sizes around the group (16) and tile (256) boundaries of every stored level.
EDGES = sorted({max(1, base + d) for base in (1, 16, 256, 4096, 65_536) for d in (-1, 0, 1)}
               | {SIZE})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_proofs_from_storage_equal_the_pure_module(big_log: tuple[Path, list[bytes]],
                                                   data: st.DataObject) -> None:
    path, hashes = big_log
    size = data.draw(st.one_of(st.integers(1, SIZE), st.sampled_from(EDGES)), label="size")
    index = data.draw(st.one_of(st.integers(0, size - 1),
                                st.sampled_from([e - 1 for e in EDGES if e <= size])), label="index")
    old = data.draw(st.one_of(st.integers(1, size), st.sampled_from([e for e in EDGES if e <= size])),
                    label="old")
    inclusion, consistency, costs = asyncio.run(_proofs(path, index, old, size))
    assert inclusion == merkle.inclusion_proof(index, hashes[:size])
    assert consistency == merkle.consistency_proof(old, hashes[:size])
    # At most one query per proof, reading at most two groups (the path's and the right edge's) of 16
    # per stored level: never a 256-wide tile.
    levels = len(range(0, size.bit_length(), STRIDE))
    for queries, read in costs:
        assert queries <= 1 and read <= 2 * GROUP_WIDTH * levels


async def test_audit_names_a_tampered_or_missing_stored_node(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    add_leaves(path, 700)
    await seal_in_random_batches(path, seed=1, largest=300)
    store = await open_store(path)
    assert (report := await audit(store, SIGNER.verifier)).ok, report.findings
    assert report.nodes == (700 >> 4) + (700 >> 8)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 8 AND idx = 1")
        db.execute("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 40")
    names = [str(f) for f in (await audit(store, SIGNER.verifier)).findings]
    assert names == ["node (8, 1): hash differs from the rebuilt tree",
                     "node (4, 40): hash differs from the rebuilt tree"]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM log_nodes WHERE level = 4 AND idx = 3")
        db.execute("INSERT INTO log_nodes VALUES (4, 99, zeroblob(32))")
    names = [str(f) for f in (await audit(store, SIGNER.verifier)).findings]
    assert "node (4, 3): missing" in names
    assert "tree size 700: 45 nodes stored, 44 of them in the rebuilt tree (extra nodes)" in names
    await store.close()


async def test_migration_4_drops_the_derived_levels_and_the_log_still_proves(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    hashes = add_leaves(path, 600)
    await seal_in_random_batches(path, seed=2, largest=250)
    with sqlite3.connect(path) as db:  # a database written before migration 4 kept every level
        db.execute("DELETE FROM log_nodes WHERE level % 8 != 0")  # what sealing then wrote
        db.executemany("INSERT INTO log_nodes VALUES (?, ?, zeroblob(32))",
                       [(level, i) for level in range(8) for i in range(600 >> level)])
        for statement in MIGRATIONS[3]:
            db.execute(statement)
        # ... and was sealed before stride 4, so migration 9 found checkpoints: layout 8.
        db.execute("UPDATE log_meta SET value = 8")
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
    assert "audit ok" in done.output and "600 leaves, 39 nodes" in done.output
    assert "log only" in done.output
    with sqlite3.connect(path) as db:
        db.execute("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 8 AND idx = 1")
    done = runner.invoke(cli, args)
    assert done.exit_code == 1
    assert "MISMATCH node (8, 1): hash differs from the rebuilt tree" in done.output


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 700), st.sampled_from([1, STRIDE, 8]))
def test_extend_keeps_exactly_the_strata_that_append_creates(before: int, more: int, stride: int) -> None:
    hashes = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(before + more)]
    one_by_one, bulk = CompactRange(), CompactRange()
    bulk.extend(hashes[:before], stride)
    for value in hashes[:before]:
        one_by_one.append(value)
    expected = sorted((node.level, node.index, value) for h in hashes[before:]
                      for node, value in one_by_one.append(h) if node.level and is_stored(node.level, stride))
    assert bulk.extend(hashes[before:], stride) == expected  # by level, then index
    assert (bulk.size, bulk.root()) == (one_by_one.size, one_by_one.root())


@pytest.mark.parametrize("count", [10, 100])  # the per-leaf loop and the level-by-level path
def test_extend_refuses_a_bad_hash_anywhere_and_leaves_the_tree_as_it_was(count: int) -> None:
    good = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(count)]
    tree = CompactRange()
    tree.extend(good[:3], STRIDE)
    before = (tree.size, tree.root())
    for bad in (b"short", "s" * 32, memoryview(good[0]), None):
        with pytest.raises(ProofError, match="32 bytes"):
            tree.extend([*good[:count // 2], bad, *good[count // 2:]], STRIDE)  # type: ignore[list-item]
        assert (tree.size, tree.root()) == before
    copied, plain = CompactRange(), CompactRange()  # bytearray leaves: same tree, bytes peaks
    as_bytearrays: list[bytes] = [bytearray(h) for h in good]  # type: ignore[misc]  # accepted too
    assert copied.extend(as_bytearrays, STRIDE) == plain.extend(good, STRIDE)
    assert copied.root() == plain.root() and all(type(peak) is bytes for peak in copied.peaks)


@given(st.integers(0, 40), st.integers(0, 2**40))
def test_every_node_is_the_fold_of_its_stored_span(level: int, index: int) -> None:
    span = span_of(NodeId(level, index))
    assert is_stored(span.level) and span.level <= level < span.level + STRIDE
    assert span.first << span.level == index << level  # same first leaf
    assert span.count << span.level == 1 << level  # same width
    assert (span.first + span.count - 1) // GROUP_WIDTH == span.group  # inside one group


def _to_old_layout(path: Path) -> None:
    """What a log sealed before stride 4 holds: levels 8, 16, ... only, and layout 8 (as migration
    9 records for a database with checkpoints)."""
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM log_nodes WHERE level % 8 != 0")
        db.execute("UPDATE log_meta SET value = ? WHERE key = 'stride'", (LEGACY_STRIDE,))


async def _check_proofs(store: SqliteStore, hashes: list[bytes], size: int, seed: int) -> int:
    """Random and edge proofs from an uncached reader equal the pure module's; return how many
    groups it had to fold from the level below."""
    rng, reader = random.Random(seed), NodeReader(store, cached_groups=0)
    edges = [e for e in EDGES if e <= size]
    for _ in range(30):
        at = rng.choice([rng.randint(1, size), *edges])
        index, old = rng.randrange(at), rng.choice([rng.randint(1, at), *(e for e in edges if e <= at)])
        plan = inclusion_plan(index, at)
        assert plan.assemble(await reader.hashes(plan.node_ids, at)) == \
            merkle.inclusion_proof(index, hashes[:at])
        plan = consistency_plan(old, at)
        assert plan.assemble(await reader.hashes(plan.node_ids, at)) == \
            merkle.consistency_proof(old, hashes[:at])
    return reader.derived


def _levels(path: Path) -> dict[int, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT level, count(*) FROM log_nodes GROUP BY level"))


async def test_an_old_layout_log_proves_at_once_and_the_sealer_upgrades_it(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    hashes = add_leaves(path, 5000)
    assert await seal_in_random_batches(path, seed=4, largest=1500) == 5000
    _to_old_layout(path)
    assert _levels(path) == {8: 5000 >> 8}
    store = await open_store(path)
    # Before the upgrade: proofs fold the missing groups from the level below; audit passes.
    assert await _check_proofs(store, hashes, 5000, seed=1) > 0
    assert (report := await audit(store, SIGNER.verifier)).ok, report.findings[:5]
    # The sealer's start stores levels 4 and 12 and records stride 4, before it seals again.
    hashes += add_leaves(path, 3000, first_id=5001)
    sealer = Sealer(store, SIGNER, max_leaves=700)
    await sealer.start()
    assert await store.strata_layout() == STRIDE
    assert _levels(path) == {4: 5000 >> 4, 8: 5000 >> 8, 12: 5000 >> 12}
    assert await sealer.seal_all() == 3000
    assert _levels(path) == {4: 8000 >> 4, 8: 8000 >> 8, 12: 8000 >> 12}
    assert await _check_proofs(store, hashes, 8000, seed=2) == 0
    assert await inclusion_proof(store, 4321, 8000) == merkle.inclusion_proof(4321, hashes)
    assert (report := await audit(store, SIGNER.verifier)).ok, report.findings[:5]
    assert report.nodes == (8000 >> 4) + (8000 >> 8) + (8000 >> 12)
    await store.close()


class _KilledMidway(Exception):
    pass


async def test_a_backfill_killed_midway_resumes_and_ends_whole(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    hashes = add_leaves(path, 3000)
    await seal_in_random_batches(path, seed=6, largest=1000)
    _to_old_layout(path)
    store = await open_store(path)
    chunks = 0
    real = store.backfill_nodes

    async def dies_on_the_fourth(nodes: list[tuple[int, int, bytes]], layout: int | None = None
                                 ) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 4:
            raise _KilledMidway
        await real(nodes, layout)

    store.backfill_nodes = dies_on_the_fourth  # type: ignore[method-assign]
    with pytest.raises(_KilledMidway):
        await backfill_strata(store, 3000, chunk=50)
    # Three chunks committed, the layout not yet switched: proofs and audit are right meanwhile.
    assert _levels(path) == {4: 150, 8: 3000 >> 8}
    assert await store.strata_layout() == LEGACY_STRIDE
    assert await _check_proofs(store, hashes, 3000, seed=3) > 0
    assert (await audit(store, SIGNER.verifier)).ok
    # A repeated chunk is harmless (INSERT OR IGNORE), and the next run resumes after index 149.
    store.backfill_nodes = real  # type: ignore[method-assign]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM log_nodes WHERE level = 4 AND idx >= 120")
    assert await backfill_strata(store, 3000, chunk=50) == (3000 >> 4) - 120 + (3000 >> 12)
    assert await backfill_strata(store, 3000) == 0  # done: nothing more to do
    assert _levels(path) == {4: 3000 >> 4, 8: 3000 >> 8}
    assert (report := await audit(store, SIGNER.verifier)).ok, report.findings[:5]
    assert await _check_proofs(store, hashes, 3000, seed=4) == 0
    await store.close()


async def test_a_gap_below_a_missing_level_is_a_proof_error(tmp_path: Path) -> None:
    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    add_leaves(path, 600)
    await seal_in_random_batches(path, seed=7, largest=600)
    _to_old_layout(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM leaves WHERE leaf_index = 17")
    store = await open_store(path)
    with pytest.raises(ProofError, match="audit --rebuild"):
        await NodeReader(store).hashes([NodeId(5, 0)], 600)  # folds level 4 from the leaves
    await store.close()


def test_migration_9_marks_a_sealed_log_as_the_old_layout(tmp_path: Path) -> None:
    number = next(i for i, m in enumerate(MIGRATIONS) if any("log_meta (" in s for s in m))
    for sealed, stride in ((False, STRIDE), (True, LEGACY_STRIDE)):
        path = tmp_path / f"mc-{sealed}.db"
        asyncio.run(seal_in_random_batches(path, seed=8, largest=10))  # creates the schema
        with sqlite3.connect(path) as db:
            if sealed:
                db.execute("INSERT INTO checkpoints VALUES (1, zeroblob(32), '', 0)")
            db.execute("DROP TABLE log_meta")
            for statement in MIGRATIONS[number]:
                db.execute(statement)
            assert db.execute("SELECT value FROM log_meta WHERE key = 'stride'").fetchone() == (stride,)


async def test_several_inclusion_proofs_are_one_read(big_log: tuple[Path, list[bytes]]) -> None:
    # A bundle's proofs (device leaves, the reading, binding openings) come from one query.
    path, hashes = big_log
    store = await open_store(path)
    try:
        indices = [0, 17, SIZE // 2, SIZE - 1, 17]
        reads = reader_for(store).reads
        proofs = await inclusion_proofs(store, indices, SIZE)
        assert reader_for(store).reads == reads + 1
        assert proofs == [merkle.inclusion_proof(index, hashes) for index in indices]
        assert await inclusion_proofs(store, [], SIZE) == []
    finally:
        await store.close()


async def test_a_tile_is_one_direct_range_read(big_log: tuple[Path, list[bytes]]) -> None:
    path, hashes = big_log
    store = await open_store(path)
    reader = NodeReader(store)
    assert await reader.tile(0, 3, 256) == b"".join(hashes[768:1024])
    assert await reader.tile(0, SIZE // 256, SIZE % 256) == b"".join(hashes[SIZE // 256 * 256:])
    assert (reader.reads, reader.hashes_read) == (2, 256 + SIZE % 256)
    assert await reader.tile(0, 3, 256) == b"".join(hashes[768:1024])  # cached
    level_8 = await reader.tile(8, 0, SIZE >> 8)
    assert level_8[32 * 5 : 32 * 6] == merkle.root_from_leaf_hashes(hashes[5 * 256 : 6 * 256])
    assert reader.reads == 3
    with pytest.raises(ProofError, match="audit --rebuild"):
        await reader.tile(16, 0, 2)  # the tree has one node at level 16
    await store.close()


async def test_cached_groups_answer_again_and_for_older_sizes(big_log: tuple[Path, list[bytes]]
                                                              ) -> None:
    path, hashes = big_log
    store = await open_store(path)
    reader, rng = NodeReader(store), random.Random(9)
    pairs = [(rng.randrange(SIZE), SIZE) for _ in range(20)]
    for index, size in pairs:
        plan = inclusion_plan(index, size)
        assert plan.assemble(await reader.hashes(plan.node_ids, size)) == \
            merkle.inclusion_proof(index, hashes)
    reads = reader.reads
    for index, size in pairs:  # warm: every group is cached
        plan = inclusion_plan(index, size)
        assert plan.assemble(await reader.hashes(plan.node_ids, size)) == \
            merkle.inclusion_proof(index, hashes)
    assert reader.reads == reads
    for index, _ in pairs:  # older, smaller trees: narrower views of the cached full groups
        size = index + 1 + rng.randrange(SIZE - index)
        plan = consistency_plan(index + 1, size)
        assert plan.assemble(await reader.hashes(plan.node_ids, size)) == \
            merkle.consistency_proof(index + 1, hashes[:size])
    await store.close()


BACKFILL_CHILD = """
import asyncio, sys
from meterchain.backend.log.backfill import backfill_strata
from meterchain.backend.store import open_store

async def main():
    store = await open_store(sys.argv[1])
    print("ready", flush=True)
    await backfill_strata(store, int(sys.argv[2]), chunk=1)  # one node per transaction
    await store.close()

asyncio.run(main())
"""


async def test_a_backfill_sigkilled_at_random_moments_resumes_whole(tmp_path: Path) -> None:
    import contextlib
    import signal
    import sys

    path = tmp_path / "mc.db"
    await (await open_store(path)).close()
    size = 40_000
    hashes = add_leaves(path, size)
    await seal_in_random_batches(path, seed=10, largest=15_000)
    tree = CompactRange()
    truth = {(level, index): value for level, index, value in tree.extend(hashes, STRIDE)}
    _to_old_layout(path)
    rng, midway = random.Random(11), 0
    for _ in range(4):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BACKFILL_CHILD, str(path), str(size),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
        await asyncio.sleep(rng.uniform(0.02, 0.25))
        with contextlib.suppress(ProcessLookupError):  # a fast machine may have finished
            child.send_signal(signal.SIGKILL)
        await child.wait()
        with sqlite3.connect(path) as db:
            stored = {(level, index): value for level, index, value in db.execute(
                "SELECT level, idx, hash FROM log_nodes")}
            layout = db.execute("SELECT value FROM log_meta").fetchone()[0]
        # Whatever committed is right, and each level is a prefix (whole chunks) of its nodes.
        assert all(truth[key] == value for key, value in stored.items())
        for level in (4, 12):
            indices = sorted(i for lv, i in stored if lv == level)
            assert indices == list(range(len(indices)))
        assert layout in (LEGACY_STRIDE, STRIDE)
        assert layout == LEGACY_STRIDE or len(stored) == len(truth)
        midway += layout == LEGACY_STRIDE
    assert midway  # at least one kill landed mid-way
    store = await open_store(path)
    await Sealer(store, SIGNER).start()  # finishes whatever the kills left
    assert await store.strata_layout() == STRIDE
    assert _levels(path) == {4: size >> 4, 8: size >> 8, 12: size >> 12}
    assert (await audit(store, SIGNER.verifier)).ok
    await store.close()
