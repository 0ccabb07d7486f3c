"""Store migrations and the device registry (enrol, rotate, revoke as device leaves)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from meterchain.backend.devices.registry import (
    RegistryError,
    enrol,
    parse_public_key,
    revoke,
    rotate,
)
from meterchain.backend.store import SqliteStore, StoreError, open_sqlite, open_store, using_sqlite
from meterchain.backend.store.schema import SCHEMA_VERSION
from meterchain.contract.leaves import DeviceEvent, parse_leaf

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory


async def test_migrations_from_empty_create_every_table_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "a.db")
    assert await store.schema_version() == SCHEMA_VERSION
    await store.close()
    store = await open_store(tmp_path / "a.db")  # reopening applies nothing twice
    assert await store.schema_version() == SCHEMA_VERSION
    await store.close()
    with sqlite3.connect(tmp_path / "a.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert {"leaves", "readings", "device_keys", "log_nodes", "checkpoints", "batches",
            "rejections", "conflicts", "ack_state", "devices"} <= tables


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "a.db")
    await store.close()
    with sqlite3.connect(tmp_path / "a.db") as db:
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        await open_store(tmp_path / "a.db")


async def test_enrol_rotate_revoke_append_device_leaves(store_factory: StoreFactory) -> None:
    gw, new = Gateway("gw-1"), Gateway("gw-1")
    store = await store_factory.open()
    leaf = await enrol(store, "gw-1", gw.public_key, 100)
    assert (leaf.event, leaf.valid_from) == (DeviceEvent.ENROL, 1)
    with pytest.raises(RegistryError, match="already enrolled"):
        await enrol(store, "gw-1", gw.public_key, 101)
    rotated = await rotate(store, "gw-1", new.public_key, 102, valid_from=10)
    assert rotated.valid_from == 10
    with pytest.raises(RegistryError, match="greater than the current"):
        await rotate(store, "gw-1", gw.public_key, 103, valid_from=10)
    revoked = await revoke(store, "gw-1", 104)
    assert revoked.valid_from == 11 and revoked.public_key_der == new.public_key
    with pytest.raises(RegistryError, match="revoked"):
        await rotate(store, "gw-1", gw.public_key, 105)
    leaves = await store.device_leaves("gw-1")
    assert [parse_leaf(x.data).event for x in leaves] == ["enrol", "rotate", "revoke"]
    assert all(x.leaf_index is None for x in leaves)  # pending until the next seal
    with pytest.raises(RegistryError, match="not enrolled"):
        await revoke(store, "gw-2", 1)
    with pytest.raises(RegistryError, match="device id"):
        await enrol(store, "bad/id", gw.public_key, 1)
    await store.close()


async def test_a_key_change_never_reaches_back_before_committed_readings(
    store_factory: StoreFactory,
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    await ingest.process([gw.message(s) for s in range(1, 6)])
    with pytest.raises(RegistryError, match="highest committed sequence 5"):
        await rotate(admin, "gw-1", Gateway("gw-1").public_key, 1, valid_from=3)
    assert (await rotate(admin, "gw-1", Gateway("gw-1").public_key, 1)).valid_from == 6
    await close(admin, ingest, sealer, api)


async def test_the_sqlite_only_features_refuse_a_postgres_url_before_connecting() -> None:
    ran = []

    async def action(store: SqliteStore) -> None:
        ran.append(store)

    with pytest.raises(StoreError, match="keeps its tables in SQLite") as refused:
        await using_sqlite("postgresql://mc:secret@127.0.0.1:1/meterchain", action)
    assert not ran and "secret" not in refused.value.diagnostics()
    with pytest.raises(StoreError, match="keeps its tables in SQLite"):
        await open_sqlite("postgres://127.0.0.1:1/meterchain")


async def test_what_audit_and_the_webhooks_read_by_name(store_factory: StoreFactory) -> None:
    gateways = [Gateway("gw-1"), Gateway("gw-2")]
    admin, ingest, sealer, store = await backend(store_factory, *gateways)
    assert await store.last_batch_index() is None and await store.seal_sizes() == set()
    await ingest.process([g.message(s) for g in gateways for s in (1, 2)])
    await sealer.seal_all()
    await ingest.process([gateways[0].message(3)])
    await sealer.seal_all()
    await ingest.process([gateways[1].message(3)])  # committed, not sealed
    batches = [b async for b in store.all_batches()]
    checkpoints = [c async for c in store.all_checkpoints()]
    assert [b.idx for b in batches] == [0, 1] and await store.last_batch_index() == 1
    assert [c.size for c in checkpoints] == [6, 7]  # 2 device leaves + 4 readings, then one more
    assert await store.seal_sizes() == {6, 7}
    leaves = [x async for x in store.stored_leaves()]
    assert [x.leaf_index for x in leaves] == [*range(7), None]  # sealed in order, then pending
    assert not any(x.erased for x in leaves)
    keyed = [x async for x in store.keyed_device_leaves()]
    assert [(x.device, x.event) for x in keyed] == [("gw-1", "enrol"), ("gw-2", "enrol")]
    readings = [r async for r in store.stored_readings()]
    assert sorted((r.device, r.seq) for r in readings) == [
        (g, s) for g in ("gw-1", "gw-2") for s in (1, 2, 3)]
    assert all(r.kind == "reading" and r.data for r in readings)
    await close(ingest, sealer)
    await admin.close()
    await store.close()


def test_public_keys_are_accepted_as_der_pem_or_base64() -> None:
    import base64

    from cryptography.hazmat.primitives import serialization

    der = Gateway("x").public_key
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parse_public_key(der) == parse_public_key(pem) == parse_public_key(
        base64.b64encode(der).decode()) == der
    with pytest.raises(Exception, match="public key"):
        parse_public_key(b"not a key")
