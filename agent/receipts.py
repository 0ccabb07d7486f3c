"""The gateway's side of receipts (issue 17): hold evidence that its data was logged, and notice a
log that rolled back or forked.

The backend publishes a receipt (contract/receipt.py) on ``meterchain/v1/<device>/receipts`` once
a checkpoint holding this device's readings meets the witness policy. :class:`ReceiptKeeper`:

1. verifies it with the log key and the witness policy from provisioning (``log_key``,
   ``witness_policy`` in the agent's config): the checkpoint's signatures, the quorum, that the
   entry is this device's reading and its inclusion proof. A receipt that fails is counted
   (``meterchain_agent_receipts_refused{reason}``) and logged, and changes nothing;
2. compares its checkpoint with the newest one this gateway verified before (its *view*, kept in
   ``<outbox>.logview.sqlite``): for a newer or older one it asks the backend's API for the
   consistency proof (``GET /api/v1/proofs/consistency``, bounded timeouts, retries with
   backoff; offline, the receipt waits for the next one, the view unchanged);
3. moves the view forward, or, when the log contradicts it (two checkpoints of one size with
   different roots, a tree that is not an extension, a log that says it is smaller than a
   checkpoint it signed and the witnesses cosigned), raises the alarm: an ``event=log_inconsistent``
   line, ``meterchain_agent_log_inconsistent`` = 1, ``log-inconsistent`` in the status message and
   a failed step in ``meterchain agent check``. Both signed notes are kept as evidence; the view
   never moves again until someone removes the file (docs/agent.md, "Receipts").

The view lives in a file of its own, not in the outbox: a lost or corrupt outbox is moved aside
and started over (agent/recovery.py), and the view must survive that, or a rollback after it
would go unseen.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from meterchain.agent.metrics import AgentMetrics
from meterchain.contract.checkpoint import Checkpoint, open_checkpoint
from meterchain.contract.errors import MeterchainError
from meterchain.contract.merkle import HASH_SIZE
from meterchain.contract.note import NoteVerifier
from meterchain.contract.receipt import LogInconsistent, LogView, Receipt, verify_receipt
from meterchain.contract.tlog_policy import WitnessPolicy

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: How often a repeated inconsistency is logged and kept (it is counted every time).
ALARM_EVERY = 60.0


def view_path(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.name + ".logview.sqlite")


class Unproven(MeterchainError):
    """No consistency proof could be had now (offline, the API behind): try with the next receipt."""

    check = "consistency-unavailable"


@dataclass(frozen=True, slots=True)
class HeldView:
    """What the view file holds: the newest verified checkpoint, its note, the receipt it came in."""

    checkpoint: Checkpoint
    note: str
    device: str
    seq: int
    index: int
    updated: int


@dataclass(frozen=True, slots=True)
class LogAlarm:
    count: int
    first: int
    last: int
    detail: str
    held: str  # the signed note this gateway held
    offered: str  # the signed note that contradicted it


def _v1_view(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE view (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        origin TEXT NOT NULL,
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        note TEXT NOT NULL,
        device TEXT NOT NULL,
        seq INTEGER NOT NULL,
        leaf_index INTEGER NOT NULL,
        updated INTEGER NOT NULL
    )""")
    db.execute("""CREATE TABLE alarm (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        count INTEGER NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        detail TEXT NOT NULL,
        held TEXT NOT NULL,
        offered TEXT NOT NULL
    )""")


#: Numbered migrations (``PRAGMA user_version`` counts those run); append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1_view,)


class ViewStore:
    """The view file: one row of view, one of alarm; tiny writes, one per verified receipt."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.db = sqlite3.connect(path, isolation_level=None)
        if new:  # 1 KiB pages, as the outbox: a receipt rewrites one row (flash wear, issue 20)
            self.db.execute("PRAGMA page_size=1024")
        # WAL + NORMAL: a power cut may cost the newest update (the view falls back to an older,
        # still consistent checkpoint), never the file; one fsync less per receipt (flash wear).
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise MeterchainError(f"log view {path} has schema version {version}; this agent knows "
                                  f"up to {len(MIGRATIONS)}", check="config", path=str(path))
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.execute("BEGIN IMMEDIATE")
            migration(self.db)
            self.db.execute(f"PRAGMA user_version = {number}")
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def view(self) -> HeldView | None:
        row = self.db.execute("SELECT origin, size, root, note, device, seq, leaf_index, updated "
                              "FROM view").fetchone()
        if row is None:
            return None
        return HeldView(Checkpoint(row[0], int(row[1]), bytes(row[2])), row[3], row[4], int(row[5]),
                        int(row[6]), int(row[7]))

    def alarm(self) -> LogAlarm | None:
        row = self.db.execute("SELECT count, first, last, detail, held, offered FROM alarm").fetchone()
        return None if row is None else LogAlarm(int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5])

    def save_view(self, held: HeldView) -> None:
        cp = held.checkpoint
        self.db.execute(
            "INSERT INTO view (id, origin, size, root, note, device, seq, leaf_index, updated) "
            "VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET origin = excluded.origin, "
            "size = excluded.size, root = excluded.root, note = excluded.note, device = excluded.device, "
            "seq = excluded.seq, leaf_index = excluded.leaf_index, updated = excluded.updated",
            (cp.origin, cp.size, cp.root, held.note, held.device, held.seq, held.index, held.updated))

    def save_alarm(self, detail: str, held: str, offered: str, now: int) -> LogAlarm:
        """Count the alarm; the first contradiction's notes stay as the evidence."""
        self.db.execute(
            "INSERT INTO alarm (id, count, first, last, detail, held, offered) VALUES (1, 1, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET count = count + 1, last = excluded.last",
            (now, now, detail[:1000], held, offered))
        alarm = self.alarm()
        assert alarm is not None
        return alarm


def read_view(outbox_path: Path) -> tuple[HeldView | None, LogAlarm | None] | None:
    """The view and alarm a running agent kept (for ``agent check``); None if there is no file."""
    path = view_path(outbox_path)
    if not path.exists():
        return None
    store = ViewStore(path, readonly=True)
    try:
        return store.view(), store.alarm()
    except sqlite3.Error:
        return None
    finally:
        store.close()


def answers_authenticated(url: str) -> bool:
    """Whether what ``url`` answers is the backend's own word: HTTPS (its certificate checked) or
    loopback. Over plain HTTP to another host anyone on the path can answer for it."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsistencySource:
    """Consistency proofs (and the newest checkpoint) from the backend's API, with retries.

    Only signed checkpoints are evidence on their own (a fork: two of one size). A proof that does
    not verify, or a signed checkpoint smaller than the view (an old one replayed looks the same:
    checkpoints carry no time), is the log's word only when the answer is authenticated
    (:func:`answers_authenticated`); otherwise it is :class:`Unproven`, never an alarm, which
    would freeze the view for good on a stranger's say-so.
    """

    def __init__(self, backend_url: str, log_key: NoteVerifier, *, timeout: float = 10.0,
                 attempts: int = 3, backoff: float = 0.5, client: httpx.AsyncClient | None = None,
                 rng: random.Random | None = None) -> None:
        self.base = backend_url.rstrip("/")
        self.log_key = log_key
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self.client = client  # made on first use: httpx costs the agent ~7 MB it needs only then
        self.rng = rng or random.Random()
        self.authenticated = answers_authenticated(self.base)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _http(self) -> httpx.AsyncClient:
        import httpx  # noqa: PLC0415 (lazy, see __init__)

        if self.client is None:
            self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=min(5.0, self.timeout)))
        return self.client

    async def proof(self, old: int, new: int, held: int) -> list[bytes]:
        """The proof between sizes ``old`` and ``new``; ``held`` is the size this gateway holds a
        verified checkpoint of. Raises :class:`Unproven` (try later) or :class:`LogInconsistent`
        (the log says it is smaller than ``held``)."""
        answer = await self._get(f"/api/v1/proofs/consistency?old={old}&new={new}")
        if answer.status_code == 400 and new == held:
            await self._smaller_than(held)
        if answer.status_code != 200:
            raise Unproven(f"consistency proof {old} -> {new}: HTTP {answer.status_code}", old=old, new=new)
        try:
            hashes = [base64.b64decode(h, validate=True) for h in answer.json()["proof"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise Unproven(f"consistency proof {old} -> {new}: not a proof ({exc})") from None
        if any(len(h) != HASH_SIZE for h in hashes) or len(hashes) > 64:
            raise Unproven(f"consistency proof {old} -> {new}: not a list of hashes")
        return hashes

    async def _smaller_than(self, held: int) -> None:
        """The API would not prove up to ``held``: if the log's own signed newest checkpoint is
        smaller, the log rolled back; otherwise it is only behind (Unproven)."""
        answer = await self._get("/checkpoint")  # the tlog-tiles route, on every api role
        if answer.status_code != 200:
            raise Unproven(f"no checkpoint from the log: HTTP {answer.status_code}")
        try:
            newest = open_checkpoint(answer.text, self.log_key)
        except MeterchainError as exc:
            raise Unproven(f"the log's checkpoint does not verify: {exc}") from None
        if newest.size < held and not self.authenticated:
            raise Unproven(f"a signed checkpoint of {newest.size} leaves over plain HTTP from "
                           f"{self.base}, fewer than the {held} held: an old one replayed looks the "
                           "same, not evidence of a rollback (use https://)")
        if newest.size < held:
            raise LogInconsistent(f"the log's newest signed checkpoint has {newest.size} leaves, fewer "
                                  f"than the {held} of a cosigned checkpoint this gateway holds: "
                                  "the log rolled back", size=newest.size, held=held)
        raise Unproven(f"the log would not prove up to {held} yet")

    async def _get(self, path: str) -> httpx.Response:
        import httpx  # noqa: PLC0415 (lazy, see __init__)

        client = self._http()
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                await asyncio.sleep(self.rng.uniform(delay / 2, delay))
            try:
                answer = await client.get(self.base + path)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if answer.status_code < 500 and answer.status_code != 429:
                return answer
            last = f"HTTP {answer.status_code}"
        raise Unproven(f"GET {path}: {last} after {self.attempts} attempts", path=path)


class ReceiptKeeper:
    """Verifies receipts and keeps the view (see the module docstring); :meth:`submit` takes a
    payload without waiting, :meth:`run` handles the newest one submitted."""

    def __init__(self, *, device: str, log_key: NoteVerifier, policy: WitnessPolicy | None,
                 outbox_path: Path, proofs: ConsistencySource, metrics: AgentMetrics,
                 on_alarm: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.device = device
        self.log_key = log_key
        self.policy = policy
        self.proofs = proofs
        self.metrics = metrics
        self.on_alarm = on_alarm
        self.clock = clock
        self.store = ViewStore(view_path(outbox_path))
        held = self.store.view()
        self.held = held
        self.view = LogView(held.checkpoint if held else None)
        self.alarm = self.store.alarm()
        if held is not None:
            metrics.log_size.set(held.checkpoint.size)
        metrics.log_inconsistent.set(1 if self.alarm else 0)
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self._noted = 0.0  # monotonic time the alarm was last logged

    def close(self) -> None:
        self.store.close()

    def submit(self, payload: bytes) -> None:
        """A receipt arrived (the MQTT session must not wait for proofs): the newest is handled."""
        self._pending = payload
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            payload, self._pending = self._pending, None
            if payload is None:
                continue
            try:
                await self.handle(payload)
            except Exception as exc:  # a bug must not stop the agent: counted, logged, next one
                self.metrics.receipts_refused.labels(reason="error").inc()
                log.exception("event=receipt_error device=%s error=%r (the view is unchanged)",
                              self.device, str(exc))

    async def handle(self, payload: bytes) -> str:
        """Take one receipt; returns what happened: ``advanced``, ``held`` (nothing newer),
        ``refused:<reason>``, ``unproven`` or ``inconsistent``. Never raises on bad input."""
        try:
            receipt = Receipt.from_cbor(payload)
            if receipt.device != self.device:
                return self._refuse("foreign-device", f"a receipt for {receipt.device!r}")
            checkpoint = verify_receipt(receipt, self.log_key, self.policy)
        except MeterchainError as exc:
            return self._refuse(exc.check, str(exc))
        # Once the log contradicted the view, the view is frozen (a log caught lying is not
        # followed further); each receipt is still checked against it and counted.
        view = self.view if self.alarm is None else LogView(self.view.newest)
        before = view.newest
        try:
            sizes = view.needs(checkpoint)
            proof = None
            if sizes is not None:
                held = before.size if before is not None else 0
                proof = await self.proofs.proof(*sizes, held=held)
            try:
                view.advance(checkpoint, proof)
            except LogInconsistent as exc:
                if sizes is None or self.proofs.authenticated:
                    raise
                raise Unproven(f"{exc} (the proof came over plain HTTP from {self.proofs.base}: "
                               "anyone on the path could have sent it; use https://)") from None
        except Unproven as exc:
            self.metrics.receipts_unproven.inc()
            log.warning("event=receipt_unproven device=%s size=%d detail=%r (kept for the next "
                        "receipt; the view is unchanged)", self.device, checkpoint.size, str(exc))
            return "unproven"
        except LogInconsistent as exc:
            self._inconsistent(exc, receipt.checkpoint)
            return "inconsistent"
        self.metrics.receipts_verified.inc()
        if view is not self.view or view.newest is before:
            return "held"
        now = int(self.clock())
        held_view = HeldView(checkpoint, receipt.checkpoint, receipt.device, receipt.seq, receipt.index, now)
        try:
            self.store.save_view(held_view)
        except sqlite3.Error as exc:  # a full disk: the view in memory still moved
            log.error("event=log_view_not_kept device=%s error=%r", self.device, str(exc))
        self.held = held_view
        self.metrics.log_size.set(checkpoint.size)
        log.info("event=receipt device=%s seq=%d leaf_index=%d checkpoint_size=%d", self.device,
                 receipt.seq, receipt.index, checkpoint.size)
        return "advanced"

    def _refuse(self, reason: str, detail: str) -> str:
        self.metrics.receipts_refused.labels(reason=reason).inc()
        log.warning("event=receipt_refused device=%s reason=%s detail=%r (the view is unchanged)",
                    self.device, reason, detail[:300])
        return f"refused:{reason}"

    def _inconsistent(self, exc: LogInconsistent, offered: str) -> None:
        """The alarm: metric always; log line, evidence and the kept alarm at most once a minute."""
        self.metrics.log_inconsistent.set(1)
        self.metrics.log_inconsistencies.inc()
        now_mono = time.monotonic()
        if self.alarm is not None and now_mono - self._noted < ALARM_EVERY:
            return
        self._noted = now_mono
        held = self.held.note if self.held is not None else ""
        try:
            self.alarm = self.store.save_alarm(str(exc), held, offered, int(self.clock()))
        except sqlite3.Error as err:
            log.error("event=log_alarm_not_kept device=%s error=%r", self.device, str(err))
        log.error("event=log_inconsistent device=%s held_size=%s detail=%r fix='the log showed this "
                  "gateway a history that contradicts one it showed before: keep %s (both signed "
                  "checkpoints are the evidence) and report it to the backend operator and the "
                  "witnesses (meterchain agent check shows it)'", self.device,
                  self.view.newest.size if self.view.newest else None, str(exc), self.store.path)
        if self.on_alarm is not None:
            self.on_alarm("log-inconsistent", str(exc))
