"""What every router of the API shares: the store connections and the log's verifier."""

from __future__ import annotations

import asyncio

from meterchain.backend.store import SqliteStore
from meterchain.contract.note import NoteVerifier
from meterchain.contract.tlog_policy import WitnessPolicy


class ApiState:
    """Connections the API owns: one for reads, one (behind a lock) for enrolment writes. Both
    are SQLite stores by type: most routers read the SQLite-only tables (on PostgreSQL the api
    role serves the public log alone, ``service.log_app``)."""

    def __init__(self, db: str, admin_token: str, verifier: NoteVerifier) -> None:
        self.db, self.admin_token, self.verifier = db, admin_token, verifier
        # The witness policy (docs/witness.md): the households' proof pages require its quorum.
        self.witness_policy: WitnessPolicy | None = None
        self.reader: SqliteStore | None = None
        self.writer: SqliteStore | None = None
        self.write_lock = asyncio.Lock()

    def read(self) -> SqliteStore:
        """The reader connection (open while the app's lifespan runs)."""
        assert self.reader is not None
        return self.reader
