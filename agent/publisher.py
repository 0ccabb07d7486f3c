"""The MQTT side of the agent: publish the outbox, apply the backend's acks, reconnect forever.

A thin asyncio shell over aiomqtt 2.x (which does not reconnect by itself). One session:

1. connect, MQTT 5 first and MQTT 3.1.1 if the broker does not speak 5 (amqtt); the choice is
   remembered for later reconnects;
2. subscribe to ``meterchain/v1/<device>/ack`` with QoS 1; the ack is retained, so the latest
   one arrives at once and the outbox forgets what the backend committed while we were away;
3. publish due readings with QoS 1 in batches, up to ``max_inflight`` PUBACKs outstanding
   (aiomqtt's publish awaits its PUBACK, so one at a time would be round-trip-bound).

A PUBACK only means the broker took the message. The reading stays in the outbox until the
backend's ack covers it and is published again ``ack_timeout`` seconds after each send. Under
MQTT 5 a refused publish (0x87 Not authorized: an ACL forbids this device's topic) is logged
and counted; under 3.1.1 the broker drops it silently and only the missing ack shows it.

Backlog policy: each batch holds the oldest due readings plus up to ``newest_reserve`` of the
newest, so draining a day of backlog never delays a fresh reading by more than one batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from meterchain.agent.clock import Clock
from meterchain.agent.config import BrokerConfig, TlsConfig
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox, OutboxReading
from meterchain.contract.ack import Ack, ack_topic, ocmf_topic, readings_topic, status_topic
from meterchain.contract.errors import MeterchainError
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

#: CONNACK codes a broker answers when it does not speak the protocol version we asked for.
_UNSUPPORTED_PROTOCOL = {1, 0x84}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the cap fixed, half random.

    Never zero, so a failing broker is not hammered; random, so a thousand gateways that lost
    the same broker do not all come back in the same second.
    """

    initial: float = 0.5
    maximum: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        cap = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return cap / 2 + rng.uniform(0, cap / 2)


def tls_parameters(tls: TlsConfig | None) -> aiomqtt.TLSParameters | None:
    """aiomqtt's TLS settings for an ``mqtts://`` broker (None for plain MQTT)."""
    if tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
    )


class _ReasonCodeClient(aiomqtt.Client):
    """aiomqtt 2.x drops the PUBACK reason code; this keeps it per packet id.

    ``publish_checked`` is aiomqtt's publish (same private bookkeeping, pinned by
    ``aiomqtt>=2.5,<3``) returning the MQTT 5 failure reason code, or None on success.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._refused: dict[int, ReasonCode] = {}

    def _on_publish(self, client, userdata, mid, reason_code, properties):  # type: ignore[no-untyped-def]
        if getattr(reason_code, "is_failure", False):
            self._refused[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(
        self, topic: str, payload: bytes, *, timeout: float
    ) -> ReasonCode | None:
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=timeout)
        return self._refused.pop(info.mid, None)


def _mqtt_error(exc: BaseException) -> aiomqtt.MqttError:
    """The MQTT error inside a task group's failure; anything else is a bug and re-raised."""
    if isinstance(exc, aiomqtt.MqttError):
        return exc
    if isinstance(exc, ExceptionGroup):
        mqtt_errors, rest = exc.split(aiomqtt.MqttError)
        if rest is None and mqtt_errors is not None:
            return _mqtt_error(mqtt_errors.exceptions[0])
    raise exc


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
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 15.0,
        status: Callable[[], Awaitable[bytes]] | None = None,
        status_interval: float = 60.0,
    ) -> None:
        self.device = device
        self.broker = broker
        self.outbox = outbox
        self.clock = clock
        self.metrics = metrics
        self.ack_timeout = ack_timeout
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.newest_reserve = max(1, broker.batch_size // 10)
        self.protocol = aiomqtt.ProtocolVersion.V5
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self.topic = readings_topic(device)
        self.ocmf_topic = ocmf_topic(device)
        # Fleet health: a status message (contract/status.py) every status_interval seconds.
        self.status = status
        self.status_interval = status_interval

    def wake(self) -> None:
        """New readings are in the outbox: publish them now rather than at the next timeout."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, publish, and reconnect with backoff after every failure, forever."""
        attempt = 0
        while True:
            self.connected.clear()
            try:
                async with self._client(self.protocol) as client:
                    attempt = 0
                    await self._session(client)
            except (aiomqtt.MqttError, ExceptionGroup) as exc:
                error = _mqtt_error(exc)
                if self._should_fall_back(error):
                    log.info("event=mqtt5_unsupported broker=%s fallback=3.1.1", self.broker.url)
                    self.protocol = aiomqtt.ProtocolVersion.V311
                    continue
                self.metrics.broker_failures.inc()
                delay = self.backoff.delay(attempt, self.rng)
                attempt += 1
                log.warning(
                    "event=broker_unavailable broker=%s error=%r retry_in=%.2f attempt=%d",
                    self.broker.url,
                    str(error),
                    delay,
                    attempt,
                )
                await self.clock.sleep_until(self.clock.now() + delay)

    def _should_fall_back(self, exc: aiomqtt.MqttError) -> bool:
        """A broker that refused or ignored an MQTT 5 CONNECT (before any session began)."""
        if self.protocol != aiomqtt.ProtocolVersion.V5 or self.connected.is_set():
            return False
        if isinstance(exc, MqttConnectError):
            code = getattr(exc.rc, "value", exc.rc)
            return code in _UNSUPPORTED_PROTOCOL
        return "timed out" in str(exc)  # amqtt 0.12 never answers an MQTT 5 CONNECT

    def _client(self, protocol: aiomqtt.ProtocolVersion) -> _ReasonCodeClient:
        return _ReasonCodeClient(
            self.broker.host,
            self.broker.port,
            username=self.broker.username,
            password=self.broker.password,
            identifier=f"meterchain-agent-{self.device}",
            protocol=protocol,
            timeout=self.connect_timeout,
            max_inflight_messages=self.broker.max_inflight,
            logger=logging.getLogger("meterchain.agent.mqtt"),
            tls_params=tls_parameters(self.broker.tls),
        )

    async def _session(self, client: _ReasonCodeClient) -> None:
        await client.subscribe(ack_topic(self.device), qos=1, timeout=self.publish_timeout)
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
            group.create_task(self._send(client))
            if self.status is not None:
                group.create_task(self._report_status(client))

    async def _receive_acks(self, client: _ReasonCodeClient) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, (bytes, bytearray)):
                log.warning("event=ack_invalid topic=%s detail=not-bytes", message.topic)
                continue
            await self.handle_ack(bytes(payload))

    async def handle_ack(self, payload: bytes) -> None:
        """Apply one ack message; a malformed or foreign ack is logged and ignored."""
        try:
            ack = Ack.from_cbor(payload)
        except MeterchainError as exc:
            log.warning("event=ack_invalid device=%s detail=%r", self.device, exc.diagnostics())
            return
        if ack.device != self.device:
            log.warning("event=ack_foreign device=%s ack_device=%s", self.device, ack.device)
            return
        result = await self.outbox.apply_ack(ack, now=int(self.clock.now()))
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

    async def _report_status(self, client: _ReasonCodeClient) -> None:
        """Publish the gateway's status now and then every ``status_interval`` seconds."""
        assert self.status is not None
        while True:
            payload = await self.status()
            await client.publish(status_topic(self.device), payload, qos=1,
                                 timeout=self.publish_timeout)
            await self.clock.sleep_until(self.clock.now() + self.status_interval)

    async def _send(self, client: _ReasonCodeClient) -> None:
        while True:
            self._wake.clear()  # before the query: a wake during it is not lost
            batch = await self.outbox.pending(
                self.broker.batch_size,
                now=int(self.clock.now()),
                republish_after=self.ack_timeout,
                newest=self.newest_reserve,
            )
            if batch:
                await self._publish_batch(client, batch)
            else:
                await self._wait_for_work()

    async def _publish_batch(self, client: _ReasonCodeClient, batch: list[OutboxReading]) -> None:
        limit = asyncio.Semaphore(self.broker.max_inflight)
        answered: list[int] = []

        async def publish(reading: OutboxReading) -> None:
            async with limit:
                if reading.ocmf is not None:
                    # Before its reading: the backend stores it before it acks the reading, so
                    # an acked reading never leaves its OCMF record behind (docs/agent.md).
                    ocmf_refused = await client.publish_checked(
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
                refused = await client.publish_checked(
                    self.topic, reading.message, timeout=self.publish_timeout
                )
            answered.append(reading.seq)  # refused ones too: retried after the ack timeout
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
            await asyncio.shield(self.outbox.mark_sent(answered, now=int(self.clock.now())))
        log.debug("event=batch_published device=%s count=%d", self.device, len(batch))

    async def _wait_for_work(self) -> None:
        due = await self.outbox.next_due(self.ack_timeout)
        deadline = due if due is not None else self.clock.now() + self.ack_timeout
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            sleeper.cancel()
