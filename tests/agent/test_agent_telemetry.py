"""Live telemetry end to end: the agent's publisher → a real broker → the backend's in-memory view.

Meter sources are the agent's seam (``MeterSource``); here they are small scripted meters.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from meterchain.agent.clock import SystemClock
from meterchain.agent.config import BrokerConfig, ConfigError, load_config
from meterchain.agent.meters import MeterSnapshot
from meterchain.agent.telemetry import TelemetryPublisher, sample_of
from meterchain.backend.web.live import LiveTelemetry, subscribe
from meterchain.mqtt import BrokerUrl

from tests.support.agent_config import EXAMPLE, write


class ScriptedMeter:
    """A meter whose power steps through ``powers``; ``None`` makes a read fail."""

    def __init__(self, name: str, serial: str, powers: list[int | None]) -> None:
        self.name, self.serial, self.powers, self.reads = name, serial, powers, 0

    async def read(self) -> MeterSnapshot:
        power = self.powers[min(self.reads, len(self.powers) - 1)]
        self.reads += 1
        if power is None:
            raise OSError("no answer on the bus")
        return MeterSnapshot(self.serial, 1000, 0, power_w=power, voltage_dv=(2300, 2310, 2295))

    def close(self) -> None:
        pass


def test_config_key_telemetry_seconds(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, EXAMPLE)).telemetry_seconds == 5
    off = load_config(write(tmp_path, "telemetry_seconds = 0\n" + EXAMPLE))
    assert off.telemetry_seconds == 0
    with pytest.raises(ConfigError, match="telemetry_seconds"):
        load_config(write(tmp_path, "telemetry_seconds = -1\n" + EXAMPLE))


def test_out_of_bounds_values_are_dropped_not_sent() -> None:
    assert sample_of("gw-1", MeterSnapshot("m", 0, 0, power_w=10**12), 1) is None
    sample = sample_of("gw-1", MeterSnapshot("m", 0, 0, power_w=None, voltage_dv=(1, 2, 3, 4)), 1)
    assert sample is not None and sample.voltage_dv == (1, 2, 3)


async def test_publisher_to_backend_view_through_a_broker(broker) -> None:  # type: ignore[no-untyped-def]
    house = ScriptedMeter("house", "SDM-H", [500, 750, 1250])
    silent = ScriptedMeter("heat-pump", "SDM-HP", [None])
    publisher = TelemetryPublisher(
        device="gw-1", broker=BrokerConfig(BrokerUrl.parse(broker.url)),
        sources=[house, silent], every=0.2, clock=SystemClock())
    live = LiveTelemetry()
    listener = asyncio.create_task(subscribe(live, broker.url, "backend-telemetry"))
    await asyncio.sleep(0.3)
    sender = asyncio.create_task(publisher.run())
    try:
        for _ in range(200):
            seen = live.latest([("gw-1", "SDM-H")])
            if seen and seen[("gw-1", "SDM-H")].sample.power_w == 1250:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"no live sample of 1250 W arrived (published {publisher.published})")
        assert live.latest([("gw-1", "SDM-HP")]) == {}  # a failing meter sends nothing
        assert seen[("gw-1", "SDM-H")].sample.voltage_dv == (2300, 2310, 2295)
    finally:
        for task in (sender, listener):
            task.cancel()
        await asyncio.gather(sender, listener, return_exceptions=True)
