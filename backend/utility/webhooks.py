"""Webhooks per utility: announce each sealed batch that holds the utility's readings.

At least once: a delivery is queued in the store (one row per webhook and idempotency key
``batch-<index>``) in the same transaction that moves the webhook past that batch, then POSTed
until the receiver answers 2xx. A failure is retried with exponential backoff (``base·2^(n−1)``
seconds, capped); after ``max_attempts`` the delivery is *dead*: the utility lists dead deliveries
and replays them through the API. Receivers deduplicate on the ``Idempotency-Key`` header, because
an answer lost on the way back means the same delivery is sent again.

Every POST is signed: ``Meterchain-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>." ‖ body)>``; a receiver recomputes it with the secret it got when it created the webhook and
refuses old timestamps (replays). The body says what to pull; the readings and proofs come from
``GET /api/v1/utility/batch`` (docs/utility-guide.md).

A webhook whose URL is ``mqtt://`` or ``mqtts://[user:pass@]host[:port]/<topic prefix>`` is an
**MQTT forward** instead: the sealed batch itself (every page of the utility's signed batch for
that range, deterministic CBOR) is published with QoS 1 to ``<prefix>/batch/<index>/<cursor>``
on the utility's own broker, and the delivery counts as done when every page is PUBACKed (a
broker speaking MQTT 5 that refuses a page, e.g. 0x87 not authorized, fails the delivery); the
same retries, dead letters and replays apply. A page is self-describing (``from``, ``to``,
``cursor``, ``next``), so a receiver deduplicates on the topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from meterchain.backend.access.model import KeyKind, Principal, Scope
from meterchain.backend.store import SqliteStore
from meterchain.backend.utility.batches import MAX_PAGE, build_batch
from meterchain.backend.utility.tables import Delivery, UtilityTables, Webhook
from meterchain.mqtt import BrokerUrl, MqttError, connect
from prometheus_client import Counter

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Meterchain-Signature"
EVENT = "batch.sealed"
DELIVERIES = Counter("meterchain_webhook_deliveries", "Webhook POSTs by outcome", ["outcome"])


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Meterchain-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver does: recompute the MAC, compare in constant time, refuse stale stamps."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    error: str  # "" on success; the status line or the exception otherwise


Sender = Callable[[str, bytes, dict[str, str], float], Awaitable[Attempt]]


async def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Attempt:
    """POST with the standard library in a thread (no HTTP client dependency in the backend)."""

    def post() -> Attempt:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            return Attempt(False, f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])
        return Attempt(200 <= status < 300, "" if 200 <= status < 300 else f"HTTP {status}")

    return await asyncio.to_thread(post)


MQTT_SCHEMES = ("mqtt", "mqtts")


async def mqtt_publish(url: str, messages: list[tuple[str, bytes]], timeout: float) -> Attempt:
    """Publish ``(topic suffix, payload)`` pairs with QoS 1 under the URL's topic prefix."""
    try:
        broker = BrokerUrl.parse(url)  # a BrokerUrlError (ValueError) never shows the password
        prefix = broker.topic_prefix
        async with connect(broker, timeout=timeout) as connection:
            for suffix, payload in messages:
                topic = f"{prefix}/{suffix}" if prefix else suffix
                refused = await connection.publish(topic, payload, qos=1, timeout=timeout)
                if refused is not None:
                    return Attempt(False, f"refused: {refused} (0x{refused.value:02x}) on {topic}"
                                   [:300])
    except (MqttError, OSError, ValueError) as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])
    return Attempt(True, "")


class WebhookWorker:
    """Queues an announcement per new sealed batch and webhook, and delivers what is due."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        clock: Callable[[], float] = time.time,
        sender: Sender = http_post,
        mqtt: Callable[[str, list[tuple[str, bytes]], float], Awaitable[Attempt]] = mqtt_publish,
        max_attempts: int = 8,
        backoff_base: int = 10,
        backoff_max: int = 3600,
        timeout: float = 10.0,
        poll: float = 1.0,
        concurrency: int = 8,
    ) -> None:
        self.tables = UtilityTables(store)
        self.store = store
        self.clock = clock
        self.sender = sender
        self.mqtt = mqtt
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.poll = poll
        self.concurrency = concurrency

    def backoff(self, attempts: int) -> int:
        """Seconds to wait after the ``attempts``-th failure."""
        return int(min(self.backoff_max, self.backoff_base * 2 ** min(attempts - 1, 30)))

    async def run(self) -> None:
        """Forever: enqueue and deliver, then wait ``poll`` seconds. A store error costs a tick."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("webhooks: tick failed")
            await asyncio.sleep(self.poll)

    async def tick(self) -> int:
        """Enqueue announcements of new batches, then deliver due ones; returns deliveries tried."""
        for hook in await self.tables.webhooks():
            await self.enqueue(hook)
        return await self.deliver_due()

    async def enqueue(self, hook: Webhook) -> int:
        """Queue one delivery per batch from ``hook.after_batch`` on that holds readings of the
        utility (empty batches move the webhook on without a delivery)."""
        rows = await self.store.batches(hook.after_batch, 100)
        if not rows:
            return 0
        utility = Principal(KeyKind.UTILITY, hook.utility, frozenset({Scope.READ}))
        deliveries = []
        for row in rows:
            count = await self.tables.readings_count_in_range(utility, row.first - 1, row.size)
            if not count:
                continue
            checkpoint = await self.store.checkpoint(row.size)
            key = f"batch-{row.idx}"
            body = {
                "id": key, "event": EVENT, "utility": hook.utility, "batch": row.idx,
                "from": row.first, "to": row.size, "readings": count,
                "checkpoint": checkpoint.note if checkpoint else None,
                "pull": f"/api/v1/utility/batch?from={row.first}&to={row.size}",
            }
            deliveries.append((key, EVENT, json.dumps(body, sort_keys=True).encode()))
        return await self.tables.enqueue(hook, deliveries, rows[-1].idx + 1, int(self.clock()))

    async def deliver_due(self) -> int:
        due = await self.tables.due(int(self.clock()), 100)
        if not due:
            return 0
        hooks = {h.id: h for h in await self.tables.webhooks()}
        limit = asyncio.Semaphore(self.concurrency)

        async def one(delivery: Delivery) -> None:
            hook = hooks.get(delivery.webhook)
            async with limit:
                if hook is None:  # deleted: stop trying, keep the record
                    result = Attempt(False, "webhook deleted")
                else:
                    result = await self._post(hook, delivery)
            await self._record(delivery, result, final=hook is None)

        await asyncio.gather(*(one(d) for d in due))
        return len(due)

    async def _post(self, hook: Webhook, delivery: Delivery) -> Attempt:
        if urlsplit(hook.url).scheme in MQTT_SCHEMES:
            return await self._forward(hook, delivery)
        now = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "meterchain-webhooks/1",
            "Idempotency-Key": delivery.idempotency_key,
            "Meterchain-Event": delivery.event,
            "Meterchain-Delivery": str(delivery.id),
            "Meterchain-Attempt": str(delivery.attempts + 1),
            SIGNATURE_HEADER: signature(hook.secret, now, delivery.payload),
        }
        return await self.sender(hook.url, delivery.payload, headers, self.timeout)

    async def _forward(self, hook: Webhook, delivery: Delivery) -> Attempt:
        """Publish every page of the announced batch to the utility's broker."""
        event = json.loads(delivery.payload)
        utility = Principal(KeyKind.UTILITY, hook.utility, frozenset({Scope.READ}))
        pages: list[tuple[str, bytes]] = []
        cursor: int | None = int(event["from"])
        while cursor is not None:
            page = await build_batch(self.store, utility, size_from=int(event["from"]),
                                     size_to=int(event["to"]), cursor=cursor, limit=MAX_PAGE)
            pages.append((f"batch/{event['batch']}/{cursor}", page.to_cbor()))
            cursor = page.next
        return await self.mqtt(hook.url, pages, self.timeout)

    async def _record(self, delivery: Delivery, result: Attempt, *, final: bool = False) -> None:
        now = int(self.clock())
        attempts = delivery.attempts + 1
        if result.ok:
            state, next_attempt = "delivered", now
        elif final or attempts >= self.max_attempts:
            state, next_attempt = "dead", now
        else:
            state, next_attempt = "pending", now + self.backoff(attempts)
        DELIVERIES.labels(state if not result.ok else "delivered").inc()
        if not result.ok:
            log.warning("webhooks: delivery %d (%s) to %s failed attempt=%d state=%s error=%s",
                        delivery.id, delivery.idempotency_key, delivery.webhook, attempts, state,
                        result.error)
        await self.tables.record_attempt(delivery.id, state=state, attempts=attempts,
                                         next_attempt=next_attempt, error=result.error, now=now)
