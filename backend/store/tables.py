"""The base of the SQLite-only table modules (parties, settlement, web, utility, erasure,
provisioning): they share one store's connection, read rows as lists and write in one short
``BEGIN IMMEDIATE`` transaction each, so a writer never upgrades a read lock mid-way."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from meterchain.backend.store.sqlite import SqliteStore

T = TypeVar("T")


class SqliteTables:
    """Queries over one store's connection (``store.connection`` refuses a PostgreSQL store by
    name: these tables exist in SQLite only, docs/backend.md "PostgreSQL")."""

    def __init__(self, store: SqliteStore) -> None:
        self._db = store.connection

    async def _rows(self, sql: str, params: Sequence[object] | dict[str, object] = ()
                    ) -> list[sqlite3.Row]:
        async with self._db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, params: Sequence[object] | dict[str, object] = ()
                   ) -> sqlite3.Row | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            result = await work()
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        await self._db.execute("COMMIT")
        return result
