"""The one place for persistence: small async protocols, SQLite or PostgreSQL behind them.

Components depend on the protocols of ``protocols.py`` (:class:`Store` is all of them), not on a
database; :func:`open_store` picks the implementation from the location: a SQLite file
(everything) or a PostgreSQL URL (the scale path: ingest, registry, sealer, proofs, tiles, audit;
docs/backend.md "PostgreSQL"). The SQLite-only features take a :class:`SqliteStore` by type and
open it with :func:`open_sqlite` or :func:`using_sqlite`, which refuse a PostgreSQL URL by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from meterchain.backend.store.protocols import (
    AuditStore,
    IngestStore,
    KeyStore,
    LogStore,
    ProofStore,
    ReadingStore,
    Store,
)
from meterchain.backend.store.records import (
    AckState,
    BatchRow,
    CheckpointRow,
    CommitResult,
    KeyRow,
    LeafRow,
    Outcome,
    ReadingRow,
    RejectionRecord,
    Seal,
    StaleKeys,
    TreeState,
    VerifiedReading,
)
from meterchain.backend.store.sqlite import SQLITE_ONLY, SqliteStore, StoreError

if TYPE_CHECKING:
    from meterchain.backend.store.postgres import PostgresStore

__all__ = [
    "AckState", "AuditStore", "BatchRow", "CheckpointRow", "CommitResult", "IngestStore",
    "KeyRow", "KeyStore", "LeafRow", "LogStore", "Outcome", "ProofStore", "ReadingRow",
    "ReadingStore", "RejectionRecord", "Seal", "SqliteStore", "StaleKeys", "Store", "StoreError",
    "TreeState", "VerifiedReading", "is_postgres", "open_postgres", "open_sqlite", "open_store",
    "using_sqlite", "using_store",
]


T = TypeVar("T")


async def open_store(location: str | Path) -> SqliteStore | PostgresStore:
    """Open the store at ``location``: a SQLite file path (``sqlite:///path`` also works) or a
    PostgreSQL URL (``postgresql://`` or ``postgres://``; needs the ``pg`` extra, asyncpg)."""
    if is_postgres(location):
        return await open_postgres(str(location))
    return await open_sqlite(location)


async def open_postgres(location: str) -> PostgresStore:
    """Open the PostgreSQL store at ``location`` (``postgresql://`` or ``postgres://``)."""
    # Imported here, deliberately: asyncpg is an optional extra (``pg``), needed only for a
    # PostgreSQL URL.
    try:
        from meterchain.backend.store.postgres import PostgresStore
    except ModuleNotFoundError as exc:
        if exc.name != "asyncpg":
            raise
        raise StoreError("PostgreSQL needs asyncpg: pip install 'meterchain[pg]'",
                         location=location.split("@")[-1]) from None
    return await PostgresStore.open(location)


async def open_sqlite(location: str | Path) -> SqliteStore:
    """Open the SQLite store at ``location`` for a feature that needs its SQLite-only tables;
    a PostgreSQL URL is refused by name."""
    text = str(location)
    if is_postgres(text):
        raise StoreError(SQLITE_ONLY, location=text.split("@")[-1])
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    return await SqliteStore.open(text)


async def using_store(location: str | Path, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store at ``location``, run ``action`` on it and close it, whatever happens
    (the one-shot commands of the CLI)."""
    store = await open_store(location)
    try:
        return await action(store)
    finally:
        await store.close()


async def using_sqlite(location: str | Path, action: Callable[[SqliteStore], Awaitable[T]]
                       ) -> T:
    """:func:`using_store` for the commands of the SQLite-only features (access, settlement,
    dashboard, provisioning); a PostgreSQL URL is refused by name."""
    store = await open_sqlite(location)
    try:
        return await action(store)
    finally:
        await store.close()


def is_postgres(location: str | Path) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return str(location).startswith(("postgresql://", "postgres://"))
