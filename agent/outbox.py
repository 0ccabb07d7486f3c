"""The durable outbox: every signed reading is on disk before it is published, until the backend acks it.

SQLite through aiosqlite, WAL with ``synchronous=FULL``: a committed cycle survives power loss.
One transaction per poll cycle (all meters of one interval), because WAL+FULL costs one fsync per
commit (≈ 13 KB written per one-row transaction, ≈ 565 B per row at 100 rows; docs/agent.md).

The sequence number is inside the signed bytes, so it is allocated, signed and stored in one
transaction: a crash before the commit leaves neither the reading nor the used number behind, and
after the commit both are durable. The counter lives in ``state`` and only ever moves forward; it
is not derived from the readings table, which the backend's acks empty.

Schema changes are migrations: an ordered list of functions, ``PRAGMA user_version`` counts how
many have run. Add a function at the end; never edit one that has shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiosqlite
from meterchain.agent.reservation import Reservation
from meterchain.contract.ack import Ack
from meterchain.contract.errors import MeterchainError

log = logging.getLogger(__name__)


class OutboxError(MeterchainError):
    """The outbox database is unusable: newer schema, other device, or corrupt."""

    check = "outbox"


class StorageFull(OutboxError):
    """The outbox's disk (or quota) is full: nothing new can be stored until space returns."""

    check = "disk-full"


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or ENOSPC/EDQUOT from a file write."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class CycleEntry:
    """One meter's reading of one interval, waiting for its sequence number.

    ``sign(seq)`` returns the message bytes (the signed reading with ``seq`` inside); the outbox
    calls it inside the transaction that stores the result.
    """

    meter: str
    interval_end: int
    sign: Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class OutboxReading:
    seq: int
    meter: str
    interval_end: int
    message: bytes
    send_count: int
    ocmf: str | None = None  # the OCMF record signed beside it (docs/format.md §12)


@dataclass(frozen=True, slots=True)
class QuarantinedReading:
    seq: int
    meter: str
    interval_end: int
    message: bytes
    reason: str
    detail: str
    time: int


@dataclass(frozen=True, slots=True)
class AckResult:
    """What one ack changed: readings deleted as committed and moved to quarantine."""

    committed: int
    quarantined: tuple[int, ...]


Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


@contextlib.asynccontextmanager
async def transaction(
    db: aiosqlite.Connection, begin: str = "BEGIN IMMEDIATE"
) -> AsyncIterator[None]:
    """One SQLite transaction that survives task cancellation.

    aiosqlite runs statements in order on its own thread, and a cancelled await does not stop a
    statement already queued: the COMMIT may have run when the CancelledError arrives. So the
    ROLLBACK is always queued (after whatever ran) and "no transaction is active" means the
    COMMIT got there first.
    """
    try:
        await db.execute(begin)
        yield
        await db.execute("COMMIT")
    except BaseException:
        await asyncio.shield(_rollback(db))
        raise


async def _rollback(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "no transaction is active" not in str(exc):
            raise


async def _v1_initial(db: aiosqlite.Connection) -> None:
    await db.execute(
        """CREATE TABLE readings (
            seq INTEGER PRIMARY KEY,
            meter TEXT NOT NULL,
            interval_end INTEGER NOT NULL,
            message BLOB NOT NULL,
            created INTEGER NOT NULL,
            last_sent INTEGER,
            send_count INTEGER NOT NULL DEFAULT 0
        )"""
    )
    await db.execute("CREATE INDEX readings_last_sent ON readings (last_sent)")
    await db.execute(
        """CREATE TABLE quarantine (
            seq INTEGER PRIMARY KEY,
            meter TEXT NOT NULL,
            interval_end INTEGER NOT NULL,
            message BLOB NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            time INTEGER NOT NULL
        )"""
    )
    await db.execute(
        """CREATE TABLE state (
            device TEXT PRIMARY KEY,
            next_seq INTEGER NOT NULL CHECK (next_seq >= 1),
            key_id BLOB,
            acked_upto INTEGER NOT NULL DEFAULT 0
        )"""
    )
    # The last interval stored per meter: a restart inside an interval must not sign it twice
    # (the backend would see two readings for one (device, meter, end): a conflict).
    await db.execute(
        "CREATE TABLE meter_progress (meter TEXT PRIMARY KEY, last_end INTEGER NOT NULL)"
    )


async def _v2_ocmf(db: aiosqlite.Connection) -> None:
    # The OCMF record signed beside each reading, kept until the reading is acked (NULL: none).
    await db.execute("ALTER TABLE readings ADD COLUMN ocmf TEXT")


async def _v3_gaps(db: aiosqlite.Connection) -> None:
    # Gap declarations (contract/gap.py) signed after a lost outbox, kept until an ack covers
    # their range (docs/agent.md, "Sequence reservation").
    await db.execute(
        """CREATE TABLE gaps (
            first INTEGER PRIMARY KEY,
            last INTEGER NOT NULL,
            message BLOB NOT NULL,
            created INTEGER NOT NULL,
            last_sent INTEGER
        )"""
    )


MIGRATIONS: tuple[Migration, ...] = (_v1_initial, _v2_ocmf, _v3_gaps)


class OutboxCorrupt(OutboxError):
    """The outbox file is not a readable SQLite database (the agent moves it aside)."""

    check = "outbox-corrupt"


class Outbox:
    """One device's outbox in one SQLite file. Use ``async with await Outbox.open(...)`` or close()."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        device: str,
        companion: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self._db = db
        self.device = device
        # Signs the OCMF record of each message in the transaction that stores the message.
        self._companion = companion
        # One connection, shared by the poller and the publisher: statements of one coroutine
        # must not land inside another's open transaction.
        self._lock = asyncio.Lock()
        #: Set when this open made the outbox (no state row before): a lost one if sequences
        #: were reserved (agent/reservation.py).
        self.created = False
        #: Durably reserved sequence numbers: a cycle beyond them reserves before it signs.
        self.reservation: Reservation | None = None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        device: str,
        companion: Callable[[bytes], str | None] | None = None,
    ) -> Outbox:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            async with db.execute("PRAGMA quick_check") as cur:
                verdict = [row[0] for row in await cur.fetchall()]
            if verdict != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(map(str, verdict[:3])))
            await _migrate(db, path)
            outbox = cls(db, device, companion)
            await outbox._claim_device(path)
        except sqlite3.DatabaseError as exc:
            await db.close()
            if is_disk_full(exc):  # not corrupt: never moved aside (issue 18)
                raise StorageFull(f"outbox {path}: the disk is full ({exc})",
                                  path=str(path)) from None
            raise OutboxCorrupt(f"outbox {path} is unreadable: {exc}", path=str(path)) from None
        except BaseException:
            await db.close()
            raise
        return outbox

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _claim_device(self, path: Path) -> None:
        async with self._db.execute("SELECT device FROM state") as cur:
            devices = [row[0] for row in await cur.fetchall()]
        if devices and devices != [self.device]:
            raise OutboxError(
                f"outbox {path} belongs to device {devices[0]!r}, not {self.device!r}",
                path=str(path),
                device=self.device,
            )
        if not devices:
            await self._db.execute(
                "INSERT INTO state (device, next_seq) VALUES (?, 1)", (self.device,)
            )
            self.created = True

    async def resume_after_loss(self, next_seq: int, gaps: Sequence[tuple[int, int, bytes]],
                                now: int) -> None:
        """A lost outbox starts over above the reservation, with the gap declarations that
        account for what it cannot (first, last, signed message), in one transaction."""
        async with self._lock, transaction(self._db):
            await self._db.execute("UPDATE state SET next_seq = MAX(next_seq, ?)", (next_seq,))
            await self._db.executemany(
                "INSERT OR IGNORE INTO gaps (first, last, message, created) VALUES (?, ?, ?, ?)",
                [(first, last, message, now) for first, last, message in gaps],
            )

    async def pending_gaps(self, *, now: int, republish_after: int) -> list[tuple[int, bytes]]:
        """Gap declarations due for (re)publishing: (first, message)."""
        async with self._db.execute(
            "SELECT first, message FROM gaps WHERE last_sent IS NULL OR last_sent <= ? "
            "ORDER BY first", (now - republish_after,)
        ) as cur:
            return [(int(r[0]), bytes(r[1])) for r in await cur.fetchall()]

    async def mark_gaps_sent(self, firsts: Sequence[int], now: int) -> None:
        if firsts:
            async with self._lock, transaction(self._db, "BEGIN"):
                await self._db.executemany("UPDATE gaps SET last_sent = ? WHERE first = ?",
                                           [(now, first) for first in firsts])

    async def gaps(self) -> list[tuple[int, int]]:
        """Gap declarations not yet covered by an ack (first, last)."""
        async with self._db.execute("SELECT first, last FROM gaps ORDER BY first") as cur:
            return [(int(r[0]), int(r[1])) for r in await cur.fetchall()]

    async def next_seq(self) -> int:
        async with self._db.execute("SELECT next_seq FROM state") as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def last_end(self, meter: str) -> int | None:
        async with self._db.execute(
            "SELECT last_end FROM meter_progress WHERE meter = ?", (meter,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def set_key_id(self, key_id: bytes) -> bytes | None:
        """Record the signing key's id; returns the previous one (a rotation keeps the seqs)."""
        async with self._lock:
            async with self._db.execute("SELECT key_id FROM state") as cur:
                previous = (await cur.fetchone())[0]  # type: ignore[index]
            if previous != key_id:
                await self._db.execute("UPDATE state SET key_id = ?", (key_id,))
            return previous

    async def append_cycle(self, entries: Sequence[CycleEntry], now: int) -> list[int]:
        """Allocate seqs, sign and store one poll cycle in one transaction; returns the seqs.

        An entry whose interval is not newer than the last one stored for its meter is skipped
        (a restart inside an interval). If signing fails, nothing of the cycle is stored and no
        seq is used.
        """
        async with self._lock, transaction(self._db):
            seq = await self.next_seq()
            if self.reservation is not None and not self.reservation.covers(seq + len(entries) - 1):
                # On disk before anything is signed with these numbers (agent/reservation.py).
                await asyncio.to_thread(self.reservation.extend, seq + len(entries) - 1,
                                        await self.acked_upto())
            stored: list[int] = []
            for entry in entries:
                last = await self.last_end(entry.meter)
                if last is not None and entry.interval_end <= last:
                    log.warning(
                        "event=cycle_skip meter=%s interval_end=%d last_end=%d",
                        entry.meter,
                        entry.interval_end,
                        last,
                    )
                    continue
                message = entry.sign(seq)
                ocmf = self._companion(message) if self._companion is not None else None
                await self._db.execute(
                    "INSERT INTO readings (seq, meter, interval_end, message, created, ocmf)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, entry.meter, entry.interval_end, message, now, ocmf),
                )
                await self._db.execute(
                    "INSERT INTO meter_progress (meter, last_end) VALUES (?, ?)"
                    " ON CONFLICT (meter) DO UPDATE SET last_end = excluded.last_end",
                    (entry.meter, entry.interval_end),
                )
                stored.append(seq)
                seq += 1
            await self._db.execute("UPDATE state SET next_seq = ?", (seq,))
        return stored

    async def rewind_progress(self, beyond: int, to: int) -> dict[str, int]:
        """Meters whose newest signed interval ends after ``beyond`` (signed while the clock ran
        ahead) go on after ``to``; returns their previous last ends."""
        async with self._lock:
            async with self._db.execute(
                "SELECT meter, last_end FROM meter_progress WHERE last_end > ?", (beyond,)
            ) as cur:
                rewound = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
            if rewound:
                async with transaction(self._db):
                    await self._db.execute(
                        "UPDATE meter_progress SET last_end = ? WHERE last_end > ?", (to, beyond))
        return rewound

    async def pending(
        self, limit: int, *, now: int, republish_after: int, newest: int = 0
    ) -> list[OutboxReading]:
        """Readings due for (re)publishing, oldest first, at most ``limit``.

        Due: never sent, or sent at least ``republish_after`` seconds ago without an ack. Up to
        ``newest`` of the slots go to the newest due readings, so a draining backlog never
        delays live data by more than one batch.
        """
        if limit <= 0:
            return []
        newest = min(newest, limit)
        cutoff = now - republish_after
        due = "last_sent IS NULL OR last_sent <= ?"
        columns = "seq, meter, interval_end, message, send_count, ocmf"
        async with self._db.execute(
            f"SELECT {columns} FROM readings WHERE {due} ORDER BY seq DESC LIMIT ?",
            (cutoff, newest),
        ) as cur:
            latest = list(await cur.fetchall())
        async with self._db.execute(
            f"SELECT {columns} FROM readings WHERE {due} ORDER BY seq LIMIT ?",
            (cutoff, limit - len(latest)),
        ) as cur:
            oldest = await cur.fetchall()
        rows = {row[0]: row for row in (*oldest, *latest)}
        return [OutboxReading(*rows[seq]) for seq in sorted(rows)]

    async def next_due(self, republish_after: int) -> int | None:
        """When the earliest sent-but-unacked reading becomes due again (None: nothing waits)."""
        async with self._db.execute(
            "SELECT MIN(last_sent) FROM readings WHERE last_sent IS NOT NULL"
        ) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0]) + republish_after

    async def outstanding(self, limit: int) -> tuple[list[tuple[int, int, int]], int]:
        """The oldest ``limit`` readings published but not acked (seq, last_sent, send_count),
        and how many there are in all (agent/resend.py decides which are due again)."""
        async with self._db.execute(
            "SELECT seq, last_sent, send_count FROM readings WHERE last_sent IS NOT NULL"
            " ORDER BY seq LIMIT ?", (limit,)
        ) as cur:
            rows = [(int(r[0]), int(r[1]), int(r[2])) for r in await cur.fetchall()]
        if len(rows) < limit:
            return rows, len(rows)
        async with self._db.execute(
            "SELECT COUNT(*) FROM readings WHERE last_sent IS NOT NULL"
        ) as cur:
            return rows, int((await cur.fetchone())[0])  # type: ignore[index]

    async def unsent(self, limit: int, *, newest: int = 0,
                     below: int | None = None) -> list[OutboxReading]:
        """Up to ``limit`` readings never published, oldest first and with seq below ``below``,
        ``newest`` of the slots kept for the newest (a draining backlog never delays live data
        by more than one batch)."""
        if limit <= 0:
            return []
        bound = below if below is not None else 2**62
        newest = min(newest, limit)
        columns = "seq, meter, interval_end, message, send_count, ocmf"
        async with self._db.execute(
            f"SELECT {columns} FROM readings WHERE last_sent IS NULL ORDER BY seq DESC LIMIT ?",
            (newest,),
        ) as cur:
            latest = list(await cur.fetchall())
        async with self._db.execute(
            f"SELECT {columns} FROM readings WHERE last_sent IS NULL AND seq < ? ORDER BY seq"
            " LIMIT ?", (bound, limit - len(latest)),
        ) as cur:
            oldest = await cur.fetchall()
        rows = {row[0]: row for row in (*oldest, *latest)}
        return [OutboxReading(*rows[seq]) for seq in sorted(rows)]

    async def oldest_seq(self) -> int | None:
        """The oldest reading not yet acked (None: the outbox is empty)."""
        async with self._db.execute("SELECT MIN(seq) FROM readings") as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def fetch(self, seqs: Sequence[int]) -> list[OutboxReading]:
        """These readings, if still in the outbox, oldest first."""
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        async with self._db.execute(
            "SELECT seq, meter, interval_end, message, send_count, ocmf FROM readings"
            f" WHERE seq IN ({marks}) ORDER BY seq", tuple(seqs)
        ) as cur:
            return [OutboxReading(*row) for row in await cur.fetchall()]

    async def mark_sent(self, seqs: Sequence[int], now: int) -> None:
        """Record a publish (PUBACKed by the broker; the reading still waits for the backend)."""
        if not seqs:
            return
        async with self._lock, transaction(self._db, "BEGIN"):
            await self._db.executemany(
                "UPDATE readings SET last_sent = ?, send_count = send_count + 1 WHERE seq = ?",
                [(now, seq) for seq in seqs],
            )

    async def apply_ack(self, ack: Ack, now: int) -> AckResult:
        """Quarantine the readings the backend rejected for good, delete those committed ≤ upto.

        A rejection is applied before the deletion: a rejected seq ≤ upto must land in the
        quarantine, not vanish as if committed. The counter is not touched: the caller has
        checked that the ack covers nothing above what this gateway signed (agent/acks.py).
        """
        if ack.device != self.device:
            raise OutboxError(
                f"ack for device {ack.device!r} reached the outbox of {self.device!r}",
                device=self.device,
                ack_device=ack.device,
            )
        async with self._lock, transaction(self._db):
            quarantined: list[int] = []
            for rejection in ack.rejected:
                async with self._db.execute(
                    "SELECT meter, interval_end, message FROM readings WHERE seq = ?",
                    (rejection.seq,),
                ) as cur:
                    row = await cur.fetchone()
                if row is None:
                    continue  # already quarantined by an earlier ack, or never ours
                await self._db.execute(
                    "INSERT INTO quarantine (seq, meter, interval_end, message, reason, detail,"
                    " time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rejection.seq,
                        row[0],
                        row[1],
                        row[2],
                        rejection.reason,
                        rejection.detail,
                        now,
                    ),
                )
                await self._db.execute("DELETE FROM readings WHERE seq = ?", (rejection.seq,))
                quarantined.append(rejection.seq)
            cur = await self._db.execute("DELETE FROM readings WHERE seq <= ?", (ack.upto,))
            committed = cur.rowcount
            await cur.close()
            await self._db.execute("UPDATE state SET acked_upto = MAX(acked_upto, ?)", (ack.upto,))
            await self._db.execute("DELETE FROM gaps WHERE last <= ?", (ack.upto,))
        # The sequence never moves on an ack's word (issue 14): a lost outbox resumes above the
        # durable reservation instead (agent/reservation.py).
        return AckResult(committed, tuple(quarantined))

    async def depth(self) -> int:
        """Readings not yet confirmed by the backend."""
        async with self._db.execute("SELECT COUNT(*) FROM readings") as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def acked_upto(self) -> int:
        async with self._db.execute("SELECT acked_upto FROM state") as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def readings(self) -> list[OutboxReading]:
        """Every unconfirmed reading, oldest first (for status and tests)."""
        async with self._db.execute(
            "SELECT seq, meter, interval_end, message, send_count, ocmf FROM readings ORDER BY seq"
        ) as cur:
            return [OutboxReading(*row) for row in await cur.fetchall()]

    async def quarantine_count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM quarantine") as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def meter_progress(self) -> dict[str, int]:
        """Per meter, the interval end of the newest reading stored (fleet health)."""
        async with self._db.execute("SELECT meter, last_end FROM meter_progress") as cur:
            return {str(row[0]): int(row[1]) for row in await cur.fetchall()}

    async def quarantined(self) -> list[QuarantinedReading]:
        async with self._db.execute(
            "SELECT seq, meter, interval_end, message, reason, detail, time FROM quarantine"
            " ORDER BY seq"
        ) as cur:
            return [QuarantinedReading(*row) for row in await cur.fetchall()]


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    async with db.execute("PRAGMA user_version") as cur:
        version = int((await cur.fetchone())[0])  # type: ignore[index]
    if version > len(MIGRATIONS):
        raise OutboxError(
            f"outbox {path} has schema version {version}; this agent knows up to {len(MIGRATIONS)}"
            " (was it written by a newer agent?)",
            path=str(path),
            version=version,
        )
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        async with transaction(db):
            await migration(db)
            await db.execute(f"PRAGMA user_version = {number}")
        log.info("event=outbox_migrated path=%s version=%d", path, number)
