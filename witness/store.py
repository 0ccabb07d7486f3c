"""The witness's state: the latest cosigned checkpoint per origin, in SQLite.

tlog-witness: "The witness MUST persist the new checkpoint before responding. [...] checking
the old size against the latest checkpoint and persisting the new checkpoint must be performed
atomically". :meth:`WitnessStore.add_checkpoint` reads the latest size, checks the request,
cosigns and writes the new checkpoint in ONE ``BEGIN IMMEDIATE`` transaction (the database's
write lock is held from the read to the commit, so even two witness processes on one file
cannot interleave), committed with ``synchronous=FULL`` before the cosignature leaves. A kill
before the commit leaves the old state and no cosignature; after it, a cosignature that may never
be sent, for the checkpoint now on record (tests/witness/test_witness_crash.py).
Refused checkpoints whose log signature verified are kept (``refused``): evidence of a log
that showed a fork (the spec allows logging them; they are never cosigned).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meterchain.contract.cosignature import Cosigner
from meterchain.contract.note import NoteVerifier
from meterchain.witness.protocol import AddCheckpoint, Latest, WitnessRefusal, check_transition, open_signed

#: One entry per schema version; a database records how many it has applied.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE latest (
        origin TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        note TEXT NOT NULL,       -- the checkpoint, its verified log signatures and our cosignature
        cosigned INTEGER NOT NULL -- the cosignature's timestamp
    );
    CREATE TABLE refused (
        id INTEGER PRIMARY KEY,
        origin TEXT NOT NULL,
        old_size INTEGER NOT NULL,
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        note TEXT NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    """,
)


class SchemaError(Exception):
    """The database was written by a newer witness."""


@dataclass(frozen=True, slots=True)
class Stored:
    size: int
    root: bytes
    note: str
    cosigned: int


class WitnessStore:
    """One SQLite file; every method is one transaction."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time,
                 between: Callable[[str], None] | None = None) -> None:
        self.path = str(path)
        self.clock = clock
        self.between = between or (lambda step: None)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("CREATE TABLE IF NOT EXISTS witness_schema (version INTEGER NOT NULL)")
            row = self.db.execute("SELECT version FROM witness_schema").fetchone()
            version = row[0] if row else 0
            if row is None:
                self.db.execute("INSERT INTO witness_schema VALUES (0)")
            if version > len(MIGRATIONS):
                raise SchemaError(f"witness database schema {version} is newer than this witness "
                                  f"({len(MIGRATIONS)}); upgrade meterchain")
            for number, sql in enumerate(MIGRATIONS[version:], version + 1):
                for statement in sql.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("UPDATE witness_schema SET version = ?", (number,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    def latest(self, origin: str) -> Stored | None:
        row = self.db.execute("SELECT size, root, note, cosigned FROM latest WHERE origin = ?",
                              (origin,)).fetchone()
        return Stored(row[0], bytes(row[1]), row[2], row[3]) if row else None

    def refused(self, origin: str) -> list[tuple[int, int, bytes, int, str]]:
        """(old size, size, root, status, reason) of each refused, validly signed checkpoint."""
        rows = self.db.execute("SELECT old_size, size, root, status, reason FROM refused WHERE origin = ? "
                               "ORDER BY id", (origin,)).fetchall()
        return [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def add_checkpoint(self, request: AddCheckpoint, logs: Mapping[str, Sequence[NoteVerifier]],
                       cosigner: Cosigner) -> str:
        """Check ``request`` and, if it holds, record it and return our cosignature line;
        raise :class:`WitnessRefusal` otherwise. Check and record are one transaction."""
        signed = open_signed(request, logs)  # 400, 404, 403: nothing stored is read
        checkpoint = signed.checkpoint
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.latest(checkpoint.origin)
            try:
                check_transition(request, signed, Latest(row.size, row.root) if row else None)
            except WitnessRefusal as refusal:
                self.db.execute(
                    "INSERT INTO refused (origin, old_size, size, root, note, status, reason, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (checkpoint.origin, request.old_size, checkpoint.size, checkpoint.root, request.note,
                     refusal.status, str(refusal), int(self.clock())))
                self.db.execute("COMMIT")
                raise
            self.between("checked")
            timestamp = max(int(self.clock()), 1)
            line = cosigner.cosign(signed.text, timestamp)
            note = signed.text + "\n" + "".join(signed.log_signatures) + line
            self.db.execute(
                "INSERT INTO latest (origin, size, root, note, cosigned) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                "note = excluded.note, cosigned = excluded.cosigned",
                (checkpoint.origin, checkpoint.size, checkpoint.root, note, timestamp))
            self.between("written")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.between("committed")
        return line
