"""Stores of both kinds for tests: SQLite in the test's folder, PostgreSQL in a fresh schema.

PostgreSQL tests use ``MC_PG_DSN`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) and skip
with the reason when it is unset, asyncpg is missing or the server does not answer. Each gets a
schema ``mc_<random>`` of its own, named by the store location's ``search_path``, dropped
afterwards: tests run in parallel and leave nothing behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from meterchain.backend.store import open_store

PG_DSN_ENV = "MC_PG_DSN"


@dataclass(frozen=True)
class StoreFactory:
    """Where a test's store lives; ``open()`` gives one more connection (or pool) to it."""

    kind: str  # "sqlite" | "postgres"
    location: str

    async def open(self):  # type: ignore[no-untyped-def]
        return await open_store(self.location)


def pg_dsn() -> str:
    """MC_PG_DSN, or skip the test saying why."""
    dsn = os.environ.get(PG_DSN_ENV, "").strip()
    if not dsn:
        pytest.skip(f"PostgreSQL tests need {PG_DSN_ENV} "
                    "(e.g. postgresql://postgres@127.0.0.1:5432/test)")
    pytest.importorskip("asyncpg", reason="PostgreSQL tests need asyncpg (pip install meterchain[pg])")
    return dsn


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose connections see ``schema`` first (asyncpg passes the parameter on)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


async def create_schema(dsn: str) -> str:
    """A fresh, empty schema on ``dsn``; skips the test if the server does not answer."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pytest.skip(f"PostgreSQL at {PG_DSN_ENV} does not answer: {exc}")
    schema = f"mc_{secrets.token_hex(6)}"
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute("SET lock_timeout = '20s'")
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_location() -> AsyncIterator[str]:
    """A store location in a fresh schema on MC_PG_DSN, dropped on exit (or skip)."""
    dsn = pg_dsn()
    schema = await create_schema(dsn)
    try:
        yield with_search_path(dsn, schema)
    finally:
        await drop_schema(dsn, schema)
