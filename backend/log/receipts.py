"""Receipts to gateways (issue 17): once a checkpoint is cosigned, each device with readings under
it gets one receipt (contract/receipt.py) on ``meterchain/v1/<device>/receipts``.

The sealer hands every committed checkpoint (after :class:`Cosigning` added what the witnesses
signed) to :meth:`ReceiptSender.offer`, which only remembers it: sealing never waits for MQTT. A
task of its own (:meth:`ReceiptSender.run`, through the MQTT shell) then takes the newest offered
checkpoint that meets the witness policy (without witnesses: the log-signed one) and sends, for
each device with readings among the leaves sealed since the last round, its newest reading there
with its inclusion proof and that checkpoint: QoS 1, not retained (a receipt holds a reading,
which the broker must not keep; a gateway that was away gets receipts for what it sends once
back). One receipt per device per round is enough (docs/mqtt.md, "Receipts"): any receipt
carries a whole cosigned checkpoint, which is what a gateway compares with its view of the log;
a reading's own inclusion proof is there for the asking
(``GET /api/v1/devices/<device>/readings/<seq>/inclusion``).

Bounded work: checkpoints offered while a round runs are merged into the next round (one
receipt per device for the whole range, against the newest checkpoint), and a round is built
and published in chunks of :data:`CHUNK` devices. A checkpoint short of the quorum gets no
receipts; its leaves get theirs with the next one that meets it. A round that fails (broker lost)
is done again on the next connection; duplicates are harmless to a gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from meterchain.backend.log.cosigning import Cosigning
from meterchain.backend.log.proofs import inclusion_proof
from meterchain.backend.store import ProofStore
from meterchain.contract.cosignature import verify_cosignatures
from meterchain.contract.errors import MeterchainError
from meterchain.contract.receipt import Receipt, receipt_topic
from meterchain.contract.tlog_policy import WitnessPolicy
from meterchain.mqtt import BrokerUrl, Connection, Failure, Protocol, stay_connected
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

#: Devices per chunk: proofs are built and published this many at a time.
CHUNK = 500
#: At most this many devices per round (the newest readings of more wait for the next round).
MAX_DEVICES = 100_000
#: The first round after a start covers this many of the newest leaves.
RESUME_LEAVES = 10_000
#: Checkpoints short of the quorum are counted each; logged at most this often (seconds).
HELD_LOG_EVERY = 60.0

PUBLISHED = Counter("meterchain_receipts_published", "Receipts published to gateways (PUBACKed)")
NO_QUORUM = Counter("meterchain_receipts_no_quorum",
                    "Checkpoints offered without the witness quorum (no receipts for them)")
ROUND_SECONDS = Histogram("meterchain_receipts_round_seconds",
                          "From a checkpoint's offer to its last receipt PUBACKed",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
COVERED = Gauge("meterchain_receipts_covered_size", "Leaves below this tree size have had their receipts")


@dataclass(frozen=True, slots=True)
class Offered:
    size: int
    note: str
    at: float  # time.monotonic() of the offer


class ReceiptSender:
    """Receipts for cosigned checkpoints (see the module docstring)."""

    def __init__(self, store: ProofStore, policy: WitnessPolicy | None, *,
                 broker: BrokerUrl | None = None, client_id: str = "meterchain-backend-receipts",
                 chunk: int = CHUNK, max_devices: int = MAX_DEVICES, timeout: float = 10.0) -> None:
        self.store = store
        self.policy = policy
        self.broker = broker
        self.client_id = client_id
        self.chunk = max(1, chunk)
        self.max_devices = max_devices
        self.timeout = timeout
        self.pending: Offered | None = None  # the newest checkpoint with quorum, not yet sent
        self.covered: int | None = None  # receipts were sent for every leaf below this size
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._held_noted = 0.0

    def meets_policy(self, note: str) -> bool:
        """Whether ``note`` carries the cosignatures the policy asks for (always, without one)."""
        if self.policy is None:
            return True
        try:
            signed = verify_cosignatures(note, self.policy.keys)
        except MeterchainError:
            return False
        return self.policy.satisfied(signed)

    def offer(self, size: int, note: str) -> None:
        """A checkpoint was committed (and cosigned as far as the witnesses would): remember the
        newest one that meets the policy; never blocks."""
        if not self.meets_policy(note):
            NO_QUORUM.inc()
            now = time.monotonic()
            if now - self._held_noted >= HELD_LOG_EVERY or not self._held_noted:
                self._held_noted = now  # a witness down for hours: a line a minute, not a seal
                log.warning("event=receipts_held size=%d reason=no_quorum: receipts wait for a "
                            "checkpoint the witness policy accepts", size)
            return
        if self.pending is None or size > self.pending.size:
            self.pending = Offered(size, note, time.monotonic())
            self._wake.set()

    async def resume(self) -> None:
        """After a start: offer the newest checkpoint again (what was sent before the restart is
        not known; the first round covers the newest leaves, see :meth:`build`)."""
        row = await self.store.latest_checkpoint()
        if row is not None:
            self.offer(row.size, row.note)

    async def build(self, offered: Offered) -> list[list[tuple[str, bytes]]]:
        """The receipts of one round as chunks of (topic, payload); nothing is sent."""
        return [chunk async for chunk in self.chunks(offered)]

    async def chunks(self, offered: Offered) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The receipts of one round, a chunk at a time (only one chunk is held in memory)."""
        # The first round after a start covers the newest RESUME_LEAVES leaves: what an earlier
        # process sent is not known (a gateway takes a receipt it has seen again as a no-op).
        start = (max(0, offered.size - RESUME_LEAVES) if self.covered is None
                 else min(self.covered, offered.size))
        rows = await self.store.newest_readings(start, offered.size, self.max_devices)
        for first in range(0, len(rows), self.chunk):
            chunk = []
            for row in rows[first:first + self.chunk]:
                assert row.leaf_index is not None  # sealed: newest_readings reads sealed leaves
                proof = await inclusion_proof(self.store, row.leaf_index, offered.size)
                receipt = Receipt(row.device, row.seq, row.message, row.leaf_index, tuple(proof),
                                  offered.note)
                chunk.append((receipt_topic(row.device), receipt.to_cbor()))
            yield chunk
            await asyncio.sleep(0)  # let the sealer and the API run between chunks

    async def send_round(self, client: Connection) -> int:
        """Send the receipts of the pending checkpoint; return how many were PUBACKed."""
        offered = self.pending
        if offered is None:
            return 0
        sent = 0
        limit = asyncio.Semaphore(100)

        async def publish(topic: str, payload: bytes) -> None:
            nonlocal sent
            async with limit:
                refused = await client.publish(topic, payload, qos=1, retain=False,
                                               timeout=self.timeout)
            if refused is None:
                sent += 1
            else:  # the broker's ACL for the backend lacks .../receipts (deploy/backend/mosquitto.acl)
                log.error("event=receipt_refused topic=%s reason=%s", topic, refused)

        async for chunk in self.chunks(offered):
            async with asyncio.TaskGroup() as group:
                for topic, payload in chunk:
                    group.create_task(publish(topic, payload))
        PUBLISHED.inc(sent)
        self.covered = offered.size
        COVERED.set(offered.size)
        if self.pending is offered:
            self.pending = None
        ROUND_SECONDS.observe(time.monotonic() - offered.at)
        log.info("event=receipts_sent size=%d receipts=%d", offered.size, sent)
        return sent

    async def run(self) -> None:
        """Stay connected (the MQTT shell) and send each round as checkpoints are offered."""
        if self.broker is None:
            raise ValueError("ReceiptSender.run needs a broker")
        await stay_connected(self.broker, self._session, name="receipts", on_failure=self._lost,
                             retry_unexpected=True, log_to=log, client_id=self.client_id,
                             protocols=(Protocol.V5, Protocol.V311), max_inflight=100,
                             keepalive=30, timeout=self.timeout)

    def _lost(self, _failure: Failure) -> None:
        self.connected.clear()

    async def _session(self, client: Connection) -> None:
        self.connected.set()
        while True:
            if self.pending is None:
                await self._wake.wait()
            self._wake.clear()
            await self.send_round(client)  # an MqttError: the round is done again on reconnect


def on_sealed(cosigning: Cosigning | None,
              receipts: ReceiptSender | None) -> Callable[[int, str], Awaitable[None]] | None:
    """The sealer's hook: collect cosignatures, then offer the cosigned note for receipts."""
    if cosigning is None and receipts is None:
        return None

    async def sealed(size: int, note: str) -> None:
        if cosigning is not None:
            note = (await cosigning.after_seal(size, note)).note
        if receipts is not None:
            receipts.offer(size, note)

    return sealed
