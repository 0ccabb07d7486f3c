"""The witness's state on PostgreSQL (``db = "postgresql://..."``), for an operator who already
runs one; the same rules as store.py. Atomicity: each add-checkpoint is one transaction that
first takes a transaction-scoped advisory lock on the origin (``pg_advisory_xact_lock``), so two
requests for one log — in one witness process or in several on the same database — are checked
and recorded one after the other, and the first contact (no row yet to lock) is covered too.
The commit happens before the cosignature is returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meterchain.contract.cosignature import Cosigner
from meterchain.contract.note import NoteVerifier
from meterchain.witness.protocol import AddCheckpoint, Latest, WitnessRefusal, check_transition, open_signed
from meterchain.witness.store import SchemaError, Stored

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE witness_latest (
            origin TEXT PRIMARY KEY,
            size BIGINT NOT NULL,
            root BYTEA NOT NULL,
            note TEXT NOT NULL,
            cosigned BIGINT NOT NULL
        )""",
        """CREATE TABLE witness_refused (
            id BIGSERIAL PRIMARY KEY,
            origin TEXT NOT NULL,
            old_size BIGINT NOT NULL,
            size BIGINT NOT NULL,
            root BYTEA NOT NULL,
            note TEXT NOT NULL,
            status INTEGER NOT NULL,
            reason TEXT NOT NULL,
            at BIGINT NOT NULL
        )""",
    ),
)


class PgWitnessStore:
    """One asyncpg pool; :meth:`open` migrates."""

    def __init__(self, pool: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.clock = clock

    @classmethod
    async def open(cls, dsn: str, *, clock: Callable[[], float] = time.time) -> PgWitnessStore:
        import asyncpg

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        store = cls(pool, clock=clock)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterchain-witness-schema'))")
            await conn.execute("CREATE TABLE IF NOT EXISTS witness_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT version FROM witness_schema")
            if version is None:
                await conn.execute("INSERT INTO witness_schema VALUES (0)")
                version = 0
            if version > len(MIGRATIONS):
                raise SchemaError(f"witness database schema {version} is newer than this witness "
                                  f"({len(MIGRATIONS)}); upgrade meterchain")
            for number, statements in enumerate(MIGRATIONS[version:], version + 1):
                for sql in statements:
                    await conn.execute(sql)
                await conn.execute("UPDATE witness_schema SET version = $1", number)

    async def close(self) -> None:
        await self.pool.close()

    async def latest(self, origin: str) -> Stored | None:
        row = await self.pool.fetchrow("SELECT size, root, note, cosigned FROM witness_latest WHERE origin = $1",
                                       origin)
        return Stored(row[0], bytes(row[1]), row[2], row[3]) if row else None

    async def refused(self, origin: str) -> list[tuple[int, int, bytes, int, str]]:
        rows = await self.pool.fetch("SELECT old_size, size, root, status, reason FROM witness_refused "
                                     "WHERE origin = $1 ORDER BY id", origin)
        return [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    async def add_checkpoint(self, request: AddCheckpoint, logs: Mapping[str, Sequence[NoteVerifier]],
                             cosigner: Cosigner) -> str:
        """As :meth:`WitnessStore.add_checkpoint`, in one locked transaction."""
        signed = open_signed(request, logs)
        checkpoint = signed.checkpoint
        refusal: WitnessRefusal | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", checkpoint.origin)
            row = await conn.fetchrow("SELECT size, root FROM witness_latest WHERE origin = $1", checkpoint.origin)
            try:
                check_transition(request, signed, Latest(row[0], bytes(row[1])) if row else None)
            except WitnessRefusal as refused:
                refusal = refused
                await conn.execute(
                    "INSERT INTO witness_refused (origin, old_size, size, root, note, status, reason, at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    checkpoint.origin, request.old_size, checkpoint.size, checkpoint.root, request.note,
                    refused.status, str(refused), int(self.clock()))
            if refusal is None:
                timestamp = max(int(self.clock()), 1)
                line = cosigner.cosign(signed.text, timestamp)
                note = signed.text + "\n" + "".join(signed.log_signatures) + line
                await conn.execute(
                    "INSERT INTO witness_latest (origin, size, root, note, cosigned) VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                    "note = excluded.note, cosigned = excluded.cosigned",
                    checkpoint.origin, checkpoint.size, checkpoint.root, note, timestamp)
        if refusal is not None:
            raise refusal
        return line
