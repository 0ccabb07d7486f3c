"""The broker the demo and the tests start: reachable, QoS 1 delivery, credentials enforced."""

from __future__ import annotations

from urllib.parse import urlparse

import aiomqtt
import pytest
from meterchain.mqtt.broker import RunningBroker, start_embedded


def _client(url: str, **kwargs: object) -> aiomqtt.Client:
    u = urlparse(url)
    return aiomqtt.Client(u.hostname or "", u.port or 1883, username=u.username, password=u.password, **kwargs)  # type: ignore[arg-type]


async def test_broker_delivers_qos1(broker: RunningBroker) -> None:
    async with _client(broker.url, identifier="sub", clean_session=False) as sub:
        await sub.subscribe("meterchain/v1/+/readings", qos=1)
        async with _client(broker.url) as pub:
            await pub.publish("meterchain/v1/gw-1/readings", b"\x82", qos=1)
        async for message in sub.messages:
            assert message.topic.matches("meterchain/v1/gw-1/readings")
            assert message.payload == b"\x82"
            break


async def test_embedded_broker_refuses_wrong_password(tmp_path) -> None:
    running = await start_embedded(workdir=tmp_path)
    try:
        assert running.host == "127.0.0.1"
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(running.host, running.port, username="meterchain", password="wrong"):
                pass
        async with _client(running.url):
            pass
    finally:
        await running.stop()
