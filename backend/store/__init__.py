"""The one place for persistence: a small async interface, SQLite or PostgreSQL behind it.

Components depend on :class:`Store` (the methods below), not on a database; :func:`open_store`
picks the implementation from the location: a SQLite file (everything) or a PostgreSQL URL (the
scale path: ingest, registry, sealer, proofs, tiles; docs/backend.md "PostgreSQL").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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
from meterchain.backend.store.sqlite import SqliteStore, StoreError
from meterchain.contract.leaves import DeviceLeaf

if TYPE_CHECKING:
    from meterchain.backend.store.postgres import PostgresStore

__all__ = [
    "AckState", "BatchRow", "CheckpointRow", "CommitResult", "KeyRow", "LeafRow", "Outcome",
    "ReadingRow", "RejectionRecord", "Seal", "SqliteStore", "StaleKeys", "Store", "StoreError",
    "TreeState", "VerifiedReading", "is_postgres", "open_store", "using_store",
]


T = TypeVar("T")


class Store(Protocol):
    """What ingest, registry, sealer, API and audit need from persistence."""

    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...
    async def key_rows(self, after_leaf_id: int = 0, device: str | None = None) -> list[KeyRow]: ...
    async def key_version(self) -> int: ...
    async def append_device_leaf(
        self, device: str, build: Callable[[list[KeyRow], int], DeviceLeaf]
    ) -> DeviceLeaf: ...
    async def devices(self) -> list[tuple[str, int]]: ...
    async def commit_batch(
        self, readings: Sequence[VerifiedReading], rejections: Sequence[RejectionRecord],
        acks: Mapping[str, int], key_version: int,
    ) -> CommitResult: ...
    async def record_rejections(self, rejections: Sequence[RejectionRecord]) -> None: ...
    async def ack_state(self, device: str) -> AckState: ...
    async def acked_devices(self) -> list[str]: ...
    async def tree_state(self) -> TreeState: ...
    async def pending_leaves(self, limit: int) -> list[tuple[int, bytes]]: ...
    async def pending_count(self) -> int: ...
    async def seal(self, seal: Seal, between: Callable[[str], None] | None = None) -> None: ...
    async def nodes(self, ids: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]: ...
    async def leaf_hashes(self, start: int, end: int) -> list[bytes]: ...
    async def node_range(self, level: int, start: int, end: int) -> list[bytes]: ...
    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]: ...
    async def strata_layout(self) -> int: ...
    async def stored_end(self, level: int) -> int: ...
    async def backfill_nodes(self, nodes: Sequence[tuple[int, int, bytes]],
                             layout: int | None = None) -> None: ...
    async def latest_checkpoint(self) -> CheckpointRow | None: ...
    async def checkpoint(self, size: int) -> CheckpointRow | None: ...
    async def reading(self, device: str, seq: int) -> ReadingRow | None: ...
    async def readings(self, device: str, start: int, end: int, limit: int) -> list[ReadingRow]: ...
    async def device_leaves(self, device: str) -> list[LeafRow]: ...
    async def batches(self, start: int, limit: int) -> list[BatchRow]: ...


async def open_store(location: str | Path) -> SqliteStore | PostgresStore:
    """Open the store at ``location``: a SQLite file path (``sqlite:///path`` also works) or a
    PostgreSQL URL (``postgresql://`` or ``postgres://``; needs the ``pg`` extra, asyncpg)."""
    text = str(location)
    if is_postgres(text):
        try:
            from meterchain.backend.store.postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise StoreError("PostgreSQL needs asyncpg: pip install 'meterchain[pg]'",
                             location=text.split("@")[-1]) from None
        return await PostgresStore.open(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    return await SqliteStore.open(text)


async def using_store(location: str | Path, action: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store at ``location``, run ``action`` on it and close it, whatever happens
    (the one-shot commands of the CLI)."""
    store = await open_store(location)
    try:
        return await action(store)
    finally:
        await store.close()


def is_postgres(location: str | Path) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return str(location).startswith(("postgresql://", "postgres://"))
