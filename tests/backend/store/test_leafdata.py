"""Leaf data packed for storage (backend/store/leafdata.py) and the slim readings table (migration
10), issue 5: every byte string round-trips, the version-1 dictionary never changes, a corrupt blob
is a typed error naming its leaf, readings are stored packed and read back whole, dedupe works
against packed and old raw rows, the audit rehashes unpacked data, a version-8 database upgrades
with its readings, and reads by device and time never scan the table."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.backend.access.model import KeyKind, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.log.audit import audit
from meterchain.backend.log.proofs import build_bundle
from meterchain.backend.store import open_store
from meterchain.backend.store.leafdata import (
    DICT_V1,
    MAX_UNPACKED,
    TAG_DEFLATE_V1,
    TAG_VERBATIM,
    TAGS,
    WBITS_V1,
    LeafDataError,
    pack_leaf_data,
    unpack_leaf_data,
)
from meterchain.backend.store.schema import MIGRATIONS
from meterchain.backend.utility.tables import UtilityTables
from meterchain.contract import merkle
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf, parse_leaf
from typer.testing import CliRunner

from tests.support.backend import T0, Gateway, backend, close

DICT_V1_SHA256 = "19f5331ca0f92dceca84101b3237795d11347fd0852db34a1f7715741c9a12fb"


def _deflate_v1(data: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, WBITS_V1, 2, zlib.Z_DEFAULT_STRATEGY, zdict=DICT_V1)
    return bytes((TAG_DEFLATE_V1,)) + deflate.compress(data) + deflate.flush()


# ----------------------------------------------------------------------------- the format


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda tag, rest: bytes((tag,)) + rest, st.sampled_from(sorted(TAGS)),
              st.binary(max_size=600)),
    st.builds(lambda n, rest: bytes(n) + rest, st.integers(1, 400), st.binary(max_size=100)),
))
def test_any_bytes_round_trip_and_never_grow_by_more_than_a_byte(data: bytes) -> None:
    stored = pack_leaf_data(data)
    assert unpack_leaf_data(stored) == data
    assert len(stored) <= len(data) + 1
    if data and data[0] not in TAGS and len(stored) == len(data):
        assert stored == data  # not made smaller: kept as it is, readable by older code too
    if data and data[0] in TAGS:
        assert stored[0] in (TAG_DEFLATE_V1, TAG_VERBATIM)  # a tag byte is never stored bare


def test_real_messages_pack_to_about_six_tenths_and_raw_rows_read_unchanged() -> None:
    gateways = [Gateway(f"gw-{i:012x}", meter=f"{21000000 + i}") for i in range(5)]
    messages = [g.signed(seq, import_wh=seq * 137).to_cbor() for g in gateways for seq in range(1, 41)]
    packed = [pack_leaf_data(m) for m in messages]
    assert all(p[0] == TAG_DEFLATE_V1 for p in packed)
    assert sum(map(len, packed)) < 0.66 * sum(map(len, messages))
    assert [unpack_leaf_data(p) for p in packed] == messages
    assert [unpack_leaf_data(m) for m in messages] == messages  # rows written before packing
    assert pack_leaf_data(b"") == unpack_leaf_data(b"") == b""  # an erased leaf


def test_the_copied_primed_compressor_packs_exactly_as_a_fresh_one_per_message() -> None:
    # pack_leaf_data copies one primed compressor per message (issue 20): the bytes stored must be
    # those of a compressor set up afresh, for real messages, device leaves and odd data alike.
    gateways = [Gateway(f"gw-{i:012x}", meter=f"{21000000 + i}") for i in range(4)]
    corpus = [g.signed(seq, import_wh=seq * 7919).to_cbor() for g in gateways for seq in range(1, 51)]
    corpus += [bytes(range(256)) * 3, b"\x82" + bytes(300), DICT_V1, DICT_V1[::-1], b"x"]
    for data in corpus:
        fresh = _deflate_v1(data)
        expected = fresh if len(fresh) < len(data) else data
        assert pack_leaf_data(data) == expected
    assert pack_leaf_data(corpus[0]) == pack_leaf_data(corpus[0])  # the primed one is never consumed


def test_version_1_is_pinned() -> None:
    # Every stored version-1 leaf needs exactly these to unpack: change them only with a new tag.
    assert hashlib.sha256(DICT_V1).hexdigest() == DICT_V1_SHA256
    assert (TAG_DEFLATE_V1, TAG_VERBATIM, WBITS_V1, len(DICT_V1)) == (0x1C, 0x1F, -10, 433)
    # A blob written by version 1 (its stream is fixed here) unpacks to its leaf forever.
    leaf = DeviceLeaf("gw-0123456789ab", DeviceEvent.ENROL, bytes.fromhex(
        "3059301306072a8648ce3d020106082a8648ce3d03010703420004"
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"), 1, T0).to_cbor()
    stored = bytes.fromhex(  # as packed on 2026-11-24 (zlib 1.2.13): 207 -> 139 bytes
        "1c03066809bef03430343236313533b7b04c4c2218b6d9e2173f3dd47172ffb1e7d9d3e4250e9fca"
        "996b1b755f1b2ff8b2d0d2f5c68c43d3fc1f3b3dfa27553fbbeff96baf1afe7962dae78cc3b30de3"
        "ce9ddee69061be3ff02bc4f33197827ef3bc98ac62f6ebc7998b2c9c8d3be63d599b3dffe5a345db"
        "9f4badd95473191c778cd0c80bfe98821c8100")
    assert unpack_leaf_data(stored) == leaf


def test_corrupt_blobs_are_a_typed_error_naming_the_leaf() -> None:
    message = Gateway("gw-0123456789ab").signed(3).to_cbor()
    good = pack_leaf_data(message)
    bomb = _deflate_v1(bytes(MAX_UNPACKED + 1))
    assert len(bomb) < 200
    for bad, why in ((good[:-4], "truncated"), (good + b"\x00", "after its DEFLATE stream"),
                     (b"\x1c\xff\xff\xff\xff", "not a valid DEFLATE stream"),
                     (b"\x1d" + good[1:], "unknown packing version 0x1d"),
                     (b"\x1c", "truncated"), (bomb, f"more than {MAX_UNPACKED} bytes")):
        with pytest.raises(LeafDataError, match=re.escape(why)) as caught:
            unpack_leaf_data(bad, leaf_id=7)
        assert caught.value.check == "leaf-data" and caught.value.context == {"leaf_id": 7}
    assert unpack_leaf_data(_deflate_v1(bytes(MAX_UNPACKED))) == bytes(MAX_UNPACKED)  # the bound


# ------------------------------------------------------------------------ in the store


def _raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


async def test_readings_and_device_leaves_are_stored_packed_and_read_back_whole(tmp_path: Path) -> None:
    gw = Gateway("gw-5c2d8e01a7f3", meter="21000042")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    messages = [gw.message(seq) for seq in (1, 2, 3)]
    assert (await ingest.process(messages)).stored == 3
    await sealer.seal_all()
    db = tmp_path / "mc.db"
    for (_, message), (stored, hashed) in zip(messages, _raw(
            db, "SELECT l.data, l.leaf_hash FROM readings r JOIN leaves l ON l.id = r.leaf_id "
            "ORDER BY r.seq"), strict=True):
        assert isinstance(stored, bytes) and stored[0] == TAG_DEFLATE_V1
        assert len(stored) < 0.7 * len(message)
        assert hashed == merkle.leaf_hash(message)  # the log hashes what was received
    (device_data,) = _raw(db, "SELECT data FROM leaves WHERE kind = 'device'")[0]
    assert device_data[0] == TAG_DEFLATE_V1  # type: ignore[index]
    row = await api.reading(gw.device, 2)
    assert row is not None and row.message == messages[1][1] and row.received_at > 0
    assert [r.message for r in await api.readings(gw.device, 0, 2**53, 10)] == [m for _, m in messages]
    (key_leaf,) = await api.device_leaves(gw.device)
    assert parse_leaf(key_leaf.data).device == gw.device  # type: ignore[union-attr]
    bundle = await build_bundle(api, gw.device, 2)  # carries the message as received
    verified = verify_bundle(bundle, sealer.signer.verifier)  # type: ignore[arg-type]
    assert verified.reading.reading.seq == 2
    await close(admin, ingest, sealer, api)


async def test_a_resend_is_a_duplicate_of_its_packed_row_and_an_unreadable_one_a_conflict(
        tmp_path: Path) -> None:
    gw = Gateway("gw-5c2d8e01a7f3")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    assert (await ingest.process([gw.message(s) for s in (1, 2)])).stored == 2
    report = await ingest.process([gw.message(1), gw.message(2, import_wh=9)])  # re-signed; other
    assert (report.duplicates, report.conflicts) == (1, 1)
    with sqlite3.connect(tmp_path / "mc.db") as db:  # the kept message of seq 1 is damaged
        db.execute("UPDATE leaves SET data = X'1c00' WHERE id = (SELECT leaf_id FROM readings "
                   "WHERE seq = 1)")
    report = await ingest.process([gw.message(1), gw.message(3)])
    assert (report.stored, report.conflicts) == (1, 1)  # not provably the same: kept as evidence
    assert [seq for seq, _, _ in await api.conflicts(gw.device)] == [2, 1]
    await close(admin, ingest, sealer, api)


async def test_audit_rehashes_unpacked_data_and_names_a_blob_that_does_not_unpack(
        tmp_path: Path) -> None:
    from meterchain.cli.main import app as cli

    gw = Gateway("gw-5c2d8e01a7f3")
    admin, ingest, sealer, api = await backend(tmp_path, gw, max_leaves=3)
    await ingest.process([gw.message(s) for s in range(1, 8)])
    await sealer.seal_all()
    report = await audit(api, sealer.signer.verifier)
    assert report.ok and report.readings == 7 and report.leaves == 8, report.findings
    db = str(tmp_path / "mc.db")
    args = ["audit", "--db", db, "--log-key", str(sealer.signer.verifier), "--rebuild"]
    done = await asyncio.to_thread(CliRunner().invoke, cli, args)  # the CLI runs its own loop
    assert done.exit_code == 0 and "audit ok" in done.output, done.output
    (leaf_id,) = _raw(Path(db), "SELECT leaf_id FROM readings WHERE seq = 4")[0]
    _raw(Path(db), "UPDATE leaves SET data = substr(data, 1, length(data) - 5) WHERE id = ?",
         (leaf_id,))
    report = await audit(api, sealer.signer.verifier)
    problems = {f"{f.kind} {f.name}": f.problem for f in report.findings}
    assert "truncated" in problems[f"reading {gw.device}#4"]
    assert "data unreadable" in problems[f"leaf #{leaf_id}"]
    assert report.checkpoints == 3 and report.batches == 3  # it went on to check the rest
    assert (await asyncio.to_thread(CliRunner().invoke, cli, args)).exit_code != 0
    await close(admin, ingest, sealer, api)


# ----------------------------------------------------------------------------- migration


def _version_8_database(path: Path, gw: Gateway, seqs: range) -> list[bytes]:
    """A database as meterchain left it at schema 8: raw leaf data, the old readings columns."""
    messages = []
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statements in MIGRATIONS[:8]:
            for statement in statements:
                db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (8)")
        key = DeviceLeaf(gw.device, DeviceEvent.ENROL, gw.public_key, 1, T0).to_cbor()
        db.execute("INSERT INTO devices VALUES (?, ?)", (gw.device, T0))
        db.execute("INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                   "VALUES (1, 'device', ?, ?, ?)", (key, merkle.leaf_hash(key), T0))
        leaf = parse_leaf(key)
        db.execute("INSERT INTO device_keys VALUES (1, ?, 'enrol', ?, ?, 1, ?)",
                   (gw.device, gw.public_key, leaf.key_id, T0))  # type: ignore[union-attr]
        for seq in seqs:
            signed = gw.signed(seq)
            message = signed.to_cbor()
            r = signed.reading
            db.execute("INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                       "VALUES (?, 'reading', ?, ?, ?)",
                       (seq + 1, message, merkle.leaf_hash(message), r.end))
            db.execute("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (r.device, r.seq, r.meter, r.start, r.end, r.import_wh, r.export_wh,
                        hashlib.sha256(signed.reading_bytes).digest(), seq + 1, r.end))
            messages.append(message)
    return messages


async def test_a_version_8_database_upgrades_with_its_readings(tmp_path: Path) -> None:
    gw = Gateway("gw-5c2d8e01a7f3")
    old = _version_8_database(tmp_path / "mc.db", gw, range(1, 6))
    admin, ingest, sealer, api = await backend(tmp_path)  # opening migrates
    assert await api.schema_version() == len(MIGRATIONS)
    with sqlite3.connect(tmp_path / "mc.db") as db:
        columns = [c[1] for c in db.execute("PRAGMA table_info(readings)")]
        indexes = [i[0] for i in db.execute("SELECT name FROM sqlite_schema WHERE type = 'index' "
                                            "AND tbl_name = 'readings'")]
        raw = [r[0] for r in db.execute("SELECT data FROM leaves WHERE kind = 'reading' ORDER BY id")]
    assert columns == ["leaf_id", "device", "seq", "meter", "start", "end", "import_wh", "export_wh"]
    assert "readings_by_time" not in indexes
    assert len(indexes) == 2  # unique (device, seq) and (device, meter, end)
    assert raw == old  # old rows stay raw
    assert [r.message for r in await api.readings(gw.device, 0, 2**53, 10)] == old
    row = await api.reading(gw.device, 3)
    assert row is not None and (row.leaf_id, row.message, row.received_at) == (4, old[2], T0 + 2700)
    # Dedupe against the old raw rows; a new reading is stored packed beside them.
    report = await ingest.process([gw.message(2), gw.message(4, import_wh=1), gw.message(6)])
    assert (report.duplicates, report.conflicts, report.stored) == (1, 1, 1)
    (new,) = _raw(tmp_path / "mc.db", "SELECT data FROM leaves WHERE id = 7")[0]
    assert isinstance(new, bytes) and new[0] == TAG_DEFLATE_V1
    await sealer.seal_all()
    report = await audit(api, sealer.signer.verifier)
    assert report.ok and report.readings == 6 and report.leaves == 7, report.findings
    await close(admin, ingest, sealer, api)


# ------------------------------------------------------------------------ query plans


async def test_reads_by_device_and_time_use_an_index_never_a_scan(tmp_path: Path) -> None:
    """readings has no (device, end) index any more: every read path must still seek."""
    from tests.support.access import build

    scenario = await build(tmp_path)
    store = await open_store(scenario.db)
    statements: list[str] = []
    await store.connection.set_trace_callback(statements.append)
    household = Principal(KeyKind.HOUSEHOLD, "h-a", frozenset())
    await store.readings("gw-a", T0, T0 + 86_400, 50)
    await store.reading("gw-a", 2)
    await PartyTables(store).readings(household, device="gw-a", start=T0, end=T0 + 86_400)
    await PartyTables(store).readings(household, point="mp-a", start=T0, end=T0 + 86_400)
    await UtilityTables(store).gaps("gw-a", T0)
    await UtilityTables(store).readings_in_leaf_range(Principal.root(), 0, 10, 5)
    await UtilityTables(store).readings_in_leaf_range(household, 0, 10, 5)
    await store.connection.set_trace_callback(None)
    gw = scenario.gw_a
    admin, ingest, sealer, api = await backend(tmp_path, log_key=scenario.log_key)
    await ingest.store.connection.set_trace_callback(statements.append)
    await ingest.process([gw.message(1, meter="M-A1"), gw.message(40, meter="M-A2")])  # dedupe lookups
    await ingest.store.connection.set_trace_callback(None)
    reads = [s for s in statements if re.search(r"\bFROM readings\b|\bJOIN readings\b", s)
             and s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) >= 8
    with sqlite3.connect(scenario.db) as db:
        for sql in reads:
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
            assert not [p for p in plan if re.match(r"SCAN (readings|r|x|leaves|l)\b", p)], (sql, plan)
            if re.search(r'"end" >= \d', sql):  # a time range: bounded in the index, not filtered
                assert [p for p in plan if re.match(r"SEARCH (readings|r) .*\bend>", p)], (sql, plan)
    await store.close()
    await close(admin, ingest, sealer, api)
