"""Resend amplification through a backend outage (issue 18): the real agent, real ingest, Mosquitto.

The backend goes away for a while; its persistent session keeps queuing at the broker. Before
the window and per-reading backoff (agent/resend.py), every unacked reading went out again each
ack timeout; now a reading is published about once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import open_store
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import DEVICE, running, start_gateway, wait_until

pytestmark = pytest.mark.timeout(120)


def _value(counter: object) -> float:
    return float(counter._value.get())  # type: ignore[attr-defined]


async def test_a_backend_outage_costs_at_most_one_and_a_half_publishes_per_reading(
    tmp_path: Path, broker: RunningBroker
) -> None:
    gateway = await start_gateway(tmp_path / "gateway", broker.url, ack_timeout=1)
    store_path = tmp_path / "backend.db"
    admin = await open_store(store_path)
    try:
        await enrol(admin, DEVICE, gateway.spki, int(time.time()))
        agent = gateway.agent()
        metrics = agent.metrics
        async with running(agent.run):
            ingest = Ingest(await open_store(store_path), broker_url=broker.url)
            async with running(ingest.run):
                await wait_until(lambda: _value(metrics.readings_acked) >= 4, 30, "first acks")
            ingest.close()
            await ingest.store.close()
            away = _value(metrics.readings_signed)
            await asyncio.sleep(15)  # 15 ack timeouts without a backend
            signed_in_outage = _value(metrics.readings_signed) - away
            assert signed_in_outage >= 10
            back = time.monotonic()
            ingest = Ingest(await open_store(store_path), broker_url=broker.url)
            async with running(ingest.run):
                signed = _value(metrics.readings_signed)
                await wait_until(lambda: _value(metrics.readings_acked) >= signed, 30,
                                 "the backlog acked")
                recovered = time.monotonic() - back
            ingest.close()
            await ingest.store.close()
        published, signed = _value(metrics.readings_published), _value(metrics.readings_signed)
        amplification = published / signed
        print(f"readings={signed:.0f} publishes={published:.0f} amplification={amplification:.2f}"
              f" outage_readings={signed_in_outage:.0f} recovered_in={recovered:.1f}s")
        assert amplification <= 1.5
        assert await admin.reading_count(DEVICE) >= signed
    finally:
        await admin.close()
        await gateway.bus.stop()
