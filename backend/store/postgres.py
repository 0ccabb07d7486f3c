"""The store on PostgreSQL through asyncpg: the scale path, where ingest workers on several
machines commit into one database and one sealer extends the log.

Same :class:`~meterchain.backend.store.Store` protocol, records, typed errors and semantics as
:class:`~meterchain.backend.store.sqlite.SqliteStore`. What differs is how concurrent writers stay
correct: SQLite has one writer at a time, PostgreSQL many.

- ``commit_batch`` (READ COMMITTED) holds the key registry's advisory lock *shared*; a key change
  (``append_device_leaf``) holds it exclusively. So no batch verified against old keys commits
  after a key change, and a key change sees every committed reading's seq. Readings go in with
  ``ON CONFLICT DO NOTHING``: when a concurrent commit won a (device, seq) or (device, meter, end),
  the transaction is retried and re-reads what won, so a place is stored exactly once.
- ``seal`` and ``backfill_nodes`` hold the log's advisory lock, then check the tree size.
- Leaf ids come from an identity column; ``ack_state`` only moves forward (GREATEST).
- Deadlocks and serialization failures are retried a few times with jitter.

Advisory locks are keyed by the schema (``current_schema()``), so stores in different schemas
of one database never contend. The location is a libpq URL; other query parameters are server
settings, e.g. ``postgresql://host/db?search_path=meterchain``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import NoReturn, TypeVar

import asyncpg
from meterchain.backend.log.nodes import NodeReader
from meterchain.backend.log.tree import peak_ids
from meterchain.backend.store.dedupe import Place, PlaceKey, place_keys, plan_batch
from meterchain.backend.store.leafdata import pack_leaf_data, unpack_leaf_data
from meterchain.backend.store.records import (
    REJECTION_RETENTION_SECONDS,
    AcceptedOcmf,
    AcceptedStatus,
    AckState,
    BatchRow,
    CheckpointRow,
    CommitResult,
    KeyedLeaf,
    KeyRow,
    LeafRow,
    ReadingRow,
    RejectionRecord,
    Seal,
    SideCommit,
    StaleKeys,
    StoredLeaf,
    StoredReading,
    TreeState,
    VerifiedGap,
    VerifiedReading,
    aggregate_junk,
)
from meterchain.backend.store.sqlite import (
    AUDIT_BATCHES,
    AUDIT_CHECKPOINTS,
    AUDIT_DEVICE_LEAVES,
    AUDIT_LEAVES,
    AUDIT_READINGS,
    AUDIT_SEAL_SIZES,
    NEWEST_READINGS_SQL,
    READING_COLUMNS,
    RECENT_REJECTIONS,
    SQLITE_ONLY,
    StoreError,
    reading_row,
)
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.message import parse_message

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Advisory lock classes (the first key; the second is the schema's hash).
_MIGRATE_LOCK = 0x6D630001
_KEYS_LOCK = 0x6D630002
_LOG_LOCK = 0x6D630003
_SEALER_CLAIM = 0x6D630004
#: Attempts of a transaction that lost a race (deadlock, serialization, a place taken meanwhile).
ATTEMPTS = 8

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the Store protocol's tables in their current SQLite shape (backend/store/schema.py,
    # migrations 1, 4, 8, 9 and 10 folded; leaf data packed, backend/store/leafdata.py), plus the
    # OCMF and gateway-status tables ingest writes.
    # No party, settlement or dashboard tables: those features run on SQLite (docs/backend.md).
    (
        """CREATE TABLE devices (
            device TEXT PRIMARY KEY,
            created BIGINT NOT NULL
        )""",
        # id = arrival order (of commits); data packed (leafdata.py); leaf_index is assigned by the sealer,
        # NULL until sealed.
        """CREATE TABLE leaves (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('reading', 'device', 'settlement')),
            data BYTEA NOT NULL,
            leaf_hash BYTEA NOT NULL,
            leaf_index BIGINT UNIQUE,
            received_at BIGINT NOT NULL
        )""",
        "CREATE INDEX leaves_pending ON leaves (id) WHERE leaf_index IS NULL",
        # Keyed by its leaf; no digest (dedupe unpacks the kept leaf's message on a (device,
        # seq) hit) and no received_at (the leaf's); (device, meter, end) serves time queries.
        """CREATE TABLE readings (
            leaf_id BIGINT PRIMARY KEY REFERENCES leaves (id),
            device TEXT NOT NULL,
            seq BIGINT NOT NULL,
            meter TEXT NOT NULL,
            start BIGINT NOT NULL,
            "end" BIGINT NOT NULL,
            import_wh BIGINT NOT NULL,
            export_wh BIGINT NOT NULL,
            UNIQUE (device, seq),
            UNIQUE (device, meter, "end")
        )""",
        """CREATE TABLE device_keys (
            leaf_id BIGINT PRIMARY KEY REFERENCES leaves (id),
            device TEXT NOT NULL,
            event TEXT NOT NULL,
            public_key BYTEA NOT NULL,
            kid BYTEA NOT NULL,
            valid_from BIGINT NOT NULL,
            time BIGINT NOT NULL
        )""",
        "CREATE INDEX device_keys_by_device ON device_keys (device, leaf_id)",
        """CREATE TABLE conflicts (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device TEXT NOT NULL,
            seq BIGINT NOT NULL,
            message BYTEA NOT NULL,
            kept_leaf_id BIGINT NOT NULL REFERENCES leaves (id),
            time BIGINT NOT NULL
        )""",
        """CREATE TABLE rejections (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device TEXT,
            seq BIGINT,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            permanent BOOLEAN NOT NULL,
            time BIGINT NOT NULL
        )""",
        "CREATE INDEX rejections_permanent ON rejections (device, seq) WHERE permanent",
        """CREATE TABLE ack_state (
            device TEXT PRIMARY KEY,
            upto BIGINT NOT NULL,
            time BIGINT NOT NULL
        )""",
        """CREATE TABLE log_nodes (
            level INTEGER NOT NULL,
            idx BIGINT NOT NULL,
            hash BYTEA NOT NULL,
            PRIMARY KEY (level, idx)
        )""",
        """CREATE TABLE checkpoints (
            size BIGINT PRIMARY KEY,
            root BYTEA NOT NULL,
            note TEXT NOT NULL,
            time BIGINT NOT NULL
        )""",
        """CREATE TABLE batches (
            idx BIGINT PRIMARY KEY,
            first BIGINT NOT NULL,
            size BIGINT NOT NULL UNIQUE,
            root BYTEA NOT NULL,
            sealed BIGINT NOT NULL,
            header BYTEA NOT NULL
        )""",
        # An erased reading's place stays taken (docs/privacy.md); nothing on PostgreSQL erases
        # yet, but commit_batch and audit honour the table exactly as on SQLite.
        """CREATE TABLE erasures (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            household TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            time BIGINT NOT NULL,
            leaves BIGINT NOT NULL,
            ranges TEXT NOT NULL,
            unsealed BIGINT NOT NULL,
            logins BIGINT NOT NULL
        )""",
        """CREATE TABLE erased_readings (
            device TEXT NOT NULL,
            seq BIGINT NOT NULL,
            meter TEXT NOT NULL,
            "end" BIGINT NOT NULL,
            leaf_id BIGINT NOT NULL UNIQUE REFERENCES leaves (id),
            erasure BIGINT NOT NULL REFERENCES erasures (id),
            PRIMARY KEY (device, seq)
        )""",
        'CREATE INDEX erased_readings_by_meter ON erased_readings (device, meter, "end")',
        # A PostgreSQL log starts with the stored-level stride of backend/log/strata.py (4).
        """CREATE TABLE log_meta (
            key TEXT PRIMARY KEY,
            value BIGINT NOT NULL
        )""",
        "INSERT INTO log_meta VALUES ('stride', 4)",
        """CREATE TABLE ocmf_records (
            device TEXT NOT NULL,
            seq BIGINT NOT NULL,
            meter TEXT NOT NULL,
            "end" BIGINT NOT NULL,
            record BYTEA NOT NULL,
            received_at BIGINT NOT NULL,
            PRIMARY KEY (device, seq)
        )""",
        'CREATE INDEX ocmf_by_meter ON ocmf_records (device, meter, "end")',
        """CREATE TABLE gateway_status (
            device TEXT PRIMARY KEY,
            last_seen BIGINT NOT NULL,
            sent BIGINT NOT NULL,
            firmware TEXT NOT NULL,
            uptime BIGINT NOT NULL,
            outbox_depth BIGINT NOT NULL,
            quarantined BIGINT NOT NULL,
            message BYTEA NOT NULL
        )""",
        """CREATE TABLE gateway_meters (
            device TEXT NOT NULL,
            meter TEXT NOT NULL,
            last_read BIGINT,
            drift BIGINT,
            PRIMARY KEY (device, meter)
        )""",
    ),
    # 2: unauthenticated rejections counted per (device of the topic, reason, minute), as
    # SQLite's migration 12 (issue 14); ``rejections`` keeps only the permanent ones.
    (
        """CREATE TABLE rejection_minutes (
            device TEXT NOT NULL,
            reason TEXT NOT NULL,
            minute BIGINT NOT NULL,
            count BIGINT NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (device, reason, minute)
        )""",
        "CREATE INDEX rejection_minutes_by_minute ON rejection_minutes (minute)",
        "INSERT INTO rejection_minutes (device, reason, minute, count, detail) "
        "SELECT coalesce(device, ''), reason, time - time % 60, count(*), "
        "max(substr(detail, 1, 200)) FROM rejections "
        "WHERE NOT permanent OR reason IN ('signature', 'key-id', 'key-validity') "
        "GROUP BY 1, 2, 3",
        "DELETE FROM rejections WHERE NOT permanent "
        "OR reason IN ('signature', 'key-id', 'key-validity')",
    ),
    # 3: control-key and gap leaves, and the declared ranges (SQLite's migration 13).
    (
        "ALTER TABLE leaves DROP CONSTRAINT leaves_kind_check",
        "ALTER TABLE leaves ADD CONSTRAINT leaves_kind_check "
        "CHECK (kind IN ('reading', 'device', 'settlement', 'control', 'gap'))",
        """CREATE TABLE declared_gaps (
            device TEXT NOT NULL,
            first BIGINT NOT NULL,
            last BIGINT NOT NULL,
            leaf_id BIGINT NOT NULL UNIQUE REFERENCES leaves (id),
            time BIGINT NOT NULL,
            PRIMARY KEY (device, first, last)
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

# Every stored hash of each (level, start, end) range in one statement (a constant text, so
# asyncpg prepares it once): level 0 is the sealed leaves' hashes, other levels ``log_nodes``.
_STRATA_SQL = (
    "SELECT q.pos, s.idx, s.hash "
    'FROM unnest($1::int[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS q(level, lo, hi, pos) '
    "CROSS JOIN LATERAL ("
    " SELECT leaf_index AS idx, leaf_hash AS hash FROM leaves "
    " WHERE q.level = 0 AND leaf_index >= q.lo AND leaf_index < q.hi "
    " UNION ALL SELECT idx, hash FROM log_nodes "
    " WHERE q.level <> 0 AND level = q.level AND idx >= q.lo AND idx < q.hi"
    ") s ORDER BY q.pos, s.idx"
)
# Stored readings (and erased places) sharing (device, seq) or (device, meter, end) with a
# batch: (device, seq, meter, end, leaf id, erased, the leaf's stored data on a (device, seq) hit).
_BY_SEQ = "(SELECT DISTINCT * FROM unnest($1::text[], $2::bigint[])) AS k(device, seq)"
_BY_SLOT = ('(SELECT DISTINCT * FROM unnest($1::text[], $3::text[], $4::bigint[])) '
            'AS k(device, meter, "end")')
_EXISTING_SQL = (
    'SELECT r.device, r.seq, r.meter, r."end", r.leaf_id, false, l.data FROM readings r '
    f"JOIN {_BY_SEQ} ON r.device = k.device AND r.seq = k.seq JOIN leaves l ON l.id = r.leaf_id "
    'UNION ALL SELECT r.device, r.seq, r.meter, r."end", r.leaf_id, false, NULL FROM readings r '
    f'JOIN {_BY_SLOT} ON r.device = k.device AND r.meter = k.meter AND r."end" = k."end" '
    'UNION ALL SELECT e.device, e.seq, e.meter, e."end", e.leaf_id, true, NULL '
    f"FROM erased_readings e JOIN {_BY_SEQ} ON e.device = k.device AND e.seq = k.seq "
    'UNION ALL SELECT e.device, e.seq, e.meter, e."end", e.leaf_id, true, NULL '
    f"FROM erased_readings e JOIN {_BY_SLOT} "
    'ON e.device = k.device AND e.meter = k.meter AND e."end" = k."end"'
)
# A device's readings ending in [$2, $3): one range scan of the unique (device, meter, end) index
# per meter, the meters found by skipping through that index (a device has a few), merged.
_READINGS_SQL = (
    "WITH RECURSIVE meters(meter) AS ("
    " SELECT min(meter) FROM readings WHERE device = $1"
    " UNION ALL SELECT (SELECT min(meter) FROM readings WHERE device = $1 AND meter > m.meter)"
    " FROM meters m WHERE m.meter IS NOT NULL) "
    "SELECT x.* FROM meters CROSS JOIN LATERAL ("
    f" SELECT {READING_COLUMNS} FROM readings r JOIN leaves l ON l.id = r.leaf_id"
    ' WHERE r.device = $1 AND r.meter = meters.meter AND r."end" >= $2 AND r."end" < $3'
    ' ORDER BY r."end" LIMIT $4) x '
    'ORDER BY x."end", x.seq LIMIT $4'
)
_AUDIT_TABLES = {"leaves", "readings", "log_nodes", "checkpoints", "batches", "device_keys"}


class _LostRace(Exception):
    """A concurrent commit stored a place this transaction meant to store: retry it."""


def _text(value: str) -> str:
    """PostgreSQL TEXT holds neither NUL nor lone surrogates: escape them (rejection details
    and gateway-supplied strings are evidence, never worth losing a batch over)."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _rows_affected(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``INSERT 0 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def _lock(conn: asyncpg.Connection, lock_class: int, *, shared: bool = False) -> None:
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {function}($1, hashtext(current_schema()))", lock_class)


async def _strata_ranges(conn: asyncpg.Connection,
                         ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]:
    found: list[list[bytes]] = [[] for _ in ranges]
    if not ranges:
        return found
    rows = await conn.fetch(_STRATA_SQL, [r[0] for r in ranges], [r[1] for r in ranges],
                            [r[2] for r in ranges])
    for position, _, value in rows:
        found[position - 1].append(value)
    return found


class _Snapshot:
    """The strata of one connection inside one transaction (tree_state's consistent read)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]:
        return await _strata_ranges(self._conn, ranges)


class PostgresStore:
    """A small asyncpg pool on the meterchain schema; open one per component, like SqliteStore."""

    def __init__(self, pool: asyncpg.Pool, location: str) -> None:
        self._pool = pool
        self.path = location  # named like SqliteStore's, for messages
        self._claim: asyncpg.Connection | None = None

    @classmethod
    async def open(cls, location: str, *, min_size: int = 1, max_size: int = 4,
                   command_timeout: float = 60.0) -> PostgresStore:
        """Connect to ``location`` (``postgresql://user@host:port/db[?search_path=...]``) and
        migrate the schema the connections see first on their search path."""
        try:
            pool = await asyncpg.create_pool(location, min_size=min_size, max_size=max_size,
                                             command_timeout=command_timeout)
        except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError,
                TimeoutError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}",
                             location=_redacted(location)) from None
        store = cls(pool, _redacted(location))
        try:
            await store._migrate()
        except asyncpg.PostgresError as exc:
            await pool.close()
            raise StoreError(f"cannot migrate the PostgreSQL schema: {exc}",
                             location=store.path) from None
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        if self._claim is not None:
            claim, self._claim = self._claim, None
            try:  # a pooled session outlives the release: end the claim first
                await claim.execute("SELECT pg_advisory_unlock_all()")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("store: sealer claim not released (%s); its session ends with the "
                            "pool", exc)
            await self._pool.release(claim)
        await self._pool.close()

    @property
    def connection(self) -> NoReturn:
        """The SQLite-only table modules (``backend/store/tables.py`` and the concepts'
        ``tables.py``) take ``store.connection``: refuse them here by name rather than fail on
        a missing attribute."""
        raise StoreError(SQLITE_ONLY, location=self.path)

    async def claim_sealer(self) -> None:
        """Become this log's one sealer until :meth:`close`: a session advisory lock on a
        connection of this pool. PostgreSQL drops it with the session, so a sealer that died
        (even SIGKILL) leaves no stale claim. Raises :class:`StoreError` naming the holder."""
        if self._claim is not None:
            return
        conn = await self._pool.acquire()
        try:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))",
                                   _SEALER_CLAIM):
                self._claim = conn
                return
            holder = await conn.fetchval(
                "SELECT string_agg(format('pid %s from %s', a.pid, "
                "coalesce(host(a.client_addr), 'local socket')), ', ') "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
                "AND l.classid = $1::bigint::oid "
                "AND l.objid = (hashtext(current_schema())::bigint & 4294967295)::oid",
                _SEALER_CLAIM)
        except BaseException:
            await self._pool.release(conn)
            raise
        await self._pool.release(conn)
        raise StoreError(
            f"another sealer already runs on this log (PostgreSQL session {holder or 'unknown'}); "
            "exactly one sealer may extend a log: stop it, or run this process without the "
            "sealer role (e.g. --role ingest)", location=self.path)

    # ------------------------------------------------------------------ schema

    async def _migrate(self) -> None:
        """Apply the missing migrations, each in one transaction with its version bump; an
        advisory lock keeps processes starting together from applying one twice."""
        async with self._pool.acquire() as conn:
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise StoreError("no schema on the search path exists; create it first",
                                 location=self.path)
            async with conn.transaction():
                await _lock(conn, _MIGRATE_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            while True:
                async with conn.transaction():
                    await _lock(conn, _MIGRATE_LOCK)
                    version = int(await conn.fetchval(
                        "SELECT coalesce(max(version), 0) FROM schema_version"))
                    if version > SCHEMA_VERSION:
                        raise StoreError(
                            f"database schema {version} is newer than this meterchain "
                            f"({SCHEMA_VERSION}); upgrade meterchain",
                            location=self.path, schema=schema)
                    if version == SCHEMA_VERSION:
                        return
                    for statement in MIGRATIONS[version]:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_version VALUES ($1)", version + 1)
                log.info("store: PostgreSQL schema %s migrated to version %d", schema, version + 1)

    async def schema_version(self) -> int:
        return int(await self._pool.fetchval(
            "SELECT coalesce(max(version), 0) FROM schema_version"))

    async def _write(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, what: str) -> T:
        """Run ``work(connection)`` in one READ COMMITTED transaction, again (from the start) when
        it lost a race; :class:`StoreError` once :data:`ATTEMPTS` are spent."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await work(conn)
            except (_LostRace, asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
                if attempt == ATTEMPTS:
                    raise StoreError(f"{what}: still losing to concurrent writers after "
                                     f"{ATTEMPTS} attempts ({exc})", location=self.path) from None
                log.info("store: %s lost a race (%s); attempt %d", what, type(exc).__name__,
                         attempt + 1)
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- registry

    async def key_rows(self, after_leaf_id: int = 0, device: str | None = None) -> list[KeyRow]:
        """Device leaves in log order, optionally only newer than ``after_leaf_id``."""
        return await self._key_rows(self._pool, after_leaf_id, device)

    @staticmethod
    async def _key_rows(conn: asyncpg.Connection | asyncpg.Pool, after_leaf_id: int,
                        device: str | None) -> list[KeyRow]:
        rows = await conn.fetch(
            "SELECT leaf_id, device, event, public_key, kid, valid_from, time FROM device_keys "
            "WHERE leaf_id > $1 AND ($2::text IS NULL OR device = $2) ORDER BY leaf_id",
            after_leaf_id, device)
        return [KeyRow(*row) for row in rows]

    async def key_version(self) -> int:
        """The newest device leaf's id: changes whenever a key is enrolled, rotated or revoked."""
        return int(await self._pool.fetchval("SELECT coalesce(max(leaf_id), 0) FROM device_keys"))

    async def append_device_leaf(
        self, device: str, build: Callable[[list[KeyRow], int], DeviceLeaf]
    ) -> DeviceLeaf:
        """Append the device leaf ``build(current key rows, highest committed seq)`` returns (it
        raises to refuse), in one transaction with the state it was built from. The key lock is
        exclusive: no batch commits meanwhile, and every batch after sees the new key version."""

        async def work(conn: asyncpg.Connection) -> DeviceLeaf:
            await _lock(conn, _KEYS_LOCK)
            rows = await self._key_rows(conn, 0, device)
            highest = int(await conn.fetchval(
                "SELECT coalesce(max(seq), 0) FROM readings WHERE device = $1", device))
            leaf = build(rows, highest)
            data = leaf.to_cbor()
            await conn.execute("INSERT INTO devices (device, created) VALUES ($1, $2) "
                               "ON CONFLICT (device) DO NOTHING", device, leaf.time)
            leaf_id = await conn.fetchval(
                "INSERT INTO leaves (kind, data, leaf_hash, received_at) "
                "VALUES ('device', $1, $2, $3) RETURNING id",
                pack_leaf_data(data), leaf_hash(data), leaf.time)
            await conn.execute(
                "INSERT INTO device_keys VALUES ($1, $2, $3, $4, $5, $6, $7)",
                leaf_id, device, leaf.event.value, leaf.public_key_der, leaf.key_id,
                leaf.valid_from, leaf.time)
            return leaf

        return await self._write(work, what="device leaf")

    async def devices(self) -> list[tuple[str, int]]:
        rows = await self._pool.fetch("SELECT device, created FROM devices ORDER BY device")
        return [(r[0], r[1]) for r in rows]

    # ----------------------------------------------------------- ingest (concurrent writers)

    async def commit_batch(
        self,
        readings: Sequence[VerifiedReading],
        rejections: Sequence[RejectionRecord],
        acks: Mapping[str, int],
        key_version: int,
    ) -> CommitResult:
        """Store a batch as :meth:`SqliteStore.commit_batch` does (outcomes by
        :func:`~meterchain.backend.store.dedupe.plan_batch`; conflicts kept as evidence;
        rejections and forward-only ``acks`` in the same transaction; :class:`StaleKeys`, with
        nothing written, if device keys changed since ``key_version``), with any number of
        concurrent committers: a place another commit took meanwhile makes this one start over.
        """

        async def work(conn: asyncpg.Connection) -> CommitResult:
            await _lock(conn, _KEYS_LOCK, shared=True)
            version = await conn.fetchval("SELECT coalesce(max(leaf_id), 0) FROM device_keys")
            if version != key_version:
                raise StaleKeys()
            plan = plan_batch(readings, await self._existing(conn, readings))
            fresh = plan.fresh
            ids: list[int] = []
            if fresh:
                ids = sorted(r[0] for r in await conn.fetch(
                    "SELECT nextval(pg_get_serial_sequence('leaves', 'id')) "
                    "FROM generate_series(1, $1)", len(fresh)))
                await conn.execute(
                    "INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                    "OVERRIDING SYSTEM VALUE SELECT id, 'reading', data, hash, at "
                    "FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bigint[]) "
                    "AS t(id, data, hash, at)",
                    ids, [r.stored for r in fresh], [r.leaf_hash for r in fresh],
                    [r.received_at for r in fresh])
                # (device, seq) order: concurrent batches take the unique entries in one order.
                order = sorted(range(len(fresh)), key=lambda i: (fresh[i].device, fresh[i].seq))
                inserted = _rows_affected(await conn.execute(
                    'INSERT INTO readings (leaf_id, device, seq, meter, start, "end", import_wh, '
                    "export_wh) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], "
                    "$4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    *_columns([(ids[i], fresh[i].device, fresh[i].seq, fresh[i].meter,
                                fresh[i].start, fresh[i].end, fresh[i].import_wh,
                                fresh[i].export_wh) for i in order], 8)))
                if inserted != len(fresh):
                    raise _LostRace(f"{len(fresh) - inserted} places taken meanwhile")
            if plan.conflicting:
                await conn.executemany(
                    "INSERT INTO conflicts (device, seq, message, kept_leaf_id, time) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    [(r.device, r.seq, r.message, kept if kept > 0 else ids[-kept], r.received_at)
                     for r, kept in plan.conflicting])
            await self._insert_rejections(conn, [*rejections, *plan.conflicts])
            if acks:
                await conn.executemany(
                    "INSERT INTO ack_state (device, upto, time) "
                    "VALUES ($1, $2, extract(epoch FROM now())::bigint) "
                    "ON CONFLICT (device) DO UPDATE SET "
                    "upto = GREATEST(ack_state.upto, excluded.upto), time = excluded.time",
                    list(acks.items()))
            return CommitResult(plan.outcomes, plan.conflicts)

        return await self._write(work, what="commit")

    @staticmethod
    async def _existing(conn: asyncpg.Connection, readings: Sequence[VerifiedReading]
                        ) -> dict[PlaceKey, Place]:
        """Stored readings that share (device, seq) or (device, meter, end) with the batch, in
        one query; a (device, seq) hit's digest comes from its leaf's message (the rare resend
        path). A message that cannot be read keeps digest None: the resend is a conflict."""
        found: dict[PlaceKey, Place] = {}
        if not readings:
            return found
        places: dict[int, Place] = {}
        for device, seq, meter, end, leaf_id, erased, stored in await conn.fetch(
            _EXISTING_SQL, [r.device for r in readings], [r.seq for r in readings],
            [r.meter for r in readings], [r.end for r in readings],
        ):
            place = places.setdefault(leaf_id, Place(leaf_id, seq, erased))
            if stored is not None and place.digest is None:
                try:
                    reading_bytes = parse_message(unpack_leaf_data(stored, leaf_id)).reading_bytes
                    place.digest = hashlib.sha256(reading_bytes).digest()
                except MeterchainError as exc:
                    log.error("event=stored_message_unreadable leaf_id=%d error=%s", leaf_id,
                              exc.diagnostics())
            for key in place_keys(device, seq, meter, end):
                found[key] = place
        return found

    @staticmethod
    async def _insert_rejections(conn: asyncpg.Connection,
                                 rejections: Iterable[RejectionRecord]) -> None:
        rejections = list(rejections)
        rows = [(None if x.device is None else _text(x.device), x.seq, _text(x.reason),
                 _text(x.detail[:500]), True, x.time) for x in rejections if x.permanent]
        if rows:
            await conn.executemany(
                "INSERT INTO rejections (device, seq, reason, detail, permanent, time) "
                "VALUES ($1, $2, $3, $4, $5, $6)", rows)
        junk = aggregate_junk(rejections)
        if junk:  # sorted: concurrent workers take the rows' locks in one order
            await conn.executemany(
                "INSERT INTO rejection_minutes (device, reason, minute, count, detail) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device, reason, minute) DO UPDATE SET "
                "count = rejection_minutes.count + excluded.count, detail = excluded.detail",
                [(_text(d), _text(r), m, count, _text(detail))
                 for (d, r, m), (count, detail) in sorted(junk.items())])
            newest = max(minute for _, _, minute in junk)
            await conn.execute("DELETE FROM rejection_minutes WHERE minute < $1",
                               newest - REJECTION_RETENTION_SECONDS)

    async def record_rejections(self, rejections: Iterable[RejectionRecord]) -> None:
        rejections = list(rejections)
        if not rejections:
            return

        async def work(conn: asyncpg.Connection) -> None:
            await self._insert_rejections(conn, rejections)

        await self._write(work, what="rejections")

    async def ack_state(self, device: str) -> AckState:
        """The stored ``upto`` of a device, the seqs done above it and its recent rejections."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                  readonly=True):
            upto = int(await conn.fetchval(
                "SELECT coalesce(max(upto), 0) FROM ack_state WHERE device = $1", device))
            above = [r[0] for r in await conn.fetch(
                "SELECT seq FROM readings WHERE device = $1 AND seq > $2 "
                "UNION SELECT seq FROM erased_readings WHERE device = $1 AND seq > $2 "
                "UNION SELECT seq FROM rejections WHERE device = $1 AND permanent AND seq > $2",
                device, upto)]
            recent = await conn.fetch(
                "SELECT seq, reason, detail FROM rejections WHERE device = $1 AND permanent "
                "ORDER BY id DESC LIMIT $2", device, RECENT_REJECTIONS)
            gaps = [(r[0], r[1]) for r in await conn.fetch(
                "SELECT first, last FROM declared_gaps WHERE device = $1 ORDER BY leaf_id", device)]
        return AckState.of(upto, above, recent, gaps)

    async def commit_gaps(self, gaps: Sequence[VerifiedGap]) -> int:
        """As :meth:`SqliteStore.commit_gaps`; a range two workers declare at once is kept once."""
        if not gaps:
            return 0

        async def work(conn: asyncpg.Connection) -> int:
            fresh = 0
            for gap in gaps:
                if await conn.fetchval(
                    "SELECT 1 FROM declared_gaps WHERE device = $1 AND first = $2 AND last = $3",
                    gap.device, gap.first, gap.last):
                    continue
                leaf_id = await conn.fetchval(
                    "INSERT INTO leaves (kind, data, leaf_hash, received_at) "
                    "VALUES ('gap', $1, $2, $3) RETURNING id",
                    gap.message, gap.leaf_hash, gap.received_at)
                inserted = _rows_affected(await conn.execute(
                    "INSERT INTO declared_gaps (device, first, last, leaf_id, time) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    gap.device, gap.first, gap.last, leaf_id, gap.received_at))
                if not inserted:
                    raise _LostRace("a gap declared meanwhile")
                fresh += 1
            return fresh

        return await self._write(work, what="gaps")

    async def append_control_leaf(self, data: bytes, received_at: int) -> int:
        """Log a control-key leaf (contract/control.py); returns its leaf id."""

        async def work(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(
                "INSERT INTO leaves (kind, data, leaf_hash, received_at) "
                "VALUES ('control', $1, $2, $3) RETURNING id", data, leaf_hash(data), received_at))

        return await self._write(work, what="control leaf")

    async def control_leaves(self) -> list[bytes]:
        """Every control-key leaf's data, in log order."""
        rows = await self._pool.fetch("SELECT data FROM leaves WHERE kind = 'control' ORDER BY id")
        return [bytes(r[0]) for r in rows]

    async def acked_devices(self) -> list[str]:
        return [r[0] for r in await self._pool.fetch("SELECT device FROM ack_state ORDER BY device")]

    async def rejection_counts(self) -> dict[str, int]:
        """Rejections by reason: permanent ones and the kept per-minute counts of the rest."""
        rows = await self._pool.fetch(
            "SELECT reason, sum(n)::bigint FROM (SELECT reason, count(*) AS n FROM rejections "
            "GROUP BY reason UNION ALL SELECT reason, sum(count) FROM rejection_minutes "
            "GROUP BY reason) t GROUP BY reason")
        return {r[0]: r[1] for r in rows}

    async def rejection_minutes(self, device: str | None = None
                                ) -> list[tuple[str, str, int, int, str]]:
        """As :meth:`SqliteStore.rejection_minutes`."""
        rows = await self._pool.fetch(
            "SELECT device, reason, minute, count, detail FROM rejection_minutes "
            "WHERE $1::text IS NULL OR device = $1 ORDER BY minute, device, reason", device)
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def conflicts(self, device: str) -> list[tuple[int, bytes, int]]:
        rows = await self._pool.fetch(
            "SELECT seq, message, kept_leaf_id FROM conflicts WHERE device = $1 ORDER BY id", device)
        return [(r[0], r[1], r[2]) for r in rows]

    async def commit_side(self, ocmf: Sequence[AcceptedOcmf],
                          statuses: Sequence[AcceptedStatus]) -> SideCommit:
        """Keep verified OCMF records verbatim (first bytes win, whoever commits first) and the
        newest status per gateway, in one transaction (as ``SqliteStore.commit_side``)."""

        async def work(conn: asyncpg.Connection) -> SideCommit:
            stored = duplicates = 0
            conflicts: list[tuple[str, int]] = []
            for rec in ocmf:
                status = await conn.execute(
                    'INSERT INTO ocmf_records (device, seq, meter, "end", record, received_at) '
                    "VALUES ($1, $2, $3, $4, $5, extract(epoch FROM now())::bigint) "
                    "ON CONFLICT (device, seq) DO NOTHING",
                    rec.device, rec.seq, _text(rec.meter), rec.end, rec.record)
                if _rows_affected(status):
                    stored += 1
                    continue
                kept = await conn.fetchval(
                    "SELECT record FROM ocmf_records WHERE device = $1 AND seq = $2",
                    rec.device, rec.seq)
                if kept == rec.record:
                    duplicates += 1
                else:
                    conflicts.append((rec.device, rec.seq))
            for accepted in statuses:
                s = accepted.status
                await conn.execute(
                    "INSERT INTO gateway_status (device, last_seen, sent, firmware, uptime, "
                    "outbox_depth, quarantined, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen, "
                    "sent = excluded.sent, firmware = excluded.firmware, uptime = excluded.uptime, "
                    "outbox_depth = excluded.outbox_depth, quarantined = excluded.quarantined, "
                    "message = excluded.message WHERE excluded.sent >= gateway_status.sent",
                    s.device, accepted.received, s.time, _text(s.firmware), s.uptime,
                    s.outbox_depth, s.quarantined, accepted.message)
                if s.meters:
                    await conn.executemany(
                        "INSERT INTO gateway_meters (device, meter, last_read, drift) "
                        "VALUES ($1, $2, $3, $4) ON CONFLICT (device, meter) DO UPDATE SET "
                        "last_read = coalesce(excluded.last_read, gateway_meters.last_read), "
                        "drift = coalesce(excluded.drift, gateway_meters.drift)",
                        [(s.device, _text(m.meter), m.last_read, m.drift) for m in s.meters])
            return SideCommit(stored, duplicates, conflicts, len(statuses))

        return await self._write(work, what="OCMF and status")

    # ------------------------------------------------------------- sealing (one log lock)

    async def tree_state(self) -> TreeState:
        """The sealed tree's size and peaks, read in one snapshot."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                  readonly=True):
            row = await conn.fetchrow(
                "SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1")
            size = int(row["size"]) if row else 0
            peaks = []
            if size:
                ids = peak_ids(size)
                try:  # uncached: a restart must see what is on disk
                    fetched = await NodeReader(_Snapshot(conn), cached_groups=0).hashes(ids, size)
                except MeterchainError as exc:
                    raise StoreError(f"a peak of the sealed tree cannot be read: {exc}",
                                     size=size) from None
                peaks = [fetched[n] for n in ids]
            header = await conn.fetchval("SELECT header FROM batches ORDER BY idx DESC LIMIT 1")
        return TreeState(size, tuple(peaks), row["size"] if row else None,
                         row["root"] if row else None, header)

    async def pending_leaves(self, limit: int) -> list[tuple[int, bytes]]:
        """Unsealed leaves in id order: (leaf id, leaf hash). A commit still in flight may hold
        a lower id than one listed here; it is sealed in a later batch (indices stay dense)."""
        rows = await self._pool.fetch(
            "SELECT id, leaf_hash FROM leaves WHERE leaf_index IS NULL ORDER BY id LIMIT $1", limit)
        return [(r[0], r[1]) for r in rows]

    async def pending_count(self) -> int:
        return int(await self._pool.fetchval(
            "SELECT count(*) FROM leaves WHERE leaf_index IS NULL"))

    async def seal(self, seal: Seal, between: Callable[[str], None] | None = None) -> None:
        """Write a seal whole or not at all; ``between(step)`` is a test seam for crashes. The
        log lock makes a second sealer wait, then find the tree grown and refuse."""
        step = between or (lambda _: None)

        async def work(conn: asyncpg.Connection) -> None:
            await _lock(conn, _LOG_LOCK)
            size = int(await conn.fetchval("SELECT coalesce(max(size), 0) FROM checkpoints"))
            if size != seal.old_size:
                raise StoreError("the tree grew since this seal was prepared",
                                 expected=seal.old_size, found=size)
            ids = list(seal.leaf_ids)
            updated = _rows_affected(await conn.execute(
                "UPDATE leaves l SET leaf_index = v.idx "
                "FROM unnest($1::bigint[], $2::bigint[]) AS v(id, idx) "
                "WHERE l.id = v.id AND l.leaf_index IS NULL",
                ids, list(range(seal.old_size, seal.old_size + len(ids)))))
            if updated != len(ids):
                raise StoreError("a leaf of this seal is missing or sealed already",
                                 expected=len(ids), updated=updated)
            step("leaves")
            if seal.nodes:
                await conn.execute(
                    "INSERT INTO log_nodes (level, idx, hash) "
                    "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[])",
                    *_columns(seal.nodes, 3))
            step("nodes")
            await conn.execute("INSERT INTO checkpoints VALUES ($1, $2, $3, $4)",
                               seal.size, seal.root, seal.note, seal.sealed)
            step("checkpoint")
            await conn.execute("INSERT INTO batches VALUES ($1, $2, $3, $4, $5, $6)",
                               seal.batch_index, seal.old_size, seal.size, seal.root, seal.sealed,
                               seal.header)
            step("batch")

        await self._write(work, what="seal")

    # ------------------------------------------------------------------- reads

    async def nodes(self, ids: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored node hashes by (level, index), in one query."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        rows = await self._pool.fetch(
            "SELECT n.level, n.idx, n.hash FROM log_nodes n "
            "JOIN unnest($1::int[], $2::bigint[]) AS k(level, idx) "
            "ON n.level = k.level AND n.idx = k.idx", *_columns(ids, 2))
        return {(r[0], r[1]): r[2] for r in rows}

    # ------------------------------------------- strata: the stored levels (backend/log/nodes.py)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Sealed leaf hashes, index in [start, end): the level-0 case of strata_ranges."""
        (hashes,) = await self.strata_ranges([(0, start, end)])
        return hashes

    async def node_range(self, level: int, start: int, end: int) -> list[bytes]:
        """Stored nodes of one level, index in [start, end): one range of strata_ranges."""
        (hashes,) = await self.strata_ranges([(level, start, end)])
        return hashes

    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]:
        """Stored hashes for each (level, start, end), in ONE query: level 0 is the sealed
        leaves' hashes, other levels ``log_nodes``. A proof costs one round trip."""
        async with self._pool.acquire() as conn:
            return await _strata_ranges(conn, ranges)

    async def strata_layout(self) -> int:
        """The stride of the stored levels (``log_meta``; backend/log/backfill.py)."""
        value = await self._pool.fetchval("SELECT value FROM log_meta WHERE key = 'stride'")
        if value is None:
            raise StoreError("log_meta has no 'stride': the schema is damaged", location=self.path)
        return int(value)

    async def stored_end(self, level: int) -> int:
        """One past the highest index stored at ``level`` of ``log_nodes`` (0 if none)."""
        return int(await self._pool.fetchval(
            "SELECT coalesce(max(idx) + 1, 0) FROM log_nodes WHERE level = $1", level))

    async def backfill_nodes(self, nodes: Sequence[tuple[int, int, bytes]],
                             layout: int | None = None) -> None:
        """Store derived nodes in one transaction; a node already there is kept. With
        ``layout``, record it in the same transaction."""

        async def work(conn: asyncpg.Connection) -> None:
            await _lock(conn, _LOG_LOCK)
            if nodes:
                await conn.execute(
                    "INSERT INTO log_nodes (level, idx, hash) "
                    "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[]) "
                    "ON CONFLICT DO NOTHING", *_columns(nodes, 3))
            if layout is not None:
                await conn.execute("UPDATE log_meta SET value = $1 WHERE key = 'stride'", layout)

        await self._write(work, what="backfill")

    async def latest_checkpoint(self) -> CheckpointRow | None:
        row = await self._pool.fetchrow(
            "SELECT size, root, note, time FROM checkpoints ORDER BY size DESC LIMIT 1")
        return CheckpointRow(*row) if row else None

    async def checkpoint(self, size: int) -> CheckpointRow | None:
        row = await self._pool.fetchrow(
            "SELECT size, root, note, time FROM checkpoints WHERE size = $1", size)
        return CheckpointRow(*row) if row else None

    async def add_cosignatures(self, size: int, note: str) -> bool:
        """Store checkpoint ``size``'s note with witness cosignatures appended
        (backend/log/cosigning.py); only a note that extends the stored one is taken."""

        async def work(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                "UPDATE checkpoints SET note = $1 WHERE size = $2 AND left($1, length(note)) = note",
                note, size)
            return bool(status == "UPDATE 1")

        return await self._write(work, what="cosignatures")

    async def reading(self, device: str, seq: int) -> ReadingRow | None:
        row = await self._pool.fetchrow(
            f"SELECT {READING_COLUMNS} FROM readings r JOIN leaves l ON l.id = r.leaf_id "
            "WHERE r.device = $1 AND r.seq = $2", device, seq)
        return reading_row(row) if row else None

    async def readings(self, device: str, start: int, end: int, limit: int) -> list[ReadingRow]:
        """Readings of a device whose interval ends in [start, end), oldest first (ties by seq)."""
        return [reading_row(r) for r in await self._pool.fetch(
            _READINGS_SQL, device, start, end, limit)]

    async def newest_readings(self, start: int, end: int, limit: int) -> list[ReadingRow]:
        """Each device's newest reading among the sealed leaves [start, end), in log order."""
        return [reading_row(r) for r in await self._pool.fetch(NEWEST_READINGS_SQL, start, end, limit)]

    async def reading_count(self, device: str | None = None) -> int:
        return int(await self._pool.fetchval(
            "SELECT count(*) FROM readings WHERE $1::text IS NULL OR device = $1", device))

    async def device_leaves(self, device: str) -> list[LeafRow]:
        """Every device leaf of ``device`` in log order, sealed or not."""
        rows = await self._pool.fetch(
            "SELECT l.id, l.kind, l.data, l.leaf_hash, l.leaf_index FROM device_keys k "
            "JOIN leaves l ON l.id = k.leaf_id WHERE k.device = $1 ORDER BY l.id", device)
        return [LeafRow(r[0], r[1], unpack_leaf_data(r[2], r[0]), r[3], r[4]) for r in rows]

    async def batches(self, start: int, limit: int) -> list[BatchRow]:
        rows = await self._pool.fetch(
            "SELECT idx, first, size, root, sealed, header FROM batches WHERE idx >= $1 "
            "ORDER BY idx LIMIT $2", start, limit)
        return [BatchRow(*r) for r in rows]

    async def last_batch_index(self) -> int | None:
        """The index of the newest sealed batch, None before the first seal."""
        value = await self._pool.fetchval("SELECT max(idx) FROM batches")
        return None if value is None else int(value)

    # ------------------------------------------------------------------ audit

    async def keyed_device_leaves(self) -> AsyncIterator[KeyedLeaf]:
        """As :meth:`SqliteStore.keyed_device_leaves`."""
        async for row in self.iter_rows(AUDIT_DEVICE_LEAVES):
            yield KeyedLeaf(*row)

    async def stored_readings(self) -> AsyncIterator[StoredReading]:
        """As :meth:`SqliteStore.stored_readings`."""
        async for row in self.iter_rows(AUDIT_READINGS):
            yield StoredReading(*row)

    async def stored_leaves(self) -> AsyncIterator[StoredLeaf]:
        """As :meth:`SqliteStore.stored_leaves`."""
        async for leaf_id, data, hashed, index, erased in self.iter_rows(AUDIT_LEAVES):
            yield StoredLeaf(leaf_id, data, hashed, index, bool(erased))

    async def seal_sizes(self) -> set[int]:
        """The tree size of every checkpoint and every batch."""
        return {int(r[0]) for r in await self._pool.fetch(AUDIT_SEAL_SIZES)}

    async def all_checkpoints(self) -> AsyncIterator[CheckpointRow]:
        """Every checkpoint, smallest first."""
        async for row in self.iter_rows(AUDIT_CHECKPOINTS):
            yield CheckpointRow(*row)

    async def all_batches(self) -> AsyncIterator[BatchRow]:
        """Every batch, in index order."""
        async for row in self.iter_rows(AUDIT_BATCHES):
            yield BatchRow(*row)

    async def iter_rows(self, sql: str, params: Sequence[object] = (), chunk: int = 2000
                        ) -> AsyncIterator[asyncpg.Record]:
        """Stream a query's rows through a server-side cursor (``$1`` placeholders)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                  readonly=True):
            async for row in conn.cursor(sql, *params, prefetch=chunk):
                yield row

    async def count(self, table: str) -> int:
        if table not in _AUDIT_TABLES:
            raise StoreError(f"unknown table {table!r}")
        return int(await self._pool.fetchval(f"SELECT count(*) FROM {table}"))

    async def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one statement in its own transaction (tests use it to tamper; ``$1``...)."""
        await self._pool.execute(sql, *params)


def _columns(rows: Iterable[Sequence[object]], width: int) -> list[list[object]]:
    """Rows as ``width`` column lists, for ``unnest`` of array parameters."""
    columns: list[list[object]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _redacted(location: str) -> str:
    """``location`` without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(location)
    if parts.password is None:
        return location
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
