"""PostgresStore: migrations, the same commit semantics as SQLite, concurrent writers, proofs.

Tests named ``..._both`` or taking ``store_factory``/``any_store`` run on SQLite and PostgreSQL;
the rest need PostgreSQL (``MC_PG_DSN``) and skip cleanly without it.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.backend.devices.registry import enrol, revoke, rotate
from meterchain.backend.ingest.checks import check_message
from meterchain.backend.log.audit import audit
from meterchain.backend.log.proofs import consistency_proof, inclusion_proof
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import (
    Outcome,
    RejectionRecord,
    StaleKeys,
    StoreError,
    VerifiedReading,
    open_store,
)
from meterchain.backend.store.leafdata import pack_leaf_data
from meterchain.contract import merkle
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf
from meterchain.contract.note import NoteSigner

from tests.support.backend import Gateway
from tests.support.store import (
    StoreFactory,
    create_schema,
    drop_schema,
    pg_dsn,
    postgres_location,
    with_search_path,
)

SIGNER = NoteSigner.generate("test.example/log")
NOW = 1_700_000_000
# When ingest checks the readings: after every test reading's end (ingest refuses a reading that
# ends more than MAX_FUTURE_SECONDS after its clock).
CHECKED_AT = NOW + 10**7


def verified(gw: Gateway, seq: int, **kwargs: object) -> VerifiedReading:
    """``gw``'s reading ``seq`` as ingest's checks make it (real signature, packed message)."""
    leaves = {gw.device: [DeviceLeaf(gw.device, DeviceEvent.ENROL, gw.public_key, 1, NOW)]}
    checked = check_message(gw.topic, gw.message(seq, **kwargs)[1], leaves, CHECKED_AT)
    assert checked.reading is not None, checked.rejection
    return checked.reading


async def _enrolled(store, gw: Gateway) -> int:  # type: ignore[no-untyped-def]
    await enrol(store, gw.device, gw.public_key, NOW)
    return await store.key_version()


# ------------------------------------------------------------------ migrations and dispatch


async def test_migrations_from_empty_create_every_table_once() -> None:
    from meterchain.backend.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore

    dsn = pg_dsn()
    schema = await create_schema(dsn)
    location = with_search_path(dsn, schema)
    try:
        # Two processes starting at once: the migration lock applies each migration once.
        first, second = await asyncio.gather(open_store(location), open_store(location))
        assert isinstance(first, PostgresStore) and isinstance(second, PostgresStore)
        assert await first.schema_version() == await second.schema_version() == SCHEMA_VERSION
        for store in (first, second):
            await store.close()
        store = await open_store(location.replace("postgresql://", "postgres://", 1))
        assert await store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        versions = [r[0] async for r in store.iter_rows("SELECT version FROM schema_version")]
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
        tables = {r[0] async for r in store.iter_rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", [schema])}
        assert {"leaves", "readings", "device_keys", "log_nodes", "checkpoints", "batches",
                "rejections", "conflicts", "ack_state", "devices", "erased_readings", "log_meta",
                "ocmf_records", "gateway_status", "gateway_meters"} <= tables
        assert not tables & {"utilities", "settlements", "web_logins"}  # SQLite-only features
        assert await store.strata_layout() == 4
        await store.execute("INSERT INTO schema_version VALUES ($1)", [SCHEMA_VERSION + 1])
        await store.close()
        with pytest.raises(StoreError, match="newer"):
            await open_store(location)
    finally:
        await drop_schema(dsn, schema)


async def test_an_unreachable_server_is_a_store_error_naming_it_without_the_password() -> None:
    pytest.importorskip("asyncpg")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as refused:
        await open_store("postgresql://mc:secret@127.0.0.1:1/meterchain")
    assert "secret" not in refused.value.diagnostics()
    assert "127.0.0.1:1" in refused.value.diagnostics()


# ------------------------------------------------------- commit semantics, identical on both


async def _scenario(store) -> list[object]:  # type: ignore[no-untyped-def]
    """Duplicates, conflicts by seq and by (meter, end), an erased place, stale keys and acks
    that would go backwards; everything the store answered, for comparing the two stores."""
    gw = Gateway("gw-1")
    version = await _enrolled(store, gw)
    seen: list[object] = []

    async def commit(readings: list[VerifiedReading], acks: dict[str, int] | None = None,
                     rejections: list[RejectionRecord] = ()) -> None:  # type: ignore[assignment]
        result = await store.commit_batch(readings, list(rejections), acks or {}, version)
        seen.append([o.value for o in result.outcomes])
        seen.append([(c.seq, c.reason, c.detail) for c in result.conflicts])

    first = verified(gw, 1)
    await commit([first, verified(gw, 2), verified(gw, 3)], {"gw-1": 3})
    await commit([verified(gw, 1), first])  # re-signed and replayed: duplicates
    await commit([verified(gw, 2, import_wh=5),  # same seq, other bytes
                  verified(gw, 4, end=gw.signed(3).reading.end),  # same (meter, end), other seq
                  verified(gw, 5), verified(gw, 5, import_wh=9)])  # a pair within one batch
    # Erase reading 2 as backend/erasure/rules.py does; its place stays taken.
    leaf_id = (await store.reading("gw-1", 2)).leaf_id
    for sql in (
        "INSERT INTO erasures (household, requested_by, time, leaves, ranges, unsealed, logins) "
        "VALUES ('h-1', 'admin', 1, 1, '[]', 1, 0)",
        'INSERT INTO erased_readings (device, seq, meter, "end", leaf_id, erasure) SELECT device, '
        f'seq, meter, "end", leaf_id, (SELECT max(id) FROM erasures) FROM readings WHERE leaf_id = {leaf_id}',
        f"DELETE FROM readings WHERE leaf_id = {leaf_id}",
        f"UPDATE leaves SET data = substr(data, 1, 0) WHERE id = {leaf_id}",
    ):
        await store.execute(sql)
    await commit([verified(gw, 2), verified(gw, 2, import_wh=77), verified(gw, 6)],
                 {"gw-1": 1},  # an ack that would go backwards
                 [RejectionRecord("gw-1", 7, "signature", "bad \x00 bytes", True, NOW),
                  RejectionRecord(None, None, "encoding", "junk", False, NOW)])
    with pytest.raises(StaleKeys):
        await store.commit_batch([verified(gw, 8)], [], {}, version - 1)
    state = await store.ack_state("gw-1")
    seen.append((state.upto, sorted(state.above), [s for s, _, _ in state.recent_rejections]))
    seen.append([(r.seq, r.import_wh) for r in await store.readings("gw-1", 0, 1 << 40, 100)])
    seen.append([seq for seq, _, _ in await store.conflicts("gw-1")])
    seen.append(await store.rejection_counts())
    seen.append(await store.reading_count("gw-1"))
    seen.append(await store.reading("gw-1", 2))
    seen.append((await store.reading("gw-1", 1)).message == first.message)
    seen.append(await store.acked_devices())
    return seen


async def test_commit_semantics_are_identical_on_both(tmp_path: Path) -> None:
    dsn = pg_dsn()
    schema = await create_schema(dsn)
    sqlite, postgres = await open_store(tmp_path / "mc.db"), None
    try:
        postgres = await open_store(with_search_path(dsn, schema))
        on_sqlite, on_postgres = await _scenario(sqlite), await _scenario(postgres)
    finally:
        await sqlite.close()
        if postgres is not None:
            await postgres.close()
        await drop_schema(dsn, schema)
    assert on_postgres == on_sqlite
    assert on_sqlite[0:8:2] == [["stored"] * 3, ["duplicate"] * 2,
                                ["conflict", "conflict", "stored", "conflict"],
                                ["duplicate", "duplicate", "stored"]]  # the erased place stays taken
    # upto never went back from 3 to 1; 4-7 are done above it (7 rejected for good)
    assert on_sqlite[8] == (3, [4, 5, 6, 7], [2, 4, 5, 7])
    assert on_sqlite[9] == [(1, 1000), (3, 3000), (5, 5000), (6, 6000)]


async def test_acks_never_go_backwards_and_odd_text_is_kept(any_store) -> None:  # type: ignore[no-untyped-def]
    gw = Gateway("gw-1")
    version = await _enrolled(any_store, gw)
    await any_store.commit_batch([], [], {"gw-1": 9}, version)
    await any_store.commit_batch([], [], {"gw-1": 4}, version)
    await any_store.record_rejections([RejectionRecord("gw-1", 12, "encoding", "bad \x00 byte", True, 1)])
    state = await any_store.ack_state("gw-1")
    assert state.upto == 9 and state.above == {12}
    assert state.recent_rejections[0][:2] == (12, "encoding")


# ------------------------------------------------------------------------ concurrent writers


async def test_a_commit_that_loses_a_race_re_reads_what_won() -> None:
    """Another writer's uncommitted row holds the place: the commit waits, then retries and
    finds it (a duplicate of the same reading bytes, a conflict of other bytes)."""
    import asyncpg

    dsn = pg_dsn()
    schema = await create_schema(dsn)
    location = with_search_path(dsn, schema)
    store = await open_store(location)
    other = await asyncpg.connect(location)
    try:
        gw = Gateway("gw-1")
        version = await _enrolled(store, gw)
        won, same, differs = verified(gw, 5), verified(gw, 5), verified(gw, 6)
        tx = other.transaction()
        await tx.start()
        for r in (won, verified(gw, 6, import_wh=1)):
            leaf_id = await other.fetchval(
                "INSERT INTO leaves (kind, data, leaf_hash, received_at) "
                "VALUES ('reading', $1, $2, 0) RETURNING id", pack_leaf_data(r.message), r.leaf_hash)
            await other.execute(
                'INSERT INTO readings (leaf_id, device, seq, meter, start, "end", import_wh, '
                "export_wh) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", leaf_id, r.device, r.seq,
                r.meter, r.start, r.end, r.import_wh, r.export_wh)
        commit = asyncio.create_task(store.commit_batch([same, differs], [], {}, version))
        await asyncio.sleep(0.5)
        assert not commit.done()  # waiting on the other writer's rows
        await tx.commit()
        result = await asyncio.wait_for(commit, 10)
        assert result.outcomes == [Outcome.DUPLICATE, Outcome.CONFLICT]
        assert await store.reading_count("gw-1") == 2
        assert [(seq, kept) for seq, _, kept in await store.conflicts("gw-1")] == [
            (6, (await store.reading("gw-1", 6)).leaf_id)]
    finally:
        await other.close()
        await store.close()
        await drop_schema(dsn, schema)


async def test_concurrent_commits_never_store_a_place_twice() -> None:
    """Four writers (separate pools, as ingest workers on separate machines) commit overlapping
    batches of one device at once: every seq is stored exactly once, the others see it."""
    dsn = pg_dsn()
    schema = await create_schema(dsn)
    location = with_search_path(dsn, schema)
    writers = [await open_store(location) for _ in range(4)]
    try:
        gw = Gateway("gw-1")
        version = await _enrolled(writers[0], gw)
        readings = {seq: verified(gw, seq) for seq in range(1, 121)}
        outcomes: dict[int, list[Outcome]] = {seq: [] for seq in readings}

        async def worker(store, seqs: list[int]) -> None:  # type: ignore[no-untyped-def]
            for start in range(0, len(seqs), 10):
                batch = seqs[start : start + 10]
                result = await store.commit_batch([readings[s] for s in batch], [],
                                                  {"gw-1": max(batch)}, version)
                for seq, outcome in zip(batch, result.outcomes, strict=True):
                    outcomes[seq].append(outcome)

        # Each writer takes all seqs in its own order: every place is contended.
        orders = [list(readings), list(reversed(readings)),
                  [s for s in readings if s % 2] + [s for s in readings if not s % 2],
                  sorted(readings, key=lambda s: (s * 7919) % 121)]
        await asyncio.gather(*(worker(w, order) for w, order in zip(writers, orders, strict=True)))
        assert all(sorted(o, key=lambda x: x.value) == [Outcome.DUPLICATE] * 3 + [Outcome.STORED]
                   for o in outcomes.values()), outcomes
        store = writers[0]
        assert await store.reading_count("gw-1") == 120
        assert await store.count("leaves") == 121  # and no orphan leaf of a lost race
        assert (await store.ack_state("gw-1")).upto == 120
        sealer = Sealer(store, SIGNER, max_leaves=50)
        assert await sealer.seal_all() == 121
        report = await audit(store, SIGNER.verifier)
        assert report.ok and report.readings == 120, report.findings
    finally:
        for w in writers:
            await w.close()
        await drop_schema(dsn, schema)


async def test_a_key_change_waits_for_commits_and_makes_them_stale() -> None:
    """A key change holds the key lock exclusively: batches verified before it are refused
    (StaleKeys) after it, and it sees every committed seq."""
    dsn = pg_dsn()
    schema = await create_schema(dsn)
    location = with_search_path(dsn, schema)
    ingest, admin = await open_store(location), await open_store(location)
    try:
        gw = Gateway("gw-1")
        version = await _enrolled(admin, gw)
        await ingest.commit_batch([verified(gw, s) for s in (1, 2, 3)], [], {}, version)
        racing = [ingest.commit_batch([verified(gw, 4)], [], {}, version),
                  rotate(admin, "gw-1", Gateway("gw-1").public_key, NOW)]
        results = await asyncio.gather(*racing, return_exceptions=True)
        rotated = results[1]
        if isinstance(results[0], StaleKeys):  # the rotation went first: 4 must be re-verified
            assert rotated.valid_from == 4
        else:  # the commit went first: the new key starts after it
            assert results[0].outcomes == [Outcome.STORED] and rotated.valid_from == 5
        with pytest.raises(StaleKeys):
            await ingest.commit_batch([verified(gw, 9)], [], {}, version)
        revoked = await revoke(admin, "gw-1", NOW)
        assert revoked.event == DeviceEvent.REVOKE
        assert [r.event for r in await admin.key_rows(device="gw-1")] == ["enrol", "rotate", "revoke"]
    finally:
        await ingest.close()
        await admin.close()
        await drop_schema(dsn, schema)


async def test_two_sealers_never_both_extend_the_log(any_store, store_factory: StoreFactory) -> None:  # type: ignore[no-untyped-def]
    gw = Gateway("gw-1")
    version = await _enrolled(any_store, gw)
    await any_store.commit_batch([verified(gw, s) for s in range(1, 11)], [], {}, version)
    first, second = Sealer(any_store, SIGNER), Sealer(await store_factory.open(), SIGNER)
    await first.start()
    await second.start()
    results = await asyncio.gather(first.seal_once(), second.seal_once(), return_exceptions=True)
    assert sorted(map(repr, results)) == sorted(
        [repr(11), repr(StoreError("the tree grew since this seal was prepared"))]), results
    report = await audit(any_store, SIGNER.verifier)
    assert report.ok and report.leaves == 11 and report.batches == 1, report.findings
    await second.store.close()


# --------------------------------------------------------------------- proofs from the store


def _build_and_prove(chunks: list[int], queries: list[tuple[int, int, int]]) -> None:
    """A log of sum(chunks) synthetic readings sealed in those chunks, on PostgreSQL; every
    (index, old, size) query's proofs equal the pure module's, and a restarted sealer agrees."""

    async def run() -> None:
        dsn = pg_dsn()
        schema = await create_schema(dsn)
        store = await open_store(with_search_path(dsn, schema))
        try:
            total = sum(chunks)
            messages = [b"leaf %d" % i for i in range(total)]
            readings = [VerifiedReading("gw-1", i + 1, "m", 900 * i, 900 * (i + 1), i, 0, m,
                                        pack_leaf_data(m), b"d%d" % i, merkle.leaf_hash(m), NOW)
                        for i, m in enumerate(messages)]
            await store.commit_batch(readings, [], {}, 0)
            sealer = Sealer(store, SIGNER)
            for chunk in chunks:
                sealer.max_leaves = chunk
                assert await sealer.seal_once() == chunk
            hashes = [merkle.leaf_hash(m) for m in messages]
            for index, old, size in queries:
                size = 1 + size % total
                index, old = index % size, 1 + old % size
                assert await inclusion_proof(store, index, size) == merkle.inclusion_proof(
                    index, hashes[:size])
                assert await consistency_proof(store, old, size) == merkle.consistency_proof(
                    old, hashes[:size])
            restarted = Sealer(store, SIGNER)
            await restarted.start()
            assert restarted.tree.root() == merkle.root_from_leaf_hashes(hashes)
        finally:
            await store.close()
            await drop_schema(dsn, schema)

    asyncio.run(run())


@settings(max_examples=12, deadline=None)
@given(chunks=st.lists(st.integers(1, 90), min_size=1, max_size=6),
       queries=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6),
                                  st.integers(0, 10**6)), min_size=1, max_size=8))
def test_proofs_from_postgres_equal_the_pure_module(chunks: list[int],
                                                    queries: list[tuple[int, int, int]]) -> None:
    _build_and_prove(chunks, queries)


def test_proofs_from_postgres_at_group_and_tile_edges() -> None:
    _build_and_prove([255, 2, 300, 17], [(i, o, s) for s in (15, 16, 17, 255, 256, 257, 573)
                                         for i, o in ((0, 0), (s - 1, s // 2), (s // 3, s - 1))])


async def test_side_messages_are_kept_on_postgres() -> None:
    """OCMF records (first bytes win) and gateway status, as UtilityTables keeps them on SQLite."""
    from meterchain.backend.ingest.gateway_messages import AcceptedOcmf, AcceptedStatus
    from meterchain.contract.status import GatewayStatus, MeterHealth

    dsn = pg_dsn()
    schema = await create_schema(dsn)
    store = await open_store(with_search_path(dsn, schema))
    try:
        first = AcceptedOcmf("gw-1", 1, "m-1", 900, b"record one")
        status = GatewayStatus("gw-1", 100, "1.0", 5, 0, 0, (MeterHealth("m-1", 90, 2),))
        result = await store.commit_side(
            [first, first, AcceptedOcmf("gw-1", 1, "m-1", 900, b"other")],
            [AcceptedStatus(status, b"raw", 101)])
        assert (result.ocmf_stored, result.ocmf_duplicates, result.ocmf_conflicts,
                result.statuses) == (1, 1, [("gw-1", 1)], 1)
        older = GatewayStatus("gw-1", 50, "0.9", 1, 0, 0, (MeterHealth("m-1", None, 7),))
        await store.commit_side([], [AcceptedStatus(older, b"old", 102)])
        rows = [tuple(r) async for r in store.iter_rows(
            "SELECT s.sent, s.firmware, m.last_read, m.drift FROM gateway_status s "
            "JOIN gateway_meters m ON m.device = s.device")]
        assert rows == [(100, "1.0", 90, 7)]  # the newer status stays; meters merge
    finally:
        await store.close()
        await drop_schema(dsn, schema)


async def test_ingest_keeps_ocmf_and_status_beside_readings_on_both(
    store_factory: StoreFactory,
) -> None:
    """What a gateway publishes (OCMF record before its reading, a status) through ingest's
    batch path: the side messages land in the store's own tables on either database."""
    from meterchain.contract.ack import ocmf_topic, status_topic
    from meterchain.contract.ocmf import build_ocmf, sign_ocmf
    from meterchain.contract.status import GatewayStatus, MeterHealth

    from tests.support.backend import backend, close

    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    messages = []
    for seq in (1, 2):
        signed = gw.signed(seq)
        record = sign_ocmf(build_ocmf(signed.reading, gateway_id="gw", gateway_version="1"),
                           gw.signer)
        messages += [(ocmf_topic("gw-1"), record.encode()), (gw.topic, signed.to_cbor())]
    status = GatewayStatus("gw-1", NOW, "1.2.3", 60, 0, 0, (MeterHealth(gw.meter, NOW, -1),))
    messages.append((status_topic("gw-1"), status.to_cbor()))
    report = await ingest.process(messages + messages[:2])  # and a resent record with its reading
    assert (report.stored, report.duplicates, report.acks[0].upto) == (2, 1, 2)
    assert (ingest.stats["ocmf:stored"], ingest.stats["ocmf:duplicate"],
            ingest.stats["status:stored"]) == (2, 1, 1)
    kept = [(r[0], bytes(r[1]).decode()) async for r in api.iter_rows(
        "SELECT seq, record FROM ocmf_records ORDER BY seq")]
    assert kept == [(1, messages[0][1].decode()), (2, messages[2][1].decode())]
    assert [tuple(r) async for r in api.iter_rows("SELECT firmware, uptime FROM gateway_status")] \
        == [("1.2.3", 60)]
    await close(admin, ingest, sealer, api)


async def test_one_sealer_claims_the_log_until_it_closes() -> None:
    dsn = pg_dsn()
    schema = await create_schema(dsn)
    location = with_search_path(dsn, schema)
    first, second = await open_store(location), await open_store(location)
    try:
        await first.claim_sealer()
        with pytest.raises(StoreError, match="another sealer already runs on this log") as refused:
            await second.claim_sealer()
        assert "pid " in str(refused.value)
        await first.close()  # a stopped (or killed: its session ends) sealer frees the log
        await second.claim_sealer()
    finally:
        await second.close()
        await drop_schema(dsn, schema)


async def test_the_scale_path_runs_end_to_end_on_postgres(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    """``serve`` on PostgreSQL as a utility would run it: two ingest workers in one MQTT 5 share
    group and one node with the sealer and the (public log) API. Every reading is stored once,
    acked, sealed and served as tiles under a signed checkpoint; a second sealer is refused."""
    import contextlib

    import aiomqtt
    import httpx
    from meterchain.backend.config import BackendConfig
    from meterchain.backend.service import serve
    from meterchain.contract.ack import ack_topic
    from meterchain.contract.checkpoint import open_checkpoint
    from meterchain.contract.control import ACK_V2_TYPE, SignedAck, read_unverified
    from meterchain.contract.note import NoteSigner as Signer
    from meterchain.mqtt.broker import free_port

    from tests.support.scale_out import needs_shared_subscriptions, serving

    needs_shared_subscriptions(broker)
    async with postgres_location() as location:
        def node(roles: str, **kwargs: object) -> BackendConfig:
            return BackendConfig(db=location, broker=broker.url, http_port=free_port(),
                                 log_key=str(tmp_path / "log.key"), origin="pg.example/log",
                                 roles=roles, seal_interval=0.2, **kwargs)  # type: ignore[arg-type]

        gateways = [Gateway(f"gw-{d}") for d in range(4)]
        admin = await open_store(location)
        for gw in gateways:
            await enrol(admin, gw.device, gw.public_key, NOW)
        per_device = 25
        messages = [gw.message(seq) for seq in range(1, per_device + 1) for gw in gateways]
        size = len(gateways) + 1 + len(messages)  # + the control-key leaf the sealer logs
        try:
            async with contextlib.AsyncExitStack() as nodes:
                head = node("sealer,api")
                await nodes.enter_async_context(serving(head))
                for i in range(2):
                    await nodes.enter_async_context(
                        serving(node("ingest", share_group="pg", client_id=f"pg-w{i}")))
                with pytest.raises(StoreError, match="another sealer already runs"):
                    await serve(node("sealer"))
                async with aiomqtt.Client(broker.host, broker.port, identifier="pg-gws") as gws:
                    for gw in gateways:
                        await gws.subscribe(ack_topic(gw.device), qos=1)
                    # Every message twice: the group spreads the copies, one of each is stored.
                    for topic, payload in messages + messages:
                        await gws.publish(topic, payload, qos=1)
                    best: dict[str, int] = {}
                    async with asyncio.timeout(30):
                        async for message in gws.messages:
                            payload = bytes(message.payload)  # type: ignore[arg-type]
                            ack = SignedAck.from_body(read_unverified(payload, ACK_V2_TYPE))
                            best[ack.device] = max(best.get(ack.device, 0), ack.upto)
                            if all(best.get(gw.device) == per_device for gw in gateways):
                                break
                async with asyncio.timeout(30):
                    while (c := await admin.latest_checkpoint()) is None or c.size < size:
                        await asyncio.sleep(0.1)
                verifier = Signer.parse((tmp_path / "log.key").read_text()).verifier
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{head.http_port}") as http:
                    note = (await http.get("/checkpoint")).text
                    tile = await http.get(f"/tile/0/000.p/{size}")
                    missing = await http.get("/api/v1/devices/gw-0/readings")
                    # What gateways holding receipts ask (agent/receipts.py): served here too.
                    consistency = await http.get("/api/v1/proofs/consistency", params={"old": 2, "new": size})
                assert open_checkpoint(note, verifier).size == size
                hashes = await admin.leaf_hashes(0, size)
                merkle.verify_consistency(2, size, merkle.root_from_leaf_hashes(hashes[:2]),
                                          open_checkpoint(note, verifier).root,
                                          [base64.b64decode(h) for h in consistency.json()["proof"]])
                assert tile.content == b"".join(hashes)
                assert merkle.root_from_leaf_hashes(hashes) == open_checkpoint(note, verifier).root
                assert missing.status_code == 404  # the readings API needs SQLite
            for gw in gateways:
                assert await admin.reading_count(gw.device) == per_device
            assert await admin.count("leaves") == size  # no copy stored twice
            report = await audit(admin, verifier)
            assert report.ok and report.readings == len(messages), report.findings
        finally:
            await admin.close()


async def test_sqlite_only_features_are_refused_by_name_on_postgres() -> None:
    from meterchain.backend.access.tables import PartyTables

    dsn = pg_dsn()
    schema = await create_schema(dsn)
    store = await open_store(with_search_path(dsn, schema))
    try:
        with pytest.raises(StoreError, match="keeps its tables in SQLite"):
            PartyTables(store)
    finally:
        await store.close()
        await drop_schema(dsn, schema)
