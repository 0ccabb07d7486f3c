"""Assignment leaves in the backend (issue 17): each binding change is logged with its opening in
the same transaction, the backfill logs what is missing and nothing twice, and a utility batch
opens exactly the bindings its entries count under (a household's page no binding of others)."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import cbor2
from meterchain.backend.access.assignments import AssignmentTables, log_assignment
from meterchain.backend.access.model import KeyKind, MeterBinding, PointKind, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.app import create_app
from meterchain.backend.erasure.tables import ErasureTables
from meterchain.backend.log.audit import audit
from meterchain.backend.store import open_sqlite
from meterchain.backend.utility.batches import build_batch
from meterchain.cli.main import app as cli
from meterchain.contract.assignment import Assignment, AssignmentKind, AssignmentLeaf, commitment
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.leaves import parse_leaf
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.utility_batch import verify_page
from typer.testing import CliRunner

from tests.support.utility import ADMIN, make_world

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


async def _leaves(store) -> list[tuple[int, str, bytes, bytes]]:  # type: ignore[no-untyped-def]
    rows = await store.connection.execute_fetchall(
        "SELECT id, kind, data, leaf_hash FROM leaves ORDER BY id")
    return [(r[0], r[1], bytes(r[2]), bytes(r[3])) for r in rows]


async def test_each_binding_change_is_logged_with_an_opening_and_backfill_adds_only_the_missing(
        tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "mc.db")
    try:
        parties, tables = PartyTables(store), AssignmentTables(store)
        await parties.add_utility("u", "u", 1)
        await parties.add_community("c", "u", "c", 1)
        await parties.add_household("h", "c", "h", 1)
        await parties.add_metering_point("mp", "u", "c", PointKind.CONSUMPTION, 1)
        binding = await parties.bind_meter("mp", "gw-1", "M1", 100, None, 10)
        await parties.add_occupancy("mp", "h", 100, None, 11)
        await parties.end_meter_binding("mp", 500, 12)
        await parties.end_occupancy("mp", 600, 13)
        leaves = await _leaves(store)
        assert [k for _, k, _, _ in leaves] == ["assignment"] * 4
        meter = await tables.openings(AssignmentKind.METER, binding.id)
        assert [o.assignment for o in meter] == [
            Assignment(AssignmentKind.METER, "mp", 100, None, 10, device="gw-1", meter="M1"),
            Assignment(AssignmentKind.METER, "mp", 100, 500, 12, device="gw-1", meter="M1")]
        occupancy = await tables.openings(AssignmentKind.OCCUPANCY, 1)
        assert [(o.assignment.household, o.assignment.valid_to) for o in occupancy] == [("h", None), ("h", 600)]
        # Each opening opens its leaf, and the leaf itself names nothing.
        for (_, _, _, hashed), opened in zip(leaves, [meter[0], occupancy[0], meter[1], occupancy[1]],
                                             strict=True):
            assert leaf_hash(opened.opening.leaf) == hashed
            assert parse_leaf(opened.opening.leaf) == AssignmentLeaf(commitment(opened.opening.salt,
                                                                                opened.opening.fields))
            assert set(cbor2.loads(opened.opening.leaf)) == {"t", "commit"}
        assert await tables.backfill(20) == 0  # everything is logged

        # A binding written around PartyTables (or before migration 15) is logged once.
        await store.connection.execute(
            "INSERT INTO meter_bindings (metering_point, device, meter, valid_from, valid_to, created) "
            "VALUES ('mp', 'gw-2', 'M2', 500, NULL, 30)")
        await store.connection.execute("UPDATE occupancies SET valid_to = 700 WHERE id = 1")
        await store.connection.commit()
        assert await tables.backfill(40) == 2
        assert await tables.backfill(41) == 0
        assert [o.assignment.valid_to for o in await tables.openings(AssignmentKind.OCCUPANCY, 1)] == [
            None, 600, 700]
        (late,) = await tables.openings(AssignmentKind.METER, 2)
        assert (late.assignment.device, late.assignment.time) == ("gw-2", 40)

        # Erasing the household empties its occupancies' openings for good; nothing is logged again.
        before = await _leaves(store)
        await ErasureTables(store).erase("h", "test", 50)  # no readings or logins: no erasure record
        assert await tables.openings(AssignmentKind.OCCUPANCY, 1) == []
        rows = await store.connection.execute_fetchall(
            "SELECT length(salt), length(fields) FROM assignment_openings WHERE kind = 'occupancy'")
        assert {tuple(r) for r in rows} == {(0, 0)}
        assert await tables.backfill(60) == 0 and await _leaves(store) == before
    finally:
        await store.close()


async def test_a_batch_opens_only_the_bindings_of_its_own_entries(tmp_path: Path) -> None:
    world = await make_world(tmp_path, rounds=2)
    store = await open_sqlite(world.db)
    try:
        parties = PartyTables(store)
        # mp-1's meter M-1 is exchanged after the readings: its end and the new binding are logged
        await parties.end_meter_binding("mp-1", 2_000_000_000, 2_000_000_000)
        await parties.bind_meter("mp-1", "gw-b", "M-9", 2_000_000_000, None, 2_000_000_000)
        checkpoint = await store.latest_checkpoint()
        assert checkpoint is not None
        for who, points in ((Principal(KeyKind.UTILITY, "u2", frozenset()), {"mp-2", "mp-3"}),
                            (Principal(KeyKind.HOUSEHOLD, "h1", frozenset()), {"mp-1"})):
            batch = await build_batch(store, who, size_from=0, size_to=None, cursor=None, limit=100)
            opened = [Assignment.from_cbor(a.fields) for a in batch.assignments]
            assert {a.point for a in opened} == points
            assert all(a.valid_to is None for a in opened)  # the later end is not sealed yet
            page = verify_page(batch.to_cbor(), world.log_key.verifier)
            assert {e.point for e in page.entries} == points
        # The new leaves are not under the sealed checkpoint: never opened in a batch to it.
        assert len(opened) == 1 and opened[0].device == "gw-a"
    finally:
        await store.close()


async def test_audit_finds_openings_bindings_and_overlaps_that_are_not_as_logged(tmp_path: Path) -> None:
    world = await make_world(tmp_path, rounds=1)
    store = await open_sqlite(world.db)
    try:
        report = await audit(store, world.log_key.verifier)
        assert report.ok, [str(f) for f in report.findings]
        db = store.connection
        await db.execute("UPDATE meter_bindings SET meter = 'M-9' WHERE metering_point = 'mp-3'")
        await db.execute("UPDATE assignment_openings SET salt = zeroblob(32) WHERE metering_point = 'mp-2'")
        await db.execute("DELETE FROM assignment_openings WHERE kind = 'occupancy'")
        # A binding logged on another point while mp-1's is open: one meter in two places.
        await log_assignment(db, MeterBinding(99, "mp-2", "gw-a", "M-1", 0, 1), 0)
        await db.commit()
        found = {(f.kind, f.name, f.problem.split(" (")[0]) for f in (await audit(store, None)).findings}
        assert ("assignment", "meter binding 3", "the table's binding is not as logged") in found
        assert any(name.startswith("leaf #") and "does not open" in problem for _, name, problem in found)
        assert any(name == "gw-a/M-1" and "overlap" in problem for _, name, problem in found)
        assert any("without its opening" in problem for _, _, problem in found)
        assert ("assignment", "occupancy binding 1", "the table's binding is not as logged") in found
    finally:
        await store.close()


def test_a_point_bundle_proves_its_point_to_meterchain_verify(tmp_path: Path) -> None:
    world = asyncio.run(make_world(tmp_path, rounds=1))
    with TestClient(create_app(str(world.db), ADMIN, world.log_key.verifier)) as http:
        answer = http.get("/api/v1/metering-points/mp-1/readings/gw-a/1/bundle", headers=world.auth("h1"))
        plain = http.get("/api/v1/devices/gw-a/readings/1/bundle", headers=world.auth("h1"))
    assert answer.status_code == 200, answer.text
    assert verify_bundle(answer.text, world.log_key.verifier).point == "mp-1"
    assert verify_bundle(plain.text, world.log_key.verifier).point is None  # the device route: v1
    path = tmp_path / "reading.tlog-proof"
    path.write_text(answer.text)
    result = CliRunner().invoke(cli, ["verify", str(path), "--log-key", str(world.log_key.verifier)])
    assert result.exit_code == 0, result.output
    assert "point-assigned" in result.output and "counts for metering point mp-1" in result.output
