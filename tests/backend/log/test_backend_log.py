"""Sealing, proofs from stored nodes, bundles, crash safety (on SQLite and PostgreSQL), and audit
naming tampered items."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from meterchain.backend.log.audit import audit
from meterchain.backend.log.proofs import (
    ProofUnavailable,
    build_bundle,
    consistency_proof,
    inclusion_proof,
)
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import StoreError
from meterchain.backend.store.leafdata import pack_leaf_data
from meterchain.contract import merkle
from meterchain.contract.batch import SignedBatchHeader, verify_chain
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.checkpoint import open_checkpoint
from meterchain.contract.message import SignedReading
from meterchain.contract.signing import generate_private_key_pem, load_signer

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory


async def _leaf_hashes(store) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The sealed leaf hashes in index order, by plain SQL (the same on SQLite and PostgreSQL)."""
    return [r[0] async for r in store.iter_rows(
        "SELECT leaf_hash FROM leaves WHERE leaf_index IS NOT NULL ORDER BY leaf_index")]


async def test_sealed_proofs_from_storage_equal_reference_proofs(store_factory: StoreFactory) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw, max_leaves=7)
    for start in range(1, 41, 10):  # batches of readings, sealed in uneven chunks of <= 7
        await ingest.process([gw.message(s) for s in range(start, start + 10)])
        await sealer.seal_all()
    hashes = await _leaf_hashes(api)
    assert len(hashes) == 41  # 40 readings + the enrolment leaf
    checkpoint = open_checkpoint((await api.latest_checkpoint()).note, sealer.signer.verifier)
    assert checkpoint.root == merkle.root_from_leaf_hashes(hashes)
    for size in (1, 2, 7, 13, 32, 41):
        for index in {0, size // 2, size - 1}:
            assert await inclusion_proof(api, index, size) == merkle.inclusion_proof(index, hashes[:size])
        for old in {1, size // 3 or 1, size}:
            assert await consistency_proof(api, old, size) == merkle.consistency_proof(old, hashes[:size])
    headers = [SignedBatchHeader.from_cbor(b.header) for b in await api.batches(0, 100)]
    assert verify_chain(headers, sealer.signer.verifier).size == 41  # type: ignore[union-attr]
    await close(admin, ingest, sealer, api)


async def test_bundle_from_storage_passes_verify_and_unsealed_is_refused(
    store_factory: StoreFactory,
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    await ingest.process([gw.message(s) for s in range(1, 4)])
    with pytest.raises(ProofUnavailable) as not_sealed:
        await build_bundle(api, "gw-1", 2)
    assert not_sealed.value.check == "not-sealed"
    await sealer.seal_all()
    from meterchain.backend.devices.registry import rotate

    await rotate(admin, "gw-1", (new := Gateway("gw-1")).public_key, 1)  # valid from 4
    await ingest.process([(gw.topic, gw.signed(4, signer=new.signer).to_cbor())])
    await sealer.seal_all()
    for seq in (2, 4):
        verified = verify_bundle(await build_bundle(api, "gw-1", seq), sealer.signer.verifier)
        assert verified.reading.reading.seq == seq
    with pytest.raises(ProofUnavailable):
        await build_bundle(api, "gw-1", 99)
    await close(admin, ingest, sealer, api)


@pytest.mark.parametrize("step", ["leaves", "nodes", "checkpoint", "batch"])
async def test_a_crash_inside_a_seal_leaves_the_previous_log_intact(
    store_factory: StoreFactory, step: str,
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    await ingest.process([gw.message(s) for s in range(1, 4)])
    await sealer.seal_all()
    before = await api.latest_checkpoint()
    await ingest.process([gw.message(s) for s in range(4, 9)])

    def crash(at: str) -> None:
        if at == step:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        await sealer.seal_once(between=crash)
    assert await api.latest_checkpoint() == before
    assert await api.pending_count() == 5
    # A fresh sealer (a restarted process) restores the edge and seals everything once.
    restarted = Sealer(await store_factory.open(), sealer.signer)
    assert await restarted.seal_all() == 5
    report = await audit(api, sealer.signer.verifier)
    assert report.ok, report.findings
    assert report.leaves == 9 and report.batches == 2
    await close(admin, ingest, sealer, restarted, api)


async def test_sealer_refuses_a_tree_that_does_not_match_its_checkpoint(tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    await ingest.process([gw.message(1)])
    await sealer.seal_all()
    with sqlite3.connect(tmp_path / "mc.db") as db:  # the size-2 tree's peak folds leaves 0, 1
        db.execute("UPDATE leaves SET leaf_hash = zeroblob(32) WHERE leaf_index = 1")
    with pytest.raises(StoreError, match="does not match"):
        await Sealer(api, sealer.signer).start()
    await close(admin, ingest, sealer, api)


TAMPERING = {
    "reading": ("UPDATE readings SET import_wh = import_wh + 1 WHERE seq = 3", "reading gw-1#3"),
    "message": ("UPDATE leaves SET data = zeroblob(length(data)) WHERE id = "
                "(SELECT leaf_id FROM readings WHERE seq = 5)", "reading gw-1#5"),
    "leaf-hash": ("UPDATE leaves SET leaf_hash = zeroblob(32) WHERE leaf_index = 3", "leaf #4"),
    "checkpoint": ("UPDATE checkpoints SET root = zeroblob(32) WHERE size = 4", "checkpoint size 4"),
    "note": ("UPDATE checkpoints SET note = replace(note, char(10) || '4' || char(10), "
             "char(10) || '5' || char(10)) WHERE size = 4", "checkpoint size 4"),
    "header": ("UPDATE batches SET header = zeroblob(length(header)) WHERE idx = 1", "header batch 1"),
    "header-root": ("UPDATE batches SET root = zeroblob(32) WHERE idx = 0", "header batch 0"),
}


@pytest.mark.parametrize("what", sorted(TAMPERING))
async def test_audit_names_what_was_tampered_with(tmp_path: Path, what: str) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw, max_leaves=4)
    await ingest.process([gw.message(s) for s in range(1, 9)])
    await sealer.seal_all()  # batches end at sizes 4, 8, 9
    assert (await audit(api, sealer.signer.verifier)).ok
    sql, expected = TAMPERING[what]
    with sqlite3.connect(tmp_path / "mc.db") as db:
        assert db.execute(sql).rowcount == 1
    report = await audit(api, sealer.signer.verifier)
    names = [f"{f.kind} {f.name}" for f in report.findings]
    assert expected in names, report.findings
    await close(admin, ingest, sealer, api)


@pytest.mark.parametrize("check", ["key-id", "signature"])
async def test_audit_names_the_failed_check_of_a_forged_reading(tmp_path: Path, check: str) -> None:
    gw, forger = Gateway("gw-1"), load_signer(generate_private_key_pem())
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    await ingest.process([gw.message(s) for s in range(1, 5)])
    await sealer.seal_all()
    honest = gw.signed(3)
    if check == "key-id":  # signed by another key, and naming it
        forged = gw.signed(3, signer=forger)
    else:  # the device's reading bytes, another key's signature
        forged = SignedReading(honest.reading, honest.reading_bytes, forger.sign(honest.reading_bytes))
    with sqlite3.connect(tmp_path / "mc.db") as db:
        db.execute("UPDATE leaves SET data = ? WHERE id = (SELECT leaf_id FROM readings WHERE seq = 3)",
                   (pack_leaf_data(forged.to_cbor()),))
    report = await audit(api, sealer.signer.verifier)
    problems = [f.problem for f in report.findings if f"{f.kind} {f.name}" == "reading gw-1#3"]
    assert len(problems) == 1 and problems[0].startswith(f"{check} check failed: "), report.findings
    await close(admin, ingest, sealer, api)
