"""Live telemetry in the backend: the latest unsigned sample per meter, in memory only.

A small subscriber of its own (not the ingest: telemetry must never slow or touch signed data)
listens on ``meterchain/v1/+/telemetry`` with QoS 0 and keeps the newest valid sample of each
``(device, meter)``. A sample whose ``dev`` is not the topic's device is dropped: the broker's
ACL lets a gateway write only its own topic, so that is the only identity the sample has.
Nothing here is stored, logged or billed; pages mark it "live · unsigned".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from meterchain.contract.ack import TOPIC_PREFIX, device_from_topic
from meterchain.contract.errors import MeterchainError
from meterchain.contract.telemetry import Telemetry
from meterchain.mqtt import Backoff, BrokerUrl, Connection, Protocol, stay_connected

log = logging.getLogger(__name__)
TELEMETRY_FILTER = f"{TOPIC_PREFIX}/+/telemetry"
#: Samples older than this are not shown as live (the gateway publishes every few seconds).
STALE_SECONDS = 60
#: A bound on memory: one entry per meter; when full, stale entries are evicted first, and
#: only then is a new meter ignored.
MAX_METERS = 100_000
#: A sample stamped further ahead of the backend's clock than this is refused (issue 14: one
#: with a huge time would never be replaced by a real one).
MAX_AHEAD_SECONDS = 60


@dataclass(frozen=True, slots=True)
class LiveSample:
    sample: Telemetry
    received: int  # backend clock, UTC seconds


class LiveTelemetry:
    """The newest sample per (device, meter)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._latest: dict[tuple[str, str], LiveSample] = {}
        self._clock = clock
        self.dropped = 0
        #: The enrolled devices (the service refreshes it from the registry): samples of any
        #: other device are dropped, so a stranger cannot fill the map. None: not restricted.
        self.enrolled: frozenset[str] | None = None

    def accept(self, topic: str, payload: bytes) -> LiveSample | None:
        """Keep a payload if it is a valid sample of the topic's own device; else count a drop."""
        device = device_from_topic(topic, "telemetry")
        try:
            sample = Telemetry.from_cbor(payload)
        except MeterchainError:
            sample = None
        now = int(self._clock())
        if (device is None or sample is None or sample.device != device
                or (self.enrolled is not None and device not in self.enrolled)
                or sample.time > now + MAX_AHEAD_SECONDS):
            self.dropped += 1
            return None
        key = (sample.device, sample.meter)
        current = self._latest.get(key)
        if current is not None and current.sample.time > sample.time:
            return current  # an older sample delivered late never replaces a newer one
        if current is None and len(self._latest) >= MAX_METERS:
            self._evict(now)
            if len(self._latest) >= MAX_METERS:
                self.dropped += 1
                return None
        entry = LiveSample(sample, now)
        self._latest[key] = entry
        return entry

    def _evict(self, now: int) -> None:
        """Drop the samples no page would show any more (older than :data:`STALE_SECONDS`)."""
        stale = [k for k, e in self._latest.items() if now - e.received > STALE_SECONDS]
        for key in stale:
            del self._latest[key]

    def forget(self, meters: Iterable[tuple[str, str]]) -> None:
        """Drop the samples of these (device, meter) pairs (a household's data was erased)."""
        for key in meters:
            self._latest.pop(key, None)

    def latest(self, meters: Iterable[tuple[str, str]], now: int | None = None
               ) -> dict[tuple[str, str], LiveSample]:
        """The fresh samples of these (device, meter) pairs."""
        now = int(self._clock()) if now is None else now
        found = {}
        for key in meters:
            entry = self._latest.get(key)
            if entry is not None and now - entry.received <= STALE_SECONDS:
                found[key] = entry
        return found


async def keep_enrolled(live: LiveTelemetry,
                        devices: Callable[[], Awaitable[list[tuple[str, int]]]],
                        every: float = 30.0) -> None:
    """Refresh ``live.enrolled`` from the registry (``store.devices``) every ``every`` s, so
    only enrolled devices' samples are kept; a failed read keeps the previous set."""
    import asyncio  # here: the module's MQTT side moves to meterchain.mqtt

    while True:
        try:
            live.enrolled = frozenset(device for device, _ in await devices())
        except Exception as exc:  # the store is busy or away: try again next round
            log.warning("telemetry: enrolled devices not refreshed (%s)", exc)
        await asyncio.sleep(every)


async def subscribe(live: LiveTelemetry, broker_url: str, client_id: str, *,
                    backoff: Backoff | None = None) -> None:
    """Feed ``live`` from the broker forever, reconnecting with backoff and jitter."""

    async def session(connection: Connection) -> None:
        await connection.subscribe(TELEMETRY_FILTER, qos=0)
        async for message in connection.messages():
            live.accept(message.topic, message.payload)

    await stay_connected(BrokerUrl.parse(broker_url), session, name="live telemetry",
                         backoff=backoff, log_to=log, client_id=client_id,
                         protocols=(Protocol.V311,), keepalive=30)
