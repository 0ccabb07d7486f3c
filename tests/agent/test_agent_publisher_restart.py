"""A restarted agent takes the broker's retained ack before its first publish (found by the chaos
suite, issue 18: each kill -9 of an agent cost a second publish of every reading the backend had
acked but the outbox still held)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from meterchain.agent.acks import AckGuard
from meterchain.agent.cli import write_private_key
from meterchain.agent.clock import SystemClock
from meterchain.agent.config import load_config
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import CycleEntry, Outbox
from meterchain.agent.publisher import Publisher
from meterchain.contract.ack import ack_topic, readings_topic
from meterchain.contract.control import SignedAck
from meterchain.contract.signing import generate_private_key_pem
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import DEVICE, FAST_BACKOFF, TEST_CONTROL, broker_client, gateway_config, running

pytestmark = pytest.mark.timeout(60)


async def test_a_restart_publishes_only_what_the_retained_ack_does_not_cover(
    tmp_path: Path, broker: RunningBroker
) -> None:
    write_private_key(tmp_path / "device.key", generate_private_key_pem(), force=False)
    (tmp_path / "agent.toml").write_text(gateway_config(
        DEVICE, "/dev/null", broker.url, control_key=str(TEST_CONTROL.verifier)))
    config = load_config(tmp_path / "agent.toml")
    outbox = await Outbox.open(config.outbox_path, DEVICE)  # the earlier process: 10 readings
    for i in range(1, 11):
        await outbox.append_cycle([CycleEntry("m1", 900 * i, lambda s: f"r{s}".encode())], now=1)
    await outbox.close()
    async with broker_client(broker.url, "test-backend") as backend:  # it acked them all
        await backend.publish(ack_topic(DEVICE), SignedAck(DEVICE, 10, (), (), int(time.time()))
                              .sign([TEST_CONTROL]), qos=1, retain=True)
    outbox = await Outbox.open(config.outbox_path, DEVICE)  # the restarted process
    await outbox.append_cycle([CycleEntry("m1", 900 * 11, lambda s: f"r{s}".encode())], now=2)
    publisher = Publisher(device=DEVICE, broker=config.broker, outbox=outbox, clock=SystemClock(),
                          metrics=AgentMetrics(), ack_timeout=60, backoff=FAST_BACKOFF,
                          guard=AckGuard(DEVICE, config.control_key, config.key_path))
    seen: list[bytes] = []
    try:
        async with broker_client(broker.url, "test-listener") as listener:
            await listener.subscribe(readings_topic(DEVICE), qos=1)
            async with running(publisher.run):
                async with asyncio.timeout(30):
                    async for message in listener.messages:
                        seen.append(bytes(message.payload))
                        if seen[-1] == b"r11":
                            break
    finally:
        await outbox.close()
    assert seen == [b"r11"], "readings the retained ack covers were published again"
