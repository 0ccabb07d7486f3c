"""The gateway's status message for fleet health (contract/status.py), built from the outbox and
the DLMS pollers' last clock checks; the publisher sends it every few minutes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from meterchain.agent.clock import Clock
from meterchain.agent.ocmf import agent_version
from meterchain.agent.outbox import Outbox
from meterchain.contract.status import MAX_ALARMS, MAX_DRIFT, MAX_METERS, GatewayStatus, MeterHealth


class StatusReporter:
    """Builds the current :class:`GatewayStatus`; ``await reporter()`` gives its CBOR bytes."""

    def __init__(
        self,
        *,
        device: str,
        outbox: Outbox,
        clock: Clock,
        drift: Callable[[], Mapping[str, float]] = dict,
        monotonic: Callable[[], float] = time.monotonic,
        alarms: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self.device = device
        self.outbox = outbox
        self.clock = clock
        self.drift = drift
        self.monotonic = monotonic
        self.alarms = alarms  # the alarm codes of the last day (agent/acks.py)
        self.started = monotonic()
        self.firmware = agent_version()

    async def status(self) -> GatewayStatus:
        progress = await self.outbox.meter_progress()
        drift = self.drift()
        meters = sorted(set(progress) | set(drift))[:MAX_METERS]
        return GatewayStatus(
            device=self.device,
            time=int(self.clock.now()),
            firmware=self.firmware,
            uptime=max(0, int(self.monotonic() - self.started)),
            outbox_depth=await self.outbox.depth(),
            quarantined=await self.outbox.quarantine_count(),
            meters=tuple(
                MeterHealth(meter, progress.get(meter), _drift(drift.get(meter)))
                for meter in meters
            ),
            alarms=self.alarms()[:MAX_ALARMS],
        )

    async def __call__(self) -> bytes:
        return (await self.status()).to_cbor()


def _drift(value: float | None) -> int | None:
    if value is None:
        return None
    return max(-MAX_DRIFT, min(MAX_DRIFT, round(value)))
