"""The MQTT side of the agent: publish the outbox, apply the backend's acks, reconnect forever.

Its connection comes from the MQTT shell (meterchain.mqtt, docs/mqtt.md), which reconnects
with backoff and chooses the protocol. One session:

1. connect, MQTT 5 first and MQTT 3.1.1 if the broker does not speak 5 (amqtt), asked again on
   every connect;
2. subscribe to ``meterchain/v1/<device>/ack`` with QoS 1; the ack is retained, so the latest
   one arrives at once and the outbox forgets what the backend committed while we were away
   (a process that did not make its outbox waits up to ``RETAINED_ACK_WAIT`` for it before its
   first publish: the outbox may still hold readings the backend acked while the agent was down
   or before it wrote the ack down, and publishing them again only loads broker and backend);
3. publish due readings with QoS 1 in batches, up to ``max_inflight`` PUBACKs outstanding
   (a QoS 1 publish awaits its PUBACK, so one at a time would be round-trip-bound).

A PUBACK only means the broker took the message. The reading stays in the outbox until the
backend's ack covers it. When it is published again is agent/resend.py's: a window of readings
out without an ack, a backoff per reading from ``ack_timeout`` up, silence (no ack progress)
shrinking the window to a probe, and an immediate drain on each reconnect and each ack that
commits something. Under
MQTT 5 a refused publish (0x87 Not authorized: an ACL forbids this device's topic) is logged
and counted; under 3.1.1 the broker drops it silently and only the missing ack shows it.

Backlog policy: each batch holds the oldest due readings plus up to ``newest_reserve`` of the
newest, so draining a day of backlog never delays a fresh reading by more than one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from meterchain.agent.acks import AckGuard, AckRefused
from meterchain.agent.clock import Clock, ClockJudge
from meterchain.agent.config import BrokerConfig
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox, OutboxReading, is_disk_full
from meterchain.agent.resend import Outstanding, ResendPolicy
from meterchain.contract.ack import ack_topic, ocmf_topic, readings_topic, status_topic
from meterchain.contract.receipt import receipt_topic
from meterchain.mqtt import Backoff, Connection, Failure, Protocol, stay_connected

log = logging.getLogger(__name__)

#: How long a restarted agent waits for the broker's retained ack before its first publish.
RETAINED_ACK_WAIT = 2.0


class Publisher:
    """Keeps one broker session alive and the outbox flowing through it."""

    def __init__(
        self,
        *,
        device: str,
        broker: BrokerConfig,
        outbox: Outbox,
        clock: Clock,
        metrics: AgentMetrics,
        ack_timeout: int,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 15.0,
        status: Callable[[], Awaitable[bytes]] | None = None,
        status_interval: float = 60.0,
        guard: AckGuard | None = None,
        on_alarm: Callable[[str, str], None] | None = None,
        window: int = 1000,
        judge: ClockJudge | None = None,
        on_receipt: Callable[[bytes], None] | None = None,
    ) -> None:
        self.device = device
        self.broker = broker
        self.outbox = outbox
        self.clock = clock
        self.metrics = metrics
        self.ack_timeout = ack_timeout
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.newest_reserve = max(1, broker.batch_size // 10)
        self.protocol = Protocol.V5  # of the current (or last) connection
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self.topic = readings_topic(device)
        self.ocmf_topic = ocmf_topic(device)
        # Fleet health: a status message (contract/status.py) every status_interval seconds.
        self.status = status
        self.status_interval = status_interval
        # Which acks to believe (agent/acks.py); without a control key: unverified, alarmed.
        self.guard = guard or AckGuard(device, None, Path("no-control-key"))
        self.on_alarm = on_alarm
        self._unverified_noted = 0.0  # monotonic time of the last unverified-ack alarm
        self.resend = ResendPolicy(ack_timeout, window=window)
        self._next_wake: float | None = None
        # The backend's time in each verified ack judges the gateway clock (agent/clock.py),
        # against the monotonic time of the first publish of what the ack commits: a wall-clock
        # time taken before a step of the clock would mislead it.
        self.judge = judge or ClockJudge()
        # Receipts (agent/receipts.py): subscribed to when set, handed over without waiting.
        self.on_receipt = on_receipt
        self._sent_mono: dict[int, float] = {}
        self._ack_arrived = asyncio.Event()  # any ack message since this process started

    def wake(self) -> None:
        """New readings are in the outbox: publish them now rather than at the next timeout."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, publish, and reconnect with backoff after every failure, forever."""
        await stay_connected(
            self.broker.address,
            self._session,
            name=f"agent {self.device}",
            backoff=self.backoff,
            rng=self.rng,
            sleep=self._sleep,
            on_failure=self._lost,
            client_id=f"meterchain-agent-{self.device}",
            timeout=self.connect_timeout,
            max_inflight=self.broker.max_inflight,
            logger=logging.getLogger("meterchain.agent.mqtt"),
        )

    def _lost(self, failure: Failure) -> None:
        self.connected.clear()
        self.metrics.broker_failures.inc()

    async def _sleep(self, seconds: float) -> None:
        await self.clock.sleep_until(self.clock.now() + seconds)

    async def _session(self, client: Connection) -> None:
        self.protocol = client.protocol
        await client.subscribe(ack_topic(self.device), qos=1, timeout=self.publish_timeout)
        if self.on_receipt is not None:  # receipts (agent/receipts.py), QoS 1
            await client.subscribe(receipt_topic(self.device), qos=1, timeout=self.publish_timeout)
        self.resend.reconnected(self.clock.now())
        self.connected.set()
        self.metrics.broker_connects.labels(protocol=self.protocol.name).inc()
        log.info(
            "event=broker_connected broker=%s protocol=%s device=%s",
            self.broker.url,
            self.protocol.name,
            self.device,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive_acks(client))
            if not self._ack_arrived.is_set() and not self.outbox.created:
                # The retained ack first (found by the chaos suite: a restarted agent published
                # every reading again that the backend had acked but the outbox still held).
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                # that comes in the turn the ack arrives, and a stopped agent would go on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETAINED_ACK_WAIT):
                        await self._ack_arrived.wait()
            group.create_task(self._send(client))
            if self.status is not None:
                group.create_task(self._report_status(client))

    async def _receive_acks(self, client: Connection) -> None:
        receipts = receipt_topic(self.device)
        async for message in client.messages():
            if message.topic == receipts:
                if self.on_receipt is not None:
                    self.on_receipt(message.payload)
            else:
                await self.handle_ack(message.payload)
                self._ack_arrived.set()

    async def handle_ack(self, payload: bytes) -> None:
        """Apply one ack message; a malformed or foreign ack is logged and ignored."""
        try:  # signed by the control key, for us, not above what we signed (agent/acks.py)
            opened = self.guard.open(payload, await self.outbox.next_seq() - 1)
        except AckRefused as exc:
            self.metrics.acks_refused.labels(reason=exc.reason).inc()
            log.error("event=ack_refused device=%s reason=%s detail=%r", self.device,
                      exc.reason, str(exc))
            self._alarm(f"ack-refused:{exc.reason}", str(exc))
            return
        ack = opened.ack
        if not opened.verified:  # counted each time; logged and kept at most once a minute
            self.metrics.acks_unverified.inc()
            now_mono = time.monotonic()
            if now_mono - self._unverified_noted >= 60 or not self._unverified_noted:
                self._unverified_noted = now_mono
                log.warning("event=ack_unverified device=%s upto=%d advice=provision_again "
                            "(no control_key: this ack may be forged)", self.device, ack.upto)
                self._alarm("ack-unverified", f"ack upto {ack.upto} taken without a control key")
        try:
            result = await self.outbox.apply_ack(ack, now=int(self.clock.now()))
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # A later ack (or the retained one at the next connect) covers the same and more.
            log.error("event=disk_full device=%s ack_upto=%d not_applied=%r", self.device,
                      ack.upto, str(exc))
            return
        done = [s for s in self._sent_mono if s <= ack.upto or s in result.quarantined]
        sent_mono = max((self._sent_mono.pop(s) for s in done), default=None)
        if opened.verified and ack.time and self.judge.monotonic is not None:
            received = self.clock.now()
            sent = (None if sent_mono is None or not result.committed + len(result.quarantined)
                    else received - (self.judge.monotonic() - sent_mono))
            self.judge.observe_ack(ack.time, received, sent)
            span = self.judge.offset(received)
            if span is not None and abs(span[0]) < 1e9 and abs(span[1]) < 1e9:
                self.metrics.clock_offset.set((span[0] + span[1]) / 2)
        if result.committed or result.quarantined:
            self.resend.progress(self.clock.now())
            self.wake()  # the window is open again: drain now
        self.metrics.readings_acked.inc(result.committed)
        reasons = {r.seq: r for r in ack.rejected}
        for seq in result.quarantined:
            rejection = reasons[seq]
            self.metrics.readings_quarantined.labels(reason=rejection.reason).inc()
            log.warning(
                "event=reading_quarantined device=%s seq=%d reason=%s detail=%r",
                self.device,
                seq,
                rejection.reason,
                rejection.detail,
            )
        self.metrics.outbox_depth.set(await self.outbox.depth())
        log.info(
            "event=ack device=%s upto=%d committed=%d quarantined=%d",
            self.device,
            ack.upto,
            result.committed,
            len(result.quarantined),
        )

    def _alarm(self, kind: str, detail: str) -> None:
        if self.on_alarm is not None:
            self.on_alarm(kind, detail)

    async def _report_status(self, client: Connection) -> None:
        """Publish the gateway's status now and then every ``status_interval`` seconds."""
        assert self.status is not None
        while True:
            payload = await self.status()
            await client.publish(status_topic(self.device), payload, qos=1,
                                 timeout=self.publish_timeout)
            await self.clock.sleep_until(self.clock.now() + self.status_interval)

    async def _send(self, client: Connection) -> None:
        while True:
            self._wake.clear()  # before the query: a wake during it is not lost
            await self._publish_gaps(client)
            batch = await self._due()
            if batch:
                await self._publish_batch(client, batch)
            else:
                await self._wait_for_work()

    async def _due(self) -> list[OutboxReading]:
        """The readings to publish now (agent/resend.py): due resends first, then new ones."""
        rows, total = await self.outbox.outstanding(self.resend.window)
        plan = self.resend.plan([Outstanding(*row) for row in rows], total, self.clock.now())
        self._next_wake = plan.wake
        size = self.broker.batch_size
        again = await self.outbox.fetch(plan.resend[:size])
        fresh: list[OutboxReading] = []
        oldest = await self.outbox.oldest_seq()
        if plan.new and oldest is not None:
            fresh = await self.outbox.unsent(size - len(again), newest=self.newest_reserve,
                                             below=oldest + plan.new)
        return sorted((*again, *fresh), key=lambda r: r.seq)

    async def _publish_gaps(self, client: Connection) -> None:
        """Gap declarations of a lost outbox (agent/recovery.py) go out on the readings topic
        before any reading, again after each ack timeout, until an ack covers them."""
        now = int(self.clock.now())
        due = await self.outbox.pending_gaps(now=now, republish_after=self.ack_timeout)
        sent = []
        for first, message in due:
            refused = await client.publish(self.topic, message, timeout=self.publish_timeout)
            if refused is None:
                sent.append(first)
                log.warning("event=gap_published device=%s first=%d", self.device, first)
            else:
                self.metrics.publish_refused.labels(reason=str(refused)).inc()
        await self._record(self.outbox.mark_gaps_sent(sent, now))

    async def _publish_batch(self, client: Connection, batch: list[OutboxReading]) -> None:
        limit = asyncio.Semaphore(self.broker.max_inflight)
        answered: list[int] = []

        async def publish(reading: OutboxReading) -> None:
            async with limit:
                if reading.ocmf is not None:
                    # Before its reading: the backend stores it before it acks the reading, so
                    # an acked reading never leaves its OCMF record behind (docs/agent.md).
                    ocmf_refused = await client.publish(
                        self.ocmf_topic, reading.ocmf.encode("ascii"), timeout=self.publish_timeout
                    )
                    if ocmf_refused is not None:  # e.g. a broker ACL without the ocmf topic
                        self.metrics.publish_refused.labels(reason=str(ocmf_refused)).inc()
                        log.error(
                            "event=publish_refused device=%s seq=%d reason=%r topic=%s",
                            self.device,
                            reading.seq,
                            str(ocmf_refused),
                            self.ocmf_topic,
                        )
                refused = await client.publish(
                    self.topic, reading.message, timeout=self.publish_timeout
                )
            answered.append(reading.seq)  # refused ones too: retried after the ack timeout
            if (refused is None and reading.send_count == 0 and self.judge.monotonic is not None
                    and reading.seq >= self.outbox.first_own_seq):
                # Only a reading's first publish ever: the backend cannot have committed it
                # before then (a copy from an earlier process could have been: sends are
                # counted per process, agent/outbox.py).
                self._sent_mono.setdefault(reading.seq, self.judge.monotonic())
            if refused is None:
                self.metrics.readings_published.inc()
                return
            self.metrics.publish_refused.labels(reason=str(refused)).inc()
            log.error(
                "event=publish_refused device=%s seq=%d reason=%r code=0x%02x topic=%s",
                self.device,
                reading.seq,
                str(refused),
                int(refused.value),
                self.topic,
            )

        try:
            async with asyncio.TaskGroup() as group:
                for reading in batch:
                    group.create_task(publish(reading))
        finally:
            # Record what the broker answered even if the connection broke mid-batch; the rest
            # stays due and goes out again on the next connection.
            await asyncio.shield(self._record(
                self.outbox.mark_sent(answered, now=int(self.clock.now()))))
        log.debug("event=batch_published device=%s count=%d", self.device, len(batch))

    async def _record(self, write: Awaitable[None]) -> None:
        """Bookkeeping of what was sent: on a full disk it is lost, and the readings only go
        out again sooner (the backend deduplicates); never a reason to stop publishing."""
        try:
            await write
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error("event=disk_full device=%s sent_not_recorded=%r", self.device, str(exc))

    async def _wait_for_work(self) -> None:
        # Gap declarations are looked at every ack timeout; readings when the policy says.
        deadline = self.clock.now() + self.ack_timeout
        if self._next_wake is not None:
            deadline = min(deadline, self._next_wake)
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            sleeper.cancel()
