"""The durable outbox: every signed reading is on disk before it is published, until the backend acks it.

SQLite through aiosqlite, WAL with ``synchronous=FULL``: a committed cycle survives power loss
(docs/decisions.md, "The agent's outbox writes": why not NORMAL). What the agent writes per
reading is what wears a gateway's flash (issue 20), so the only write on the way of a reading is
the poll cycle's one transaction (all meters of one interval and
``meter_progress``). Everything else is bookkeeping that a restart may forget:

- *sent* (when and how often a reading was published) lives in memory: after a restart every
  unacked reading counts as never sent and goes out again (the backend deduplicates);
- an *ack* takes effect in memory at once (``acked_upto``: every query skips what it covers); the
  acked rows are deleted in one batch inside a later cycle's transaction, once ``PURGE_ROWS`` of
  them wait. A restart before that applies the broker's retained ack again.

Measured with bench/bench_agent_io.py (docs/benchmarks.md): 14.0 KB written per reading with a
transaction per publish batch and per ack and a row update for each send, 2.2 KB without them.

The sequence number is inside the signed bytes, so it is allocated, signed and stored in one
transaction: a crash before the commit leaves neither the reading nor the used number behind, and
after the commit both are durable. The counter is the highest sequence number stored (readings,
quarantine) plus one, or ``state.next_seq`` if that is higher: a cycle does not rewrite the
``state`` page, and the purge moves ``state.next_seq`` past every row before it deletes any. It
only ever moves forward; acks never move it.

Schema changes are migrations: an ordered list of functions, ``PRAGMA user_version`` counts how
many have run. Add a function at the end; never edit one that has shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiosqlite
from meterchain.agent.ocmf import PackedRecordError, pack_record, unpack_record
from meterchain.agent.reservation import Reservation
from meterchain.contract.ack import Ack
from meterchain.contract.errors import MeterchainError

log = logging.getLogger(__name__)

#: ``PRAGMA synchronous`` of the outbox (WAL): FULL, an fsync per commit (docs/decisions.md).
SYNCHRONOUS = "FULL"
#: Page size of a new outbox (an existing one keeps its own): a commit writes whole pages.
PAGE_SIZE = 1024
#: WAL pages between automatic checkpoints (SQLite's default is 1000): a checkpoint copies the
#: pages the cycles touched since the last one, about the same few hundred each time, so rarer
#: checkpoints write less per reading (measured: docs/decisions.md). ≈ 4 MiB of WAL.
WAL_AUTOCHECKPOINT = 4000
#: Bytes the WAL file is cut back to after a checkpoint: above its size, so it is reused in
#: place rather than shrunk and grown again.
JOURNAL_SIZE_LIMIT = 5 << 20
#: The next sequence number of an outbox (also for readers of the file: agent/provision.py).
NEXT_SEQ_SQL = ("SELECT MAX(next_seq, IFNULL((SELECT MAX(seq) FROM readings), 0) + 1,"
                " IFNULL((SELECT MAX(seq) FROM quarantine), 0) + 1) FROM state")
#: What a reading is read back as (OutboxReading, with the OCMF record in either column).
_COLUMNS = "seq, meter, interval_end, message, ocmf, ocmf_packed"
#: Acked readings kept until a cycle's transaction deletes them in one go (whole pages freed).
PURGE_ROWS = 256


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


async def _v4_sent_in_memory(db: aiosqlite.Connection) -> None:
    # Sends are counted in memory since issue 20 (no row rewritten per publish): the index on
    # last_sent only cost a page per commit. The columns stay (an older agent may open this).
    await db.execute("DROP INDEX IF EXISTS readings_last_sent")


async def _v5_ocmf_packed(db: aiosqlite.Connection) -> None:
    # The OCMF record packed (agent/ocmf.py pack_record, a third of its text): rows written since
    # keep it here and NULL in ``ocmf``; older rows keep their text.
    await db.execute("ALTER TABLE readings ADD COLUMN ocmf_packed BLOB")


MIGRATIONS: tuple[Migration, ...] = (
    _v1_initial, _v2_ocmf, _v3_gaps, _v4_sent_in_memory, _v5_ocmf_packed)


class OutboxCorrupt(OutboxError):
    """The outbox file is not a readable SQLite database (the agent moves it aside)."""

    check = "outbox-corrupt"


class OutboxUnavailable(OutboxError):
    """The outbox cannot be opened now (locked by another process, no permission, an I/O error):
    it may hold unacknowledged readings, so it is never moved aside for this; the agent waits."""

    check = "outbox-unavailable"


#: SQLite's primary result codes that mean the file itself is damaged or not a database: only
#: these (and a failed quick_check) make an outbox "corrupt". "database is locked" or "unable to
#: open database file" say nothing about its contents, and moving it aside would lose its readings.
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPT_CODES


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
        # must not land inside another's open transaction. That holds for the reads of what to
        # publish too: inside a cycle's transaction they see its rows before the COMMIT, and a
        # reading published then that a failed commit (full disk) or a kill takes back has its
        # sequence number signed again for another reading.
        self._lock = asyncio.Lock()
        #: Set when this open made the outbox (no state row before): a lost one if sequences
        #: were reserved (agent/reservation.py).
        self.created = False
        #: Durably reserved sequence numbers: a cycle beyond them reserves before it signs.
        self.reservation: Reservation | None = None
        # seq -> (last sent, sends) of readings published by this process and not yet acked.
        self._sent: dict[int, tuple[int, int]] = {}
        self._acked = 0  # the highest ack applied (in memory; on disk at the next purge)
        #: The first sequence number this process signs: older readings may have been published
        #: by an earlier process (the clock judge must not take their first send as the first).
        self.first_own_seq = 1

    @classmethod
    async def open(
        cls,
        path: str | Path,
        device: str,
        companion: Callable[[bytes], str | None] | None = None,
    ) -> Outbox:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            if new:  # only before the first write; an existing file keeps its page size
                await db.execute(f"PRAGMA page_size={int(PAGE_SIZE)}")
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            await db.execute(f"PRAGMA wal_autocheckpoint={int(WAL_AUTOCHECKPOINT)}")
            await db.execute(f"PRAGMA journal_size_limit={int(JOURNAL_SIZE_LIMIT)}")
            await db.execute("PRAGMA foreign_keys=ON")
            async with db.execute("PRAGMA quick_check") as cur:
                verdict = [row[0] for row in await cur.fetchall()]
            if verdict != ["ok"]:
                raise OutboxCorrupt(f"outbox {path} failed its quick_check: "
                                    + "; ".join(map(str, verdict[:3])), path=str(path))
            await _migrate(db, path)
            outbox = cls(db, device, companion)
            await outbox._claim_device(path)
            outbox._acked = await outbox._durable_acked()
            outbox.first_own_seq = await outbox.next_seq()
        except sqlite3.DatabaseError as exc:
            await db.close()
            if is_disk_full(exc):  # not corrupt: never moved aside (issue 18)
                raise StorageFull(f"outbox {path}: the disk is full ({exc})",
                                  path=str(path)) from None
            if _is_corrupt(exc):
                raise OutboxCorrupt(f"outbox {path} is unreadable: {exc}", path=str(path)) from None
            raise OutboxUnavailable(f"outbox {path} cannot be opened now: {exc}", path=str(path)) from None
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
            self.first_own_seq = max(self.first_own_seq, next_seq)
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
        """The next sequence number to sign (see the module docstring)."""
        async with self._db.execute(NEXT_SEQ_SQL) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def _durable_acked(self) -> int:
        async with self._db.execute("SELECT acked_upto FROM state") as cur:
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
        seq is used. Acked readings are deleted in the same transaction once ``PURGE_ROWS`` of
        them wait (the cycle's commit is the only write a reading costs on its way).
        """
        async with self._lock, transaction(self._db):
            seq = await self.next_seq()
            if self.reservation is not None and not self.reservation.covers(seq + len(entries) - 1):
                # On disk before anything is signed with these numbers (agent/reservation.py).
                await asyncio.to_thread(self.reservation.extend, seq + len(entries) - 1,
                                        await self.acked_upto())
            stored: list[int] = []
            rows: list[tuple[int, str, int, bytes, int, bytes | None]] = []
            progress: list[tuple[str, int]] = []
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
                rows.append((seq, entry.meter, entry.interval_end, message, now,
                             None if ocmf is None else pack_record(ocmf)))
                progress.append((entry.meter, entry.interval_end))
                stored.append(seq)
                seq += 1
            await self._db.executemany(
                "INSERT INTO readings (seq, meter, interval_end, message, created, ocmf_packed)"
                " VALUES (?, ?, ?, ?, ?, ?)", rows)
            await self._db.executemany(
                "INSERT INTO meter_progress (meter, last_end) VALUES (?, ?)"
                " ON CONFLICT (meter) DO UPDATE SET last_end = excluded.last_end", progress)
            await self._purge_acked()
        return stored

    async def _purge_acked(self) -> None:
        """Inside a transaction: delete the acked rows once there are ``PURGE_ROWS`` of them
        (a batch frees whole pages, which SQLite then does not write again)."""
        async with self._db.execute(
            "SELECT COUNT(*) FROM readings WHERE seq <= ?", (self._acked,)
        ) as cur:
            waiting = int((await cur.fetchone())[0])  # type: ignore[index]
        if waiting < PURGE_ROWS:
            return
        # The counter first, past every row: the deleted ones may include the newest.
        await self._db.execute(
            "UPDATE state SET acked_upto = MAX(acked_upto, ?),"
            " next_seq = MAX(next_seq, IFNULL((SELECT MAX(seq) FROM readings), 0) + 1)",
            (self._acked,))
        await self._db.execute("DELETE FROM readings WHERE seq <= ?", (self._acked,))
        log.debug("event=outbox_purged device=%s upto=%d rows=%d", self.device, self._acked,
                  waiting)

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
        cutoff = now - republish_after
        waiting = [seq for seq, (last_sent, _) in self._sent.items() if last_sent > cutoff]
        return await self._select(limit, newest, waiting, None)

    async def _select(self, limit: int, newest: int, excluded: Sequence[int],
                      below: int | None) -> list[OutboxReading]:
        """Up to ``limit`` unacked readings not in ``excluded`` and below ``below``, oldest
        first, ``newest`` of the slots for the newest."""
        if limit <= 0:
            return []
        newest = min(newest, limit)
        skip = json.dumps(sorted(excluded))
        where = "seq > ? AND seq NOT IN (SELECT value FROM json_each(?))"
        columns = _COLUMNS
        async with self._lock:  # never inside a cycle's open transaction (__init__)
            async with self._db.execute(
                f"SELECT {columns} FROM readings WHERE {where} ORDER BY seq DESC LIMIT ?",
                (self._acked, skip, newest),
            ) as cur:
                latest = list(await cur.fetchall())
            async with self._db.execute(
                f"SELECT {columns} FROM readings WHERE {where} AND seq < ? ORDER BY seq LIMIT ?",
                (self._acked, skip, below if below is not None else 2**62, limit - len(latest)),
            ) as cur:
                oldest = await cur.fetchall()
        rows = {row[0]: row for row in (*oldest, *latest)}
        return [self._reading(rows[seq]) for seq in sorted(rows)]

    def _reading(self, row: aiosqlite.Row) -> OutboxReading:
        seq, meter, interval_end, message, ocmf, packed = row
        if ocmf is None and packed is not None:
            try:
                ocmf = unpack_record(bytes(packed))
            except PackedRecordError as exc:  # the reading still goes out, without its record
                log.error("event=ocmf_unreadable device=%s seq=%d detail=%r", self.device, seq,
                          str(exc))
        return OutboxReading(int(seq), str(meter), int(interval_end), bytes(message),
                             self._sent.get(int(seq), (0, 0))[1], ocmf)

    async def next_due(self, republish_after: int) -> int | None:
        """When the earliest sent-but-unacked reading becomes due again (None: nothing waits)."""
        first = min((last_sent for last_sent, _ in self._sent.values()), default=None)
        return None if first is None else first + republish_after

    async def outstanding(self, limit: int) -> tuple[list[tuple[int, int, int]], int]:
        """The oldest ``limit`` readings published but not acked (seq, last_sent, send_count),
        and how many there are in all (agent/resend.py decides which are due again)."""
        rows = [(seq, *self._sent[seq]) for seq in sorted(self._sent)[:limit]]
        return rows, len(self._sent)

    async def unsent(self, limit: int, *, newest: int = 0,
                     below: int | None = None) -> list[OutboxReading]:
        """Up to ``limit`` readings never published, oldest first and with seq below ``below``,
        ``newest`` of the slots kept for the newest (a draining backlog never delays live data
        by more than one batch)."""
        return await self._select(limit, newest, list(self._sent), below)

    async def oldest_seq(self) -> int | None:
        """The oldest reading not yet acked (None: the outbox is empty)."""
        async with self._lock, self._db.execute(
            "SELECT MIN(seq) FROM readings WHERE seq > ?", (self._acked,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def fetch(self, seqs: Sequence[int]) -> list[OutboxReading]:
        """These readings, if still in the outbox and not acked, oldest first."""
        if not seqs:
            return []
        async with self._lock, self._db.execute(
            f"SELECT {_COLUMNS} FROM readings"
            " WHERE seq > ? AND seq IN (SELECT value FROM json_each(?)) ORDER BY seq",
            (self._acked, json.dumps(list(seqs))),
        ) as cur:
            return [self._reading(row) for row in await cur.fetchall()]

    async def mark_sent(self, seqs: Sequence[int], now: int) -> None:
        """Record a publish (PUBACKed by the broker; the reading still waits for the backend).

        In memory only: a restart forgets it and publishes again, which the backend
        deduplicates; a row rewritten per publish cost pages of WAL per batch (issue 20)."""
        for seq in seqs:
            if seq > self._acked:
                self._sent[seq] = (now, self._sent.get(seq, (0, 0))[1] + 1)

    async def apply_ack(self, ack: Ack, now: int) -> AckResult:
        """Quarantine the readings the backend rejected for good, forget those committed ≤ upto.

        A rejection is applied before the rest: a rejected seq ≤ upto must land in the
        quarantine, not vanish as if committed (one transaction, only when there is one). The
        committed rows are skipped from now on and deleted in a later cycle's transaction
        (``PURGE_ROWS``); the broker's retained ack applies them again after a restart. The
        counter is not touched: the caller has checked that the ack covers nothing above what
        this gateway signed (agent/acks.py).
        """
        if ack.device != self.device:
            raise OutboxError(
                f"ack for device {ack.device!r} reached the outbox of {self.device!r}",
                device=self.device,
                ack_device=ack.device,
            )
        async with self._lock:
            quarantined = await self._quarantine(ack, now)
            committed = 0
            if ack.upto > self._acked:
                async with self._db.execute(
                    "SELECT COUNT(*) FROM readings WHERE seq > ? AND seq <= ?",
                    (self._acked, ack.upto),
                ) as cur:
                    committed = int((await cur.fetchone())[0])  # type: ignore[index]
                self._acked = ack.upto
                for seq in [s for s in self._sent if s <= ack.upto]:
                    del self._sent[seq]
                async with self._db.execute(
                    "SELECT 1 FROM gaps WHERE last <= ? LIMIT 1", (ack.upto,)
                ) as cur:
                    covered = await cur.fetchone() is not None
                if covered:  # rare (a lost outbox): on disk at once
                    async with transaction(self._db):
                        await self._db.execute("DELETE FROM gaps WHERE last <= ?", (ack.upto,))
                        await self._db.execute(
                            "UPDATE state SET acked_upto = MAX(acked_upto, ?)", (ack.upto,))
        # The sequence never moves on an ack's word (issue 14): a lost outbox resumes above the
        # durable reservation instead (agent/reservation.py).
        return AckResult(committed, tuple(quarantined))

    async def _quarantine(self, ack: Ack, now: int) -> list[int]:
        """Move the readings an ack rejects for good to the quarantine (not those an earlier
        ack already covered: they were committed or quarantined then)."""
        fresh = [r for r in ack.rejected if r.seq > self._acked]
        if not fresh:
            return []
        quarantined: list[int] = []
        async with transaction(self._db):
            for rejection in fresh:
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
                    (rejection.seq, row[0], row[1], row[2], rejection.reason, rejection.detail,
                     now),
                )
                await self._db.execute("DELETE FROM readings WHERE seq = ?", (rejection.seq,))
                quarantined.append(rejection.seq)
        for seq in quarantined:
            self._sent.pop(seq, None)
        return quarantined

    async def depth(self) -> int:
        """Readings not yet confirmed by the backend."""
        async with self._db.execute(
            "SELECT COUNT(*) FROM readings WHERE seq > ?", (self._acked,)
        ) as cur:
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def acked_upto(self) -> int:
        """The highest ack applied (on disk it may lag until the next purge)."""
        return self._acked

    async def readings(self) -> list[OutboxReading]:
        """Every unconfirmed reading, oldest first (for status and tests)."""
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM readings WHERE seq > ? ORDER BY seq", (self._acked,)
        ) as cur:
            return [self._reading(row) for row in await cur.fetchall()]

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
