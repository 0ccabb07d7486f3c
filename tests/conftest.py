"""Shared fixtures: a real MQTT broker per test (Mosquitto where installed, amqtt otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meterchain.backend.broker import RunningBroker, start_broker


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    """A broker of its own on a free loopback port, stopped after the test."""
    running = await start_broker(workdir=tmp_path / "broker")
    try:
        yield running
    finally:
        await running.stop()


# --- a small, real log for contract tests -------------------------------------------------------

from dataclasses import dataclass as _dataclass  # noqa: E402

from meterchain.contract import merkle, signing  # noqa: E402
from meterchain.contract.bundle import Bundle, LoggedLeaf  # noqa: E402
from meterchain.contract.checkpoint import Checkpoint  # noqa: E402
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf, parse_leaf  # noqa: E402
from meterchain.contract.message import sign_reading  # noqa: E402
from meterchain.contract.note import NoteSigner  # noqa: E402
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register  # noqa: E402


@_dataclass
class SmallLog:
    """Two devices' enrolments and a few signed readings, sealed under one checkpoint."""

    device_signer: signing.Signer
    other_signer: signing.Signer
    log_key: NoteSigner
    leaves: list[bytes]
    checkpoint: str

    def bundle(self, index: int, device: str = "gw-1") -> Bundle:
        hashes = [merkle.leaf_hash(leaf) for leaf in self.leaves]
        keys = []
        for i, data in enumerate(self.leaves):
            leaf = parse_leaf(data)
            if isinstance(leaf, DeviceLeaf) and leaf.device == device:
                keys.append(LoggedLeaf(data, i, tuple(merkle.inclusion_proof(i, hashes))))
        return Bundle(
            LoggedLeaf(self.leaves[index], index, tuple(merkle.inclusion_proof(index, hashes))),
            tuple(keys),
            self.checkpoint,
        )


def make_reading(signer: signing.Signer, seq: int, device: str = "gw-1", **overrides: object) -> Reading:
    fields: dict[str, object] = {
        "device": device,
        "key_id": signing.key_id(signer.public_key_der),
        "seq": seq,
        "meter": "SDM630-0001",
        "start": 1_700_000_100 + 900 * (seq - 1) - 100,
        "end": 1_700_000_100 + 900 * seq - 100,
        "registers": {IMPORT_OBIS: Register(1_000 * seq, "Wh"), EXPORT_OBIS: Register(7 * seq, "Wh")},
    }
    fields.update(overrides)
    return Reading(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def small_log() -> SmallLog:
    device = signing.CryptographySigner(signing.generate_private_key_pem())
    other = signing.CryptographySigner(signing.generate_private_key_pem())
    log_key = NoteSigner.generate("log.meterchain.test")
    leaves = [
        DeviceLeaf("gw-1", DeviceEvent.ENROL, device.public_key_der, 1, 1_700_000_000).to_cbor(),
        DeviceLeaf("gw-2", DeviceEvent.ENROL, other.public_key_der, 1, 1_700_000_000).to_cbor(),
    ]
    leaves += [sign_reading(make_reading(device, seq), device).to_cbor() for seq in (1, 2, 3)]
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(leaf) for leaf in leaves])
    checkpoint = Checkpoint("log.meterchain.test", len(leaves), root).sign(log_key)
    return SmallLog(device, other, log_key, leaves, checkpoint)


# --- a store of each kind: SQLite in tmp_path, PostgreSQL in a fresh schema (MC_PG_DSN) ----------

from store_helpers import StoreFactory, postgres_location  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """The same test against SqliteStore and PostgresStore (skipped without MC_PG_DSN)."""
    if request.param == "sqlite":
        yield StoreFactory("sqlite", str(tmp_path / "mc.db"))
        return
    async with postgres_location() as location:
        yield StoreFactory("postgres", location)


@pytest.fixture
async def any_store(store_factory: StoreFactory):  # type: ignore[no-untyped-def]
    """One open store of each kind, closed after the test."""
    store = await store_factory.open()
    try:
        yield store
    finally:
        await store.close()
