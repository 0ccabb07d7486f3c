"""Ingest checks and commits, one batch at a time (no broker): idempotency, rejections, acks;
on SQLite and on PostgreSQL (``store_factory``)."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.backend.devices.registry import revoke
from meterchain.backend.ingest.checks import check_message
from meterchain.backend.ingest.worker import REJECTIONS
from meterchain.contract import cbor
from meterchain.contract.signing import P256_ORDER

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory


def _count(reason: str) -> float:
    return REJECTIONS.labels(reason)._value.get()


async def test_duplicate_is_dropped_and_conflict_recorded_first_kept(store_factory: StoreFactory) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    first = gw.message(1)
    report = await ingest.process([first, gw.message(2)])
    assert report.stored == 2
    # A replay (even re-signed: ECDSA signatures differ) is a duplicate, not a new reading.
    report = await ingest.process([first, gw.message(1)])
    assert (report.stored, report.duplicates) == (0, 2)
    # Same seq, other bytes; and same (meter, end) under another seq: conflicts.
    report = await ingest.process([gw.message(1, import_wh=5), gw.message(3, end=gw.signed(2).reading.end)])
    assert report.conflicts == 2 and report.rejected == {"conflict": 2}
    stored = await api.reading("gw-1", 1)
    assert stored is not None and stored.message == first[1]
    assert [seq for seq, _, _ in await api.conflicts("gw-1")] == [1, 3]
    assert await api.reading_count("gw-1") == 2
    ack = report.acks[0]
    assert ack.upto == 3 and [(r.seq, r.reason) for r in ack.rejected] == [(1, "conflict"), (3, "conflict")]
    await close(admin, ingest, sealer, api)


async def test_conflicting_pair_within_one_batch_keeps_the_first(store_factory: StoreFactory) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    report = await ingest.process([gw.message(1, import_wh=1), gw.message(1, import_wh=2)])
    assert (report.stored, report.conflicts) == (1, 1)
    assert (await api.reading("gw-1", 1)).import_wh == 1  # type: ignore[union-attr]
    await close(admin, ingest, sealer, api)


async def test_wrong_key_and_other_devices_topic_are_rejected_and_counted(store_factory: StoreFactory) -> None:
    a, b = Gateway("gw-a"), Gateway("gw-b")
    admin, ingest, sealer, api = await backend(store_factory, a, b)
    before = (_count("key-id"), _count("topic"))
    report = await ingest.process([
        (a.topic, a.signed(1, signer=b.signer).to_cbor()),  # a's reading, b's key
        (a.topic, b.signed(1).to_cbor()),  # b's reading on a's topic
        a.message(2),
    ])
    assert report.stored == 1 and report.rejected == {"key-id": 1, "topic": 1}
    assert (_count("key-id"), _count("topic")) == (before[0] + 1, before[1] + 1)
    # Neither verifies under a's key for seq 1: seq 1 stays open for a's own reading, nothing
    # enters a's ack, and b gets no ack from a's topic (issue 14).
    assert [(x.device, x.upto, x.rejected) for x in report.acks] == [("gw-a", 0, ())]
    assert (await api.rejection_counts()) == {"key-id": 1, "topic": 1}
    # Counted per topic (a's, which is enrolled), reason and minute; never per seq.
    rows = await api.rejection_minutes()
    assert sorted((d, r, n) for d, r, _, n, _ in rows) == [("gw-a", "key-id", 1), ("gw-a", "topic", 1)]
    report = await ingest.process([a.message(1)])
    assert report.acks[0].upto == 2 and report.acks[0].rejected == ()
    await close(admin, ingest, sealer, api)


def _high_s(message: bytes) -> bytes:
    reading, signature = cbor.decode(message)  # type: ignore[misc]
    r, s = decode_dss_signature(signature)
    return cbor.encode([reading, encode_dss_signature(r, P256_ORDER - s)])


async def test_malformed_payloads_are_rejected_without_stopping_ingest(store_factory: StoreFactory) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    good = gw.message(1)[1]
    junk = [b"", b"not cbor at all", good[:-7], os.urandom(1 << 20), _high_s(good),
            cbor.encode([b"x", b"y"]), cbor.encode({"t": 1})]
    report = await ingest.process([(gw.topic, j) for j in junk] + [gw.message(2), (gw.topic, good)])
    assert report.stored == 2
    assert report.rejected == {"encoding": 5, "size": 1, "low-s": 1}
    assert report.acks[0].upto == 2 and report.acks[0].rejected == ()  # none of them is for good
    await close(admin, ingest, sealer, api)


async def test_forged_reading_does_not_consume_the_sequence(store_factory: StoreFactory) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    forged = gw.signed(2)
    bad = cbor.encode([forged.reading_bytes, gw.signed(3).signature])  # a valid-looking, wrong signature
    report = await ingest.process([gw.message(1), (gw.topic, bad), gw.message(3), gw.message(4)])
    assert report.rejected == {"signature": 1} and report.stored == 3
    assert report.acks[0].upto == 1 and report.acks[0].rejected == ()  # 2 is still the device's
    report = await ingest.process([gw.message(2)])
    assert report.acks[0].upto == 4 and report.acks[0].rejected == ()
    await close(admin, ingest, sealer, api)


async def test_forged_flood_moves_no_ack_and_counts_per_minute(store_factory: StoreFactory) -> None:
    """Issue 14, finding 1: 80 forged readings with the next seqs moved upto from 29 to 110."""
    gw, forger = Gateway("gw-1"), Gateway("gw-1")  # same device id, the forger's own key
    admin, ingest, sealer, api = await backend(store_factory, gw)
    report = await ingest.process([gw.message(s) for s in range(1, 30)])
    assert report.acks[0].upto == 29
    report = await ingest.process([forger.message(s) for s in range(30, 110)]
                                  + [("meterchain/v1/gw-1/readings", os.urandom(3000)),
                                     ("meterchain/v1/nobody/readings", os.urandom(3000))])
    assert report.stored == 0 and report.rejected == {"key-id": 80, "size": 2}
    assert report.acks == []  # junk touches no device: no ack is even published
    state = await api.ack_state("gw-1")
    assert state.upto == 29 and not state.above and not state.recent_rejections
    # A size rejection names the topic's device; a topic naming nobody enrolled counts under "".
    rows = {(d, r): n for d, r, _, n, _ in await api.rejection_minutes()}
    assert rows == {("gw-1", "key-id"): 80, ("gw-1", "size"): 1, ("", "size"): 1}
    report = await ingest.process([gw.message(30)])
    assert report.acks[0].upto == 30
    await close(admin, ingest, sealer, api)


async def test_rejection_counts_are_kept_for_the_retention_only(store_factory: StoreFactory) -> None:
    from meterchain.backend.store import RejectionRecord
    from meterchain.backend.store.records import REJECTION_RETENTION_SECONDS

    admin, ingest, sealer, api = await backend(store_factory, Gateway("gw-1"))
    old = 1_700_000_000
    await admin.record_rejections([RejectionRecord("gw-1", 5, "signature", "x", False, old)] * 3)
    assert [(d, r, m, n) for d, r, m, n, _ in await api.rejection_minutes("gw-1")] == [
        ("gw-1", "signature", old - old % 60, 3)]
    later = old + REJECTION_RETENTION_SECONDS + 120
    await admin.record_rejections([RejectionRecord(None, None, "encoding", "y", False, later)])
    assert [(d, r, n) for d, r, _, n, _ in await api.rejection_minutes()] == [("", "encoding", 1)]
    await close(admin, ingest, sealer, api)


async def test_ack_upto_waits_for_gaps_and_survives_a_restart(store_factory: StoreFactory) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    report = await ingest.process([gw.message(1), gw.message(3), gw.message(4)])
    assert report.acks[0].upto == 1
    await close(ingest)
    admin2, ingest2, sealer2, api2 = await backend(store_factory)  # a restarted backend, same database
    report = await ingest2.process([gw.message(2)])
    assert report.acks[0].upto == 4
    await close(admin, admin2, ingest2, sealer, sealer2, api, api2)


async def test_revoked_and_unknown_devices(store_factory: StoreFactory) -> None:
    gw, stranger = Gateway("gw-1"), Gateway("gw-x")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    await ingest.process([gw.message(1)])
    await revoke(admin, "gw-1", 1)  # from sequence 2 on
    report = await ingest.process([gw.message(2), stranger.message(1)])
    assert report.rejected == {"key-validity": 1, "unknown-device": 1}
    assert report.acks == []  # revoked: nothing of gw-1 after seq 1 counts any more
    assert (await api.ack_state("gw-1")).upto == 1
    await close(admin, ingest, sealer, api)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(0, 5000), st.binary(min_size=1, max_size=4))
def test_check_message_never_raises_on_mutations(junk: bytes, cut: int, patch: bytes) -> None:
    gw = _FUZZ_GATEWAY
    good = _FUZZ_MESSAGE
    leaves = {gw.device: _FUZZ_LEAVES}
    mutated = good[: cut % (len(good) + 1)] + patch + good[cut % (len(good) + 1) + len(patch):]
    for payload in (junk, mutated, good[: cut % len(good)]):
        result = check_message(gw.topic, payload, leaves, 0)
        assert (result.reading is None) != (result.rejection is None)
        if result.rejection is not None:
            assert result.rejection.reason != "internal", result.rejection.detail


def _fuzz_setup() -> tuple[Gateway, bytes, tuple]:  # type: ignore[type-arg]
    from meterchain.contract.leaves import DeviceEvent, DeviceLeaf

    gw = Gateway("gw-fuzz")
    return gw, gw.message(1)[1], (DeviceLeaf(gw.device, DeviceEvent.ENROL, gw.public_key, 1, 0),)


_FUZZ_GATEWAY, _FUZZ_MESSAGE, _FUZZ_LEAVES = _fuzz_setup()


def _gap(gw: Gateway, first: int, last: int, signer=None) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    from meterchain.contract.gap import GapDeclaration
    from meterchain.contract.signing import key_id

    signer = signer or gw.signer
    declaration = GapDeclaration(gw.device, key_id(signer.public_key_der), first, last,
                                 1_700_000_000, "outbox-lost")
    return gw.topic, declaration.sign(signer).to_cbor()


async def test_a_signed_gap_declaration_is_logged_and_acked(store_factory: StoreFactory) -> None:
    """Issue 14: a gateway that lost its outbox declares what it cannot account for."""
    from meterchain.contract.leaves import parse_leaf

    gw, forger = Gateway("gw-1"), Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    await ingest.process([gw.message(s) for s in (1, 2, 4)])
    # A forged declaration is junk: nothing logged, the ack does not move.
    report = await ingest.process([_gap(gw, 3, 10, signer=forger.signer), (gw.topic, b"\xa1")])
    assert report.rejected == {"key-id": 1, "encoding": 1} and report.acks == []
    report = await ingest.process([_gap(gw, 3, 10)])
    assert [(a.upto, a.rejected) for a in report.acks] == [(10, ())]
    assert ingest.acks.gaps("gw-1") == ((3, 10),)
    # Declared again (the agent republishes until acked): logged once.
    await ingest.process([_gap(gw, 3, 10)])
    state = await api.ack_state("gw-1")
    assert state.upto == 10 and state.gaps == ((3, 10),)
    # A reading of a declared seq that still arrives is stored (nothing is lost), and the
    # stream goes on above the gap.
    report = await ingest.process([gw.message(5), gw.message(11)])
    assert report.stored == 2 and report.acks[0].upto == 11
    await sealer.seal_all()
    gap_leaves = [parse_leaf(d) for d in [row[0] for row in await _leaf_data(api, "gap")]]
    assert [(g.declaration.first, g.declaration.last) for g in gap_leaves] == [(3, 10)]  # type: ignore[union-attr]
    from meterchain.backend.log.audit import audit

    report = await audit(api, sealer.signer.verifier)  # gap leaves are log leaves like the rest
    assert report.ok, report
    # A restarted ingest shows the gap in the device's ack.
    _, ingest2, _, _ = await backend(store_factory)
    await ingest2.acks.load(ingest2.store, ["gw-1"])
    assert ingest2.acks.gaps("gw-1") == ((3, 10),)
    await close(admin, ingest, ingest2, sealer, api)


async def _leaf_data(store, kind: str) -> list[tuple[bytes]]:  # type: ignore[no-untyped-def]
    if hasattr(store, "_pool"):
        return [(bytes(r[0]),) for r in await store._pool.fetch(
            "SELECT data FROM leaves WHERE kind = $1 ORDER BY id", kind)]
    return [(bytes(r[0]),) for r in await store._rows(
        "SELECT data FROM leaves WHERE kind = ? ORDER BY id", (kind,))]
