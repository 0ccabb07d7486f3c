"""The store on SQLite through aiosqlite: WAL, synchronous=FULL, explicit short transactions.

Each component (ingest, sealer, API, registry) opens its own connection: SQLite allows one writer
at a time, and a connection shared between tasks would interleave their transactions. Readers
never block the writer in WAL mode; writers wait for each other up to ``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from meterchain.backend.log.nodes import NodeReader
from meterchain.backend.log.tree import peak_ids
from meterchain.backend.store.dedupe import Place, PlaceKey, plan_batch
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
from meterchain.backend.store.schema import MIGRATIONS, SCHEMA_VERSION
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.message import parse_message

log = logging.getLogger(__name__)

#: How many permanent rejections an ack repeats (newest last).
RECENT_REJECTIONS = 64
#: A reading's columns for :func:`reading_row` (``r`` = readings, ``l`` = its leaf).
READING_COLUMNS = (
    'r.device, r.seq, r.meter, r.start, r."end", r.import_wh, r.export_wh, r.leaf_id, '
    "l.leaf_index, l.data, l.received_at"
)

#: A recursive CTE ``dm(meter)``: the meters of the device ``:device``, one seek each in the
#: unique (device, meter, end) index (a loose index scan; the last row is NULL). Queries by
#: device and time go through it: ``readings`` has no (device, end) index.
DEVICE_METERS = (
    "dm(meter) AS (SELECT min(meter) FROM readings WHERE device = :device UNION ALL "
    "SELECT (SELECT min(meter) FROM readings WHERE device = :device AND meter > dm.meter) "
    "FROM dm WHERE dm.meter IS NOT NULL)"
)


def reading_row(row: Sequence[object]) -> ReadingRow:
    """A :class:`ReadingRow` from :data:`READING_COLUMNS`, its message unpacked."""
    values = list(row[:11])
    values[9] = unpack_leaf_data(values[9], values[7])  # type: ignore[arg-type]
    return ReadingRow(*values)  # type: ignore[arg-type]


#: Each device's newest reading among the leaf indices [$1, $2), at most $3 (both stores).
NEWEST_READINGS_SQL = (
    f"SELECT {READING_COLUMNS} FROM readings r JOIN leaves l ON l.id = r.leaf_id "
    "WHERE l.leaf_index IN (SELECT max(l2.leaf_index) FROM leaves l2 "
    "JOIN readings r2 ON r2.leaf_id = l2.id WHERE l2.leaf_index >= $1 AND l2.leaf_index < $2 "
    "GROUP BY r2.device) ORDER BY l.leaf_index LIMIT $3"
)
_NEWEST_READINGS_QMARK = NEWEST_READINGS_SQL.replace("$1", "?").replace("$2", "?").replace("$3", "?")


# What audit reads (backend/log/audit.py), the same on SQLite and PostgreSQL.
AUDIT_DEVICE_LEAVES = (
    "SELECT l.id, l.data, k.device, k.event, k.public_key, k.kid, k.valid_from "
    "FROM leaves l LEFT JOIN device_keys k ON k.leaf_id = l.id "
    "WHERE l.kind = 'device' ORDER BY l.id")
AUDIT_READINGS = (
    'SELECT r.device, r.seq, r.meter, r.start, r."end", r.import_wh, r.export_wh, '
    "r.leaf_id, l.data, l.kind FROM readings r "
    "LEFT JOIN leaves l ON l.id = r.leaf_id ORDER BY r.leaf_id")
AUDIT_LEAVES = (
    "SELECT l.id, l.data, l.leaf_hash, l.leaf_index, e.leaf_id IS NOT NULL FROM leaves l "
    "LEFT JOIN erased_readings e ON e.leaf_id = l.id "
    "ORDER BY l.leaf_index IS NULL, l.leaf_index, l.id")
AUDIT_SEAL_SIZES = "SELECT size FROM checkpoints UNION SELECT size FROM batches"
AUDIT_CHECKPOINTS = "SELECT size, root, note, time FROM checkpoints ORDER BY size"
AUDIT_BATCHES = "SELECT idx, first, size, root, sealed, header FROM batches ORDER BY idx"


T = TypeVar("T")

#: Per event loop and database file, the queue of this process's writers (issue 20). In SQLite's
#: busy handler a waiting writer sleeps up to 100 ms between tries, so a writer that commits back
#: to back (ingest draining a backlog) won nearly every race and the sealer waited seconds for
#: its seal's transaction; queued here, each gets the lock in turn. Other processes still meet
#: SQLite's busy handler.
_WRITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())


def _writer_queue(path: str) -> asyncio.Lock:
    return _WRITERS.setdefault(asyncio.get_running_loop(), {}).setdefault(path, asyncio.Lock())

#: Why a PostgreSQL store cannot serve a SQLite-only feature (docs/backend.md, "PostgreSQL").
SQLITE_ONLY = ("this feature keeps its tables in SQLite (parties, access, settlement, utilities, "
               "provisioning, dashboard, erasure); PostgreSQL runs ingest, the registry, the "
               "sealer, proofs, the public log and audit (docs/backend.md, \"PostgreSQL\")")


class StoreError(MeterchainError):
    """The store refused an operation (schema too new, a seal out of order, ...)."""

    check = "store"


class SqliteStore:
    """One connection to the meterchain database; open one per component."""

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout_ms: int = 30_000) -> SqliteStore:
        """Open (creating if needed) and migrate the database at ``path``."""
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            store = cls(conn, str(path))
            await store._migrate()
        except BaseException:
            await conn.close()
            raise
        return store

    async def close(self) -> None:
        await self._conn.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        """The connection, for the SQLite-only table modules (``backend/store/tables.py``)."""
        return self._conn

    # ------------------------------------------------------------------ schema

    async def _migrate(self) -> None:
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            await self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            version = await self._scalar("SELECT max(version) FROM schema_version") or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema {version} is newer than this meterchain ({SCHEMA_VERSION}); "
                    "upgrade meterchain",
                    path=self.path,
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await self._conn.execute(statement)
                await self._conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
            await self._conn.execute("COMMIT")
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise

    async def schema_version(self) -> int:
        return int(await self._scalar("SELECT max(version) FROM schema_version") or 0)

    async def _scalar(self, sql: str, params: Sequence[object] = ()) -> Any:
        async with self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _rows(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
                    ) -> list[sqlite3.Row]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _write(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` (a coroutine factory) in one IMMEDIATE transaction, after this process's
        other writers to the same file (first come, first served: :func:`_writer_queue`)."""
        async with _writer_queue(str(self.path)):
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = await work()
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")
            return result

    # ---------------------------------------------------------------- registry

    async def key_rows(self, after_leaf_id: int = 0, device: str | None = None) -> list[KeyRow]:
        """Device leaves in log order, optionally only newer than ``after_leaf_id``."""
        sql = (
            "SELECT leaf_id, device, event, public_key, kid, valid_from, time FROM device_keys "
            "WHERE leaf_id > ?"
        )
        params: list[object] = [after_leaf_id]
        if device is not None:
            sql += " AND device = ?"
            params.append(device)
        return [KeyRow(*row) for row in await self._rows(sql + " ORDER BY leaf_id", params)]

    async def key_version(self) -> int:
        """The newest device leaf's id: changes whenever a key is enrolled, rotated or revoked."""
        return int(await self._scalar("SELECT max(leaf_id) FROM device_keys") or 0)

    async def append_device_leaf(
        self, device: str, build: Callable[[list[KeyRow], int], DeviceLeaf]
    ) -> DeviceLeaf:
        """Append the device leaf ``build(current key rows, highest committed seq)`` returns (it
        raises to refuse), in one transaction with the state it was built from."""

        async def work() -> DeviceLeaf:
            rows = await self.key_rows(device=device)
            highest = int(
                await self._scalar("SELECT max(seq) FROM readings WHERE device = ?", (device,)) or 0
            )
            leaf = build(rows, highest)
            data = leaf.to_cbor()
            await self._conn.execute(
                "INSERT OR IGNORE INTO devices (device, created) VALUES (?, ?)", (device, leaf.time)
            )
            cur = await self._conn.execute(
                "INSERT INTO leaves (kind, data, leaf_hash, received_at) VALUES ('device', ?, ?, ?)",
                (pack_leaf_data(data), leaf_hash(data), leaf.time),
            )
            await self._conn.execute(
                "INSERT INTO device_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
                (int(cur.lastrowid or 0), device, leaf.event.value, leaf.public_key_der,
                 leaf.key_id, leaf.valid_from, leaf.time),
            )
            return leaf

        return await self._write(work)

    async def devices(self) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in await self._rows("SELECT device, created FROM devices ORDER BY device")]

    # ------------------------------------------------------------------ ingest

    async def commit_batch(
        self,
        readings: Sequence[VerifiedReading],
        rejections: Sequence[RejectionRecord],
        acks: Mapping[str, int],
        key_version: int,
    ) -> CommitResult:
        """Commit verified readings idempotently and record rejections, in one transaction.

        A duplicate (same device, seq and reading bytes) is dropped; a conflict (same (device,
        seq) or (device, meter, end) with other bytes) keeps the first, records the message as
        evidence and becomes a rejection for good. ``acks`` (the new ``upto`` per device) is
        written in the same transaction. Raises :class:`StaleKeys` (nothing written) if
        device keys changed since ``key_version``.
        """

        async def work() -> CommitResult:
            if await self.key_version() != key_version:
                raise StaleKeys()
            existing = await self._existing(readings)
            await self._kept_digests(readings, existing)
            next_id = int(
                await self._scalar("SELECT seq FROM sqlite_sequence WHERE name = 'leaves'") or 0
            )
            next_id = max(next_id, int(await self._scalar("SELECT max(id) FROM leaves") or 0))
            plan = plan_batch(readings, existing)
            fresh_ids = list(range(next_id + 1, next_id + 1 + len(plan.fresh)))
            if plan.fresh:
                await self._conn.executemany(
                    "INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                    "VALUES (?, 'reading', ?, ?, ?)",
                    [(i, r.stored, r.leaf_hash, r.received_at)
                     for i, r in zip(fresh_ids, plan.fresh, strict=True)],
                )
                await self._conn.executemany(
                    'INSERT INTO readings (leaf_id, device, seq, meter, start, "end", import_wh, '
                    "export_wh) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(i, r.device, r.seq, r.meter, r.start, r.end, r.import_wh, r.export_wh)
                     for i, r in zip(fresh_ids, plan.fresh, strict=True)],
                )
            # A conflict with a reading earlier in this batch names it by -(its position).
            conflict_rows = [(r.device, r.seq, r.message, kept if kept > 0 else fresh_ids[-kept],
                              r.received_at) for r, kept in plan.conflicting]
            conflicts = plan.conflicts
            if conflict_rows:
                await self._conn.executemany(
                    "INSERT INTO conflicts (device, seq, message, kept_leaf_id, time) "
                    "VALUES (?, ?, ?, ?, ?)",
                    conflict_rows,
                )
            await self._insert_rejections([*rejections, *conflicts])
            now = int(time.time())
            if acks:
                await self._conn.executemany(
                    "INSERT INTO ack_state (device, upto, time) VALUES (?, ?, ?) "
                    "ON CONFLICT (device) DO UPDATE SET upto = max(upto, excluded.upto), "
                    "time = excluded.time",
                    [(device, value, now) for device, value in acks.items()],
                )
            return CommitResult(plan.outcomes, conflicts)

        return await self._write(work)

    async def _existing(self, readings: Sequence[VerifiedReading]
                        ) -> dict[PlaceKey, Place]:
        """Stored readings that share (device, seq) or (device, meter, end) with the batch.

        Each batch key is looked up in a unique index (the CROSS JOIN keeps the VALUES list
        outside: a row-value ``IN (VALUES ...)`` made SQLite scan the whole table)."""
        found: dict[PlaceKey, Place] = {}
        for chunk_start in range(0, len(readings), 300):
            chunk = readings[chunk_start : chunk_start + 300]
            pairs = ",".join("(?,?)" for _ in chunk)
            triples = ",".join("(?,?,?)" for _ in chunk)
            seqs = [v for r in chunk for v in (r.device, r.seq)]
            slots = [v for r in chunk for v in (r.device, r.meter, r.end)]
            parts = []
            for table, erased in (("readings", 0), ("erased_readings", 1)):
                columns = f'x.device, x.seq, x.meter, x."end", x.leaf_id, {erased}'
                parts += [
                    f"SELECT {columns} FROM (VALUES {pairs}) v CROSS JOIN {table} x "
                    "ON x.device = v.column1 AND x.seq = v.column2",
                    f"SELECT {columns} FROM (VALUES {triples}) v CROSS JOIN {table} x "
                    'ON x.device = v.column1 AND x.meter = v.column2 AND x."end" = v.column3',
                ]
            rows = await self._rows(" UNION ALL ".join(parts), seqs + slots + seqs + slots)
            for device, seq, meter, end, leaf_id, erased in rows:
                kept = Place(leaf_id, seq, bool(erased))
                found[("s", device, seq)] = kept
                found[("m", device, meter, end)] = kept
        return found

    async def _kept_digests(self, readings: Sequence[VerifiedReading],
                            existing: dict[PlaceKey, Place]) -> None:
        """Fill in the reading digest of each stored reading a batch reading shares (device, seq)
        with, from its leaf's message (the rare resend path; the table keeps no digest). A
        message that cannot be read keeps digest None: the resend then counts as a conflict."""
        kept = {k.leaf_id: k for r in readings
                if (k := existing.get(("s", r.device, r.seq))) is not None and not k.erased}
        ids = sorted(kept)
        for start in range(0, len(ids), 400):
            chunk = ids[start : start + 400]
            marks = ",".join("?" for _ in chunk)
            for leaf_id, stored in await self._rows(
                f"SELECT id, data FROM leaves WHERE id IN ({marks})", chunk
            ):
                try:
                    reading_bytes = parse_message(unpack_leaf_data(stored, leaf_id)).reading_bytes
                except MeterchainError as exc:
                    log.error("event=stored_message_unreadable leaf_id=%d error=%s", leaf_id,
                              exc.diagnostics())
                    continue
                kept[leaf_id].digest = hashlib.sha256(reading_bytes).digest()

    async def _insert_rejections(self, rejections: Sequence[RejectionRecord]) -> None:
        """Permanent rejections one row each (the ack needs their seqs); the others added to
        the per-minute counts, whose rows older than the retention go (issue 14: bounded)."""
        rows = [(x.device, x.seq, x.reason, x.detail[:500], 1, x.time)
                for x in rejections if x.permanent]
        if rows:
            await self._conn.executemany(
                "INSERT INTO rejections (device, seq, reason, detail, permanent, time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        junk = aggregate_junk(rejections)
        if junk:
            await self._conn.executemany(
                "INSERT INTO rejection_minutes (device, reason, minute, count, detail) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, reason, minute) DO UPDATE SET "
                "count = count + excluded.count, detail = excluded.detail",
                [(*key, count, detail) for key, (count, detail) in junk.items()],
            )
            newest = max(minute for _, _, minute in junk)
            await self._conn.execute("DELETE FROM rejection_minutes WHERE minute < ?",
                                     (newest - REJECTION_RETENTION_SECONDS,))

    async def record_rejections(self, rejections: Iterable[RejectionRecord]) -> None:
        rejections = list(rejections)
        if not rejections:
            return

        async def work() -> None:
            await self._insert_rejections(rejections)

        await self._write(work)

    async def ack_state(self, device: str) -> AckState:
        """The stored ``upto`` of a device, the seqs done above it and its recent rejections."""
        upto = int(await self._scalar("SELECT upto FROM ack_state WHERE device = ?", (device,)) or 0)
        above = [
            r[0]
            for r in await self._rows(
                "SELECT seq FROM readings WHERE device = ? AND seq > ? "
                "UNION SELECT seq FROM erased_readings WHERE device = ? AND seq > ? "
                "UNION SELECT seq FROM rejections WHERE device = ? AND permanent = 1 AND seq > ?",
                (device, upto, device, upto, device, upto),
            )
        ]
        recent = await self._rows(
            "SELECT seq, reason, detail FROM rejections WHERE device = ? AND permanent = 1 "
            "ORDER BY id DESC LIMIT ?",
            (device, RECENT_REJECTIONS),
        )
        gaps = [(r[0], r[1]) for r in await self._rows(
            "SELECT first, last FROM declared_gaps WHERE device = ? ORDER BY leaf_id", (device,))]
        return AckState.of(upto, above, recent, gaps)

    async def commit_gaps(self, gaps: Sequence[VerifiedGap]) -> int:
        """Log each new gap declaration as a gap leaf and record its range; the same range of
        a device declared again is a duplicate (kept once). Returns how many were new."""
        if not gaps:
            return 0

        async def work() -> int:
            fresh = 0
            for gap in gaps:
                if await self._scalar(
                    "SELECT 1 FROM declared_gaps WHERE device = ? AND first = ? AND last = ?",
                    (gap.device, gap.first, gap.last),
                ):
                    continue
                cur = await self._conn.execute(
                    "INSERT INTO leaves (kind, data, leaf_hash, received_at) "
                    "VALUES ('gap', ?, ?, ?)", (gap.message, gap.leaf_hash, gap.received_at))
                await self._conn.execute(
                    "INSERT INTO declared_gaps (device, first, last, leaf_id, time) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (gap.device, gap.first, gap.last, cur.lastrowid, gap.received_at))
                fresh += 1
            return fresh

        return await self._write(work)

    async def append_control_leaf(self, data: bytes, received_at: int) -> int:
        """Log a control-key leaf (contract/control.py); returns its leaf id."""

        async def work() -> int:
            cur = await self._conn.execute(
                "INSERT INTO leaves (kind, data, leaf_hash, received_at) "
                "VALUES ('control', ?, ?, ?)", (data, leaf_hash(data), received_at))
            return int(cur.lastrowid or 0)

        return await self._write(work)

    async def control_leaves(self) -> list[bytes]:
        """Every control-key leaf's data, in log order."""
        return [bytes(r[0]) for r in await self._rows(
            "SELECT data FROM leaves WHERE kind = 'control' ORDER BY id")]

    async def acked_devices(self) -> list[str]:
        return [r[0] for r in await self._rows("SELECT device FROM ack_state ORDER BY device")]

    async def rejection_counts(self) -> dict[str, int]:
        """Rejections by reason: permanent ones and the kept per-minute counts of the rest."""
        return {r[0]: r[1] for r in await self._rows(
            "SELECT reason, sum(n) FROM (SELECT reason, count(*) AS n FROM rejections "
            "GROUP BY reason UNION ALL SELECT reason, sum(count) FROM rejection_minutes "
            "GROUP BY reason) GROUP BY reason")}

    async def rejection_minutes(self, device: str | None = None
                                ) -> list[tuple[str, str, int, int, str]]:
        """The per-minute counts of unauthenticated rejections, (device, reason, minute, count,
        detail), oldest first; device "" is a topic that names no enrolled device."""
        where, params = ("WHERE device = ?", (device,)) if device is not None else ("", ())
        return [(r[0], r[1], r[2], r[3], r[4]) for r in await self._rows(
            f"SELECT device, reason, minute, count, detail FROM rejection_minutes {where} "
            "ORDER BY minute, device, reason", params)]

    async def conflicts(self, device: str) -> list[tuple[int, bytes, int]]:
        return [(r[0], r[1], r[2]) for r in await self._rows(
            "SELECT seq, message, kept_leaf_id FROM conflicts WHERE device = ? ORDER BY id", (device,))]

    # ------------------------------------------------------------------ sealing

    async def tree_state(self) -> TreeState:
        """The sealed tree's size and peaks, read in one snapshot."""
        await self._conn.execute("BEGIN")
        try:
            size = int(await self._scalar("SELECT max(size) FROM checkpoints") or 0)
            peaks = []
            if size:
                ids = peak_ids(size)
                try:  # uncached: a restart must see what is on disk
                    fetched = await NodeReader(self, cached_groups=0).hashes(ids, size)
                except MeterchainError as exc:
                    raise StoreError(f"a peak of the sealed tree cannot be read: {exc}",
                                     size=size) from None
                peaks = [fetched[n] for n in ids]
            row = await self._rows("SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1")
            header = await self._scalar("SELECT header FROM batches ORDER BY idx DESC LIMIT 1")
        finally:
            await self._conn.execute("COMMIT")
        return TreeState(
            size,
            tuple(peaks),
            row[0][0] if row else None,
            row[0][1] if row else None,
            header,
        )

    async def pending_leaves(self, limit: int) -> list[tuple[int, bytes]]:
        """Unsealed leaves in arrival order: (leaf id, leaf hash)."""
        return [(r[0], r[1]) for r in await self._rows(
            "SELECT id, leaf_hash FROM leaves WHERE leaf_index IS NULL ORDER BY id LIMIT ?", (limit,))]

    async def pending_count(self) -> int:
        return int(await self._scalar("SELECT count(*) FROM leaves WHERE leaf_index IS NULL") or 0)

    async def seal(self, seal: Seal, between: Callable[[str], None] | None = None) -> None:
        """Write a seal whole or not at all; ``between(step)`` is a test seam for crashes."""
        step = between or (lambda _: None)

        async def work() -> None:
            size = int(await self._scalar("SELECT max(size) FROM checkpoints") or 0)
            if size != seal.old_size:
                raise StoreError("the tree grew since this seal was prepared",
                                 expected=seal.old_size, found=size)
            ids = seal.leaf_ids
            if ids and ids[-1] - ids[0] == len(ids) - 1:  # the usual case: one range update
                cursor = await self._conn.execute(
                    "UPDATE leaves SET leaf_index = id + ? WHERE id BETWEEN ? AND ? "
                    "AND leaf_index IS NULL",
                    (seal.old_size - ids[0], ids[0], ids[-1]),
                )
            else:
                cursor = await self._conn.executemany(
                    "UPDATE leaves SET leaf_index = ? WHERE id = ? AND leaf_index IS NULL",
                    [(seal.old_size + i, leaf_id) for i, leaf_id in enumerate(ids)],
                )
            if cursor.rowcount != len(ids):
                raise StoreError("a leaf of this seal is missing or sealed already",
                                 expected=len(ids), updated=cursor.rowcount)
            step("leaves")
            await self._conn.executemany("INSERT INTO log_nodes VALUES (?, ?, ?)", seal.nodes)
            step("nodes")
            await self._conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                (seal.size, seal.root, seal.note, seal.sealed),
            )
            step("checkpoint")
            await self._conn.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                (seal.batch_index, seal.old_size, seal.size, seal.root, seal.sealed, seal.header),
            )
            step("batch")

        await self._write(work)

    # ------------------------------------------------------------------- reads

    async def nodes(self, ids: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored node hashes by (level, index), in one query per 400 ids."""
        found: dict[tuple[int, int], bytes] = {}
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), 400):
            chunk = ids[start : start + 400]
            values = ",".join("(?,?)" for _ in chunk)
            for level, idx, value in await self._rows(
                f"SELECT level, idx, hash FROM log_nodes WHERE (level, idx) IN (VALUES {values})",
                [v for pair in chunk for v in pair],
            ):
                found[(level, idx)] = value
        return found

    # --------------------------------------------------- log strata (backend.log.nodes)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Hashes of the sealed leaves with index in [start, end), in index order."""
        return (await self.strata_ranges([(0, start, end)]))[0]

    async def node_range(self, level: int, start: int, end: int) -> list[bytes]:
        """Stored node hashes at ``level`` (4, 8, 12, ...) with index in [start, end), in order."""
        return (await self.strata_ranges([(level, start, end)]))[0]

    async def strata_layout(self) -> int:
        """The stride of the stored levels (``log_meta``): 4, or 8 for a log sealed before
        stride 4 until the sealer's start-up backfill (backend/log/backfill.py) is done."""
        value = await self._scalar("SELECT value FROM log_meta WHERE key = 'stride'")
        if value is None:
            raise StoreError("log_meta has no 'stride': the schema is damaged", path=self.path)
        return int(value)

    async def stored_end(self, level: int) -> int:
        """One past the highest index stored at ``level`` of ``log_nodes`` (0 if none)."""
        return int(await self._scalar(
            "SELECT max(idx) + 1 FROM log_nodes WHERE level = ?", (level,)) or 0)

    async def backfill_nodes(self, nodes: Sequence[tuple[int, int, bytes]],
                             layout: int | None = None) -> None:
        """Store derived nodes in one transaction; a node already there is kept (a resumed
        backfill repeats at most a chunk). With ``layout``, record it in the same transaction."""
        async def work() -> None:
            await self._conn.executemany("INSERT OR IGNORE INTO log_nodes VALUES (?, ?, ?)", nodes)
            if layout is not None:
                await self._conn.execute("UPDATE log_meta SET value = ? WHERE key = 'stride'",
                                         (layout,))

        await self._write(work)

    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]:
        """Stored hashes for each (level, start, end), in ONE query: level 0 is the sealed
        leaves' hashes, other levels ``log_nodes``. A proof costs one round trip."""
        parts, params = [], []
        for position, (level, start, end) in enumerate(ranges[:200]):
            if level == 0:
                parts.append(f"SELECT {position}, leaf_index, leaf_hash FROM leaves "
                             "WHERE leaf_index >= ? AND leaf_index < ?")
                params += [start, end]
            else:
                parts.append(f"SELECT {position}, idx, hash FROM log_nodes "
                             "WHERE level = ? AND idx >= ? AND idx < ?")
                params += [level, start, end]
        found: list[list[bytes]] = [[] for _ in ranges[:200]]
        if parts:
            sql = " UNION ALL ".join(parts) + " ORDER BY 1, 2"
            for position, _, value in await self._conn.execute_fetchall(sql, params):
                found[position].append(value)
        if len(ranges) > 200:
            found += await self.strata_ranges(ranges[200:])
        return found

    async def latest_checkpoint(self) -> CheckpointRow | None:
        rows = await self._rows("SELECT size, root, note, time FROM checkpoints ORDER BY size DESC LIMIT 1")
        return CheckpointRow(*rows[0]) if rows else None

    async def checkpoint(self, size: int) -> CheckpointRow | None:
        rows = await self._rows("SELECT size, root, note, time FROM checkpoints WHERE size = ?", (size,))
        return CheckpointRow(*rows[0]) if rows else None

    async def add_cosignatures(self, size: int, note: str) -> bool:
        """Store checkpoint ``size``'s note with witness cosignatures appended
        (backend/log/cosigning.py); only a note that extends the stored one is taken."""

        async def work() -> bool:
            cur = await self._conn.execute(
                "UPDATE checkpoints SET note = ? WHERE size = ? AND substr(?, 1, length(note)) = note",
                (note, size, note))
            return cur.rowcount == 1

        return await self._write(work)

    async def reading(self, device: str, seq: int) -> ReadingRow | None:
        rows = await self._rows(
            f"SELECT {READING_COLUMNS} FROM readings r JOIN leaves l ON l.id = r.leaf_id "
            "WHERE r.device = ? AND r.seq = ?",
            (device, seq),
        )
        return reading_row(rows[0]) if rows else None

    async def readings(self, device: str, start: int, end: int, limit: int) -> list[ReadingRow]:
        """Readings of a device whose interval ends in [start, end), oldest first (ties by seq).

        One range scan of the unique (device, meter, end) index per meter of the device
        (:data:`DEVICE_METERS`), at most ``limit`` rows each, merged here: a device has a few."""
        rows: list[sqlite3.Row] = []
        for (meter,) in await self._rows(
            f"WITH RECURSIVE {DEVICE_METERS} SELECT meter FROM dm WHERE meter IS NOT NULL",
            {"device": device},
        ):
            rows += await self._rows(
                f"SELECT {READING_COLUMNS} FROM readings r JOIN leaves l ON l.id = r.leaf_id "
                'WHERE r.device = ? AND r.meter = ? AND r."end" >= ? AND r."end" < ? '
                'ORDER BY r."end" LIMIT ?',
                (device, meter, start, end, limit),
            )
        rows.sort(key=lambda r: (r[4], r[1]))
        return [reading_row(r) for r in rows[:limit]]

    async def newest_readings(self, start: int, end: int, limit: int) -> list[ReadingRow]:
        """Each device's newest reading (highest leaf index) among the sealed leaves [start,
        end), in log order, at most ``limit``: what receipts are sent for (backend/log/receipts.py)."""
        return [reading_row(r) for r in await self._rows(_NEWEST_READINGS_QMARK, (start, end, limit))]

    async def reading_count(self, device: str | None = None) -> int:
        if device is None:
            return int(await self._scalar("SELECT count(*) FROM readings") or 0)
        return int(await self._scalar("SELECT count(*) FROM readings WHERE device = ?", (device,)) or 0)

    async def device_leaves(self, device: str) -> list[LeafRow]:
        """Every device leaf of ``device`` in log order, sealed or not."""
        rows = await self._rows(
            "SELECT l.id, l.kind, l.data, l.leaf_hash, l.leaf_index FROM device_keys k "
            "JOIN leaves l ON l.id = k.leaf_id WHERE k.device = ? ORDER BY l.id",
            (device,),
        )
        return [LeafRow(r[0], r[1], unpack_leaf_data(r[2], r[0]), r[3], r[4]) for r in rows]

    async def batches(self, start: int, limit: int) -> list[BatchRow]:
        return [BatchRow(*r) for r in await self._rows(
            "SELECT idx, first, size, root, sealed, header FROM batches WHERE idx >= ? "
            "ORDER BY idx LIMIT ?",
            (start, limit),
        )]

    async def last_batch_index(self) -> int | None:
        """The index of the newest sealed batch, None before the first seal."""
        value = await self._scalar("SELECT max(idx) FROM batches")
        return None if value is None else int(value)

    # ------------------------------------------------- OCMF and gateway status (beside ingest)

    async def commit_side(self, ocmf: Sequence[AcceptedOcmf],
                          statuses: Sequence[AcceptedStatus]) -> SideCommit:
        """Keep verified OCMF records verbatim (first bytes win) and the newest status per
        gateway, in one transaction."""

        async def work() -> SideCommit:
            stored = duplicates = 0
            conflicts: list[tuple[str, int]] = []
            for rec in ocmf:
                rows = await self._rows(
                    "SELECT record FROM ocmf_records WHERE device = ? AND seq = ?",
                    (rec.device, rec.seq))
                if rows:
                    if bytes(rows[0][0]) == rec.record:
                        duplicates += 1
                    else:
                        conflicts.append((rec.device, rec.seq))
                    continue
                await self._conn.execute(
                    'INSERT INTO ocmf_records (device, seq, meter, "end", record, received_at) '
                    "VALUES (?, ?, ?, ?, ?, strftime('%s', 'now'))",
                    (rec.device, rec.seq, rec.meter, rec.end, rec.record))
                stored += 1
            for accepted in statuses:
                s = accepted.status
                await self._conn.execute(
                    "INSERT INTO gateway_status (device, last_seen, sent, firmware, uptime, "
                    "outbox_depth, quarantined, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen, "
                    "sent = excluded.sent, firmware = excluded.firmware, uptime = excluded.uptime, "
                    "outbox_depth = excluded.outbox_depth, quarantined = excluded.quarantined, "
                    "message = excluded.message WHERE excluded.sent >= gateway_status.sent",
                    (s.device, accepted.received, s.time, s.firmware, s.uptime, s.outbox_depth,
                     s.quarantined, accepted.message))
                for m in s.meters:
                    await self._conn.execute(
                        "INSERT INTO gateway_meters (device, meter, last_read, drift) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (device, meter) DO UPDATE SET "
                        "last_read = coalesce(excluded.last_read, gateway_meters.last_read), "
                        "drift = coalesce(excluded.drift, gateway_meters.drift)",
                        (s.device, m.meter, m.last_read, m.drift))
            return SideCommit(stored, duplicates, conflicts, len(statuses))

        return await self._write(work)

    # ------------------------------------------------------------------ audit

    async def keyed_device_leaves(self) -> AsyncIterator[KeyedLeaf]:
        """Every 'device' leaf in log order beside its key-registry row (backend/log/audit.py)."""
        async for row in self.iter_rows(AUDIT_DEVICE_LEAVES):
            yield KeyedLeaf(*row)

    async def stored_readings(self) -> AsyncIterator[StoredReading]:
        """Every reading row beside its leaf's data and kind, in leaf order."""
        async for row in self.iter_rows(AUDIT_READINGS):
            yield StoredReading(*row)

    async def stored_leaves(self) -> AsyncIterator[StoredLeaf]:
        """Every leaf, the sealed ones in index order first, then the pending ones."""
        async for leaf_id, data, hashed, index, erased in self.iter_rows(AUDIT_LEAVES):
            yield StoredLeaf(leaf_id, data, hashed, index, bool(erased))

    async def seal_sizes(self) -> set[int]:
        """The tree size of every checkpoint and every batch."""
        return {int(r[0]) for r in await self._rows(AUDIT_SEAL_SIZES)}

    async def all_checkpoints(self) -> AsyncIterator[CheckpointRow]:
        """Every checkpoint, smallest first."""
        async for row in self.iter_rows(AUDIT_CHECKPOINTS):
            yield CheckpointRow(*row)

    async def all_batches(self) -> AsyncIterator[BatchRow]:
        """Every batch, in index order."""
        async for row in self.iter_rows(AUDIT_BATCHES):
            yield BatchRow(*row)

    async def iter_rows(self, sql: str, params: Sequence[object] = (), chunk: int = 2000
                        ) -> AsyncIterator[sqlite3.Row]:
        async with self._conn.execute(sql, params) as cur:
            while rows := await cur.fetchmany(chunk):
                for row in rows:
                    yield row

    async def count(self, table: str) -> int:
        if table not in {"leaves", "readings", "log_nodes", "checkpoints", "batches", "device_keys"}:
            raise StoreError(f"unknown table {table!r}")
        return int(await self._scalar(f"SELECT count(*) FROM {table}") or 0)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one statement in its own transaction (tests use it to tamper)."""
        await self._conn.execute(sql, params)
