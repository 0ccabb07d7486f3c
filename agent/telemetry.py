"""Live telemetry from the gateway: each meter's power and voltages every few seconds, unsigned.

The signed readings come once per interval; a household also wants to watch its power *now*.
Every ``telemetry_seconds`` this publisher reads each meter (through the same sources, so a
shared serial bus is still used by one request at a time) and publishes one
``meterchain/telemetry/v1`` sample per meter with QoS 0 on ``meterchain/v1/<device>/telemetry``
(contract/telemetry.py). Snapshots of the interval poller count as reads too (``on_snapshot``).

Only fresh values are sent: a meter that failed its last read sends nothing, so the dashboard
shows "no live data" rather than an old number as if it were live. Telemetry never touches the
outbox, and its failures never stop signing; it has its own MQTT connection and reconnects alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from meterchain.agent.clock import Clock
from meterchain.agent.config import BrokerConfig
from meterchain.agent.meters import MeterSnapshot, MeterSource
from meterchain.contract.ack import telemetry_topic
from meterchain.contract.errors import MeterchainError
from meterchain.contract.telemetry import Telemetry
from meterchain.mqtt import Backoff, Connection, Protocol, stay_connected

log = logging.getLogger(__name__)


def sample_of(device: str, snapshot: MeterSnapshot, time: int) -> Telemetry | None:
    """The telemetry of one meter read, or None if its values are outside the contract's bounds."""
    try:
        return Telemetry(device, snapshot.serial, time, snapshot.power_w,
                         tuple(snapshot.voltage_dv[:3]))
    except MeterchainError as exc:
        log.warning("event=telemetry_dropped meter=%s detail=%r", snapshot.serial, str(exc))
        return None


class TelemetryPublisher:
    """Reads the meters every ``every`` seconds and publishes their fresh samples."""

    def __init__(self, *, device: str, broker: BrokerConfig, sources: Sequence[MeterSource],
                 every: float, clock: Clock, read_timeout: float = 3.0,
                 backoff: Backoff | None = None) -> None:
        self.device = device
        self.broker = broker
        self.sources = list(sources)
        self.every = every
        self.clock = clock
        self.read_timeout = read_timeout
        self.backoff = backoff or Backoff()
        self._fresh: dict[str, Telemetry] = {}  # source name -> sample of its latest read
        self.published = 0

    def update(self, source: MeterSource, snapshot: MeterSnapshot) -> None:
        """A read done elsewhere (the interval poller) is a fresh sample too."""
        sample = sample_of(self.device, snapshot, int(self.clock.now()))
        if sample is not None:
            self._fresh[source.name] = sample

    async def read_all(self) -> list[Telemetry]:
        """Read every meter once; return (and forget) the fresh samples."""
        async def one(source: MeterSource) -> None:
            try:
                snapshot = await asyncio.wait_for(source.read(), self.read_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed live read only skips this sample
                log.debug("event=telemetry_read_failed meter=%s error=%r", source.name, exc)
                return
            self.update(source, snapshot)

        await asyncio.gather(*(one(s) for s in self.sources))
        samples, self._fresh = list(self._fresh.values()), {}
        return samples

    async def run(self) -> None:
        """Publish forever; reconnect with backoff when the broker goes away."""
        await stay_connected(
            self.broker.address,
            self._loop,
            name=f"telemetry {self.device}",
            backoff=self.backoff,
            log_to=log,
            level=logging.INFO,  # the signed readings' own connection warns already
            client_id=f"meterchain-agent-{self.device}-telemetry",
            protocols=(Protocol.V311,),  # QoS 0 samples: nothing MQTT 5 adds
            logger=logging.getLogger("meterchain.agent.mqtt.telemetry"),
        )

    async def _loop(self, client: Connection) -> None:
        topic = telemetry_topic(self.device)
        while True:
            started = self.clock.now()
            for sample in await self.read_all():
                await client.publish(topic, sample.to_cbor(), qos=0)
                self.published += 1
            await self.clock.sleep_until(started + self.every)
