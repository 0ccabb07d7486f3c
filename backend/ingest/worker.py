"""MQTT ingest: subscribe to every device's readings, check, commit in batches, then ack.

Three tasks joined by bounded queues, so receiving, verifying and committing overlap:
receive (drain whatever the client has queued, up to a batch) → check (every check of checks.py,
in ``check_processes`` worker processes, backend/ingest/pool.py; with 0, in threads) → commit (one
transaction per batch) → publish each touched device's ack, retained, QoS 1. A reading is
acknowledged only after the transaction that stores it committed.
:meth:`Ingest.run` stays connected through the MQTT shell (meterchain.mqtt: backoff with jitter),
on a persistent session so the broker queues readings while the backend is away.

With a share group (docs/backend.md, "Scale-out") several ingest workers split the readings
through the MQTT 5 shared subscription ``$share/<group>/meterchain/v1/+/readings``; each worker
then recomputes a touched device's ack from the store after its commit, since another worker may
have committed that device's other seqs meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from meterchain.backend.config import ConfigError, broker_address
from meterchain.backend.devices.registry import KeyRegistry
from meterchain.backend.ingest.checks import Checked, check_batch
from meterchain.backend.ingest.gateway_messages import (
    AcceptedOcmf,
    AcceptedStatus,
    Refused,
    SideResult,
    check_side_batch,
    split_messages,
)
from meterchain.backend.ingest.pool import CheckPool, Leaves, Messages
from meterchain.backend.store import (
    AckState,
    Outcome,
    RejectionRecord,
    StaleKeys,
    Store,
)
from meterchain.backend.store.records import VerifiedGap
from meterchain.contract.ack import TOPIC_PREFIX, Ack, Rejection, ack_topic
from meterchain.contract.control import SignedAck
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteSigner
from meterchain.mqtt import (
    Backoff,
    Connection,
    Failure,
    MqttError,
    Protocol,
    ProtocolUnsupported,
    ReasonCode,
    stay_connected,
)
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

#: How often ingest says again that its database is full, and retries the batch it holds.
FULL_REPORT_SECONDS = 60.0
FULL_RETRY_SECONDS = 5.0


class StoreFull(MeterchainError):
    """The backend's database has no space left: nothing new is committed (or acked) until it
    has; everything committed stays."""

    check = "store-full"


def is_store_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100), or ENOSPC/EDQUOT."""
    if isinstance(exc, StoreFull):
        return True
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(exc))
    if getattr(exc, "sqlstate", None) == "53100":
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


_T = TypeVar("_T")

READINGS_FILTER = f"{TOPIC_PREFIX}/+/readings"
#: OCMF records and status messages (backend/ingest/gateway_messages.py), stored before readings are acked.
SIDE_FILTERS = (f"{TOPIC_PREFIX}/+/ocmf", f"{TOPIC_PREFIX}/+/status")
#: The MQTT client warns about many pending calls; a busy ingest has hundreds by design.
_QUIET_MQTT_LOG = logging.getLogger("meterchain.backend.ingest.worker.mqtt")
_QUIET_MQTT_LOG.setLevel(logging.ERROR)
REJECTIONS = Counter(
    "meterchain_ingest_rejections", "Messages rejected by ingest, by reason", ["reason"]
)
OUTCOMES = Counter(
    "meterchain_ingest_readings", "Verified readings by commit outcome", ["outcome"]
)
UNAUTHENTICATED = Counter(
    "meterchain_ingest_unauthenticated",
    "Readings-topic messages that prove nothing about a device (never in its ack), by the "
    "enrolled device their topic names (\"-\" for none) and reason",
    ["device", "reason"],
)
GAPS = Counter("meterchain_ingest_gaps", "Gap declarations logged (contract/gap.py)")
STORE_FULL = Gauge(
    "meterchain_ingest_store_full", "1 while the database is full and ingest holds its batch"
)
BATCH_SECONDS = Histogram("meterchain_ingest_commit_seconds", "Time to commit one batch")
SIDE_MESSAGES = Counter(
    "meterchain_ingest_side_messages", "OCMF and status messages by outcome", ["kind", "outcome"]
)
STAGE_CPU = Gauge(
    "meterchain_ingest_stage_cpu_seconds",
    "CPU seconds this ingest spent per stage since it started (Ingest.cpu_seconds)", ["stage"]
)
#: The stages of :meth:`Ingest.cpu_seconds`, in pipeline order.
STAGES = ("receive", "check", "store", "ack", "loop", "other-threads")


def subscriptions(share_group: str = "") -> tuple[str, ...]:
    """The filters ingest subscribes to. With a share group, readings and statuses are shared
    (each message reaches one worker); OCMF records stay a plain subscription, so the worker that
    acks a reading has itself received (and stored) the record the agent published before it."""
    if not share_group:
        return (READINGS_FILTER, *SIDE_FILTERS)
    shared = f"$share/{share_group}/"
    ocmf, status = SIDE_FILTERS
    return (shared + READINGS_FILTER, ocmf, shared + status)


@dataclass
class _DeviceAck:
    upto: int
    above: set[int]
    recent: collections.deque[tuple[int, str, str]]
    #: Declared gaps (first, last), newest last: the ack shows them (contract/gap.py).
    gaps: collections.deque[tuple[int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=32))

    def advance(self) -> None:
        """Move ``upto`` over the done seqs just above it."""
        while self.upto + 1 in self.above:
            self.upto += 1
        self.above = {s for s in self.above if s > self.upto}


@dataclass
class AckTracker:
    """Per device: the highest contiguous done sequence, what is done above it, and the recent
    rejections for good. Loaded from the store the first time a device is seen."""

    devices: dict[str, _DeviceAck] = field(default_factory=dict)

    async def load(self, store: Store, devices: Iterable[str]) -> None:
        missing = [device for device in devices if device not in self.devices]
        # Concurrently: the store's queries queue up instead of waiting for each other's answer.
        states: list[AckState] = await asyncio.gather(*(store.ack_state(d) for d in missing))
        for device, state in zip(missing, states, strict=True):
            loaded = _DeviceAck(
                state.upto, set(state.above), collections.deque(state.recent_rejections, 64)
            )
            loaded.gaps.extend(state.gaps)
            loaded.advance()  # the stored upto is a lower bound (another worker's plan)
            self.devices[device] = loaded

    async def refresh(self, store: Store, devices: Iterable[str]) -> None:
        """Reload ``devices`` from the store: with several workers, what this one cached misses
        the seqs and rejections the others committed. Everything read is committed."""
        for device in devices:
            self.devices.pop(device, None)
        await self.load(store, devices)

    def plan(self, done: dict[str, set[int]]) -> dict[str, int]:
        """The ``upto`` each device would have once ``done`` is committed (nothing changes)."""
        result = {}
        for device, seqs in done.items():
            state = self.devices[device]
            upto = state.upto
            while upto + 1 in seqs or upto + 1 in state.above:
                upto += 1
            result[device] = upto
        return result

    def apply(self, done: dict[str, set[int]], uptos: dict[str, int],
              rejected: Sequence[RejectionRecord]) -> None:
        for device, seqs in done.items():
            state = self.devices[device]
            state.upto = uptos[device]
            state.above = {s for s in state.above | seqs if s > state.upto}
        for r in rejected:
            if r.permanent and r.device is not None and r.seq is not None:
                self.devices[r.device].recent.append((r.seq, r.reason, r.detail[:200]))

    def gaps(self, device: str) -> tuple[tuple[int, int], ...]:
        """The device's recent declared gaps (empty for a device not loaded)."""
        state = self.devices.get(device)
        return tuple(state.gaps) if state is not None else ()

    def declared(self, gaps: Sequence[VerifiedGap]) -> None:
        for gap in gaps:
            recent = self.devices[gap.device].gaps
            if (gap.first, gap.last) not in recent:
                recent.append((gap.first, gap.last))

    def ack(self, device: str, now: int) -> Ack:
        state = self.devices[device]
        return Ack(
            device,
            state.upto,
            tuple(Rejection(s, reason, detail) for s, reason, detail in state.recent),
            now,
        )


@dataclass
class BatchReport:
    """What one batch did (tests and the bench read it)."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)


class Ingest:
    """Checks and commits readings; :meth:`process` is one batch, :meth:`run` the MQTT loop."""

    def __init__(
        self,
        store: Store,
        *,
        broker_url: str | None = None,
        client_id: str = "meterchain-backend",
        batch_size: int = 1000,
        verify_threads: int = 2,
        check_processes: int = 0,
        on_commit: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
        share_group: str = "",
        control: Sequence[NoteSigner] = (),
        timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.broker_url = broker_url
        self.client_id = client_id
        self.share_group = share_group
        # Every ack is signed by the control key (contract/control.py); during a rotation by the
        # new and the previous one. Without one (tests), an ephemeral key no gateway trusts.
        if not control:
            log.warning("ingest: no control key; acks are signed by an ephemeral key that no "
                        "gateway trusts (docs/backend.md, \"Control key\")")
            control = (NoteSigner.generate("ephemeral.invalid/control"),)
        self.control = tuple(control)
        self.timeout = timeout
        self.batch_size = batch_size
        self.verify_threads = max(1, verify_threads)
        self.on_commit = on_commit
        self.clock = clock
        self.registry = KeyRegistry()
        self.acks = AckTracker()
        self.stats: collections.Counter[str] = collections.Counter()
        self.connected = asyncio.Event()
        self.connected_once = False
        self._pool = ThreadPoolExecutor(self.verify_threads, thread_name_prefix="mc-verify")
        # Checking in processes (issue 20): parsing and packing hold the GIL, so threads took
        # turns with the MQTT reader; 0 keeps the threads (docs/backend.md, "Checking").
        self.check_pool = CheckPool(check_processes) if check_processes > 0 else None
        self._cpu_ns: collections.Counter[str] = collections.Counter()  # receive, check, ack
        self._connection: Connection | None = None
        self._loop_thread = threading.get_ident()
        for stage in STAGES:
            STAGE_CPU.labels(stage).set_function(functools.partial(self._stage_cpu, stage))
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._latest_ack: dict[str, Ack] = {}

    # ---------------------------------------------------------------- batches

    async def check(self, messages: Sequence[tuple[str, bytes]]) -> tuple[list[Checked], int]:
        """Check a batch in the check processes (or threads); returns the results in order and
        the key version used."""
        await self.registry.refresh(self.store)
        version, leaves, now = self.registry.version, self.registry.snapshot(), int(self.clock())
        if self.check_pool is not None:
            return await self.check_pool.check(messages, leaves, now), version
        loop = asyncio.get_running_loop()
        if len(messages) < 64 or self.verify_threads == 1:
            chunks = [messages]
        else:
            step = -(-len(messages) // self.verify_threads)
            chunks = [messages[i : i + step] for i in range(0, len(messages), step)]
        parts = await asyncio.gather(
            *(loop.run_in_executor(self._pool, _timed_check, c, leaves, now) for c in chunks)
        )
        for _, cpu_ns in parts:
            self._cpu_ns["check"] += cpu_ns
        return [r for part, _ in parts for r in part], version

    async def commit(
        self, messages: Sequence[tuple[str, bytes]], checked: list[Checked], version: int
    ) -> BatchReport:
        """Commit a checked batch (re-checking it if keys changed meanwhile); return the acks."""
        while True:
            try:
                return await self._commit(checked, version)
            except StaleKeys:
                checked, version = await self.check(messages)

    async def _commit(self, checked: list[Checked], version: int) -> BatchReport:
        readings = [c.reading for c in checked if c.reading is not None]
        rejections = [c.rejection for c in checked if c.rejection is not None]
        gaps = [c.gap for c in checked if c.gap is not None]
        done: dict[str, set[int]] = {gap.device: set() for gap in gaps}
        for r in readings:
            done.setdefault(r.device, set()).add(r.seq)
        for x in rejections:
            if x.permanent and x.device is not None and x.seq is not None:
                done.setdefault(x.device, set()).add(x.seq)
        await self.acks.load(self.store, done)
        if gaps:  # declared by the device: logged first, then part of its ack like the rest
            for gap in gaps:
                upto = self.acks.devices[gap.device].upto
                done[gap.device].update(range(max(gap.first, upto + 1), gap.last + 1))
            fresh = await self.store.commit_gaps(gaps)
            self.acks.declared(gaps)
            GAPS.inc(fresh)
            self.stats["gaps"] += fresh
            for gap in gaps:
                log.warning("gap declared device=%s first=%d last=%d (the device lost what "
                            "it signed there; readings that still arrive are stored)",
                            gap.device, gap.first, gap.last)
        uptos = self.acks.plan(done)
        started = time.perf_counter()
        result = await self.store.commit_batch(readings, rejections, uptos, version)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        self.acks.apply(done, uptos, [*rejections, *result.conflicts])
        if self.share_group:  # after the commit: see every seq committed until now, ours included
            await self.acks.refresh(self.store, done)

        report = BatchReport()
        # Counted per outcome, not per reading: a label lookup per reading was a third of the
        # event loop's own work per message (cProfile, issue 20).
        for outcome, count in collections.Counter(result.outcomes).items():
            OUTCOMES.labels(outcome.value).inc(count)
            self.stats[outcome.value] += count
        report.stored = result.outcomes.count(Outcome.STORED)
        report.duplicates = result.outcomes.count(Outcome.DUPLICATE)
        report.conflicts = result.outcomes.count(Outcome.CONFLICT)
        junk: collections.Counter[str] = collections.Counter()
        for x in [*rejections, *result.conflicts]:
            REJECTIONS.labels(x.reason).inc()
            self.stats[f"rejected:{x.reason}"] += 1
            report.rejected[x.reason] = report.rejected.get(x.reason, 0) + 1
            if x.permanent:
                log.warning("reading rejected for good reason=%s device=%s seq=%s detail=%s",
                            x.reason, x.device, x.seq, x.detail[:200])
                continue
            # Unauthenticated: counted under the topic's enrolled device, never in its ack.
            UNAUTHENTICATED.labels(x.device or "-", x.reason).inc()
            junk[x.reason] += 1
            log.debug("message refused reason=%s topic_device=%s seq=%s detail=%s",
                      x.reason, x.device, x.seq, x.detail[:200])
        if junk:  # one line per batch, not one per message: a flood must not flood the log
            log.warning("unauthenticated messages refused count=%d reasons=%s",
                        sum(junk.values()), dict(sorted(junk.items())))
        now = int(self.clock())
        report.acks = [self.acks.ack(device, now) for device in sorted(done)]
        if report.stored and self.on_commit is not None:
            self.on_commit(report.stored)
        return report

    async def process(self, messages: Sequence[tuple[str, bytes]]) -> BatchReport:
        """Check and commit one batch (no MQTT): the acks to publish are in the report.

        OCMF and status messages in the batch are stored first (before any ack)."""
        readings, side = split_messages(messages)
        await self.commit_side(await self.check_side(side))
        checked, version = await self.check(readings)
        return await self.commit(readings, checked, version)

    async def check_side(self, messages: Sequence[tuple[str, bytes]]) -> list[SideResult]:
        """Check OCMF and status messages in a worker thread (OCMF verification is ECDSA)."""
        if not messages:
            return []
        await self.registry.refresh(self.store)
        leaves, now = self.registry.snapshot(), int(self.clock())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, check_side_batch, messages, leaves, now)

    async def commit_side(self, results: Sequence[SideResult]) -> None:
        """Keep accepted OCMF records and statuses; count and log the refused ones."""
        if not results:
            return
        ocmf = [r for r in results if isinstance(r, AcceptedOcmf)]
        statuses = [r for r in results if isinstance(r, AcceptedStatus)]
        for r in results:
            if isinstance(r, Refused):
                SIDE_MESSAGES.labels(r.kind, r.reason).inc()
                self.stats[f"{r.kind}:{r.reason}"] += 1
                log.warning("%s message refused reason=%s device=%s detail=%s",
                            r.kind, r.reason, r.device, r.detail[:200])
        if not ocmf and not statuses:
            return
        result = await self.store.commit_side(ocmf, statuses)
        for outcome, count in (("stored", result.ocmf_stored),
                               ("duplicate", result.ocmf_duplicates),
                               ("conflict", len(result.ocmf_conflicts))):
            SIDE_MESSAGES.labels("ocmf", outcome).inc(count)
            self.stats[f"ocmf:{outcome}"] += count
        SIDE_MESSAGES.labels("status", "stored").inc(result.statuses)
        self.stats["status:stored"] += result.statuses
        for device, seq in result.ocmf_conflicts:
            log.warning("ocmf record conflict device=%s seq=%d: other bytes are stored already; "
                        "the first record is kept", device, seq)

    async def until_space(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``work`` (a commit), and while the database is full hold it and try again every
        few seconds: ingest takes nothing new meanwhile (its queues are bounded, so the broker
        keeps the rest for the persistent session) and acks nothing it has not committed."""
        reported = -FULL_REPORT_SECONDS
        full_since: float | None = None
        while True:
            try:
                result = await work()
            except Exception as exc:
                if not is_store_full(exc):
                    raise
                now = time.monotonic()
                if full_since is None:
                    full_since = now
                    STORE_FULL.set(1)
                if now - reported >= FULL_REPORT_SECONDS:
                    reported = now
                    log.error("event=store_full error=%r: the database has no space left; "
                              "nothing new is committed or acked until it has (everything "
                              "committed stays, gateways keep their readings and resend); fix: "
                              "free space on the database's disk or grow it", str(exc))
                await asyncio.sleep(FULL_RETRY_SECONDS)
                continue
            if full_since is not None:
                STORE_FULL.set(0)
                log.warning("event=store_space_back held_for=%.0fs",
                            time.monotonic() - full_since)
            return result

    # ------------------------------------------------------------------- MQTT

    async def run(self, *, backoff: Backoff | None = None) -> None:
        """Stay subscribed forever: reconnect with backoff and jitter after every failure.

        A store failure costs the batch in flight (never acked), not the loop: it is logged and
        the connection opened again. A :class:`ConfigError` (a broker that cannot serve this
        configuration) ends it: retrying will not help."""
        if self.broker_url is None:
            raise ValueError("Ingest.run needs a broker_url")
        self._loop_thread = threading.get_ident()
        # The check processes start once subscribed (their start competes for the CPU: on a
        # busy machine it took seconds); a batch that comes first waits for them in the pool.
        warming = asyncio.create_task(self._start_check_pool())
        try:
            await self._stay_connected(backoff)
        finally:
            warming.cancel()

    async def _start_check_pool(self) -> None:
        if self.check_pool is None:
            return
        await self.connected.wait()
        try:
            await self.check_pool.start()
        except Exception as exc:  # the first batch starts them again, or says why it cannot
            log.warning("event=check_processes_not_started error=%r", str(exc))

    async def _stay_connected(self, backoff: Backoff | None) -> None:
        assert self.broker_url is not None  # run() checked
        await stay_connected(
            broker_address(self.broker_url),
            self._session,
            name="ingest",
            backoff=backoff,
            on_failure=self._lost,
            retry_unexpected=True,
            fatal=(ConfigError,),
            log_to=log,
            client_id=self.client_id,
            # A share group needs MQTT 5 (shared subscriptions) and no session that outlives the
            # connection: Mosquitto keeps handing a disconnected member's share of the messages
            # to its stored session, so a dead worker would sit on them; without one, the group
            # shares among the connected workers only, and what was in flight at a dead worker
            # (never acked) is resent by the agents (docs/backend.md, "Scale-out").
            protocols=(Protocol.V5,) if self.share_group else (Protocol.V311,),
            persistent=not self.share_group,
            max_inflight=1000,
            keepalive=30,
            logger=_QUIET_MQTT_LOG,
            timeout=self.timeout,
        )

    def _lost(self, failure: Failure) -> None:
        """A share group needs MQTT 5: a broker that refuses or ignores it (amqtt 0.12) yet
        answers MQTT 3.1.1 on the first connection is a :class:`ConfigError`."""
        self.connected.clear()
        error = failure.error
        if isinstance(error, ProtocolUnsupported) and not self.connected_once:
            raise ConfigError(
                f"share_group {self.share_group!r} needs an MQTT 5 broker (shared subscriptions), "
                f"but the broker at {error.broker} speaks only MQTT 3.1.1; use "
                "Mosquitto 2 (or another MQTT 5 broker), or unset share_group to run one ingest",
                share_group=self.share_group, broker=str(error.broker),
            )

    async def _session(self, client: Connection) -> None:
        self._connection = client
        try:
            await self._subscribed(client)
        finally:
            self._cpu_ns["receive"] += client.cpu_ns
            self._connection = None

    async def _subscribed(self, client: Connection) -> None:
        if self.share_group:
            self.acks.devices.clear()  # others committed while we were away
        self._latest_ack.clear()
        self.connected_once = True
        for topic_filter in subscriptions(self.share_group):
            granted = await client.subscribe(topic_filter, qos=1)
            _check_granted(topic_filter, granted)
        self.connected.set()
        log.info("ingest: subscribed to %s", ", ".join(subscriptions(self.share_group)))
        await self._republish_acks(client)
        await self._pipeline(client)

    async def _republish_acks(self, client: Connection) -> None:
        """After a (re)start, every known device gets its current ack again."""
        devices = await self.store.acked_devices()
        await self.acks.load(self.store, devices)
        now = int(self.clock())
        for device in devices:
            self._publish_ack(client, self.acks.ack(device, now))

    async def _pipeline(self, client: Connection) -> None:
        checked_q: asyncio.Queue[
            tuple[list[tuple[str, bytes]], list[Checked], int, list[SideResult]]
        ] = asyncio.Queue(2)
        raw_q: asyncio.Queue[list[tuple[str, bytes]]] = asyncio.Queue(2)

        async def receive() -> None:
            while True:
                batch = await client.receive(self.batch_size)  # MqttError when it drops
                await raw_q.put([(m.topic, m.payload) for m in batch])

        async def check() -> None:
            while True:
                readings, side = split_messages(await raw_q.get())
                side_results = await self.check_side(side)
                checked, version = await self.check(readings) if readings else ([], 0)
                await checked_q.put((readings, checked, version, side_results))

        async def commit() -> None:
            while True:
                batch, checked, version, side_results = await checked_q.get()
                # OCMF records and statuses first: a reading is acked only after its record,
                # published before it, is stored.
                await self.until_space(functools.partial(self.commit_side, side_results))
                if not batch:
                    continue
                report = await self.until_space(
                    functools.partial(self.commit, batch, checked, version))
                for ack in report.acks:
                    self._publish_ack(client, ack)

        tasks = [asyncio.create_task(t()) for t in (receive, check, commit)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _publish_ack(self, client: Connection, ack: Ack) -> None:
        """Publish the newest ack per device; while one is in flight, newer ones coalesce."""
        in_flight = ack.device in self._latest_ack
        self._latest_ack[ack.device] = ack
        if in_flight:
            return

        async def publish(device: str) -> None:
            try:
                while (latest := self._latest_ack.get(device)) is not None:
                    started = time.thread_time_ns()
                    payload = self.ack_payload(latest)
                    self._cpu_ns["ack"] += time.thread_time_ns() - started
                    await client.publish(ack_topic(device), payload, qos=1, retain=True)
                    if self._latest_ack.get(device) is latest:
                        del self._latest_ack[device]
            except MqttError as exc:  # the next (re)connect publishes every ack again
                self._latest_ack.pop(device, None)
                log.info("ingest: ack for %s not published (%s)", device, exc)

        task = asyncio.create_task(publish(ack.device))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    def ack_payload(self, ack: Ack) -> bytes:
        """The signed v2 ack of ``ack`` (docs/format.md §11): signed by every control key in
        use, naming the current one so gateways that verified it adopt it (rotation)."""
        return SignedAck(
            ack.device, ack.upto, tuple((r.seq, r.reason, r.detail) for r in ack.rejected),
            self.acks.gaps(ack.device), ack.time, (str(self.control[0].verifier),),
        ).sign(self.control)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per stage since this ingest started (the benchmark's per-stage table):
        receive (the MQTT client reading and acking PUBLISHes), check (parse, checks, verify,
        pack: in the check processes or threads), store (SQLite's threads), ack (signing acks),
        loop (the rest of the event loop's thread: batching, commit bookkeeping, hand-off; on
        PostgreSQL also the store), other-threads (the process pool's feeder and result
        threads, executors). Threads that ended are not counted."""
        exact = dict(self._cpu_ns)
        if self._connection is not None:
            exact["receive"] = exact.get("receive", 0) + self._connection.cpu_ns
        if self.check_pool is not None:
            exact["check"] = exact.get("check", 0) + self.check_pool.cpu_ns
        threads = collections.Counter[str]()
        for thread in threading.enumerate():
            ident = thread.ident
            if ident is None or thread.name.startswith("mc-verify"):  # timed per chunk
                continue
            try:
                spent = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
            except (OSError, ProcessLookupError):  # ended meanwhile
                continue
            if ident == self._loop_thread:
                threads["loop"] += spent - exact.get("receive", 0) - exact.get("ack", 0)
            elif "_connection_worker_thread" in thread.name:  # aiosqlite's
                threads["store"] += spent
            else:
                threads["other-threads"] += spent
        return {stage: max(0, exact.get(stage, 0) + threads.get(stage, 0)) / 1e9
                for stage in STAGES}

    def _stage_cpu(self, stage: str) -> float:
        return self.cpu_seconds()[stage]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.check_pool is not None:
            self.check_pool.close()


def _timed_check(messages: Messages, leaves: Leaves, now: int) -> tuple[list[Checked], int]:
    """check_batch in a verify thread, and the CPU-ns it took there."""
    started = time.thread_time_ns()
    results = check_batch(messages, leaves, now)
    return results, time.thread_time_ns() - started


def _check_granted(topic_filter: str, granted: tuple[ReasonCode, ...]) -> None:
    """Raise :class:`ConfigError` if the broker refused a subscription (a code ≥ 0x80, e.g.
    0x87 not authorized or 0x9E shared subscriptions not supported)."""
    for code in granted:
        value = code.value
        if code.is_failure:
            raise ConfigError(
                f"the broker refused the subscription {topic_filter!r}: {code} (0x{value:02x}); "
                "check its ACL for the backend's user and that it allows shared subscriptions",
                topic_filter=topic_filter, code=value,
            )
